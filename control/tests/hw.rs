//! `cpclink hw` end to end: detect on this host, apply on a veth pair inside a network
//! namespace created for the test. State is read back with `ip`, `ethtool` and sysfs,
//! independently of the code under test.

use std::path::PathBuf;
use std::process::{Command, Output};

fn cpclink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cpclink"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
        || Command::new(tool).arg("-Version").output().is_ok()
}

/// Reason to skip namespace tests, if any.
fn skip_reason() -> Option<&'static str> {
    if !is_root() {
        return Some("skipped: needs root (CAP_NET_ADMIN) for network namespaces");
    }
    if !have("ip") || !have("ethtool") {
        return Some("skipped: needs `ip` (iproute2) and `ethtool` (see .ci/run)");
    }
    None
}

/// A network namespace holding a veth pair `va`/`vb`; deleted (with the pair) on drop.
struct VethNamespace {
    name: String,
}

impl VethNamespace {
    fn new(tag: &str) -> Self {
        let name = format!("cphw-{tag}-{}", std::process::id());
        let ns = Self { name };
        run_ok(Command::new("ip").args(["netns", "add", &ns.name]));
        run_ok(Command::new("ip").args([
            "-n", &ns.name, "link", "add", "va", "type", "veth", "peer", "name", "vb",
        ]));
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "va", "up"]));
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "vb", "up"]));
        ns
    }

    /// Runs `cpclink ARGS` inside the namespace (with its own /sys, as `ip netns exec` mounts it).
    fn cpclink(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_cpclink")])
            .args(args)
            .output()
            .unwrap()
    }

    fn exec(&self, args: &[&str]) -> String {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
        )
    }

    /// MTU, `ethtool -k` lines of interest, and RPS/XPS masks of `va`.
    fn state(&self) -> VethState {
        let link = run_ok(Command::new("ip").args(["-n", &self.name, "link", "show", "va"]));
        let mtu = link
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let k = self.exec(&["ethtool", "-k", "va"]);
        let feature = |name: &str| {
            k.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name}:")))
                .map(|l| l.split(':').nth(1).unwrap().trim().starts_with("on"))
                .unwrap()
        };
        let mask = |file: &str| {
            let s = self.exec(&["cat", &format!("/sys/class/net/va/queues/{file}")]);
            u64::from_str_radix(&s.trim().replace(',', ""), 16).unwrap()
        };
        VethState {
            mtu,
            udp_gro_forwarding: feature("rx-udp-gro-forwarding"),
            gro: feature("generic-receive-offload"),
            rps: mask("rx-0/rps_cpus"),
            xps: mask("tx-0/xps_cpus"),
        }
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VethState {
    mtu: u32,
    udp_gro_forwarding: bool,
    gro: bool,
    rps: u64,
    xps: u64,
}

/// Online CPUs from sysfs as a bitmask.
fn online_mask() -> u64 {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let mut m = 0u64;
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        for c in a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap() {
            m |= 1 << c;
        }
    }
    m
}

#[test]
fn apply_dry_run_changes_nothing_apply_changes_what_it_says_and_again_is_a_no_op() {
    if let Some(reason) = skip_reason() {
        println!("{reason}");
        return;
    }
    let ns = VethNamespace::new("apply");
    let before = ns.state();
    assert_eq!(before.mtu, 1500);
    assert!(!before.udp_gro_forwarding);

    let dry = ns.cpclink(&[
        "hw",
        "apply",
        "--profile",
        "veth",
        "--dev",
        "va",
        "--dry-run",
    ]);
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{dry_out}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        dry_out.contains("link.mtu") && dry_out.contains("1500 -> 9000"),
        "{dry_out}"
    );
    assert!(
        dry_out.contains("offloads.rx-udp-gro-forwarding") && dry_out.contains("off -> on"),
        "{dry_out}"
    );
    assert!(dry_out.contains("cpu.rps.rx-0"), "{dry_out}");
    assert!(dry_out.contains("dry run: nothing changed"), "{dry_out}");
    assert_eq!(ns.state(), before, "--dry-run changed the device");

    let applied = ns.cpclink(&["hw", "apply", "--profile", "veth", "--dev", "va"]);
    let out = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // The same difference is printed before it is applied.
    assert_eq!(out.lines().next(), dry_out.lines().next());
    let after = ns.state();
    assert_eq!(after.mtu, 9000);
    assert!(after.udp_gro_forwarding && after.gro);
    let cpus = online_mask();
    assert_eq!(after.rps, cpus, "rps_cpus should name every worker core");
    assert_eq!(
        after.xps,
        cpus & cpus.wrapping_neg(),
        "tx-0 serves the first worker core"
    );
    let changes = out.lines().filter(|l| l.contains(" -> ")).count();
    assert!(
        out.contains(&format!("applied {changes} changes to va")),
        "{out}"
    );

    let again = ns.cpclink(&["hw", "apply", "--profile", "veth", "--dev", "va"]);
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert_eq!(again_out, "va: profile veth: no changes\n");
    assert_eq!(ns.state(), after);
}

#[test]
fn apply_refuses_settings_the_device_lacks_and_changes_nothing() {
    if let Some(reason) = skip_reason() {
        println!("{reason}");
        return;
    }
    let ns = VethNamespace::new("refuse");
    let dir = std::env::temp_dir().join(format!("cphw-profiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let veth = include_str!("../../hw-profiles/profiles/veth.toml")
        .replace("name = \"veth\"", "name = \"veth-rings\"")
        .replace("mtu_max = 65535", "mtu_max = 65535\nrx_ring_max = 4096")
        .replace("[cpu]", "[rings]\nrx = 1024\n\n[cpu]");
    std::fs::write(dir.join("veth-rings.toml"), veth).unwrap();
    let before = ns.state();
    let out = ns.cpclink(&[
        "hw",
        "apply",
        "--profile",
        "veth-rings",
        "--dev",
        "va",
        "--profile-dir",
        dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing to apply, nothing was changed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rings.rx: va (veth) has no ring parameters"),
        "{stderr}"
    );
    assert_eq!(ns.state(), before);

    let wrong = ns.cpclink(&["hw", "apply", "--profile", "e810", "--dev", "va"]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        stderr.contains("match.driver: profile e810 is for ice, va runs veth"),
        "{stderr}"
    );
    assert_eq!(ns.state(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn detect_json_agrees_with_proc_and_sysfs() {
    let links = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = links();
    let out = run_ok(cpclink().args(["hw", "detect", "--json"]));
    let after = links();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();

    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    for f in v["cpu"]["features"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        assert_eq!(
            f["cpuinfo"].as_bool().unwrap(),
            flags.contains(&name),
            "{name}"
        );
    }
    let names: Vec<&str> = v["cpu"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["aes", "vaes", "avx512f", "pclmulqdq"]);
    let processors = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let online = v["cpu"]["online"].as_str().unwrap();
    assert_eq!(
        online,
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .unwrap()
            .trim()
    );
    assert_eq!(online_mask().count_ones() as usize, processors);

    let ifaces = v["interfaces"].as_array().unwrap();
    let reported: Vec<&str> = ifaces.iter().map(|i| i["name"].as_str().unwrap()).collect();
    // Links may come and go while detect runs; those present throughout must be reported,
    // and nothing may be reported that was never there.
    for name in before.iter().filter(|n| after.contains(n)) {
        assert!(
            reported.contains(&name.as_str()),
            "{name} missing from {reported:?}"
        );
    }
    for name in &reported {
        assert!(
            before.iter().chain(&after).any(|n| n == name),
            "{name} is not in /sys/class/net"
        );
    }
    assert!(reported.contains(&"lo"));
    for i in ifaces {
        let name = i["name"].as_str().unwrap();
        let base = PathBuf::from("/sys/class/net").join(name);
        if !base.exists() {
            continue;
        }
        if let Ok(driver) = std::fs::read_link(base.join("device/driver")) {
            let driver = driver.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(i["driver"], driver.as_str(), "{name}");
            if driver == "virtio_net" {
                assert_eq!(i["profile"], "virtio-net", "{name}");
                assert_eq!(
                    i["dataplane"]["workers"].as_u64().unwrap() as usize,
                    processors
                );
            }
        }
        if name == "lo" {
            assert_eq!(i["profile"], "loopback");
        }
        let mtu: u64 = std::fs::read_to_string(base.join("mtu"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(i["link"]["mtu"].as_u64().unwrap(), mtu, "{name}");
    }

    let text = run_ok(cpclink().args(["hw", "detect"]));
    assert!(
        text.contains(&format!("cores online: {online} ({processors})")),
        "{text}"
    );
}

#[test]
fn check_names_file_and_field_of_a_broken_profile() {
    let dir = std::env::temp_dir().join(format!("cphw-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("e810.toml");
    std::fs::write(
        &bad,
        include_str!("../../hw-profiles/profiles/e810.toml").replace("rx = 4096", "rx = 70000"),
    )
    .unwrap();
    let out = cpclink().args(["hw", "check"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:31: [rings].rx: 70000 exceeds the maximum 8160 for ice; write a value in 64..=8160",
            bad.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tune_over_loopback_writes_a_profile_with_the_numbers_it_printed() {
    let out_file = std::env::temp_dir().join(format!("cphw-tuned-{}.toml", std::process::id()));
    let stdout = run_ok(
        cpclink()
            .args([
                "hw",
                "tune",
                "--dev",
                "lo",
                "--batches",
                "8",
                "--gso",
                "1,16",
                "--workers",
                "1",
                "--trial-ms",
                "60",
                "--repeats",
                "1",
                "--out",
            ])
            .arg(&out_file),
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let checked = run_ok(cpclink().args(["hw", "check"]).arg(&out_file));
    assert!(checked.ends_with("ok (loopback-tuned-lo)\n"), "{checked}");
    std::fs::remove_file(&out_file).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["name"].as_str(), Some("loopback-tuned-lo"));
    let trials = v["tuned"]["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    // Every printed row is a trial in the file, with the same numbers.
    let rows: Vec<Vec<f64>> = stdout
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .map(str::parse::<f64>)
                .collect::<Result<Vec<_>, _>>()
                .ok()
        })
        .filter(|r| r.len() == 7)
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, t) in rows.iter().zip(trials) {
        assert_eq!(row[0], t["batch"].as_integer().unwrap() as f64);
        assert_eq!(row[1], t["gso_segments"].as_integer().unwrap() as f64);
        assert!(
            (row[3] - t["gbps"].as_float().unwrap()).abs() < 0.006,
            "{row:?} {t:?}"
        );
        assert!(t["gbps"].as_float().unwrap() > 0.0);
        // The plain UDP baseline ran beside cpclink at the same point, and the ratio printed
        // is cpclink's over it.
        let udp = t["udp_gbps"].as_float().unwrap();
        assert!(udp > 0.0 && (row[5] - udp).abs() < 0.006, "{row:?} {t:?}");
        let ratio = t["gbps"].as_float().unwrap() / udp;
        assert!((row[6] - ratio).abs() < 0.006, "{row:?} {t:?}");
    }
    // What was measured is cpclink's data plane, and the file says so.
    let runner = v["tuned"]["runner"].as_str().unwrap();
    assert!(
        runner.starts_with("cpclink data plane over lo to 127.0.0.1: two engines"),
        "{runner}"
    );
    assert!(stdout.contains(runner), "{stdout}");
    let best = &v["tuned"]["best"];
    assert_eq!(
        v["dataplane"]["gso_segments"].as_integer(),
        best["gso_segments"].as_integer()
    );
    assert_eq!(v["dataplane"]["batch"].as_integer(), Some(8));
}
