//! Restarts under traffic: three appliances keyed by the key plane in three network
//! namespaces on one bridge; pings run from two of them into the third while it is
//! restarted cleanly (SIGTERM) and then killed (SIGKILL). The longest gap in its inbound
//! traffic is measured and bounded, and a capture of everything sent to it shows no
//! (SPI, IV) pair twice. Needs root (namespaces, TUN, tcpdump); skips with a reason
//! otherwise.

use std::collections::HashSet;
use std::time::{Duration, Instant};

mod common;
use common::{netns_skip_reason, sh, Lab};

/// The longest acceptable silence into a restarted appliance.
const MAX_GAP: Duration = Duration::from_secs(3);

/// The reply times (seconds, from `ping -D`) of a ping log.
fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// The longest silence between `from` and `until` (epoch seconds): between replies, and
/// from the last reply to `until` (no reply at all is one silence as long as the window).
fn longest_gap(times: &[f64], from: f64, until: f64) -> f64 {
    let mut last = from;
    let mut longest = 0.0f64;
    for &t in times.iter().filter(|&&t| t >= from && t <= until) {
        longest = longest.max(t - last);
        last = t;
    }
    longest.max(until - last)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// (destination, SPI, IV) of every PSP packet in a pcap (Ethernet, IPv4, UDP to 1000).
fn psp_nonces(pcap: &[u8]) -> Vec<([u8; 4], u32, u64)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        if frame.len() < 14 + 20 + 8 + 16 || u16::from_be_bytes([frame[12], frame[13]]) != 0x0800 {
            continue;
        }
        let ip = &frame[14..];
        if ip[9] != 17 {
            continue;
        }
        let udp = &ip[usize::from(ip[0] & 0x0f) * 4..];
        if udp.len() < 8 + 16 || u16::from_be_bytes([udp[2], udp[3]]) != 1000 {
            continue;
        }
        let psp = &udp[8..];
        let spi = u32::from_be_bytes(psp[4..8].try_into().unwrap());
        let iv = u64::from_be_bytes(psp[8..16].try_into().unwrap());
        out.push(([ip[16], ip[17], ip[18], ip[19]], spi, iv));
    }
    out
}

#[test]
fn a_restarted_appliance_gets_traffic_again_within_seconds_and_no_nonce_repeats() {
    if let Some(reason) = netns_skip_reason(&["ip", "ping", "tcpdump"]) {
        println!("skipped: {reason}");
        return;
    }
    let id = std::process::id();
    let names = ["a", "b", "c"];
    let wan = format!("cpr-w-{id}");
    let mut lab = Lab::new(
        "restart",
        std::iter::once(wan.clone())
            .chain(names.iter().map(|n| format!("cpr-{n}-{id}")))
            .collect(),
    );
    let dir = lab.dir.clone();
    let ns = |n: &str| format!("cpr-{n}-{id}");
    let mut setup = vec![
        format!("ip netns add {wan}"),
        format!("ip -n {wan} link add br0 type bridge"),
        format!("ip -n {wan} link set br0 up"),
    ];
    for (i, n) in names.iter().enumerate() {
        let (inner, outer) = (
            format!("r{n}{}", id % 10_000),
            format!("w{n}{}", id % 10_000),
        );
        setup.extend([
            format!("ip netns add {}", ns(n)),
            format!(
                "ip link add {inner} netns {} type veth peer name {outer} netns {wan}",
                ns(n)
            ),
            format!("ip -n {wan} link set {outer} master br0 up"),
            format!("ip -n {} link set lo up", ns(n)),
            format!("ip -n {} addr add 10.96.0.{}/24 dev {inner}", ns(n), i + 1),
            format!("ip -n {} link set {inner} up", ns(n)),
        ]);
    }
    for cmd in &setup {
        sh(&cmd.split_whitespace().collect::<Vec<_>>()).unwrap();
    }
    std::fs::write(dir.join("kek"), "4d".repeat(32)).unwrap();
    std::fs::write(
        dir.join("authority.toml"),
        format!(
            "listen = \"10.96.0.1:7000\"\nstate_dir = \"{}\"\nkek_file = \"{}\"\n",
            dir.join("authority").display(),
            dir.join("kek").display()
        ),
    )
    .unwrap();
    for (i, n) in names.iter().enumerate() {
        let token = lab
            .keymgr(&[
                "token",
                "create",
                "--appliance",
                n,
                "--centre",
                &format!("dc{}", i + 1),
                "--prefix",
                &format!("10.202.0.{}/32", i + 1),
            ])
            .unwrap();
        std::fs::write(dir.join(format!("{n}.token")), token.trim()).unwrap();
    }
    let a_ns = ns("a");
    lab.cpclink(
        &a_ns,
        "authority",
        &[
            "keymgr",
            "run",
            "--config",
            dir.join("authority.toml").to_str().unwrap(),
        ],
    );
    lab.wait_for("the authority", || lab.keymgr(&["status"]).is_ok());
    // Prefixes come from the directory: each announces its own /32 (as assigned with its
    // token); c also announces a's, a hijack the authority must refuse.
    for (i, n) in names.iter().enumerate() {
        let announce = if *n == "c" {
            "\"10.202.0.3/32\", \"10.202.0.1/32\"".to_owned()
        } else {
            format!("\"10.202.0.{}/32\"", i + 1)
        };
        std::fs::write(
            dir.join(format!("{n}.toml")),
            format!(
                "[appliance]\nlisten = \"10.96.0.{0}:1000\"\nworkers = 1\n\n[tun]\nname = \"cpc0\"\n\n\
                 [keymgr]\nappliance = \"{n}\"\nauthority = \"10.96.0.1:7000\"\nlisten = \"10.96.0.{0}:7001\"\n\
                 state_dir = \"{n}-agent\"\nkek_file = \"kek\"\nca_cert = \"authority/ca.pem\"\n\
                 token_file = \"{n}.token\"\nprefixes = [{announce}]\n",
                i + 1
            ),
        )
        .unwrap();
    }
    let start = |lab: &mut Lab, n: &str| {
        let config = dir.join(format!("{n}.toml")).display().to_string();
        lab.cpclink(&ns(n), n, &["run", "--config", &config])
    };
    let mut pids = std::collections::BTreeMap::new();
    for n in names {
        pids.insert(n, start(&mut lab, n));
    }
    let keyed = |log: &str, peer: &str| log.contains(&format!("worker 0 sends to {peer} with SA"));
    lab.wait_for("every appliance keyed to every other", || {
        names.iter().all(|n| {
            let log = lab.log(n, "err");
            names.iter().filter(|p| *p != n).all(|p| keyed(&log, p))
        })
    });
    let add_inner = |n: &str, i: usize| {
        sh(&[
            "ip",
            "-n",
            &ns(n),
            "addr",
            "add",
            &format!("10.202.0.{i}/24"),
            "dev",
            "cpc0",
        ])
        .unwrap();
    };
    for (i, n) in names.iter().enumerate() {
        add_inner(n, i + 1);
    }
    // Everything sent to c, captured on c's side of the bridge.
    let c_port = format!("wc{}", id % 10_000);
    lab.spawn(
        &wan,
        "capture",
        &[
            "tcpdump",
            "-i",
            &c_port,
            "-U",
            "-w",
            dir.join("c.pcap").to_str().unwrap(),
            "udp",
            "dst",
            "port",
            "1000",
            "and",
            "dst",
            "host",
            "10.96.0.3",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    for from in ["a", "b"] {
        lab.spawn(
            &ns(from),
            &format!("ping-{from}"),
            &["ping", "-D", "-i", "0.02", "-W", "1", "10.202.0.3"],
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    for from in ["a", "b"] {
        assert!(
            !reply_times(&lab.log(&format!("ping-{from}"), "out")).is_empty(),
            "{from} reaches c before any restart, routed by the directory's prefixes\n{}",
            lab.logs()
        );
    }
    // c's claim on a's prefix was refused: c learns it, and b still reaches a.
    assert!(
        lab.log("c", "err")
            .contains("authority refused prefix 10.202.0.1/32"),
        "{}",
        lab.logs()
    );
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns("b"),
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "10.202.0.1",
    ])
    .unwrap_or_else(|e| panic!("b reaches a, not the hijacker: {e}\n{}", lab.logs()));
    let status = lab.keymgr(&["status"]).unwrap();
    assert!(status.contains("10.202.0.3/32"), "{status}");

    let mut gaps = Vec::new();
    for (how, signal) in [("SIGTERM", "-TERM"), ("SIGKILL", "-KILL")] {
        let at = now();
        sh(&["kill", signal, &pids["c"].to_string()]).unwrap();
        lab.wait("c");
        pids.insert("c", start(&mut lab, "c"));
        // The TUN device is new: its inner address goes back on as soon as it exists.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sh(&[
            "ip",
            "-n",
            &ns("c"),
            "addr",
            "add",
            "10.202.0.3/24",
            "dev",
            "cpc0",
        ])
        .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "c's TUN device came back\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(MAX_GAP * 3);
        let until = now();
        for from in ["a", "b"] {
            let times = reply_times(&lab.log(&format!("ping-{from}"), "out"));
            let gap = longest_gap(&times, at, until);
            println!("{how}: longest gap in {from}'s pings into c: {gap:.2} s");
            gaps.push((how, from, gap));
        }
    }
    for (how, from, gap) in &gaps {
        assert!(
            *gap <= MAX_GAP.as_secs_f64(),
            "after {how}, {from}'s pings into c stopped for {gap:.2} s (at most {MAX_GAP:?})\n{}",
            lab.logs()
        );
    }
    sh(&["ip", "netns", "exec", &wan, "pkill", "-INT", "tcpdump"]).ok();
    lab.wait("capture");
    let pcap = std::fs::read(dir.join("c.pcap")).unwrap();
    let nonces = psp_nonces(&pcap);
    assert!(
        nonces.len() > 100,
        "the capture holds the pings: {}",
        nonces.len()
    );
    let mut seen = HashSet::new();
    for n in &nonces {
        assert!(
            seen.insert(*n),
            "(SPI, IV) {:08x}/{} sent to c twice",
            n.1,
            n.2
        );
    }
}

#[test]
fn a_silence_to_the_end_of_the_window_counts_as_a_gap() {
    assert_eq!(longest_gap(&[], 10.0, 19.0), 9.0);
    assert_eq!(longest_gap(&[9.0, 10.5, 11.0, 14.0, 18.5], 10.0, 19.0), 4.5);
    assert_eq!(longest_gap(&[10.1, 10.2], 10.0, 15.2), 5.0);
}
