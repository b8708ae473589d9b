//! `cpclink keymgr bench`: one authority and N simulated appliances (each a full key agent
//! with its own QUIC endpoint, certificate and redb store) on loopback, measuring enrolment
//! rate, how long a directory change and a rotation take to reach every appliance, and how
//! long a revocation takes to be enforced by each peer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::agent::{AgentOptions, KeyAgent};
use crate::authority::Authority;
use crate::config::{AuthorityConfig, StoreConfig};
use crate::directory::{Rule, Selector};
use crate::seal::{random_bytes, Kek};
use crate::{Error, Result};

/// Appliances per tenant: the default policy lets a tenant's appliances talk, so each
/// appliance's directory view holds this many entries.
const TENANT_SIZE: usize = 10;
/// How many appliances enrol at once.
const ENROL_PARALLELISM: usize = 64;
/// How long one phase may take before the run at that size is abandoned.
const PHASE_LIMIT: Duration = Duration::from_secs(180);

/// Arguments of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON object per size instead of text.
    #[arg(long)]
    pub json: bool,
    /// Simulated appliances in the first run.
    #[arg(long, default_value_t = 1000)]
    pub appliances: usize,
    /// Keep doubling the count up to this many (stops at the first size that fails).
    #[arg(long, default_value_t = 1000)]
    pub max: usize,
    /// Revocations to measure (each enforced by every other appliance).
    #[arg(long, default_value_t = 10)]
    pub revocations: usize,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Appliances enrolled, connected and followed through every phase.
    pub appliances: usize,
    /// Enrolments per second (token check, CSR signing, durable store commit, agent start).
    pub enrolments_per_sec: f64,
    /// Seconds until every appliance held a live QUIC feed from the authority.
    pub all_connected_secs: f64,
    /// Seconds for a policy change to be applied by every appliance.
    pub directory_change_secs: f64,
    /// Seconds for a rotation order to be obeyed (keys persisted) and acknowledged by all.
    pub rotation_secs: f64,
    /// Revocation enforcement time per peer, median, milliseconds.
    pub revocation_p50_ms: f64,
    /// Revocation enforcement time per peer, 99th percentile, milliseconds.
    pub revocation_p99_ms: f64,
    /// Revocation samples (peers × revocations).
    pub revocation_samples: usize,
}

/// Runs the benchmark and prints the results.
pub async fn run(args: &BenchArgs) -> Result<()> {
    let mut n = args.appliances.max(2);
    let mut reached = 0;
    loop {
        match run_once(n, args.revocations).await {
            Ok(report) => {
                reached = n;
                if args.json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    print_report(&report);
                }
            }
            Err(e) => {
                eprintln!("keymgr bench: {n} appliances: {e}");
                break;
            }
        }
        if n >= args.max {
            break;
        }
        n = (n * 2).min(args.max);
    }
    if !args.json {
        println!("largest size completed: {reached} appliances (target 10000)");
    }
    if reached == 0 {
        return Err(Error::Timeout("no size completed".into()));
    }
    Ok(())
}

fn print_report(r: &BenchReport) {
    println!(
        "keymgr bench: {} appliances, real QUIC (TLS 1.3, X25519MLKEM768) on loopback, redb stores",
        r.appliances
    );
    println!("  enrolment            {:>10.1} /s", r.enrolments_per_sec);
    println!("  all connected        {:>10.3} s", r.all_connected_secs);
    println!(
        "  directory change     {:>10.3} s to reach all",
        r.directory_change_secs
    );
    println!(
        "  rotation             {:>10.3} s to reach all (target <= 10 s at 10000)",
        r.rotation_secs
    );
    println!(
        "  revocation enforced  p50 {:.1} ms, p99 {:.1} ms over {} peer samples (target <= 1 s)",
        r.revocation_p50_ms, r.revocation_p99_ms, r.revocation_samples
    );
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(PHASE_LIMIT, fut)
        .await
        .map_err(|_| Error::Timeout(format!("{what} took over {PHASE_LIMIT:?}")))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Waits until every agent's directory version reaches `version`; returns each wait.
async fn wait_version(agents: &[KeyAgent], version: u64, start: Instant) -> Result<Vec<Duration>> {
    let mut waits = Vec::with_capacity(agents.len());
    for a in agents {
        let mut rx = a.directory_version();
        waits.push(tokio::spawn(async move {
            let _ = rx.wait_for(|v| *v >= version).await;
            start.elapsed()
        }));
    }
    let mut out = Vec::with_capacity(waits.len());
    for w in waits {
        out.push(w.await.map_err(|e| Error::Timeout(e.to_string()))?);
    }
    Ok(out)
}

async fn run_once(n: usize, revocations: usize) -> Result<BenchReport> {
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?;
    let kek_hex = hex::encode(*random_bytes::<32>()?);
    let kek_file = dir.path().join("kek");
    std::fs::write(&kek_file, &kek_hex).map_err(|e| Error::io("writing the bench KEK", e))?;
    let cfg = AuthorityConfig {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: dir.path().join("authority"),
        kek_file: kek_file.clone(),
        rotation_interval_secs: 86_400,
        cert_days: 1,
        token_ttl_secs: 600,
        store: StoreConfig::Redb { path: None },
        rules: Vec::new(),
    };
    let authority = Authority::start(&cfg).await?;
    let addr: SocketAddr = authority
        .local_addr()
        .ok_or_else(|| Error::Quic("authority has no address".into()))?;
    let ca = authority.ca_cert();

    // Enrolment: token, CSR, certificate, durable commit, agent store, feed.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(ENROL_PARALLELISM));
    let mut starting = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("sim-{i}");
        let token = authority.mint_token(
            &id,
            &format!("dc{}", i % 8),
            &format!("t{}", i / TENANT_SIZE),
            Duration::from_secs(600),
        )?;
        let opts = AgentOptions {
            appliance: id,
            authority: addr,
            listen: (Ipv4Addr::LOCALHOST, 0).into(),
            state_dir: dir.path().join(format!("agent-{i}")),
            kek: Kek::load(&kek_file, "kek_file")?,
            ca_cert: ca.clone(),
            token: Some(zeroize::Zeroizing::new(token)),
            endpoints: vec![format!("127.0.0.1:{}", 20_000 + i)],
            capabilities: vec!["psp-v1".into()],
            suite: cpclink_dataplane::crypto::Suite::AesGcm256,
            sa_lifetime: Duration::from_secs(3600),
            rekey_grace: Duration::from_millis(500),
        };
        let gate = gate.clone();
        starting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            KeyAgent::start(opts).await.map(|(agent, mut events)| {
                // The bench has no data plane: drain the events.
                tokio::spawn(async move { while events.recv().await.is_some() {} });
                agent
            })
        }));
    }
    let mut agents = Vec::with_capacity(n);
    for s in starting {
        agents.push(
            within("enrolment", s)
                .await?
                .map_err(|e| Error::Timeout(e.to_string()))??,
        );
    }
    let enrol_secs = started.elapsed().as_secs_f64();
    eprintln!("  {n} enrolled in {enrol_secs:.1} s");
    within("connecting", async {
        loop {
            if let crate::proto::AdminReply::Status { connected, .. } = authority.status().await {
                if connected >= n {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let all_connected_secs = started.elapsed().as_secs_f64();
    eprintln!("  {n} connected after {all_connected_secs:.1} s");

    // A policy change reaches everyone (each gets a fresh view).
    let start = Instant::now();
    let v = authority
        .set_rules(vec![
            Rule::same_tenant(),
            Rule {
                a: Selector {
                    appliance: Some("sim-0".into()),
                    ..Selector::default()
                },
                b: Selector {
                    appliance: Some("sim-1".into()),
                    ..Selector::default()
                },
                same_tenant: false,
            },
        ])
        .await?;
    let waits = within("directory change", wait_version(&agents, v, start)).await??;
    let directory_change_secs = waits
        .iter()
        .max()
        .copied()
        .unwrap_or_default()
        .as_secs_f64();

    // A rotation: every agent persists a new generation and acknowledges.
    let mut acks = authority.rotations();
    let before: Vec<u64> = {
        let mut e = Vec::with_capacity(n);
        for a in &agents {
            e.push(a.epoch().await);
        }
        e
    };
    let start = Instant::now();
    authority.rotate_all().await?;
    within("rotation", async {
        loop {
            {
                let m = acks.borrow_and_update();
                let done = agents
                    .iter()
                    .zip(&before)
                    .filter(|(a, e)| m.get(a.id()).is_some_and(|x| x > e))
                    .count();
                if done == n {
                    break;
                }
            }
            if acks.changed().await.is_err() {
                break;
            }
        }
    })
    .await?;
    let rotation_secs = start.elapsed().as_secs_f64();

    // Revocations: each enforced (applied and acted on) by every remaining appliance.
    let mut samples = Vec::new();
    let mut alive: Vec<KeyAgent> = agents.clone();
    for r in 0..revocations.min(n / 2) {
        let victim = alive.remove((r * 7919) % alive.len());
        let start = Instant::now();
        let v = authority.revoke(victim.id()).await?;
        let waits = within("revocation", wait_version(&alive, v, start)).await??;
        samples.extend(waits.iter().map(|d| d.as_secs_f64() * 1e3));
        victim.shutdown();
    }
    samples.sort_by(f64::total_cmp);

    for a in &agents {
        a.shutdown();
    }
    authority.shutdown();
    Ok(BenchReport {
        appliances: n,
        enrolments_per_sec: n as f64 / enrol_secs,
        all_connected_secs,
        directory_change_secs,
        rotation_secs,
        revocation_p50_ms: percentile(&samples, 0.5),
        revocation_p99_ms: percentile(&samples, 0.99),
        revocation_samples: samples.len(),
    })
}
