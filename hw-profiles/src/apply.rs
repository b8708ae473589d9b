//! The difference between a profile and a live device, and carrying it out.
//!
//! [`plan`] compares and never changes anything; [`apply`] refuses the whole plan if any
//! part cannot be done, otherwise changes the device and reads it back to confirm.

use std::path::PathBuf;

use serde::Serialize;

use crate::cpuset::CpuList;
use crate::error::{HwError, Result};
use crate::ethtool::{CoalesceChange, Ethtool};
use crate::host::{self, CpuReport, Interface};
use crate::profile::Profile;

/// One setting that differs between profile and device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Profile field (`rings.rx`, `offloads.rx-udp-gro-forwarding`, `cpu.rps.rx-0`).
    pub field: String,
    /// Live value.
    pub live: String,
    /// Value the profile asks for.
    pub profile: String,
    #[serde(skip)]
    action: Action,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Mtu(u32),
    Feature(String, bool),
    RingRx(u32),
    RingTx(u32),
    Channels(u32),
    Coalesce(CoalesceChange),
    Write(PathBuf, String),
}

/// Everything `apply` would do to one device, and what it cannot do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Interface.
    pub dev: String,
    /// Profile name.
    pub profile: String,
    /// Worker cores the layout resolves to on this host.
    pub worker_cores: Vec<usize>,
    /// Settings to change.
    pub changes: Vec<Change>,
    /// Settings the device cannot take, each a sentence naming the field.
    pub unsupported: Vec<String>,
}

impl Plan {
    /// Whether there is nothing to change and nothing refused.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.unsupported.is_empty()
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return writeln!(f, "{}: profile {}: no changes", self.dev, self.profile);
        }
        writeln!(
            f,
            "{}: profile {} (worker cores {}):",
            self.dev,
            self.profile,
            CpuList::of(&self.worker_cores)
        )?;
        let width = self
            .changes
            .iter()
            .map(|c| c.field.len())
            .max()
            .unwrap_or(0);
        for c in &self.changes {
            writeln!(f, "  {:width$}  {} -> {}", c.field, c.live, c.profile)?;
        }
        for u in &self.unsupported {
            writeln!(f, "  unsupported: {u}")?;
        }
        Ok(())
    }
}

/// A CPU set for the diff: the cpulist, or `none`.
fn cpus(l: &CpuList) -> String {
    if l.is_empty() {
        "none".to_owned()
    } else {
        l.to_string()
    }
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_owned()
}

/// Compares `profile` with the live device `iface` on a host with `cpu`.
pub fn plan(profile: &Profile, iface: &Interface, cpu: &CpuReport) -> Result<Plan> {
    let dev = &iface.name;
    let driver = &iface.driver;
    let mut changes = Vec::new();
    let mut unsupported = Vec::new();
    let mut change = |field: String, live: String, wanted: String, action| {
        changes.push(Change {
            field,
            live,
            profile: wanted,
            action,
        })
    };

    if let Some(mtu) = profile.link.mtu {
        match iface.link.max_mtu {
            Some(max) if mtu > max => {
                unsupported.push(format!("link.mtu: {mtu} exceeds {dev}'s maximum {max}"))
            }
            _ if mtu != iface.link.mtu => change(
                "link.mtu".into(),
                iface.link.mtu.to_string(),
                mtu.to_string(),
                Action::Mtu(mtu),
            ),
            _ => {}
        }
    }

    for (name, &want) in &profile.offloads {
        let field = format!("offloads.{name}");
        let Some(f) = &iface.features else {
            unsupported.push(format!(
                "{field}: {dev} ({driver}) reports no features over ethtool netlink"
            ));
            continue;
        };
        let live = f.is_on(name);
        if live == want {
            continue;
        }
        if f.fixed.contains(name) || !f.changeable.contains(name) {
            unsupported.push(format!(
                "{field}: {dev} ({driver}) has it fixed {}; set it to {live} or remove it",
                on_off(live)
            ));
        } else {
            change(
                field,
                on_off(live),
                on_off(want),
                Action::Feature(name.clone(), want),
            );
        }
    }

    for (field, want, ring) in [
        ("rings.rx", profile.rings.rx, true),
        ("rings.tx", profile.rings.tx, false),
    ] {
        let Some(want) = want else { continue };
        let Some(r) = iface.rings else {
            unsupported.push(format!(
                "{field}: {dev} ({driver}) has no ring parameters (ethtool -g is not supported)"
            ));
            continue;
        };
        let (live, max) = if ring {
            (r.rx, r.rx_max)
        } else {
            (r.tx, r.tx_max)
        };
        if want > max {
            unsupported.push(format!("{field}: {want} exceeds {dev}'s maximum {max}"));
        } else if want != live {
            let action = if ring {
                Action::RingRx(want)
            } else {
                Action::RingTx(want)
            };
            change(field.into(), live.to_string(), want.to_string(), action);
        }
    }

    if let Some(want) = profile.channels.combined {
        match iface.channels {
            None => unsupported.push(format!("channels.combined: {dev} ({driver}) has no channel parameters (ethtool -l is not supported)")),
            Some(c) if c.combined_max == 0 => unsupported.push(format!("channels.combined: {dev} ({driver}) has no combined channels")),
            Some(c) if want > c.combined_max => unsupported.push(format!("channels.combined: {want} exceeds {dev}'s maximum {}", c.combined_max)),
            Some(c) if want != c.combined => {
                change("channels.combined".into(), c.combined.to_string(), want.to_string(), Action::Channels(want));
            }
            Some(_) => {}
        }
    }

    let pc = &profile.coalesce;
    let lc = iface.coalesce.unwrap_or_default();
    let flags = [
        ("coalesce.adaptive_rx", pc.adaptive_rx, lc.adaptive_rx),
        ("coalesce.adaptive_tx", pc.adaptive_tx, lc.adaptive_tx),
    ];
    for (field, want, live) in flags {
        let Some(want) = want else { continue };
        match live {
            None => unsupported.push(format!("{field}: {dev} ({driver}) does not support it")),
            Some(live) if live != want => {
                let mut c = CoalesceChange::default();
                if field.ends_with("rx") {
                    c.adaptive_rx = Some(want);
                } else {
                    c.adaptive_tx = Some(want);
                }
                change(
                    field.into(),
                    on_off(live),
                    on_off(want),
                    Action::Coalesce(c),
                );
            }
            Some(_) => {}
        }
    }
    for (field, want, live) in [
        ("coalesce.rx_usecs", pc.rx_usecs, lc.rx_usecs),
        ("coalesce.tx_usecs", pc.tx_usecs, lc.tx_usecs),
    ] {
        let Some(want) = want else { continue };
        match live {
            None => unsupported.push(format!("{field}: {dev} ({driver}) does not support it")),
            Some(live) if live != want => {
                let mut c = CoalesceChange::default();
                if field == "coalesce.rx_usecs" {
                    c.rx_usecs = Some(want);
                } else {
                    c.tx_usecs = Some(want);
                }
                change(
                    field.into(),
                    live.to_string(),
                    want.to_string(),
                    Action::Coalesce(c),
                );
            }
            Some(_) => {}
        }
    }

    let cores = profile.worker_cores(&cpu.online, &cpu.numa_nodes, iface.numa_node);
    if profile.cpu.irq_affinity {
        for (i, irq) in iface.queue_irqs.iter().enumerate() {
            let want = CpuList::single(cores[i % cores.len()]);
            let path = PathBuf::from(format!("/proc/irq/{irq}/smp_affinity_list"));
            let live = CpuList::parse(&host::read(&path)?).unwrap_or_default();
            if live != want {
                change(
                    format!("cpu.irq_affinity.irq{irq}"),
                    cpus(&live),
                    cpus(&want),
                    Action::Write(path, want.to_string()),
                );
            }
        }
    }
    let queues = PathBuf::from("/sys/class/net").join(dev).join("queues");
    if profile.cpu.rps {
        let want = CpuList::of(&cores);
        for q in 0..iface.rx_queues {
            let path = queues.join(format!("rx-{q}/rps_cpus"));
            match host::read(&path).map(|s| CpuList::from_mask(&s)) {
                Ok(Ok(live)) if live == want => {}
                Ok(Ok(live)) => change(
                    format!("cpu.rps.rx-{q}"),
                    cpus(&live),
                    cpus(&want),
                    Action::Write(path, want.to_mask()),
                ),
                _ => unsupported.push(format!(
                    "cpu.rps: {} cannot be read (kernel without CONFIG_RPS?)",
                    path.display()
                )),
            }
        }
    }
    if profile.cpu.xps {
        for q in 0..iface.tx_queues {
            let want = CpuList::single(cores[q % cores.len()]);
            let path = queues.join(format!("tx-{q}/xps_cpus"));
            // Single-queue devices may refuse xps_cpus (ENOENT): one tx queue has nothing to steer.
            let absent =
                matches!(std::fs::read(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
            if iface.tx_queues == 1 && absent {
                continue;
            }
            match host::read(&path).map(|s| CpuList::from_mask(&s)) {
                Ok(Ok(live)) if live == want => {}
                Ok(Ok(live)) => change(
                    format!("cpu.xps.tx-{q}"),
                    cpus(&live),
                    cpus(&want),
                    Action::Write(path, want.to_mask()),
                ),
                _ => unsupported.push(format!(
                    "cpu.xps: {} cannot be read ({dev} does not support XPS)",
                    path.display()
                )),
            }
        }
    }

    Ok(Plan {
        dev: dev.clone(),
        profile: profile.name.clone(),
        worker_cores: cores,
        changes,
        unsupported,
    })
}

/// Carries out `plan` on the device, then reads the device back and checks nothing differs.
/// Refuses (and changes nothing) if any setting is unsupported.
pub fn apply(ethtool: &mut Ethtool, profile: &Profile, plan: &Plan, cpu: &CpuReport) -> Result<()> {
    if !plan.unsupported.is_empty() {
        return Err(HwError::Unsupported(plan.unsupported.clone()));
    }
    let dev = plan.dev.as_str();
    let features: Vec<(String, bool)> = plan
        .changes
        .iter()
        .filter_map(|c| match &c.action {
            Action::Feature(n, on) => Some((n.clone(), *on)),
            _ => None,
        })
        .collect();
    let mut rx = None;
    let mut tx = None;
    let mut coalesce = CoalesceChange::default();
    let mut coalesce_changed = false;
    for c in &plan.changes {
        match &c.action {
            Action::Mtu(mtu) => {
                let ifindex = ethtool.link(dev)?.ifindex;
                ethtool.set_mtu(dev, ifindex, *mtu)?;
            }
            Action::Channels(n) => ethtool.set_channels(dev, *n)?,
            Action::RingRx(v) => rx = Some(*v),
            Action::RingTx(v) => tx = Some(*v),
            Action::Coalesce(cc) => {
                coalesce_changed = true;
                coalesce.adaptive_rx = cc.adaptive_rx.or(coalesce.adaptive_rx);
                coalesce.adaptive_tx = cc.adaptive_tx.or(coalesce.adaptive_tx);
                coalesce.rx_usecs = cc.rx_usecs.or(coalesce.rx_usecs);
                coalesce.tx_usecs = cc.tx_usecs.or(coalesce.tx_usecs);
            }
            Action::Feature(..) | Action::Write(..) => {}
        }
    }
    if !features.is_empty() {
        ethtool.set_features(dev, &features)?;
    }
    if rx.is_some() || tx.is_some() {
        ethtool.set_rings(dev, rx, tx)?;
    }
    if coalesce_changed {
        ethtool.set_coalesce(dev, &coalesce)?;
    }
    // Queue sysfs files come last: channel changes above can add or remove queues.
    for c in &plan.changes {
        if let Action::Write(path, value) = &c.action {
            std::fs::write(path, value).map_err(|e| HwError::io(path, e))?;
        }
    }
    let after = plan_for(ethtool, profile, dev, cpu)?;
    if let Some(c) = after.changes.first() {
        return Err(HwError::NotApplied {
            dev: dev.to_owned(),
            field: c.field.clone(),
            wanted: c.profile.clone(),
            actual: c.live.clone(),
        });
    }
    Ok(())
}

/// Reads the device and plans `profile` for it.
pub fn plan_for(
    ethtool: &mut Ethtool,
    profile: &Profile,
    dev: &str,
    cpu: &CpuReport,
) -> Result<Plan> {
    let iface = host::interface(ethtool, dev)?;
    plan(profile, &iface, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ethtool::{ChannelState, Features, LinkInfo, RingState};
    use crate::host::CpuFeature;
    use std::collections::BTreeSet;

    fn cpu4() -> CpuReport {
        CpuReport {
            model: String::new(),
            online: CpuList::parse("0-3").unwrap(),
            numa_nodes: vec![],
            features: vec![CpuFeature {
                name: "aes".into(),
                cpuid: true,
                cpuinfo: true,
            }],
        }
    }

    fn nic() -> Interface {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        Interface {
            name: "ens1".into(),
            driver: "ice".into(),
            pci: None,
            pci_address: None,
            numa_node: None,
            link: LinkInfo {
                ifindex: 3,
                kind: None,
                mtu: 1500,
                min_mtu: Some(68),
                max_mtu: Some(9702),
            },
            rx_queues: 0,
            tx_queues: 0,
            features: Some(Features {
                changeable: set(&["tx-udp-segmentation", "rx-gro", "rx-udp-gro-forwarding"]),
                active: set(&["rx-gro", "rx-checksum"]),
                fixed: set(&["rx-checksum"]),
            }),
            rings: Some(RingState {
                rx: 2048,
                tx: 2048,
                rx_max: 8160,
                tx_max: 8160,
            }),
            channels: Some(ChannelState {
                combined: 4,
                combined_max: 64,
            }),
            coalesce: None,
            queue_irqs: vec![],
        }
    }

    fn e810() -> Profile {
        let text = crate::profile::SHIPPED
            .iter()
            .find(|(n, _)| *n == "e810")
            .unwrap()
            .1;
        let mut p = Profile::parse("profiles/e810.toml", text).unwrap();
        p.coalesce = Default::default();
        p.cpu.irq_affinity = false;
        p.cpu.rps = false;
        p.cpu.xps = false;
        p
    }

    #[test]
    fn differences_become_changes_with_live_and_profile_values() {
        let mut p = e810();
        p.offloads.clear();
        p.offloads.insert("rx-udp-gro-forwarding".into(), true);
        p.offloads.insert("rx-gro".into(), true);
        p.rings.rx = Some(4096);
        p.rings.tx = Some(2048);
        p.channels.combined = Some(4);
        p.link.mtu = Some(9000);
        let plan = plan(&p, &nic(), &cpu4()).unwrap();
        let got: Vec<(&str, &str, &str)> = plan
            .changes
            .iter()
            .map(|c| (c.field.as_str(), c.live.as_str(), c.profile.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("link.mtu", "1500", "9000"),
                ("offloads.rx-udp-gro-forwarding", "off", "on"),
                ("rings.rx", "2048", "4096")
            ]
        );
        assert!(plan.unsupported.is_empty());
    }

    #[test]
    fn fixed_features_and_oversized_rings_are_refused_by_name() {
        let mut p = e810();
        p.offloads.clear();
        p.offloads.insert("rx-checksum".into(), false);
        p.rings.rx = Some(8160);
        p.coalesce.rx_usecs = Some(50);
        let mut n = nic();
        n.rings = Some(RingState {
            rx: 512,
            tx: 512,
            rx_max: 4096,
            tx_max: 4096,
        });
        let plan = plan(&p, &n, &cpu4()).unwrap();
        assert_eq!(
            plan.unsupported,
            [
                "offloads.rx-checksum: ens1 (ice) has it fixed on; set it to true or remove it",
                "rings.rx: 8160 exceeds ens1's maximum 4096",
                "coalesce.rx_usecs: ens1 (ice) does not support it",
            ]
        );
        assert!(plan.to_string().contains("unsupported: rings.rx"));
    }

    #[test]
    fn matching_device_plans_no_changes() {
        let mut p = e810();
        p.offloads.clear();
        p.offloads.insert("rx-gro".into(), true);
        p.rings.rx = Some(2048);
        p.rings.tx = None;
        p.channels.combined = Some(4);
        p.link.mtu = Some(1500);
        let plan = plan(&p, &nic(), &cpu4()).unwrap();
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.to_string(), "ens1: profile e810: no changes\n");
    }
}
