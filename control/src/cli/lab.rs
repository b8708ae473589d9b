//! `cpclink lab`: three computing power centres and two transit routers in network
//! namespaces (`cpclab-…`), keyed by a real authority, with a service that two of the
//! centres host. Operators and reviewers poke at it: change what a centre reports, take
//! links down, watch where traffic goes (needs root).
//!
//! `up` builds it and starts every process in the background (their logs and pids in the
//! lab directory); `down` removes everything; `scenario` runs the whole story with a
//! timeline. `ask` sends flows to the service from the clients' centre and says which
//! centre answered each.

mod world;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

pub use world::{ns, HOSTS, SERVICE_ADDRESS, SERVICE_PORT};

use crate::error::Error;

/// What goes wrong building or driving the lab: the command that failed and its output.
pub type LabError = Error;

/// Arguments of `cpclink lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Where the lab keeps its configuration, keys, logs and pids.
    #[arg(long, global = true, default_value = "/run/cpclink-lab")]
    dir: PathBuf,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the lab and start the authority, three appliances and two service instances.
    Up {
        /// Print what the lab offers as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change what a centre's scheduler reports for the service.
    Metrics {
        /// The centre (dc2 or dc3 host the service).
        centre: String,
        /// CPU load, 0.0–1.0.
        #[arg(long)]
        cpu_load: Option<f64>,
        /// Compute delay, ms.
        #[arg(long, default_value_t = 1.0)]
        compute_delay_ms: f64,
        /// Stop reporting (the scheduler died): peers withdraw the site when its last
        /// advertisement expires.
        #[arg(long, conflicts_with = "cpu_load")]
        withdraw: bool,
    },
    /// Take a link down or bring it back up.
    Link {
        /// One end (dc1, dc2, dc3, t1, t2).
        a: String,
        /// The other end.
        b: String,
        /// `down` or `up`.
        state: String,
    },
    /// Send flows to the service from the clients' centre and say who answered.
    Ask {
        /// The first flow's UDP source port.
        #[arg(long, default_value_t = 40_000)]
        port: u16,
        /// Flows (consecutive source ports).
        #[arg(long, default_value_t = 10)]
        flows: u16,
        /// How long to wait for the answers, ms.
        #[arg(long, default_value_t = 1_000)]
        wait_ms: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole story with a live timeline (builds the lab if it is not up).
    Scenario,
    /// `cpclink ctl` against a centre's appliance, from its namespace, as the lab's admin
    /// (e.g. `cpclink lab ctl dc1 status`).
    Ctl {
        /// The centre (dc1, dc2, dc3), or `authority`.
        centre: String,
        /// What to ask (`status`, `services`, `explain echo`, `reload`, `--json` …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Stop every process and remove the namespaces and the lab directory.
    Down,
    /// A service instance (run inside a centre by `up`).
    #[command(hide = true)]
    Serve {
        /// The centre's name, the payload of every answer.
        #[arg(long)]
        centre: String,
    },
    /// Flows from inside the clients' centre (run by `ask`).
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        flows: u16,
        #[arg(long)]
        wait_ms: u64,
    },
}

/// Runs a command; its stdout, or an error naming it and what it printed.
pub fn sh(args: &[&str]) -> Result<String, Error> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| Error::Lab(format!("{}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(Error::Lab(format!(
            "{}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cpclink lab`.
pub fn run(args: LabArgs) -> Result<(), Error> {
    let lab = Lab { dir: args.dir };
    match args.command {
        LabCommand::Up { json } => {
            let summary = lab.up()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&summary).map_err(std::io::Error::from)?
                );
            } else {
                println!("{}", summary.describe());
            }
            Ok(())
        }
        LabCommand::Metrics {
            centre,
            cpu_load,
            compute_delay_ms,
            withdraw,
        } => lab.metrics(&centre, cpu_load, compute_delay_ms, withdraw),
        LabCommand::Link { a, b, state } => lab.link(&a, &b, &state),
        LabCommand::Ask {
            port,
            flows,
            wait_ms,
            json,
        } => {
            let answers = lab.ask_waiting(port, flows, wait_ms)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&answers).map_err(std::io::Error::from)?
                );
            } else {
                for (port, who) in &answers.by_port {
                    println!(
                        "flow from port {port}: {}",
                        who.as_deref().unwrap_or("no answer")
                    );
                }
                println!("{}", answers.summary());
            }
            Ok(())
        }
        LabCommand::Scenario => lab.scenario(),
        LabCommand::Ctl { centre, args } => lab.ctl(&centre, &args),
        LabCommand::Down => lab.down(),
        LabCommand::Serve { centre } => serve(&centre),
        LabCommand::Probe {
            port,
            flows,
            wait_ms,
        } => {
            let answers = probe(port, flows, Duration::from_millis(wait_ms))?;
            println!(
                "{}",
                serde_json::to_string(&answers).map_err(std::io::Error::from)?
            );
            Ok(())
        }
    }
}

/// What `lab up` prints.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The service's anycast address.
    pub service_address: String,
    /// Its UDP port.
    pub service_port: u16,
    /// The namespace clients run in.
    pub client_namespace: String,
    /// Every namespace of the lab.
    pub namespaces: Vec<String>,
    /// Where configuration, logs and pids are.
    pub dir: String,
    /// The authority's configuration (for `cpclink keymgr --config …`).
    pub authority_config: String,
    /// Each appliance's management API: where, the CA to trust, and tokens to try.
    pub apis: Vec<ApiAccess>,
}

/// How to reach one appliance's management API.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct ApiAccess {
    /// The appliance (the name its certificate carries).
    pub name: String,
    /// The namespace it is reachable from (`ip netns exec … cpclink ctl …`, or
    /// `cpclink lab ctl NAME …`).
    pub namespace: String,
    /// The API's URL.
    pub url: String,
    /// The CA certificate to trust.
    pub ca: String,
    /// A token with the viewer role.
    pub viewer_token: String,
    /// A token with the admin role.
    pub admin_token: String,
}

impl Summary {
    fn describe(&self) -> String {
        format!(
            "lab up: service {} at {}:{} hosted in cpclab-dc2 and cpclab-dc3; clients in {}\n\
             namespaces: {}\nlogs, configs and pids in {}\n\
             try: cpclink lab ask · cpclink lab metrics dc2 --cpu-load 0.9 · cpclink lab link dc1 t1 down · \
             cpclink keymgr --config {} status · cpclink lab down",
            world::SERVICE,
            self.service_address,
            self.service_port,
            self.client_namespace,
            self.namespaces.join(" "),
            self.dir,
            self.authority_config
        )
    }
}

/// Who answered each flow.
#[derive(Debug, Serialize, serde::Deserialize, Default)]
pub struct Answers {
    /// Source port → the centre that answered (None: no answer within a second).
    pub by_port: BTreeMap<u16, Option<String>>,
}

impl Answers {
    /// Flows answered by each centre, and unanswered ones.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for who in self.by_port.values() {
            *c.entry(who.clone().unwrap_or_else(|| "unanswered".into()))
                .or_insert(0) += 1;
        }
        c
    }

    fn summary(&self) -> String {
        self.counts()
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Lab {
    dir: PathBuf,
}

impl Lab {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn exe() -> Result<PathBuf, Error> {
        std::env::current_exe().map_err(|e| Error::Lab(format!("finding this program: {e}")))
    }

    /// Starts `args` in `node`'s namespace in the background, in its own process group so
    /// it outlives this command; output to `NAME.log`, pid to `NAME.pid`.
    fn spawn(&self, node: &str, name: &str, args: &[&str]) -> Result<(), Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns(node)])
            .arg(Self::exe()?)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Lab(format!("starting {name}: {e}")))?;
        std::fs::write(self.path(&format!("{name}.pid")), child.id().to_string())?;
        Ok(())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, log: &str, mut done: impl FnMut() -> bool) -> Result<(), Error> {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(Error::Lab(format!(
                    "gave up waiting for {what} after 60 s; see {}",
                    self.path(&format!("{log}.log")).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn keymgr(&self, args: &[&str]) -> Result<String, Error> {
        let exe = Self::exe()?;
        let config = self.path("authority.toml");
        let mut all = vec![
            exe.to_str().unwrap_or("cpclink"),
            "keymgr",
            "--config",
            config.to_str().unwrap_or_default(),
        ];
        all.extend_from_slice(args);
        sh(&all)
    }

    fn summary(&self) -> Summary {
        Summary {
            service_address: SERVICE_ADDRESS.into(),
            service_port: SERVICE_PORT,
            client_namespace: ns("dc1"),
            namespaces: world::CENTRES
                .iter()
                .chain(&world::TRANSITS)
                .map(|n| ns(n))
                .collect(),
            dir: self.dir.display().to_string(),
            authority_config: self.path("authority.toml").display().to_string(),
            apis: std::fs::read_to_string(self.path("apis.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default(),
        }
    }

    fn is_up(&self) -> bool {
        sh(&["ip", "netns", "list"]).is_ok_and(|l| l.lines().any(|n| n.starts_with(&ns("dc1"))))
    }

    fn up(&self) -> Result<Summary, Error> {
        if sh(&["id", "-u"])?.trim() != "0" {
            return Err(Error::Lab(
                "the lab needs root (network namespaces, TUN devices, seg6 routes)".into(),
            ));
        }
        if self.is_up() {
            return Err(Error::Lab(format!(
                "a lab is up already ({} exists); `cpclink lab down` removes it",
                ns("dc1")
            )));
        }
        // What a failed or killed lab left behind goes; a directory that is not a lab's
        // is not touched.
        if self.path("authority.toml").exists() {
            std::fs::remove_dir_all(&self.dir)?;
        } else if std::fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::Lab(format!(
                "{} holds files that are not a lab's; give another --dir",
                self.dir.display()
            )));
        }
        std::fs::create_dir_all(&self.dir)?;
        if let Err(e) = self.build() {
            // Everything stops, but the logs stay for the operator to read.
            let _ = self.teardown(false);
            return Err(Error::Lab(format!(
                "{e}\nthe lab was removed; its logs stay in {}",
                self.dir.display()
            )));
        }
        Ok(self.summary())
    }

    fn build(&self) -> Result<(), Error> {
        world::build()?;
        std::fs::write(self.path("kek"), hex::encode(random_bytes(32)?))?;
        std::fs::write(self.path("srh-hmac.key"), hex::encode(random_bytes(32)?))?;
        let mut apis = Vec::new();
        let digest = |t: &str| hex::encode(cpclink_appliance::api::token_digest(t));
        let mut access = |name: &str, namespace: String, url: String| -> Result<_, Error> {
            let (viewer, admin) = (
                hex::encode(random_bytes(16)?),
                hex::encode(random_bytes(16)?),
            );
            let tokens = [
                ("lab-viewer", "viewer", digest(&viewer)),
                ("lab-admin", "admin", digest(&admin)),
            ];
            apis.push(ApiAccess {
                name: name.to_owned(),
                namespace,
                url,
                ca: self.path("authority/ca.pem").display().to_string(),
                viewer_token: viewer,
                admin_token: admin,
            });
            Ok(tokens)
        };
        let tokens = access(
            cpclink_keymgr::pki::AUTHORITY_NAME,
            ns("dc1"),
            world::authority_api_url(),
        )?;
        std::fs::write(
            self.path("authority.toml"),
            world::authority_toml(&self.dir, &tokens),
        )?;
        std::fs::write(self.path("network.toml"), world::network_toml(&[]))?;
        for (host, load) in HOSTS.iter().zip([0.2, 0.5]) {
            std::fs::write(
                self.path(&format!("{host}-metrics.toml")),
                world::metrics_toml(load, 1.0),
            )?;
        }
        for centre in world::CENTRES {
            let tokens = access(centre, ns(centre), world::api_url(centre))?;
            std::fs::write(
                self.path(&format!("{centre}.toml")),
                world::appliance_toml(centre, &tokens),
            )?;
        }
        std::fs::write(
            self.path("apis.json"),
            serde_json::to_string(&apis).map_err(std::io::Error::from)?,
        )?;
        for centre in world::CENTRES {
            let n = world::number(centre);
            let token = self.keymgr(&[
                "token",
                "create",
                "--appliance",
                centre,
                "--centre",
                centre,
                "--prefix",
                &format!("10.{n}.0.0/24"),
            ])?;
            std::fs::write(self.path(&format!("{centre}.token")), token.trim())?;
        }
        let authority = self.path("authority.toml");
        self.spawn(
            "dc1",
            "authority",
            &[
                "keymgr",
                "run",
                "--config",
                authority.to_str().unwrap_or_default(),
            ],
        )?;
        self.wait_for("the authority", "authority", || {
            self.keymgr(&["status"]).is_ok()
        })?;
        for centre in world::CENTRES {
            let config = self.path(&format!("{centre}.toml"));
            self.spawn(
                centre,
                centre,
                &["run", "--config", config.to_str().unwrap_or_default()],
            )?;
        }
        for centre in world::CENTRES {
            self.wait_for(&format!("{centre}'s TUN device"), centre, || {
                world::ip(centre, &["link", "show", "cpc0"]).is_ok()
            })?;
            world::inner(centre)?;
        }
        for host in HOSTS {
            self.spawn(
                host,
                &format!("echo-{host}"),
                &["lab", "serve", "--centre", host],
            )?;
        }
        for centre in world::CENTRES {
            self.wait_for(
                &format!("{centre} keyed to every other centre"),
                centre,
                || {
                    let log = self.log(centre);
                    world::CENTRES
                        .iter()
                        .filter(|p| **p != centre)
                        .all(|p| log.contains(&format!("worker 0 sends to {p} with SA")))
                },
            )?;
        }
        // Placed once every host has advertised, and the hold-down after the first
        // choice has passed (the best of them is the choice then).
        self.wait_for("every host's metrics at dc1", "dc1", || {
            let log = self.log("dc1");
            HOSTS
                .iter()
                .all(|h| log.contains(&format!("service {}: {h} advertises", world::SERVICE)))
        })?;
        std::thread::sleep(Duration::from_millis(1_200));
        Ok(())
    }

    fn metrics(
        &self,
        centre: &str,
        cpu_load: Option<f64>,
        compute_delay_ms: f64,
        withdraw: bool,
    ) -> Result<(), Error> {
        if !HOSTS.contains(&centre) {
            return Err(Error::BadArgument {
                arg: "CENTRE",
                reason: format!("{centre:?} hosts no service; give dc2 or dc3"),
            });
        }
        let file = self.path(&format!("{centre}-metrics.toml"));
        if withdraw {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            println!("{centre} stopped reporting; peers withdraw it when its metrics expire");
            return Ok(());
        }
        let Some(load) = cpu_load.filter(|l| (0.0..=1.0).contains(l)) else {
            return Err(Error::BadArgument {
                arg: "--cpu-load",
                reason: "give a load from 0.0 to 1.0 (or --withdraw)".into(),
            });
        };
        // Written beside and renamed: the appliance never reads half a file.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, world::metrics_toml(load, compute_delay_ms))?;
        std::fs::rename(&tmp, &file)?;
        println!("{centre} reports cpu_load {load}, compute_delay_ms {compute_delay_ms}");
        Ok(())
    }

    fn links_down(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.path("links-down"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split_once(' ')?;
                Some((a.to_owned(), b.to_owned()))
            })
            .collect()
    }

    fn link(&self, a: &str, b: &str, state: &str) -> Result<(), Error> {
        if !world::is_link(a, b) {
            return Err(Error::BadArgument {
                arg: "A B",
                reason: format!(
                    "{a}–{b} is not a link of the lab; links: {}",
                    world::LINKS
                        .iter()
                        .map(|(x, y, _, _)| format!("{x}–{y}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let up = match state {
            "up" => true,
            "down" => false,
            other => {
                return Err(Error::BadArgument {
                    arg: "STATE",
                    reason: format!("{other:?}: give up or down"),
                })
            }
        };
        let mut down = self.links_down();
        down.retain(|(x, y)| !((x == a && y == b) || (x == b && y == a)));
        if !up {
            down.push((a.to_owned(), b.to_owned()));
        }
        for (node, dev) in [(a, b), (b, a)] {
            world::ip(
                node,
                &["link", "set", "dev", dev, if up { "up" } else { "down" }],
            )?;
        }
        world::underlay(a)?;
        world::underlay(b)?;
        std::fs::write(
            self.path("links-down"),
            down.iter()
                .map(|(x, y)| format!("{x} {y}\n"))
                .collect::<String>(),
        )?;
        // The network's telemetry tells every centre (a centre at one end also sees its
        // carrier go).
        let tmp = self.path("network.tmp");
        std::fs::write(&tmp, world::network_toml(&down))?;
        std::fs::rename(&tmp, self.path("network.toml"))?;
        println!("link {a}–{b} {state}");
        Ok(())
    }

    fn ask(&self, port: u16, flows: u16) -> Result<Answers, Error> {
        self.ask_waiting(port, flows, 1_000)
    }

    fn ask_waiting(&self, port: u16, flows: u16, wait_ms: u64) -> Result<Answers, Error> {
        let exe = Self::exe()?;
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &ns("dc1"),
            exe.to_str().unwrap_or("cpclink"),
            "lab",
            "probe",
            "--port",
            &port.to_string(),
            "--flows",
            &flows.to_string(),
            "--wait-ms",
            &wait_ms.to_string(),
        ])?;
        serde_json::from_str(out.trim())
            .map_err(|e| Error::Lab(format!("the probe printed {out:?}: {e}")))
    }

    fn down(&self) -> Result<(), Error> {
        self.teardown(true)
    }

    fn ctl(&self, centre: &str, args: &[String]) -> Result<(), Error> {
        let name = match centre {
            "authority" => cpclink_keymgr::pki::AUTHORITY_NAME,
            other => other,
        };
        let api = self
            .summary()
            .apis
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::BadArgument {
                arg: "CENTRE",
                reason: format!("{centre:?}: no such API in the lab (dc1, dc2, dc3, authority)"),
            })?;
        let status = Command::new("ip")
            .args(["netns", "exec", &api.namespace])
            .arg(Self::exe()?)
            .args([
                "ctl", "--url", &api.url, "--ca", &api.ca, "--name", &api.name,
            ])
            .args(["--token", &api.admin_token])
            .args(args)
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Lab(format!(
                "cpclink ctl in {} failed",
                api.namespace
            )))
        }
    }

    /// Stops the processes and removes the namespaces, and the directory when `all`.
    fn teardown(&self, all: bool) -> Result<(), Error> {
        let mut stopped = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(process) = name.strip_suffix(".pid") else {
                    continue;
                };
                if let Some(pid) = std::fs::read_to_string(e.path())
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    let _ = sh(&["kill", "-TERM", &pid.to_string()]);
                    stopped.push((process.to_owned(), pid));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, pid) in &stopped {
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = sh(&["kill", "-KILL", &pid.to_string()]);
            }
        }
        let namespaces = sh(&["ip", "netns", "list"]).unwrap_or_default();
        for n in namespaces
            .lines()
            .filter_map(|l| l.split_whitespace().next())
        {
            if n.starts_with(world::PREFIX) {
                let _ = sh(&["ip", "netns", "del", n]);
            }
        }
        if all && self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)?;
        }
        println!(
            "lab down: {} process(es) stopped, namespaces {}* removed",
            stopped.len(),
            world::PREFIX
        );
        Ok(())
    }

    fn scenario(&self) -> Result<(), Error> {
        let start = Instant::now();
        let say = |what: &str| println!("[{:>6.2} s] {what}", start.elapsed().as_secs_f64());
        if !self.is_up() {
            say("building the lab: 3 centres, 2 transits, the authority, 3 appliances");
            self.up()?;
        }
        say("lab up; dc2 reports load 0.2, dc3 0.5");
        self.metrics("dc2", Some(0.2), 1.0, false)?;
        self.metrics("dc3", Some(0.5), 1.0, false)?;
        std::thread::sleep(Duration::from_millis(800));
        let old = self.ask(41_000, 20)?;
        say(&format!("20 flows from dc1: {}", old.summary()));
        say("dc2's load rises to 0.95");
        self.metrics("dc2", Some(0.95), 1.0, false)?;
        for _ in 0..6 {
            self.ask(41_000, 20)?;
            std::thread::sleep(Duration::from_millis(250));
        }
        let kept = self.ask(41_000, 20)?;
        let new = self.ask(42_000, 20)?;
        say(&format!(
            "established flows: {} · new flows: {}",
            kept.summary(),
            new.summary()
        ));
        say("link dc1–t1 fails");
        let down_at = Instant::now();
        self.link("dc1", "t1", "down")?;
        let moved = self.until_answered(43_000, down_at)?;
        say(&format!(
            "traffic answered again {moved:?} after the failure (now via t2)"
        ));
        self.link("dc1", "t1", "up")?;
        say("link dc1–t1 back up");
        say("dc3 stops reporting (its scheduler died)");
        self.metrics("dc3", None, 1.0, true)?;
        std::thread::sleep(Duration::from_millis(4_000));
        let stale = self.ask(44_000, 20)?;
        say(&format!("after dc3's metrics expired: {}", stale.summary()));
        self.metrics("dc3", Some(0.5), 1.0, false)?;
        say("rotation ordered under traffic");
        let rotated = self.keymgr(&["rotate"])?;
        say(rotated.trim());
        let mut lost = 0;
        for i in 0..10 {
            let a = self.ask(45_000 + i * 10, 10)?;
            lost += a.counts().get("unanswered").copied().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(200));
        }
        say(&format!("100 flows during the rotation: {lost} unanswered"));
        say("dc3 is revoked");
        self.keymgr(&["revoke", "dc3"])?;
        std::thread::sleep(Duration::from_millis(1_000));
        let after = self.ask(46_000, 20)?;
        say(&format!("after the revocation: {}", after.summary()));
        say("done; `cpclink lab down` removes the lab");
        Ok(())
    }

    /// Sends a fresh flow, waiting 50 ms for its answer, until one is answered; how long
    /// that took.
    fn until_answered(&self, port: u16, since: Instant) -> Result<Duration, Error> {
        for i in 0..500u16 {
            let a = self.ask_waiting(port + i % 1000, 1, 50)?;
            if a.by_port.values().any(Option::is_some) {
                return Ok(since.elapsed());
            }
        }
        Err(Error::Lab(
            "no answer for 10 s after the link failed".into(),
        ))
    }
}

fn random_bytes(n: usize) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let mut b = vec![0; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// A service instance: answers every datagram on the service address with the centre's
/// name.
fn serve(centre: &str) -> Result<(), Error> {
    let socket = UdpSocket::bind((SERVICE_ADDRESS, SERVICE_PORT))?;
    let mut buf = [0u8; 2048];
    loop {
        let (_, from) = socket.recv_from(&mut buf)?;
        let _ = socket.send_to(centre.as_bytes(), from);
    }
}

/// `flows` flows from consecutive source ports, one datagram each; who answered each
/// within `wait`.
fn probe(port: u16, flows: u16, wait: Duration) -> Result<Answers, Error> {
    let service: SocketAddr = (
        SERVICE_ADDRESS
            .parse::<std::net::IpAddr>()
            .map_err(|e| Error::Lab(e.to_string()))?,
        SERVICE_PORT,
    )
        .into();
    let mut sockets = Vec::new();
    for p in port..port.saturating_add(flows) {
        let s = UdpSocket::bind(("0.0.0.0", p))?;
        s.send_to(format!("hello from port {p}").as_bytes(), service)?;
        sockets.push((p, s));
    }
    let deadline = Instant::now() + wait;
    let mut answers = Answers::default();
    let mut buf = [0u8; 64];
    for (p, s) in sockets {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let who = s
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
        answers.by_port.insert(p, who);
    }
    Ok(answers)
}
