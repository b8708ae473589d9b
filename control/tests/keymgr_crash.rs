//! Crash safety of the key plane: the authority and a key agent run as real `cpclink`
//! processes and are killed with SIGKILL at random points of a loop of rotations and SA
//! grants. Afterwards no SPI was granted twice, no enrolled appliance or key generation was
//! lost, and the audit chain verifies.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
use cpclink_keymgr::authority::admin_request;
use cpclink_keymgr::pki::cert_from_pem;
use cpclink_keymgr::proto::{AdminReply, AdminRequest};
use cpclink_keymgr::seal::Kek;

const ITERATIONS: usize = 60;

fn cpclink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cpclink"))
}

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A xorshift generator: the seed is printed so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Daemon {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn new(args: &[&str], log: PathBuf) -> Self {
        let mut d = Self {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            log,
            child: None,
        };
        d.start();
        d
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            cpclink()
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// SIGKILL: no chance to flush or clean up.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn status(state: &Path) -> Option<(usize, u64)> {
    match admin_request(state, &AdminRequest::Status).await {
        Ok(AdminReply::Status {
            appliances,
            rotation,
            ..
        }) => Some((appliances, rotation)),
        _ => None,
    }
}

async fn wait_authority(state: &Path) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status(state).await {
            return s;
        }
        if Instant::now() >= deadline {
            let log =
                std::fs::read_to_string(state.with_file_name("authority.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "authority did not come up; the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token(config: &Path, appliance: &str) -> String {
    let out = cpclink()
        .args(["keymgr", "--config"])
        .arg(config)
        .args([
            "token",
            "create",
            "--appliance",
            appliance,
            "--centre",
            "dc1",
            "--tenant",
            "acme",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[derive(Default)]
struct Ledger {
    spis: HashSet<u32>,
    grants: usize,
    max_epoch: u64,
}

impl Ledger {
    fn record(&mut self, spi: u32, epoch: u64) {
        assert!(self.spis.insert(spi), "SPI {spi:#x} was granted twice");
        assert!(
            epoch >= self.max_epoch,
            "grant under epoch {epoch} after epoch {} was seen: a key generation was lost",
            self.max_epoch
        );
        self.max_epoch = self.max_epoch.max(epoch);
        self.grants += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_rotations_and_grants_loses_nothing() {
    let seed = std::env::var("CPCLINK_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let kek = root.join("kek");
    std::fs::write(&kek, "2a".repeat(32)).unwrap();
    let auth_state = root.join("authority");
    let auth_addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_udp_port()).into();
    let auth_cfg = root.join("authority.toml");
    std::fs::write(
        &auth_cfg,
        format!(
            "listen = \"{auth_addr}\"\nstate_dir = \"{}\"\nkek_file = \"{}\"\n",
            auth_state.display(),
            kek.display()
        ),
    )
    .unwrap();

    // Tokens first: this also creates the CA the agent config points at.
    let b_token = root.join("b.token");
    std::fs::write(&b_token, token(&auth_cfg, "b")).unwrap();
    let a_token = token(&auth_cfg, "a");
    let mut authority = Daemon::new(
        &["keymgr", "run", "--config", auth_cfg.to_str().unwrap()],
        root.join("authority.log"),
    );
    wait_authority(&auth_state).await;

    let b_addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_udp_port()).into();
    let b_cfg = root.join("b.toml");
    std::fs::write(
        &b_cfg,
        format!(
            "appliance = \"b\"\nauthority = \"{auth_addr}\"\nlisten = \"{b_addr}\"\nstate_dir = \"{}\"\nkek_file = \"{}\"\nca_cert = \"{}\"\ntoken_file = \"{}\"\nrekey_grace_ms = 200\n",
            root.join("b").display(),
            kek.display(),
            auth_state.join("ca.pem").display(),
            b_token.display()
        ),
    )
    .unwrap();
    let mut agent_b = Daemon::new(
        &["keymgr", "agent", "--config", b_cfg.to_str().unwrap()],
        root.join("b.log"),
    );

    // The peer that asks b for SAs lives in this process and is never killed.
    let ca = cert_from_pem(&std::fs::read_to_string(auth_state.join("ca.pem")).unwrap()).unwrap();
    let (a, _a_events) = KeyAgent::start(AgentOptions {
        appliance: "a".into(),
        authorities: vec![auth_addr],
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: root.join("a"),
        kek: Kek::load(&kek, "kek_file").unwrap(),
        ca_cert: ca,
        token: Some(zeroize::Zeroizing::new(a_token)),
        endpoints: vec![],
        capabilities: vec![],
        prefixes: vec![],
        suite: cpclink_dataplane::crypto::Suite::AesGcm256,
        sa_lifetime: Duration::from_secs(3600),
        rekey_grace: Duration::from_millis(200),
    })
    .await
    .unwrap();

    let mut ledger = Ledger::default();
    // Wait for b to enrol and reach a's directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(g) = a.request_sa("b").await {
            ledger.record(g.spi.0, g.epoch);
            break;
        }
        assert!(Instant::now() < deadline, "b never granted an SA");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut kills = (0, 0);
    let mut max_rotation = 0;
    for _ in 0..ITERATIONS {
        // A burst of grants and maybe a rotation, with a kill somewhere inside it.
        let a2 = a.clone();
        let grants = rng.below(6) + 1;
        let burst = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..grants {
                if let Ok(g) = a2.request_sa("b").await {
                    got.push((g.spi.0, g.epoch));
                }
            }
            got
        });
        if rng.below(2) == 0 {
            if let Ok(AdminReply::Done(r)) = admin_request(&auth_state, &AdminRequest::Rotate).await
            {
                max_rotation = max_rotation.max(r);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        let victim = rng.below(4);
        if victim == 0 || victim == 2 {
            authority.kill();
            kills.0 += 1;
        }
        if victim == 1 || victim == 2 {
            agent_b.kill();
            kills.1 += 1;
        }
        // Restart what was killed while the burst may still be running, then collect it.
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        if authority.child.is_none() {
            authority.start();
        }
        if agent_b.child.is_none() {
            agent_b.start();
        }
        let (_, rotation) = wait_authority(&auth_state).await;
        assert!(rotation >= max_rotation, "rotation counter went back");
        for (spi, epoch) in burst.await.unwrap() {
            ledger.record(spi, epoch);
        }
    }

    // Final crash of both, then the checks.
    authority.kill();
    agent_b.kill();
    authority.start();
    agent_b.start();
    let (appliances, rotation) = wait_authority(&auth_state).await;
    assert_eq!(appliances, 2, "an enrolled appliance was lost");
    assert!(rotation >= max_rotation);
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = loop {
        if let Ok(g) = a.request_sa("b").await {
            break g;
        }
        assert!(Instant::now() < deadline, "b did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ledger.record(last.spi.0, last.epoch);
    eprintln!(
        "{} grants, {} authority kills, {} agent kills, {} rotations ordered, b at epoch {}",
        ledger.grants, kills.0, kills.1, rotation, ledger.max_epoch
    );
    assert!(
        ledger.grants > ITERATIONS,
        "too few grants to mean anything"
    );

    authority.kill();
    let verify = cpclink()
        .args(["keymgr", "--config"])
        .arg(&auth_cfg)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "audit chain broken: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    a.shutdown();
}
