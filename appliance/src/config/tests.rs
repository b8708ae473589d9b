use super::*;
use std::time::Duration;

const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

fn config(appliance_extra: &str, peer_endpoint: &str) -> String {
    format!(
            "[appliance]\nlisten = \"192.0.2.1:1000\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n{appliance_extra}\n\
             [tun]\nname = \"cpc0\"\npath_mtu = 1500\n\
             [[peers]]\nname = \"b\"\nendpoint = \"{peer_endpoint}\"\nprefixes = [\"10.2.0.0/16\"]\n\
             master_keys = [\"{KEY}\", \"{KEY}\"]\n"
        )
}

#[test]
fn a_valid_config_is_read_with_defaults() {
    let c = ApplianceConfig::parse("a.toml", &config("workers = 2", "192.0.2.2:1000")).unwrap();
    assert_eq!(c.workers, 2);
    assert_eq!(c.io, IoKind::Auto);
    assert_eq!(c.suite, Suite::AesGcm256);
    assert_eq!(c.peers[0].prefixes, vec!["10.2.0.0/16".parse().unwrap()]);
    assert_eq!(c.tun_mtu(), Some(1500 - 20 - 8 - 32));
    assert_eq!(
        c.engine_config().protection,
        cpclink_dataplane::engine::Protection::Encrypted,
        "an appliance's engine always seals"
    );
}

#[test]
fn source_ports_reach_the_engine_and_bad_ranges_are_refused() {
    let c = ApplianceConfig::parse(
        "a.toml",
        &config("workers = 2\nsource_port_base = 41000", "192.0.2.2:1000"),
    )
    .unwrap();
    assert_eq!(c.engine_config().tx_port_base, Some(41000));
    let default = ApplianceConfig::parse("a.toml", &config("", "192.0.2.2:1000")).unwrap();
    assert_eq!(default.engine_config().tx_port_base, None);
    for (extra, expect) in [
        ("source_port_base = 0", "0 is no port"),
        (
            "workers = 2\nsource_port_base = 65535",
            "runs past port 65535: give a base of at most 65534",
        ),
        (
            "workers = 2\nsource_port_base = 999",
            "include the listen port 1000",
        ),
    ] {
        let e = ApplianceConfig::parse("a.toml", &config(extra, "192.0.2.2:1000"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml:") && e.contains(": [appliance].source_port_base: "),
            "{e}"
        );
        assert!(e.contains(expect), "{extra}: {e}");
    }
}

#[test]
fn errors_name_the_file_the_field_and_the_fix() {
    let e = ApplianceConfig::parse("a.toml", &config("", "192.0.2.2"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("a.toml:") && e.contains(": [peers.b].endpoint: \"192.0.2.2\" has no port"),
        "{e}"
    );
    let e = ApplianceConfig::parse("a.toml", &config("io = \"poll\"", "192.0.2.2:1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[appliance].io") && e.contains("expected auto, io_uring or epoll"),
        "{e}"
    );
    let e = ApplianceConfig::parse("a.toml", &config("suite = \"aes-gmac-256\"", "192.0.2.2:1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[appliance].suite"), "{e}");
    let text = config("", "192.0.2.2:1").replacen(KEY, "abcd", 1);
    let e = ApplianceConfig::parse("a.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[appliance].master_keys[0]: has 2 bytes; a master key has 32"),
        "{e}"
    );
    let e = ApplianceConfig::parse("a.toml", &config("colour = 1", "192.0.2.2:1"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("a.toml:4: [appliance].colour: unknown field `colour`")
            && e.contains("remove it or correct its spelling"),
        "{e}"
    );
}

fn keyed(extra: &str) -> String {
    format!(
        "[appliance]\nlisten = \"192.0.2.1:1000\"\nsuite = \"aes-gcm-128\"\n\
             [keymgr]\nappliance = \"dc1-edge\"\nauthority = \"192.0.2.10:7000\"\n\
             listen = \"192.0.2.1:7001\"\nstate_dir = \"agent\"\nkek_file = \"/etc/cpclink/kek\"\n\
             ca_cert = \"ca.pem\"\n{extra}\n\
             [[keymgr.peer]]\nid = \"dc2-edge\"\nprefixes = [\"10.2.0.0/16\", \"fd00:2::/64\"]\n"
    )
}

#[test]
fn a_keymgr_section_keys_the_appliance_instead_of_lab_keys() {
    let c = ApplianceConfig::parse("/etc/cpclink/a.toml", &keyed("token = \" t0k \"")).unwrap();
    assert!(c.peers.is_empty());
    let Keying::KeyPlane(k) = c.keying else {
        panic!("keyed by the key plane")
    };
    assert_eq!(k.agent.appliance, "dc1-edge");
    assert_eq!(k.agent.authority, ["192.0.2.10:7000".parse().unwrap()]);
    // Relative paths are taken from the configuration's directory.
    assert_eq!(k.agent.state_dir, Path::new("/etc/cpclink/agent"));
    assert_eq!(k.agent.ca_cert, Path::new("/etc/cpclink/ca.pem"));
    assert_eq!(k.agent.kek_file, Path::new("/etc/cpclink/kek"));
    assert_eq!(
        k.agent.suite,
        Suite::AesGcm128.version(),
        "[appliance].suite"
    );
    assert_eq!(k.agent.sa_lifetime_secs, 3600);
    assert_eq!(k.token.as_deref().map(String::as_str), Some("t0k"));
    assert_eq!(k.endpoint, None, "[appliance].listen is published");
    assert_eq!(
        k.prefixes["dc2-edge"],
        vec![
            "10.2.0.0/16".parse::<Prefix>().unwrap(),
            "fd00:2::/64".parse().unwrap()
        ]
    );
}

#[test]
fn the_example_keyed_config_is_valid() {
    let c = ApplianceConfig::parse(
        "appliance/examples/appliance-keyed.toml",
        include_str!("../../examples/appliance-keyed.toml"),
    )
    .unwrap();
    let Keying::KeyPlane(k) = c.keying else {
        panic!("keyed by the key plane")
    };
    assert_eq!(k.prefixes["dc2-edge"].len(), 1);
    assert!(c.tun.is_some());
}

#[test]
fn keymgr_errors_name_the_file_the_field_and_the_fix() {
    let err = |text: &str| {
        ApplianceConfig::parse("a.toml", text)
            .unwrap_err()
            .to_string()
    };
    let both = keyed("").replace(
        "suite = \"aes-gcm-128\"",
        &format!("master_keys = [\"{KEY}\", \"{KEY}\"]"),
    );
    let e = err(&both);
    assert!(
        e.contains("a.toml:3: [appliance].master_keys: lab keys given with [keymgr]; keep one"),
        "{e}"
    );
    let e = err("[appliance]\nlisten = \"192.0.2.1:1000\"\n");
    assert!(
        e.starts_with("a.toml:")
            && e.contains(": [appliance]: no keys")
            && e.contains("give lab keys"),
        "{e}"
    );
    let e = err(&format!(
            "{}[[peers]]\nname = \"b\"\nendpoint = \"192.0.2.2:1000\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n",
            keyed("")
        ));
    assert!(
        e.starts_with("a.toml:") && e.contains(": [peers.b]: lab-mode peers with [keymgr]"),
        "{e}"
    );
    let e = err(&keyed("").replace("dc1-edge", "DC1 Edge"));
    assert!(
        e.starts_with("a.toml:")
            && e.contains(": [keymgr].appliance: \"DC1 Edge\" is not an appliance id"),
        "{e}"
    );
    let e = err(&keyed("").replace("192.0.2.1:1000", "0.0.0.0:1000"));
    assert!(
            e.starts_with("a.toml:") && e.contains(": [keymgr].endpoint: missing: [appliance].listen 0.0.0.0:1000 is no address peers can send to"),
            "{e}"
        );
    let e = err(&keyed("token = \"x\"\ntoken_file = \"t\""));
    assert!(
        e.starts_with("a.toml:") && e.contains(": [keymgr].token: given with token_file"),
        "{e}"
    );
    let e = err(&keyed("endpoint = \"[2001:db8::1]:1000\""));
    assert!(
        e.contains("[keymgr].endpoint: [2001:db8::1]:1000 is not of the address family"),
        "{e}"
    );
    let e = err(&keyed("sa_lifetime_secs = 86401"));
    assert!(
        e.contains("[keymgr].sa_lifetime_secs: 86401") && e.contains("86400"),
        "{e}"
    );
    let e = err(&keyed("").replace("10.2.0.0/16", "10.2.0.0/33"));
    assert!(e.contains("[[keymgr.peer]][0].prefixes[0]"), "{e}");
    let e = err(&keyed("").replace(
        "authority = \"192.0.2.10:7000\"",
        "authority = \"192.0.2.10\"",
    ));
    assert!(
        e.contains("[keymgr].authority: \"192.0.2.10\" has no port"),
        "{e}"
    );
}

#[test]
fn the_authority_may_be_a_list_of_replicas() {
    let err = |text: &str| {
        ApplianceConfig::parse("a.toml", text)
            .unwrap_err()
            .to_string()
    };
    let replicas = |list: &str| {
        keyed("").replace(
            "authority = \"192.0.2.10:7000\"",
            &format!("authority = {list}"),
        )
    };
    let c = ApplianceConfig::parse(
        "/etc/cpclink/a.toml",
        &replicas("[\"192.0.2.10:7000\", \"[2001:db8::11]:7000\"]"),
    )
    .unwrap();
    let Keying::KeyPlane(k) = c.keying else {
        panic!("keyed by the key plane")
    };
    assert_eq!(
        k.agent.authority,
        [
            "192.0.2.10:7000".parse::<std::net::SocketAddr>().unwrap(),
            "[2001:db8::11]:7000".parse().unwrap()
        ]
    );
    let e = err(&replicas("[\"192.0.2.10:7000\", \"192.0.2.11\"]"));
    assert!(
        e.contains("[keymgr].authority[1]: \"192.0.2.11\" has no port"),
        "{e}"
    );
    let e = err(&replicas("[]"));
    assert!(e.contains("[keymgr].authority: an empty list"), "{e}");
    let e = err(&replicas("[\"192.0.2.10:7000\", \"192.0.2.10:7000\"]"));
    assert!(
        e.contains("[keymgr].authority[1]") && e.contains("twice"),
        "{e}"
    );
}

#[test]
fn unreadable_keymgr_files_are_named_with_their_field() {
    let c = ApplianceConfig::parse("/nowhere/a.toml", &keyed("")).unwrap();
    let Keying::KeyPlane(k) = c.keying else {
        panic!("keyed by the key plane")
    };
    let e = k.agent_options().unwrap_err().to_string();
    assert!(
        e.contains("[keymgr].ca_cert: /nowhere/ca.pem: cannot read")
            && e.contains("copy the authority's ca.pem"),
        "{e}"
    );
}

fn hardware(extra_appliance: &str, hardware: &str) -> String {
    format!(
            "[appliance]\nlisten = \"127.0.0.1:0\"\nmaster_keys = [\"{KEY}\", \"{KEY}\"]\n{extra_appliance}\n\
             [hardware]\n{hardware}\n"
        )
}

#[test]
fn a_named_profile_sizes_the_engine() {
    let c = ApplianceConfig::parse("a.toml", &hardware("", "profile = \"virtio-net\"")).unwrap();
    let t = cpclink_hw::dataplane_tuning("virtio-net", None, None).unwrap();
    let e = c.engine_config();
    assert_eq!(e.workers, t.workers);
    assert_eq!(e.cores, t.worker_cores);
    assert_eq!(e.batch_sends, t.batch);
    assert_eq!(e.gso_segments, usize::from(t.gso_segments));
    assert_eq!(e.io_sizing.ring_entries, t.io_uring_entries);
    assert_eq!(u32::from(e.io_sizing.provided_buffers), t.provided_buffers);
    assert_eq!(e.crypto.to_string(), t.crypto_backend);
    // The profile's values differ from the defaults, so this could not pass without it.
    let plain = EngineConfig::new(e.listen);
    assert_ne!(
        (e.batch_sends, e.gso_segments, e.io_sizing),
        (plain.batch_sends, plain.gso_segments, plain.io_sizing)
    );
    let hw = c.hardware.unwrap();
    let names: Vec<_> = hw.from_profile.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "workers",
            "cores",
            "crypto",
            "batch",
            "gso_segments",
            "io_uring_entries",
            "provided_buffers"
        ]
    );
    assert!(hw.overridden.is_empty());
}

#[test]
fn explicit_settings_override_the_profile() {
    let c = ApplianceConfig::parse(
            "a.toml",
            &hardware(
                "workers = 1\ncores = [0]\ncrypto = \"ring\"\nbatch = 4\ngso_segments = 8\nio_uring_entries = 64",
                "profile = \"loopback\"\ndevice = \"lo\"",
            ),
        )
        .unwrap();
    let e = c.engine_config();
    assert_eq!((e.workers, e.cores.as_slice()), (1, &[0][..]));
    assert_eq!(e.crypto, Backend::Ring);
    assert_eq!((e.batch_sends, e.gso_segments), (4, 8));
    assert_eq!(e.io_sizing.ring_entries, 64);
    // Not overridden: still the profile's.
    let t = cpclink_hw::dataplane_tuning("loopback", None, Some("lo")).unwrap();
    assert_eq!(u32::from(e.io_sizing.provided_buffers), t.provided_buffers);
    let hw = c.hardware.unwrap();
    assert_eq!(hw.device.as_deref(), Some("lo"));
    assert_eq!(
        hw.overridden,
        [
            "workers",
            "cores",
            "crypto",
            "batch",
            "gso_segments",
            "io_uring_entries"
        ]
    );
    assert_eq!(hw.from_profile.len(), 1);
}

#[test]
fn hardware_errors_name_the_file_the_field_and_the_fix() {
    let e = ApplianceConfig::parse("a.toml", &hardware("", "profile = \"virtio\""))
        .unwrap_err()
        .to_string();
    assert!(
            e.starts_with("a.toml:") && e.contains(": [hardware].profile: no profile named \"virtio\" (known: virtio-net, veth, loopback, connectx-6dx"),
            "{e}"
        );
    let e = ApplianceConfig::parse(
        "a.toml",
        &hardware("", "profile = \"veth\"\ndevice = \"no-such-nic0\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("a.toml:")
            && e.contains(": [hardware].device: no network interface \"no-such-nic0\""),
        "{e}"
    );
    let e = ApplianceConfig::parse(
        "/nowhere/a.toml",
        &hardware("", "profile = \"veth\"\nprofile_dir = \"profiles\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("[hardware].profile_dir: /nowhere/profiles is not a directory"),
        "{e}"
    );
    let e = ApplianceConfig::parse(
        "a.toml",
        &hardware("gso_segments = 65", "profile = \"veth\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("a.toml:")
            && e.contains(": [appliance].gso_segments: 65 is out of range (expected 1..=64"),
        "{e}"
    );
    let e = ApplianceConfig::parse(
        "a.toml",
        &hardware("io_uring_entries = 16", "profile = \"veth\""),
    )
    .unwrap_err()
    .to_string();
    assert!(
            e.contains("[hardware].profile (batch): 32 GSO sends per batch do not fit an io_uring of 16 entries"),
            "{e}"
        );
}

#[test]
fn a_profile_in_the_profile_dir_is_found_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("cpclink-hwcfg-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("profiles")).unwrap();
    let shipped = include_str!("../../../hw-profiles/profiles/veth.toml");
    let text = shipped
        .replace("name = \"veth\"", "name = \"lab-veth\"")
        .replace("gso_segments = 44", "gso_segments = 12");
    assert_ne!(text, shipped);
    std::fs::write(dir.join("profiles/lab-veth.toml"), text).unwrap();
    let file = dir.join("a.toml");
    let c = ApplianceConfig::parse(
        &file.display().to_string(),
        &hardware("", "profile = \"lab-veth\"\nprofile_dir = \"profiles\""),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c.unwrap().engine_config().gso_segments, 12);
}

/// A profile in `profile_dir` named `name`: the shipped veth profile with `dataplane`
/// added to its `[dataplane]` section. Returns the directory holding `a.toml`'s path.
fn latency_profile(name: &str, dataplane: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cpclink-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("profiles")).unwrap();
    let shipped = include_str!("../../../hw-profiles/profiles/veth.toml");
    let text = shipped
        .replace("name = \"veth\"", &format!("name = \"{name}\""))
        .replace("[dataplane]\n", &format!("[dataplane]\n{dataplane}\n"));
    assert_ne!(text, shipped);
    std::fs::write(dir.join(format!("profiles/{name}.toml")), text).unwrap();
    dir
}

#[test]
fn a_latency_profile_reaches_the_engines_batching() {
    let dir = latency_profile("lat-veth", "mode = \"latency\"\nbusy_poll_us = 50");
    let file = dir.join("a.toml").display().to_string();
    let hw = "profile = \"lat-veth\"\nprofile_dir = \"profiles\"";
    let from_profile = ApplianceConfig::parse(&file, &hardware("", hw));
    // The file's own settings win over the profile's, one by one.
    let explicit = ApplianceConfig::parse(&file, &hardware("max_hold_us = 7", hw));
    let throughput = ApplianceConfig::parse(&file, &hardware("mode = \"throughput\"", hw));
    let refused = ApplianceConfig::parse(
        &file,
        &hardware("mode = \"throughput\"\nbusy_poll_us = 10", hw),
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let c = from_profile.unwrap();
    let b = c.engine_config().batching;
    assert_eq!(
        b.policy.max_hold,
        Some(Duration::from_micros(20)),
        "the default hold"
    );
    assert_eq!(b.busy_poll, Duration::from_micros(50), "the profile's poll");
    assert_eq!(b.policy.max_packets, 32);
    assert_ne!(b, BatchingMode::THROUGHPUT);
    let hw = c.hardware.unwrap();
    assert!(
        hw.from_profile
            .iter()
            .any(|(n, v)| *n == "mode" && v == "Latency"),
        "{:?}",
        hw.from_profile
    );
    assert!(hw
        .from_profile
        .iter()
        .any(|(n, v)| *n == "busy_poll_us" && v == "50"));

    let c = explicit.unwrap();
    let b = c.engine_config().batching;
    assert_eq!(b.policy.max_hold, Some(Duration::from_micros(7)));
    assert_eq!(
        b.busy_poll,
        Duration::from_micros(50),
        "not overridden: the profile's"
    );
    assert_eq!(c.hardware.unwrap().overridden, ["max_hold_us"]);

    let c = throughput.unwrap();
    assert_eq!(c.engine_config().batching, BatchingMode::THROUGHPUT);
    assert!(c.hardware.unwrap().overridden.contains(&"mode"));

    let e = refused.unwrap_err().to_string();
    assert!(
        e.contains(": [appliance].busy_poll_us: applies only in latency mode")
            && e.contains("add mode = \"latency\" to [appliance]"),
        "{e}"
    );
}

#[test]
fn latency_mode_can_be_set_without_a_profile_and_bad_values_name_the_fix() {
    let c = ApplianceConfig::parse("a.toml", &config("", "192.0.2.2:1000")).unwrap();
    assert_eq!(
        c.engine_config().batching,
        BatchingMode::THROUGHPUT,
        "the default"
    );
    let c =
        ApplianceConfig::parse("a.toml", &config("mode = \"latency\"", "192.0.2.2:1000")).unwrap();
    assert_eq!(c.engine_config().batching, BatchingMode::LATENCY_FIRST);
    let c = ApplianceConfig::parse(
        "a.toml",
        &config(
            "mode = \"latency\"\nmax_hold_us = 5\nbusy_poll_us = 0",
            "192.0.2.2:1000",
        ),
    )
    .unwrap();
    let b = c.engine_config().batching;
    assert_eq!(b.policy.max_hold, Some(Duration::from_micros(5)));
    assert_eq!(b.busy_poll, Duration::ZERO);
    for (extra, field, expect) in [
        (
            "mode = \"latency\"\nmax_hold_us = 0",
            "[appliance].max_hold_us",
            "0 µs is out of range (expected 1..=1000)",
        ),
        (
            "mode = \"latency\"\nbusy_poll_us = 20000",
            "[appliance].busy_poll_us",
            "20000 µs is out of range (expected 0..=10000)",
        ),
        (
            "mode = \"fast\"",
            "[appliance].mode",
            "\"fast\" is not a data plane mode",
        ),
        (
            "max_hold_us = 20",
            "[appliance].max_hold_us",
            "applies only in latency mode",
        ),
    ] {
        let e = ApplianceConfig::parse("a.toml", &config(extra, "192.0.2.2:1000"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml:") && e.contains(&format!(": {field}: {expect}")),
            "{extra}: {e}"
        );
        // Every refusal says what to write instead.
        assert!(
            e.contains("give ") || e.contains("add mode"),
            "{extra}: {e}"
        );
    }
}

/// Two appliances sized by the loopback profile exchange encrypted synthetic traffic;
/// a profile with small GSO sends shows in the sends the kernel was handed.
#[test]
fn an_engine_sized_by_a_profile_carries_traffic() {
    use cpclink_bench::traffic::{TrafficCounters, TrafficSpec};
    use cpclink_dataplane::engine::{lab, Egress, Engine, PeerConfig, PeerId, SaProfile};
    use cpclink_dataplane::route::RouteTable;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const FLOWS: u32 = 16;
    let appliance = |source: bool| {
        let c = ApplianceConfig::parse(
            "a.toml",
            &hardware(
                "gso_segments = 4\nio = \"io_uring\"",
                "profile = \"loopback\"\ndevice = \"lo\"",
            ),
        )
        .unwrap();
        let mut e = c.engine_config();
        let spec = TrafficSpec::new(FLOWS, 1000);
        let counters = TrafficCounters::new(e.workers);
        e.source = source.then(|| spec.source(None, e.gso_segments, &counters).unwrap());
        e.egress = Egress::Sink(spec.sink(&counters));
        let Keying::Lab { master_keys } = c.keying else {
            panic!("lab keys")
        };
        let engine = Engine::start(e).unwrap();
        engine
            .set_routes(Arc::new(RouteTable::build(spec.routes()).unwrap()))
            .unwrap();
        (engine, master_keys, counters)
    };
    let (a, _, _) = appliance(true);
    let (b, keys_b, traffic_b) = appliance(false);
    let t = cpclink_hw::dataplane_tuning("loopback", None, Some("lo")).unwrap();
    assert_eq!((a.workers(), b.workers()), (t.workers, t.workers));
    // Worker i runs pinned to the profile's core i.
    let mut pinned = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Some(i) = comm.trim().strip_prefix("cpclink-w") else {
            continue;
        };
        let i: usize = i.parse().unwrap();
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        assert_eq!(allowed, t.worker_cores[i].to_string(), "worker {i}");
        pinned += 1;
    }
    assert_eq!(pinned, 2 * t.workers, "every worker of both engines seen");
    let peer = |endpoint| PeerConfig { endpoint };
    a.set_peer(PeerId(0), peer(b.local_addr())).unwrap();
    b.set_peer(PeerId(0), peer(a.local_addr())).unwrap();
    lab::enable_rx_derivation(&b, &keys_b, Suite::AesGcm256).unwrap();
    b.snapshot().unwrap();
    lab::install_tx_sas(&a, PeerId(0), &keys_b, SaProfile::default()).unwrap();
    let start = Instant::now();
    while traffic_b.total().sink.verified_bytes < 16 << 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "16 MiB did not arrive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sa, sb) = (a.shutdown().unwrap().total(), b.shutdown().unwrap().total());
    assert_eq!(traffic_b.total().sink.corrupt, 0);
    assert_eq!(sb.rx_auth_failed, 0);
    assert!(sa.io.gso_sends > 0);
    // At most 4 datagrams per GSO send: the profile's 44 was overridden and reached
    // the transmit batch.
    assert!(
        sa.tx_packets <= 4 * (sa.io.gso_sends + sa.io.send_errors),
        "{sa:?}"
    );
    assert!(
        sa.tx_packets > 2 * sa.io.gso_sends,
        "sends do carry several datagrams: {sa:?}"
    );
}

#[test]
fn a_range_routed_to_two_peers_is_refused_with_both_and_its_line() {
    let second = |prefix: &str| {
        format!(
            "{}[[peers]]\nname = \"c\"\nendpoint = \"192.0.2.3:1000\"\nprefixes = [\"{prefix}\"]\n\
             master_keys = [\"{KEY}\", \"{KEY}\"]\n",
            config("", "192.0.2.2:1000")
        )
    };
    for prefix in ["10.2.0.0/16", "10.2.7.0/24"] {
        let Err(Error::Config(d)) = ApplianceConfig::parse("a.toml", &second(prefix)) else {
            panic!("{prefix} given to b and c is refused")
        };
        assert_eq!(d.field, "[peers.c].prefixes[0]");
        assert_eq!(d.line, Some(16), "{d}");
        assert!(
            d.reason
                .contains(&format!("{prefix} of c overlaps 10.2.0.0/16 of b")),
            "{d}"
        );
        assert!(d.fix.is_some(), "{d}");
    }
    // One peer listing a range twice (or inside another of its own) is refused too.
    let twice = config("", "192.0.2.2:1000")
        .replace("[\"10.2.0.0/16\"]", "[\"10.2.0.0/16\", \"10.2.3.0/24\"]");
    let e = ApplianceConfig::parse("a.toml", &twice)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[peers.b].prefixes[1]") && e.contains("overlaps 10.2.0.0/16"),
        "{e}"
    );
    // A prefix with host bits set names the network meant.
    let host = config("", "192.0.2.2:1000").replace("10.2.0.0/16", "10.2.3.4/16");
    let e = ApplianceConfig::parse("a.toml", &host)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("host bits set") && e.contains("10.2.0.0/16"),
        "{e}"
    );
}

#[test]
fn paths_and_services_errors_name_the_field_and_the_fix() {
    let base = config("", "192.0.2.2:1000");
    for (extra, field, fix) in [
        (
            "[paths]\nnode = \"dc1\"\n[[paths.site]]\npeer = \"dc2\"\nsid = \"not-a-sid\"\n",
            "[[paths.site]][0].sid",
            "write a SID",
        ),
        (
            "[paths]\nnode = \"dc1\"\n[[paths.site]]\npeer = \"dc2\"\nsid = \"fd00::2\"\n\
             [[paths.candidate]]\nsite = \"dc9\"\n",
            "[[paths.candidate]][0].site",
            "name a peer listed in [[paths.site]]",
        ),
        (
            "[paths]\nnode = \"dc1\"\n[[paths.site]]\npeer = \"dc2\"\nsid = \"fd00::2\"\n\
             [[paths.link]]\nfrom = \"dc1\"\nto = \"t7\"\nlatency_ms = 1.0\n",
            "[[paths.link]][0].to",
            "name [paths].node",
        ),
        (
            "[[services]]\nname = \"echo\"\nprefixes = [\"10.99.0.7/32\"]\n",
            "[[services]]",
            "add [paths]",
        ),
        (
            "[paths]\nnode = \"dc1\"\n[[paths.site]]\npeer = \"dc2\"\nsid = \"fd00::2\"\n\
             [[services]]\nname = \"echo\"\nprefixes = [\"10.99.0.7/32\"]\nsites = [\"dc3\"]\n",
            "[[services]][0].sites",
            "name peers listed in [[paths.site]]",
        ),
        (
            "[paths]\nnode = \"dc1\"\n[[paths.site]]\npeer = \"dc2\"\nsid = \"fd00::2\"\n\
             [[services]]\nname = \"echo\"\nprefixes = [\"10.99.0.7/32\"]\nscoring = \"fastest\"\n",
            "[[services]][0]",
            "fix the service's constraints",
        ),
    ] {
        let e = ApplianceConfig::parse("a.toml", &format!("{base}\n{extra}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field) && e.contains(fix), "{extra}\n→ {e}");
    }
}

#[test]
fn the_api_needs_the_key_plane_and_well_formed_tokens() {
    let lab = config("", "192.0.2.2:1000");
    let e = ApplianceConfig::parse(
        "a.toml",
        &format!("{lab}\n[api]\nlisten = \"127.0.0.1:7443\"\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("[api]") && e.contains("key the appliance with [keymgr]"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kek"), "4d".repeat(32)).unwrap();
    std::fs::write(dir.path().join("tok"), "t").unwrap();
    let keyed = |api: &str| {
        format!(
            "[appliance]\nlisten = \"192.0.2.1:1000\"\n\
             [keymgr]\nappliance = \"a\"\nauthority = \"192.0.2.9:7000\"\nlisten = \"192.0.2.1:7001\"\n\
             state_dir = \"s\"\nkek_file = \"kek\"\nca_cert = \"ca.pem\"\ntoken_file = \"tok\"\n{api}"
        )
    };
    let file = dir.path().join("a.toml").display().to_string();
    let good = format!(
        "[api]\nlisten = \"127.0.0.1:7443\"\n[[api.token]]\nname = \"noc\"\nrole = \"viewer\"\nsha256 = \"{}\"\n",
        hex::encode(crate::api::token_digest("secret"))
    );
    let c = ApplianceConfig::parse(&file, &keyed(&good)).unwrap();
    let api = c.api.unwrap();
    assert_eq!(api.tokens[0].role, crate::api::Role::Viewer);
    assert_eq!(api.tokens[0].sha256, crate::api::token_digest("secret"));
    for (bad, field) in [
        ("sha256 = \"abc\"", "[[api.token]][0].sha256"),
        ("role = \"root\"", "role"),
    ] {
        let text = good
            .replace(
                &format!(
                    "sha256 = \"{}\"",
                    hex::encode(crate::api::token_digest("secret"))
                ),
                if bad.starts_with("sha") {
                    bad
                } else {
                    "sha256 = \"00\""
                },
            )
            .replace(
                "role = \"viewer\"",
                if bad.starts_with("role") {
                    bad
                } else {
                    "role = \"viewer\""
                },
            );
        let e = ApplianceConfig::parse(&file, &keyed(&text))
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn cores_the_machine_lacks_or_more_cores_than_workers_are_refused() {
    for (extra, expect, fix) in [
        (
            "workers = 2\ncores = [99999]",
            "core 99999 does not exist here",
            "list cores this machine has",
        ),
        (
            "workers = 1\ncores = [0, 0]",
            "2 cores listed for 1 worker(s)",
            "list one core per worker, or raise workers",
        ),
    ] {
        let e = ApplianceConfig::parse("a.toml", &config(extra, "192.0.2.2:1000"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("a.toml:") && e.contains("[appliance].cores: "),
            "{extra}: {e}"
        );
        assert!(e.contains(expect) && e.contains(fix), "{extra}: {e}");
    }
    // A core that exists is taken.
    let c = ApplianceConfig::parse(
        "a.toml",
        &config("workers = 2\ncores = [0]", "192.0.2.2:1000"),
    )
    .unwrap();
    assert_eq!(c.engine_config().cores, [0]);
}
