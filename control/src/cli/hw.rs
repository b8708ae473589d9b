//! `cpclink hw`: detect the NIC and CPU, show and apply a hardware profile, tune by measurement.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use cpclink_hw::apply::{self, Plan};
use cpclink_hw::cpuset::CpuList;
use cpclink_hw::ethtool::Ethtool;
use cpclink_hw::host::{self, CpuReport, Interface};
use cpclink_hw::tune::{self, SweepSpace, TuneRunner};
use cpclink_hw::udp_runner::UdpRunner;
use cpclink_hw::{DataplaneTuning, HwError, Profile, ProfileSet};

use super::engine_runner::EngineRunner;
use serde::Serialize;

/// Arguments of `cpclink hw`.
#[derive(Debug, Args)]
pub struct HwArgs {
    #[command(subcommand)]
    command: HwCommand,
}

#[derive(Debug, Subcommand)]
enum HwCommand {
    /// Show the CPU and every interface, its matching profile and what differs from it.
    Detect {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only this interface.
        #[arg(long)]
        dev: Option<String>,
        /// Directory of operator profiles (*.toml) added to the shipped ones.
        #[arg(long)]
        profile_dir: Option<PathBuf>,
    },
    /// Apply a profile's ethtool settings, MTU, IRQ affinity and RPS/XPS to an interface.
    Apply {
        /// Profile name.
        #[arg(long)]
        profile: String,
        /// Interface.
        #[arg(long)]
        dev: String,
        /// Print the difference and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply even if the profile is for another driver.
        #[arg(long)]
        force: bool,
        /// Directory of operator profiles (*.toml) added to the shipped ones.
        #[arg(long)]
        profile_dir: Option<PathBuf>,
    },
    /// Sweep batch sizes, GSO segment counts and worker counts; write a tuned profile.
    Tune {
        /// Interface to measure (its first IPv4 address is the target; `lo` for loopback).
        #[arg(long)]
        dev: String,
        /// Profile to start from (default: the one matching the interface).
        #[arg(long)]
        profile: Option<String>,
        /// Where to write the tuned profile (default: ./NAME.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Measurement window per trial, milliseconds.
        #[arg(long, default_value_t = 300)]
        trial_ms: u64,
        /// UDP payload per datagram, bytes.
        #[arg(long, default_value_t = 1400)]
        payload: usize,
        /// Batch sizes to try, comma separated.
        #[arg(long, value_delimiter = ',')]
        batches: Vec<u32>,
        /// GSO segment counts to try, comma separated.
        #[arg(long, value_delimiter = ',')]
        gso: Vec<u16>,
        /// Worker counts to try, comma separated.
        #[arg(long, value_delimiter = ',')]
        workers: Vec<usize>,
        /// Runs per point; the median is kept.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Directory of operator profiles (*.toml) added to the shipped ones.
        #[arg(long)]
        profile_dir: Option<PathBuf>,
        /// Skip the plain UDP baseline measured beside cpclink at every point.
        #[arg(long)]
        no_baseline: bool,
    },
    /// List the profiles (shipped and from --profile-dir), validating each.
    Profiles {
        /// Directory of operator profiles (*.toml) added to the shipped ones.
        #[arg(long)]
        profile_dir: Option<PathBuf>,
    },
    /// Validate profile files without installing them.
    Check {
        /// Profile files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Runs `cpclink hw`.
pub fn run(args: HwArgs) -> ExitCode {
    let result = match args.command {
        HwCommand::Detect {
            json,
            dev,
            profile_dir,
        } => detect(json, dev.as_deref(), profile_dir.as_deref()),
        HwCommand::Apply {
            profile,
            dev,
            dry_run,
            force,
            profile_dir,
        } => apply_profile(&profile, &dev, dry_run, force, profile_dir.as_deref()),
        HwCommand::Tune {
            dev,
            profile,
            out,
            trial_ms,
            payload,
            batches,
            gso,
            workers,
            repeats,
            profile_dir,
            no_baseline,
        } => {
            let opts = TuneOptions {
                trial_ms,
                payload,
                batches,
                gso,
                workers,
                repeats,
                baseline: !no_baseline,
            };
            tune_dev(&dev, profile.as_deref(), out, &opts, profile_dir.as_deref())
        }
        HwCommand::Profiles { profile_dir } => list(profile_dir.as_deref()),
        HwCommand::Check { files } => return check(&files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cpclink hw: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One interface in `detect`'s report.
#[derive(Debug, Serialize)]
struct InterfaceReport {
    #[serde(flatten)]
    interface: Interface,
    profile: Option<String>,
    dataplane: Option<DataplaneTuning>,
    plan: Option<Plan>,
}

#[derive(Debug, Serialize)]
struct DetectReport {
    cpu: CpuReport,
    interfaces: Vec<InterfaceReport>,
}

fn detect(json: bool, only: Option<&str>, dir: Option<&Path>) -> Result<(), HwError> {
    let profiles = ProfileSet::with_dir(dir)?;
    let cpu = host::cpu()?;
    let mut ethtool = Ethtool::open()?;
    let names = match only {
        Some(d) => vec![d.to_owned()],
        None => host::interface_names()?,
    };
    let mut interfaces = Vec::new();
    for name in names {
        let interface = match host::interface(&mut ethtool, &name) {
            Ok(i) => i,
            // Deleted between listing and reading (other software adds and removes links).
            Err(HwError::NoSuchInterface(_)) if only.is_none() => continue,
            Err(e) => return Err(e),
        };
        let matched = profiles.best_match(&interface.driver, interface.pci_ids());
        let dataplane =
            matched.map(|p| p.dataplane_tuning(&cpu.online, &cpu.numa_nodes, interface.numa_node));
        let plan = matched
            .map(|p| apply::plan(p, &interface, &cpu))
            .transpose()?;
        interfaces.push(InterfaceReport {
            profile: matched.map(|p| p.name.clone()),
            dataplane,
            plan,
            interface,
        });
    }
    let report = DetectReport { cpu, interfaces };
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| HwError::Encode {
            what: "detect report",
            message: e.to_string(),
        })?;
        println!("{text}");
    } else {
        print!("{}", render_detect(&report, &profiles));
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn render_detect(r: &DetectReport, profiles: &ProfileSet) -> String {
    let mut s = String::new();
    let c = &r.cpu;
    let _ = writeln!(s, "cpu: {}", c.model);
    let _ = writeln!(s, "  cores online: {} ({})", c.online, c.online.len());
    let nodes: Vec<String> = c
        .numa_nodes
        .iter()
        .map(|(id, cpus)| format!("node{id} {cpus}"))
        .collect();
    let _ = writeln!(
        s,
        "  numa nodes: {}",
        if nodes.is_empty() {
            "none reported".to_owned()
        } else {
            nodes.join(", ")
        }
    );
    let feats: Vec<String> = c
        .features
        .iter()
        .map(|f| {
            let agree = if f.cpuid == f.cpuinfo {
                String::new()
            } else {
                format!(
                    " (cpuid {}, cpuinfo {})",
                    yes_no(f.cpuid),
                    yes_no(f.cpuinfo)
                )
            };
            format!("{} {}{agree}", f.name, yes_no(f.cpuid && f.cpuinfo))
        })
        .collect();
    let _ = writeln!(s, "  crypto features: {}", feats.join(", "));
    for i in &r.interfaces {
        let n = &i.interface;
        let pci = match (n.pci, &n.pci_address) {
            (Some(p), Some(a)) => format!(", pci {:04x}:{:04x} at {a}", p.vendor, p.device),
            _ => String::new(),
        };
        let numa = n
            .numa_node
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        let max_mtu = n
            .link
            .max_mtu
            .map_or_else(|| "-".to_owned(), |v| v.to_string());
        let _ = writeln!(
            s,
            "\n{}: driver {}{pci}, numa node {numa}",
            n.name, n.driver
        );
        let _ = writeln!(
            s,
            "  mtu {} (max {max_mtu}), queues rx {} tx {}",
            n.link.mtu, n.rx_queues, n.tx_queues
        );
        if let Some(f) = &n.features {
            let shown: Vec<String> = [
                "tx-udp-segmentation",
                "rx-gro",
                "rx-udp-gro-forwarding",
                "rx-checksum",
                "tx-checksum-ip-generic",
            ]
            .iter()
            .map(|name| {
                let fixed = if f.changeable.contains(*name) {
                    ""
                } else {
                    " [fixed]"
                };
                format!("{name} {}{fixed}", if f.is_on(name) { "on" } else { "off" })
            })
            .collect();
            let _ = writeln!(s, "  features: {}", shown.join(", "));
            let _ = writeln!(
                s,
                "  crypto offload: ipsec (esp-hw-offload) {}, tls (tls-hw-tx-offload) {}",
                yes_no(f.changeable.contains("esp-hw-offload") || f.is_on("esp-hw-offload")),
                yes_no(f.changeable.contains("tls-hw-tx-offload") || f.is_on("tls-hw-tx-offload"))
            );
        }
        let rings = n.rings.map_or_else(
            || "not supported".to_owned(),
            |r| {
                format!(
                    "rx {}/{} tx {}/{} (current/max)",
                    r.rx, r.rx_max, r.tx, r.tx_max
                )
            },
        );
        let channels = n.channels.map_or_else(
            || "not supported".to_owned(),
            |c| format!("combined {}/{}", c.combined, c.combined_max),
        );
        let _ = writeln!(s, "  rings: {rings}; channels: {channels}");
        if let Some(c) = n.coalesce {
            let mut parts = Vec::new();
            if let Some(v) = c.adaptive_rx {
                parts.push(format!("adaptive-rx {}", if v { "on" } else { "off" }));
            }
            if let Some(v) = c.adaptive_tx {
                parts.push(format!("adaptive-tx {}", if v { "on" } else { "off" }));
            }
            if let Some(v) = c.rx_usecs {
                parts.push(format!("rx-usecs {v}"));
            }
            if let Some(v) = c.tx_usecs {
                parts.push(format!("tx-usecs {v}"));
            }
            let _ = writeln!(
                s,
                "  coalesce: {}",
                if parts.is_empty() {
                    "nothing reported".to_owned()
                } else {
                    parts.join(", ")
                }
            );
        }
        if !n.queue_irqs.is_empty() {
            let irqs: Vec<String> = n.queue_irqs.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  queue irqs: {}", irqs.join(" "));
        }
        match (&i.profile, &i.dataplane, &i.plan) {
            (Some(name), Some(d), Some(plan)) => {
                let desc = profiles
                    .get(name)
                    .map(|p| p.description.clone())
                    .unwrap_or_default();
                let _ = writeln!(s, "  profile: {name} ({desc})");
                let _ = writeln!(
                    s,
                    "  dataplane: {} workers on cores {}, batch {}, gso {}, io_uring {} entries / {} buffers, {}",
                    d.workers,
                    CpuList::of(&d.worker_cores),
                    d.batch,
                    d.gso_segments,
                    d.io_uring_entries,
                    d.provided_buffers,
                    d.crypto_backend
                );
                if plan.is_empty() {
                    let _ = writeln!(s, "  differences: none");
                } else {
                    let _ = writeln!(s, "  differences (live -> profile):");
                    for line in plan.to_string().lines().skip(1) {
                        let _ = writeln!(s, "  {line}");
                    }
                }
            }
            _ => {
                let _ = writeln!(s, "  profile: none matches driver {}", n.driver);
            }
        }
    }
    s
}

fn apply_profile(
    name: &str,
    dev: &str,
    dry_run: bool,
    force: bool,
    dir: Option<&Path>,
) -> Result<(), HwError> {
    let profiles = ProfileSet::with_dir(dir)?;
    let profile = profiles.get(name)?;
    let cpu = host::cpu()?;
    let mut ethtool = Ethtool::open()?;
    let iface = host::interface(&mut ethtool, dev)?;
    if profile
        .match_score(&iface.driver, iface.pci_ids())
        .is_none()
        && !force
    {
        return Err(HwError::Unsupported(vec![format!(
            "match.driver: profile {name} is for {}, {dev} runs {} (use --force to apply it anyway)",
            profile.matcher.driver, iface.driver
        )]));
    }
    let plan = apply::plan(profile, &iface, &cpu)?;
    print!("{plan}");
    if dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    if plan.is_empty() {
        return Ok(());
    }
    apply::apply(&mut ethtool, profile, &plan, &cpu)?;
    println!("applied {} changes to {dev}", plan.changes.len());
    Ok(())
}

#[derive(Debug)]
struct TuneOptions {
    trial_ms: u64,
    payload: usize,
    batches: Vec<u32>,
    gso: Vec<u16>,
    workers: Vec<usize>,
    repeats: usize,
    baseline: bool,
}

fn tune_dev(
    dev: &str,
    base: Option<&str>,
    out: Option<PathBuf>,
    o: &TuneOptions,
    dir: Option<&Path>,
) -> Result<(), HwError> {
    let profiles = ProfileSet::with_dir(dir)?;
    let cpu = host::cpu()?;
    let mut ethtool = Ethtool::open()?;
    let iface = host::interface(&mut ethtool, dev)?;
    let base: &Profile = match base {
        Some(name) => profiles.get(name)?,
        None => profiles
            .best_match(&iface.driver, iface.pci_ids())
            .ok_or_else(|| HwError::UnknownProfile {
                name: format!("<match for {dev} ({})>", iface.driver),
                known: "pass --profile NAME".to_owned(),
            })?,
    };
    let mut space = SweepSpace::for_cores(cpu.online.len());
    if !o.batches.is_empty() {
        space.batches.clone_from(&o.batches);
    }
    if !o.gso.is_empty() {
        space.gso_segments.clone_from(&o.gso);
    }
    if !o.workers.is_empty() {
        space.workers.clone_from(&o.workers);
    }
    space.repeats = o.repeats.max(1);
    let addr = UdpRunner::address_of(dev)?;
    let mut runner = EngineRunner::new(
        dev,
        addr,
        o.payload,
        Duration::from_millis(o.trial_ms),
        o.baseline,
    )?;
    println!(
        "tune {dev} from profile {}: {}",
        base.name,
        runner.describe()
    );
    println!(
        "{} points x {} runs of {} ms (median kept), payload {} B, host {} ({} cores)",
        space.trials().len(),
        space.repeats,
        o.trial_ms,
        o.payload,
        cpu.model,
        cpu.online.len()
    );
    println!(
        "{:>6} {:>4} {:>8} {:>9} {:>8} {:>9} {:>9}",
        "batch", "gso", "workers", "Gbit/s", "Mpps", "udp Gb/s", "cpc/udp"
    );
    let load_before = tune::load_average().unwrap_or(f64::NAN);
    let results = tune::sweep(&mut runner, &space, |r| {
        let (udp, ratio) = match r.udp_gbps {
            Some(u) => (
                format!("{u:.2}"),
                format!("{:.2}", r.gbps / u.max(f64::MIN_POSITIVE)),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:>6} {:>4} {:>8} {:>9.2} {:>8.3} {:>9} {:>9}",
            r.batch, r.gso_segments, r.workers, r.gbps, r.mpps, udp, ratio
        );
    })?;
    let load_after = tune::load_average().unwrap_or(f64::NAN);
    println!(
        "host load average (1 min): {load_before:.2} before, {load_after:.2} after, on {} cores",
        cpu.online.len()
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Some(tuned) = tune::tuned_profile(
        base,
        dev,
        &runner,
        &space,
        results,
        [load_before, load_after],
        now,
    ) else {
        return Err(HwError::InvalidArgument(
            "tune: nothing to sweep (--batches, --gso and --workers must not be empty)".to_owned(),
        ));
    };
    let text = tune::render(&tuned).map_err(|e| HwError::Encode {
        what: "tuned profile",
        message: e.to_string(),
    })?;
    // Whatever was written must load again as a valid profile.
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{}.toml", tuned.name)));
    Profile::parse(&path.display().to_string(), &text)?;
    std::fs::write(&path, &text).map_err(|e| HwError::Io {
        path: path.clone(),
        source: e,
    })?;
    if let Some(t) = &tuned.tuned {
        let b = t.best;
        println!(
            "best: batch {}, gso {}, workers {}: {:.2} Gbit/s, {:.3} Mpps",
            b.batch, b.gso_segments, b.workers, b.gbps, b.mpps
        );
    }
    println!("wrote {}", path.display());
    Ok(())
}

fn list(dir: Option<&Path>) -> Result<(), HwError> {
    let profiles = ProfileSet::with_dir(dir)?;
    for p in profiles.all() {
        let ids: Vec<String> = p
            .matcher
            .pci_devices
            .iter()
            .map(|d| format!("{d:04x}"))
            .collect();
        let pci = match p.matcher.pci_vendor {
            Some(v) if ids.is_empty() => format!(" pci {v:04x}:*"),
            Some(v) => format!(" pci {v:04x}:{{{}}}", ids.join(",")),
            None => String::new(),
        };
        println!(
            "{:14} driver {}{pci}  {}",
            p.name, p.matcher.driver, p.description
        );
    }
    Ok(())
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for f in files {
        match Profile::load(f) {
            Ok(p) => println!("{}: ok ({})", f.display(), p.name),
            Err(e) => {
                eprintln!("{e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}
