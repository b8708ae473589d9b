//! The tunnel against its peers: TCP from namespace A to B over a bare veth (the ceiling),
//! through `cpclink run` in each namespace (TUN, AES-GCM-256 PSP over UDP on the veth), and
//! through every userspace WireGuard found on PATH (boringtun-cli, wireguard-go, configured
//! over their UAPI sockets). Paths take turns in rounds so the machine's noise falls on all
//! of them alike. TCP is iperf3's when it is installed, otherwise a built-in single stream.
//! A peer that is missing, or does not come up, is reported as skipped with the reason.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::plot::{Plot, Series};
use super::report::{median, Figure, Stage, Table};
use super::{pick, Context, Outcome, Progress};
use crate::cpu::{CpuReading, CpuUse};
use crate::netns::Netns;

/// The CPU a path's measurements took and the data they carried, summed over its rounds.
#[derive(Debug, Clone, Default)]
struct CpuCost {
    used: CpuUse,
    gbit: f64,
}

impl CpuCost {
    /// Each of the path's own processes' average cores, side A's first: "0.62 + 0.71".
    fn process_cores(&self) -> Option<String> {
        let cores = self.used.process_cores();
        (!cores.is_empty()).then(|| {
            cores
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(" + ")
        })
    }

    fn gbit_per_core_second(&self) -> Option<f64> {
        (self.used.busy_core_secs > 0.0).then(|| self.gbit / self.used.busy_core_secs)
    }
}

/// A path TCP is measured through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// The namespaces joined directly: no tunnel, no encryption.
    Veth,
    /// `cpclink run` in each namespace.
    Cpclink,
    /// boringtun-cli (userspace WireGuard) in each namespace.
    Boringtun,
    /// wireguard-go (userspace WireGuard) in each namespace.
    WireguardGo,
}

impl PeerKind {
    /// The path's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Veth => "veth",
            Self::Cpclink => "cpclink",
            Self::Boringtun => "boringtun",
            Self::WireguardGo => "wireguard-go",
        }
    }

    /// Inner addresses of side A and B.
    fn addrs(self) -> [Ipv4Addr; 2] {
        let net = match self {
            Self::Veth => 98,
            Self::Cpclink => 200,
            Self::Boringtun => 97,
            Self::WireguardGo => 96,
        };
        [Ipv4Addr::new(10, net, 0, 1), Ipv4Addr::new(10, net, 0, 2)]
    }
}

/// A path and the program behind it, or why it cannot be measured here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Which path.
    pub kind: PeerKind,
    /// The program to run (none for veth), or the reason it is skipped.
    pub program: Result<Option<PathBuf>, String>,
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct TunnelPlan {
    /// TCP time per path per round.
    pub duration: Duration,
    /// Rounds.
    pub rounds: usize,
}

/// `name` on `path` (a PATH value), if it is there.
fn on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The paths to measure: veth always; cpclink when its binary was given and exists; each
/// userspace WireGuard when it is on `path`.
pub fn find_peers(cpclink: Option<&Path>, path: &OsStr) -> Vec<Peer> {
    let cpclink = match cpclink {
        Some(bin) if bin.is_file() => Ok(Some(bin.to_path_buf())),
        Some(bin) => Err(format!("{} does not exist", bin.display())),
        None => Err(
            "no cpclink binary to run in the namespaces (run the suite from `cpclink bench suite`)"
                .into(),
        ),
    };
    let wireguard = |program: &str| {
        on_path(program, path)
            .map(Some)
            .ok_or_else(|| format!("{program} not found on PATH"))
    };
    vec![
        Peer {
            kind: PeerKind::Veth,
            program: Ok(None),
        },
        Peer {
            kind: PeerKind::Cpclink,
            program: cpclink,
        },
        Peer {
            kind: PeerKind::Boringtun,
            program: wireguard("boringtun-cli"),
        },
        Peer {
            kind: PeerKind::WireguardGo,
            program: wireguard("wireguard-go"),
        },
    ]
}

/// Two namespaces joined by a veth, the peers' processes running in them.
struct Bench {
    children: Vec<Child>,
    /// A's end of the veth between the namespaces.
    veth_a: String,
    dir: tempfile::TempDir,
    // Dropped last: deleting a namespace ends what still runs inside only once killed.
    a: Netns,
    b: Netns,
}

impl Drop for Bench {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Bench {
    fn start() -> Result<Self, String> {
        let id = std::process::id();
        let a = Netns::create(&format!("cpctun-{id}-a")).map_err(|e| fail("namespace", e))?;
        let b = Netns::create(&format!("cpctun-{id}-b")).map_err(|e| fail("namespace", e))?;
        let (va, vb) = (format!("ctva{id}"), format!("ctvb{id}"));
        a.ip(&[
            "link",
            "add",
            &va,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            b.name(),
        ])
        .map_err(|e| fail("veth", e))?;
        let [addr_a, addr_b] = PeerKind::Veth.addrs();
        for (ns, dev, addr) in [(&a, &va, addr_a), (&b, &vb, addr_b)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])
                .and_then(|_| ns.ip(&["link", "set", dev, "up"]))
                .map_err(|e| fail("veth", e))?;
        }
        let dir = tempfile::tempdir().map_err(|e| fail("temporary directory", e))?;
        Ok(Self {
            children: Vec::new(),
            veth_a: va,
            dir,
            a,
            b,
        })
    }

    /// Starts `program args` inside `ns`, its output in `log` under the bench's directory.
    fn spawn(&mut self, ns: &str, program: &Path, args: &[&str], log: &str) -> Result<(), String> {
        let out = std::fs::File::create(self.dir.path().join(log)).map_err(|e| fail(log, e))?;
        let err = out.try_clone().map_err(|e| fail(log, e))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| fail(&program.display().to_string(), e))?;
        self.children.push(child);
        Ok(())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Brings a peer up; returns the address TCP goes to.
    fn bring_up(&mut self, kind: PeerKind, program: Option<&Path>) -> Result<Ipv4Addr, String> {
        let [inner_a, inner_b] = kind.addrs();
        let program = match (kind, program) {
            (PeerKind::Veth, _) => return Ok(inner_b),
            (_, Some(p)) => p.to_path_buf(),
            (_, None) => return Err("no program".into()),
        };
        match kind {
            PeerKind::Cpclink => self.cpclink(&program, inner_a, inner_b)?,
            _ => self.wireguard(kind, &program, inner_a, inner_b)?,
        }
        Ok(inner_b)
    }

    fn cpclink(
        &mut self,
        program: &Path,
        inner_a: Ipv4Addr,
        inner_b: Ipv4Addr,
    ) -> Result<(), String> {
        let [veth_a, veth_b] = PeerKind::Veth.addrs();
        let keys: Vec<String> = (0..4).map(|_| random_hex()).collect::<Result<_, _>>()?;
        let config = |listen: Ipv4Addr,
                      peer: Ipv4Addr,
                      prefix: Ipv4Addr,
                      own: &[String],
                      theirs: &[String]| {
            format!(
                "[appliance]\nlisten = \"{listen}:1000\"\nworkers = 1\nio = \"auto\"\n\
                 master_keys = [\"{}\", \"{}\"]\n\n[tun]\nname = \"cpc0\"\npath_mtu = 1500\n\n\
                 [[peers]]\nname = \"peer\"\nendpoint = \"{peer}:1000\"\nprefixes = [\"{prefix}/32\"]\n\
                 master_keys = [\"{}\", \"{}\"]\n",
                own[0], own[1], theirs[0], theirs[1]
            )
        };
        let files = [
            (
                config(veth_a, veth_b, inner_b, &keys[..2], &keys[2..]),
                "a.toml",
            ),
            (
                config(veth_b, veth_a, inner_a, &keys[2..], &keys[..2]),
                "b.toml",
            ),
        ];
        for (text, name) in &files {
            std::fs::write(self.dir.path().join(name), text).map_err(|e| fail(name, e))?;
        }
        for (side, ns) in [
            ("a", self.a.name().to_string()),
            ("b", self.b.name().to_string()),
        ] {
            let config = self.dir.path().join(format!("{side}.toml"));
            let config = config.to_string_lossy().into_owned();
            self.spawn(
                &ns,
                program,
                &["run", "--config", &config],
                &format!("cpclink-{side}.log"),
            )?;
        }
        for side in ["a", "b"] {
            let log = format!("cpclink-{side}.log");
            if !wait_for(Duration::from_secs(10), || {
                self.log(&log).contains("transmit SPIs")
            }) {
                let text = self.log(&log);
                let last = text.lines().last().unwrap_or("no output");
                return Err(format!("cpclink {side} did not come up: {last}"));
            }
        }
        for (ns, addr) in [(&self.a, inner_a), (&self.b, inner_b)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "cpc0"])
                .map_err(|e| fail("cpc0", e))?;
        }
        Ok(())
    }

    /// A userspace WireGuard in each namespace, keyed over its UAPI socket.
    fn wireguard(
        &mut self,
        kind: PeerKind,
        program: &Path,
        inner_a: Ipv4Addr,
        inner_b: Ipv4Addr,
    ) -> Result<(), String> {
        let [veth_a, veth_b] = PeerKind::Veth.addrs();
        let id = std::process::id();
        let dev = |side: &str| {
            format!(
                "wg{}{side}{id}",
                if kind == PeerKind::Boringtun {
                    "b"
                } else {
                    "g"
                }
            )
        };
        let (dev_a, dev_b) = (dev("a"), dev("b"));
        for (ns, name) in [
            (self.a.name().to_string(), &dev_a),
            (self.b.name().to_string(), &dev_b),
        ] {
            let args: Vec<&str> = match kind {
                PeerKind::Boringtun => vec![
                    name,
                    "--foreground",
                    "--disable-drop-privileges",
                    "--threads",
                    "1",
                ],
                _ => vec!["-f", name],
            };
            self.spawn(&ns, program, &args, &format!("{name}.log"))?;
        }
        let (key_a, key_b) = (wireguard_key()?, wireguard_key()?);
        // Every WireGuard runs in the same two namespaces at once: a UDP port each (the
        // second one on 51820 was refused with EADDRINUSE, errno -98).
        let port = match kind {
            PeerKind::Boringtun => 51820,
            _ => 51821,
        };
        for (ns, name, own, peer, endpoint, allowed, addr) in [
            (&self.a, &dev_a, &key_a, &key_b, veth_b, inner_b, inner_a),
            (&self.b, &dev_b, &key_b, &key_a, veth_a, inner_a, inner_b),
        ] {
            let socket = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
            if !wait_for(Duration::from_secs(5), || socket.exists()) {
                return Err(format!(
                    "{} made no UAPI socket: {}",
                    kind.name(),
                    self.log(&format!("{name}.log")).trim()
                ));
            }
            let set = format!(
                "set=1\nprivate_key={}\nlisten_port={port}\nreplace_peers=true\npublic_key={}\n\
                 endpoint={endpoint}:{port}\nreplace_allowed_ips=true\nallowed_ip={allowed}/32\n\n",
                own.0, peer.1
            );
            uapi(&socket, &set)?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", name])
                .and_then(|_| ns.ip(&["link", "set", name, "mtu", "1420", "up"]))
                .map_err(|e| fail(name, e))?;
        }
        Ok(())
    }
}

/// Polls `done` every 50 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

fn random_hex() -> Result<String, String> {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| "system random failed".to_string())?;
    Ok(hex::encode(key))
}

/// A WireGuard key pair as UAPI writes them: (private hex, public hex).
fn wireguard_key() -> Result<(String, String), String> {
    use aws_lc_rs::agreement::{PrivateKey, X25519};
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| "system random failed")?;
    let private = PrivateKey::from_private_key(&X25519, &raw).map_err(|_| "X25519 key refused")?;
    let public = private
        .compute_public_key()
        .map_err(|_| "X25519 public key failed")?;
    Ok((hex::encode(raw), hex::encode(public.as_ref())))
}

/// Sends one UAPI request and checks its `errno=0`.
fn uapi(socket: &Path, request: &str) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| fail("UAPI", e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| fail("UAPI", e))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail("UAPI", e))?;
    let mut reply = String::new();
    let mut buf = [0u8; 256];
    while !reply.contains("\n\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    if reply.contains("errno=0") {
        Ok(())
    } else {
        Err(format!("UAPI refused the configuration: {}", reply.trim()))
    }
}

/// How TCP is driven.
enum Load {
    /// iperf3, its server running in namespace B.
    Iperf3(PathBuf),
    /// One stream between sockets of this process.
    BuiltIn,
}

/// One TCP stream from A to `to` for `duration`: Gbit/s received.
fn measure(bench: &Bench, load: &Load, to: Ipv4Addr, duration: Duration) -> Result<f64, String> {
    match load {
        Load::Iperf3(iperf3) => {
            let secs = format!("{:.1}", duration.as_secs_f64().max(1.0));
            let out = Command::new("ip")
                .args(["netns", "exec", bench.a.name()])
                .arg(iperf3)
                .args(["-c", &to.to_string(), "-t", &secs, "-J"])
                .output()
                .map_err(|e| fail("iperf3", e))?;
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| fail("iperf3 output", e))?;
            json["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e9)
                .ok_or_else(|| format!("iperf3: {}", json["error"].as_str().unwrap_or("no result")))
        }
        Load::BuiltIn => builtin_tcp(bench, to, duration),
    }
}

/// A built-in TCP load: a listener in B, a sender in A writing 128 KiB at a time.
fn builtin_tcp(bench: &Bench, to: Ipv4Addr, duration: Duration) -> Result<f64, String> {
    let listener = bench
        .b
        .run(|| TcpListener::bind((to, 5202)))
        .map_err(|e| fail("namespace", e))?
        .map_err(|e| fail("listen", e))?;
    let stream = bench
        .a
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((to, 5202)), Duration::from_secs(3)))
        .map_err(|e| fail("namespace", e))?
        .map_err(|e| fail("connect", e))?;
    let (mut server, _) = listener.accept().map_err(|e| fail("accept", e))?;
    let _ = server.set_read_timeout(Some(Duration::from_millis(200)));
    let stop = AtomicBool::new(false);
    let received = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut buf = vec![0u8; 1 << 17];
            let (mut total, start) = (0u64, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                match server.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => continue,
                }
            }
            (total, start.elapsed())
        });
        let chunk = vec![0x5au8; 1 << 17];
        let mut stream = stream;
        let start = Instant::now();
        while start.elapsed() < duration {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(stream);
        reader.join().unwrap_or_default()
    });
    let (bytes, elapsed) = received;
    if bytes == 0 {
        return Err("no TCP data arrived".into());
    }
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e9)
}

/// The tunnel stage.
pub(super) fn stage(
    cx: &mut Context,
    stage: &mut Stage,
    progress: &Progress,
) -> Result<(), Outcome> {
    let path_env = std::env::var_os("PATH").unwrap_or_default();
    let peers = find_peers(cx.cpclink.as_deref(), &path_env);
    let mut skipped = Table::new("peers skipped", &["path", "reason"]);
    let mut skip = |kind: PeerKind, reason: &str| {
        skipped.push(vec![kind.name().to_string(), reason.to_string()]);
    };
    if !nix::unistd::geteuid().is_root() {
        for p in &peers {
            skip(p.kind, "needs root (network namespaces, TUN)");
        }
        stage.tables.push(skipped);
        return Err(Outcome::Skip(
            "needs root: network namespaces and TUN devices".into(),
        ));
    }
    if let Some(reason) = crate::netns::unavailable() {
        return Err(Outcome::Skip(reason));
    }
    let plan = TunnelPlan {
        duration: Duration::from_millis(pick(cx, 1000, 5000)),
        rounds: pick(cx, 2, 3),
    };
    let load = match on_path("iperf3", &path_env) {
        Some(p) => Load::Iperf3(p),
        None => Load::BuiltIn,
    };
    let mut bench = Bench::start().map_err(Outcome::Fail)?;
    cx.nics.push(super::machine::nic(
        Some(bench.a.name()),
        &bench.veth_a,
        "tunnel stage: the link every path crosses",
    ));
    if let Load::Iperf3(iperf3) = &load {
        let ns = bench.b.name().to_string();
        bench
            .spawn(&ns, iperf3, &["-s"], "iperf3-server.log")
            .map_err(Outcome::Fail)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    // Each live path, the address TCP goes to, and the processes that carry it.
    let mut live: Vec<(PeerKind, Ipv4Addr, Vec<u32>)> = Vec::new();
    for peer in &peers {
        match &peer.program {
            Err(reason) => skip(peer.kind, reason),
            Ok(program) => {
                let first = bench.children.len();
                match bench.bring_up(peer.kind, program.as_deref()) {
                    Ok(addr) => {
                        let pids = bench.children[first..].iter().map(Child::id).collect();
                        live.push((peer.kind, addr, pids));
                    }
                    Err(reason) => skip(peer.kind, &reason),
                }
            }
        }
    }
    progress.steps(plan.rounds * live.len());
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); live.len()];
    let mut cpu: Vec<CpuCost> = vec![CpuCost::default(); live.len()];
    let mut failed: Vec<Option<String>> = vec![None; live.len()];
    for round in 0..plan.rounds {
        for (i, (kind, addr, pids)) in live.iter().enumerate() {
            if failed[i].is_some() {
                progress.step(format!(
                    "round {}: {} failed before",
                    round + 1,
                    kind.name()
                ));
                continue;
            }
            let before = CpuReading::now(pids);
            match measure(&bench, &load, *addr, plan.duration) {
                Ok(gbps) => {
                    rounds[i].push(gbps);
                    if let (Some(then), Some(now)) = (before, CpuReading::now(pids)) {
                        cpu[i].used.add(&now.since(&then));
                        cpu[i].gbit += gbps * plan.duration.as_secs_f64();
                    }
                }
                Err(e) => failed[i] = Some(e),
            }
            progress.step(format!("round {} {}", round + 1, kind.name()));
        }
    }
    drop(bench);
    let mut table = Table::new(
        "TCP from namespace A to B, Gbit/s per round and the median; what it cost in CPU",
        &[
            "path",
            "rounds",
            "median Gbit/s",
            "cpclink / this",
            "cores busy",
            "tunnel processes' cores (A + B)",
            "Gbit per busy core-second",
            "cpclink / this, per core",
        ],
    );
    let median_of = |kind: PeerKind| {
        live.iter()
            .position(|(k, ..)| *k == kind)
            .filter(|&i| !rounds[i].is_empty())
            .map(|i| median(&rounds[i]))
    };
    let cpclink = median_of(PeerKind::Cpclink);
    let cpclink_per_core = live
        .iter()
        .position(|(k, ..)| *k == PeerKind::Cpclink)
        .and_then(|i| cpu[i].gbit_per_core_second());
    let mut series = Vec::new();
    let mut versus = Vec::new();
    let mut versus_per_core = Vec::new();
    for (i, (kind, ..)) in live.iter().enumerate() {
        if let Some(e) = &failed[i] {
            skip(*kind, &format!("measurement failed: {e}"));
            continue;
        }
        let m = median(&rounds[i]);
        let per_core = cpu[i].gbit_per_core_second();
        // cpclink over this path, in throughput and per busy core-second.
        let ratio = cpclink.map(|c| c / m);
        let ratio_per_core = cpclink_per_core.zip(per_core).map(|(c, p)| c / p);
        if *kind != PeerKind::Cpclink {
            versus.extend(ratio.map(|r| format!("{r:.2}× {}", kind.name())));
            versus_per_core.extend(ratio_per_core.map(|r| format!("{r:.2}× {}", kind.name())));
        }
        let two_places = |x: Option<f64>| x.map_or_else(String::new, |x| format!("{x:.2}"));
        table.push(vec![
            kind.name().to_string(),
            rounds[i]
                .iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            format!("{m:.2}"),
            two_places(ratio),
            two_places(cpu[i].used.busy_cores()),
            cpu[i].process_cores().unwrap_or_else(|| "none".to_string()),
            two_places(per_core),
            two_places(ratio_per_core),
        ]);
        stage.figures.push(Figure::from_rounds(
            format!("TCP {}", kind.name()),
            "Gbit/s",
            true,
            rounds[i].clone(),
        ));
        series.push(Series {
            name: kind.name().to_string(),
            points: rounds[i]
                .iter()
                .enumerate()
                .map(|(r, &g)| ((r + 1) as f64, g))
                .collect(),
            reference: *kind != PeerKind::Cpclink,
        });
    }
    stage.notes.push(format!(
        "One TCP stream ({}) for {} ms per path, {} rounds taking the paths in turn. cpclink: `cpclink run` \
         in each namespace, 1 worker, AES-GCM-256 PSP over UDP on the veth. WireGuard peers: 1 thread where \
         they take the option, keyed over their UAPI sockets. CPU: the machine's busy cores (user, system, \
         irq, softirq; /proc/stat) over each measurement, and the tunnel's own processes' share of them; \
         Gbit per busy core-second is the data carried over the CPU the whole machine spent, both TCP \
         ends included, so paths compare per core even when none had the cores to itself.",
        match &load {
            Load::Iperf3(_) => "iperf3",
            Load::BuiltIn => "built-in sender, iperf3 not found",
        },
        plan.duration.as_millis(),
        plan.rounds
    ));
    stage.tables.push(table);
    if !skipped.rows.is_empty() {
        stage.tables.push(skipped);
    }
    if let Some(c) = cpclink {
        cx.summary.push(format!(
            "Tunnel TCP: cpclink {c:.2} Gbit/s, {} (SPEC: ≥ 0.5× veth, ≥ 10× userspace WireGuard){}.",
            if versus.is_empty() {
                "nothing to compare with".to_string()
            } else {
                versus.join(", ")
            },
            match cpclink_per_core {
                Some(g) if !versus_per_core.is_empty() => format!(
                    "; per busy core-second {g:.2} Gbit, {}",
                    versus_per_core.join(", ")
                ),
                _ => String::new(),
            }
        ));
    }
    cx.plots.push((
        "tunnel.svg".into(),
        Plot {
            title: "TCP through each path, per round".into(),
            x_label: "round".into(),
            y_label: "Gbit/s".into(),
            log_x: false,
            series,
        },
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_peer_is_skipped_with_its_reason() {
        let empty = tempfile::tempdir().unwrap();
        let peers = find_peers(None, empty.path().as_os_str());
        let reason = |kind| {
            peers
                .iter()
                .find(|p| p.kind == kind)
                .unwrap()
                .program
                .clone()
        };
        assert_eq!(reason(PeerKind::Veth), Ok(None));
        assert_eq!(
            reason(PeerKind::Boringtun),
            Err("boringtun-cli not found on PATH".into())
        );
        assert_eq!(
            reason(PeerKind::WireguardGo),
            Err("wireguard-go not found on PATH".into())
        );
        assert!(reason(PeerKind::Cpclink)
            .unwrap_err()
            .contains("no cpclink binary"));
        // Present on PATH: found.
        let bin = empty.path().join("wireguard-go");
        std::fs::write(&bin, "").unwrap();
        let peers = find_peers(Some(&bin), empty.path().as_os_str());
        assert_eq!(peers[3].program, Ok(Some(bin.clone())));
        assert_eq!(peers[1].program, Ok(Some(bin)));
    }

    #[test]
    fn wireguard_keys_are_32_bytes_in_hex() {
        let (private, public) = wireguard_key().unwrap();
        assert_eq!((private.len(), public.len()), (64, 64));
        assert_ne!(private, public);
    }
}
