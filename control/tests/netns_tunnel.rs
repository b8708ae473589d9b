//! Two network namespaces joined by a veth pair, `cpclink run` with a TUN tunnel in each:
//! ping and a 256 MiB TCP transfer through the tunnel with SHA-256 compared at both ends; a
//! capture on the veth holds only PSP over UDP and never the canary sent through the tunnel.
//! Needs root (namespaces, TUN); skips with a reason otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{netns_skip_reason, sh as run};

const CANARY: &str = "CPCLINK-CANARY-7f3a9c-never-on-the-wire";
const PSP_PORT: u16 = 1000;
const WORKERS: usize = 2;
const TRANSFER: u64 = 256 << 20;
const KEY_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const KEY_A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const KEY_B: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";
const KEY_B2: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
c.close()
"#;

const CLIENT: &str = r#"
import hashlib, os, socket, sys, time
total, canary = int(sys.argv[3]), sys.argv[4].encode()
noise = os.urandom(65536)
h, sent = hashlib.sha256(), 0
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
start = time.time()
i = 0
while sent < total:
    block = (i.to_bytes(8, "big") + canary + noise)[: min(65536, total - sent)]
    s.sendall(block)
    h.update(block)
    sent += len(block)
    i += 1
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(sent, h.hexdigest(), time.time() - start, flush=True)
"#;

/// Counts the UDP datagrams that arrive intact, reading with UDP_GRO so a super-packet the
/// tunnel wrote to TUN arrives as one read: prints "ready", then "datagrams reads-of-several bad".
const UDP_SERVER: &str = r#"
import socket, sys
total = int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
s.setsockopt(17, 104, 1)  # SOL_UDP, UDP_GRO
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print("ready", flush=True)
n = several = bad = 0
try:
    while n < total:
        data, anc, _, _ = s.recvmsg(65536, 64)
        seg = len(data)
        for level, kind, value in anc:
            if level == 17 and kind == 104:
                seg = int.from_bytes(value[:4], sys.byteorder)
        several += len(data) > seg
        for off in range(0, len(data), seg):
            d = data[off : off + seg]
            i = int.from_bytes(d[:8], "big")
            bad += d != i.to_bytes(8, "big") + bytes((i + k) & 0xFF for k in range(len(d) - 8))
            n += 1
except socket.timeout:
    pass
print(n, several, bad, flush=True)
"#;

/// Sends datagrams of 1000 bytes in UDP_SEGMENT batches of 40, paced.
const UDP_CLIENT: &str = r#"
import socket, sys, time
total = int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 1000)  # SOL_UDP, UDP_SEGMENT
def datagram(i):
    return i.to_bytes(8, "big") + bytes((i + k) & 0xFF for k in range(992))
for first in range(0, total, 40):
    s.sendto(b"".join(datagram(i) for i in range(first, min(first + 40, total))), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
print("sent", total, flush=True)
"#;
const UDP_DATAGRAMS: usize = 2000;

/// Sends SIGINT (what Ctrl-C sends) through the shell's built-in `kill`.
fn interrupt(pid: u32) -> Result<String, String> {
    run(&["sh", "-c", &format!("kill -INT {pid}")])
}

/// The namespaces, the processes in them and the scratch directory; all removed on drop.
struct Lab {
    a: String,
    b: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = run(&["ip", "netns", "del", &self.a]);
        let _ = run(&["ip", "netns", "del", &self.b]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> u32 {
        let out = fs::File::create(self.dir.join(format!("{log}.out"))).unwrap();
        let err = fs::File::create(self.dir.join(format!("{log}.err"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(out)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn log(&self, log: &str, stream: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{log}.{stream}"))).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gave up waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        ["a", "b"]
            .iter()
            .map(|n| format!("--- cpclink {n}:\n{}", self.log(n, "err")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One TCP transfer from a to b's `addr`; returns (bytes, sha at a, sha at b, seconds).
    fn transfer(&mut self, addr: &str, port: u16, tag: &str) -> (u64, String, String, f64) {
        let (a, b) = (self.a.clone(), self.b.clone());
        let port_s = port.to_string();
        self.spawn(&b, &["python3", "-c", SERVER, addr, &port_s], tag);
        self.wait_for("the TCP server", || {
            self.log(tag, "out").starts_with("ready")
        });
        let sent = self
            .exec(
                &a,
                &[
                    "python3",
                    "-c",
                    CLIENT,
                    addr,
                    &port_s,
                    &TRANSFER.to_string(),
                    CANARY,
                ],
            )
            .unwrap_or_else(|e| panic!("client: {e}\n{}", self.logs()));
        self.wait_for("the server's checksum", || {
            self.log(tag, "out").lines().count() >= 2
        });
        let received = self.log(tag, "out");
        let server: Vec<&str> = received
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        let client: Vec<&str> = sent.split_whitespace().collect();
        assert_eq!(server[0], client[0], "bytes received vs sent");
        (
            client[0].parse().unwrap(),
            client[1].to_string(),
            server[1].to_string(),
            client[2].parse().unwrap(),
        )
    }
}

fn config(
    listen: &str,
    peer: &str,
    peer_prefix: &str,
    own: [&str; 2],
    theirs: [&str; 2],
) -> String {
    format!(
        "[appliance]\nlisten = \"{listen}:{PSP_PORT}\"\nworkers = {WORKERS}\nio = \"auto\"\n\
         master_keys = [\"{}\", \"{}\"]\n\n[tun]\nname = \"cpc0\"\npath_mtu = 1500\n\n\
         [[peers]]\nname = \"peer\"\nendpoint = \"{peer}:{PSP_PORT}\"\nprefixes = [\"{peer_prefix}\"]\n\
         master_keys = [\"{}\", \"{}\"]\n",
        own[0], own[1], theirs[0], theirs[1]
    )
}

/// Checks every captured frame: ARP, or IPv4 UDP between the PSP ports carrying a PSP
/// header; and that the canary appears nowhere. Returns the PSP frames seen.
fn check_capture(pcap: &[u8]) -> usize {
    assert!(pcap.len() >= 24, "no capture");
    assert_eq!(
        u32::from_le_bytes(pcap[20..24].try_into().unwrap()),
        1,
        "Ethernet capture"
    );
    assert!(
        !pcap.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
        "the canary appears on the veth"
    );
    let mut at = 24;
    let mut psp = 0;
    let mut sources: BTreeMap<[u8; 4], BTreeSet<u16>> = BTreeMap::new();
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if ethertype == 0x0806 {
            continue;
        }
        assert_eq!(ethertype, 0x0800, "only IPv4 (and ARP) on the veth");
        let ip = &frame[14..];
        assert_eq!(ip[9], 17, "only UDP on the veth");
        let udp = &ip[usize::from(ip[0] & 0x0f) * 4..];
        let (sport, dport) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        assert_eq!(dport, PSP_PORT, "only to PSP's port");
        // Each worker sends from a port of its own (flow entropy for ECMP).
        let src = [ip[12], ip[13], ip[14], ip[15]];
        sources.entry(src).or_default().insert(sport);
        let header = &udp[8..];
        assert_eq!(header[1], 1, "PSP hdr_ext_len");
        assert_eq!((header[3] >> 2) & 0x0f, 1, "PSP version 1 (AES-GCM-256)");
        psp += 1;
    }
    for (src, ports) in &sources {
        assert!(
            ports.len() <= WORKERS && !ports.contains(&PSP_PORT),
            "{src:?} sent from {ports:?}: one port per worker, none the listen port"
        );
    }
    psp
}

#[test]
fn tunnel_between_namespaces_carries_tcp_encrypted() {
    if let Some(reason) = netns_skip_reason(&["ip", "tcpdump", "ping", "python3"]) {
        println!("skipped: {reason}");
        return;
    }
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("cpclink-netns-{id}"));
    fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        a: format!("cpc-a-{id}"),
        b: format!("cpc-b-{id}"),
        dir,
        children: Vec::new(),
    };
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let (va, vb) = (
        format!("cva{}", id % 100_000),
        format!("cvb{}", id % 100_000),
    );
    for cmd in [
        format!("ip netns add {a}"),
        format!("ip netns add {b}"),
        format!("ip link add {va} netns {a} type veth peer name {vb} netns {b}"),
        format!("ip netns exec {a} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"),
        format!("ip netns exec {b} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"),
        format!("ip -n {a} link set lo up"),
        format!("ip -n {b} link set lo up"),
        format!("ip -n {a} addr add 10.99.0.1/24 dev {va}"),
        format!("ip -n {b} addr add 10.99.0.2/24 dev {vb}"),
        format!("ip -n {a} link set {va} up"),
        format!("ip -n {b} link set {vb} up"),
    ] {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        run(&args).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_cpclink");
    fs::write(
        lab.dir.join("a.toml"),
        config(
            "10.99.0.1",
            "10.99.0.2",
            "10.200.0.2/32",
            [KEY_A, KEY_A2],
            [KEY_B, KEY_B2],
        ),
    )
    .unwrap();
    fs::write(
        lab.dir.join("b.toml"),
        config(
            "10.99.0.2",
            "10.99.0.1",
            "10.200.0.1/32",
            [KEY_B, KEY_B2],
            [KEY_A, KEY_A2],
        ),
    )
    .unwrap();
    let conf_a = lab.dir.join("a.toml").display().to_string();
    let conf_b = lab.dir.join("b.toml").display().to_string();
    let pid_a = lab.spawn(&a, &[bin, "run", "--config", &conf_a], "a");
    let pid_b = lab.spawn(&b, &[bin, "run", "--config", &conf_b], "b");
    for (ns, log) in [(&a, "a"), (&b, "b")] {
        lab.wait_for("cpclink to come up", || {
            lab.log(log, "err").contains("transmit SPIs")
        });
        let _ = ns;
    }
    run(&[
        "ip",
        "-n",
        &a,
        "addr",
        "add",
        "10.200.0.1/24",
        "dev",
        "cpc0",
    ])
    .unwrap();
    run(&[
        "ip",
        "-n",
        &b,
        "addr",
        "add",
        "10.200.0.2/24",
        "dev",
        "cpc0",
    ])
    .unwrap();
    let mtu = run(&["ip", "-n", &a, "link", "show", "cpc0"]).unwrap();
    assert!(
        mtu.contains("mtu 1440"),
        "TUN MTU is the path MTU less IPv4, UDP and PSP: {mtu}"
    );

    let pcap = lab.dir.join("veth.pcap").display().to_string();
    let pid_tcpdump = lab.spawn(
        &b,
        &[
            "tcpdump", "-i", &vb, "-n", "-U", "-s", "0", "-c", "40000", "-w", &pcap,
        ],
        "tcpdump",
    );
    lab.wait_for("tcpdump", || {
        lab.log("tcpdump", "err").contains("listening")
    });

    lab.exec(
        &a,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.200.0.2"],
    )
    .unwrap_or_else(|e| panic!("ping through the tunnel: {e}\n{}", lab.logs()));
    let (bytes, sha_a, sha_b, secs) = lab.transfer("10.200.0.2", 5201, "tcp-tunnel");
    assert!(bytes >= TRANSFER);
    assert_eq!(sha_a, sha_b, "SHA-256 at both ends of the tunnel");
    let tunnel_gbps = bytes as f64 * 8.0 / secs / 1e9;

    // UDP: the sender's kernel hands the tunnel USO super-packets; the receiving tunnel
    // coalesces the decrypted datagrams into USO super-packets again, which a UDP_GRO
    // socket reads whole.
    let udp_port = "5301";
    lab.spawn(
        &b,
        &[
            "python3",
            "-c",
            UDP_SERVER,
            "10.200.0.2",
            udp_port,
            &UDP_DATAGRAMS.to_string(),
        ],
        "udp",
    );
    lab.wait_for("the UDP server", || {
        lab.log("udp", "out").starts_with("ready")
    });
    lab.exec(
        &a,
        &[
            "python3",
            "-c",
            UDP_CLIENT,
            "10.200.0.2",
            udp_port,
            &UDP_DATAGRAMS.to_string(),
        ],
    )
    .unwrap_or_else(|e| panic!("UDP client: {e}\n{}", lab.logs()));
    lab.wait_for("the UDP count", || {
        lab.log("udp", "out").lines().count() >= 2
    });
    let counts: Vec<usize> = lab
        .log("udp", "out")
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts[0], UDP_DATAGRAMS, "UDP datagrams through the tunnel");
    assert_eq!(counts[2], 0, "UDP datagrams corrupted");
    assert!(
        counts[1] > 0,
        "no UDP super-packet reached the receiver: {counts:?}"
    );

    // `ip netns exec` execs its command, so the pid is tcpdump's; it may have exited already.
    let _ = interrupt(pid_tcpdump);
    std::thread::sleep(Duration::from_millis(300));
    let frames = check_capture(&fs::read(&pcap).unwrap());
    assert!(
        frames > 1000,
        "the capture saw the transfer ({frames} PSP frames)"
    );

    // The same transfer over the bare veth, in the same run, for comparison.
    let (bytes, _, _, secs) = lab.transfer("10.99.0.2", 5202, "tcp-veth");
    let veth_gbps = bytes as f64 * 8.0 / secs / 1e9;
    println!(
        "TCP through the tunnel {tunnel_gbps:.2} Gbit/s; over the bare veth {veth_gbps:.2} Gbit/s; ratio {:.2}",
        tunnel_gbps / veth_gbps
    );

    for pid in [pid_a, pid_b] {
        interrupt(pid).unwrap();
    }
    for (i, log) in ["a", "b"].iter().enumerate() {
        let status = lab.children[i].wait().unwrap();
        assert!(
            status.success(),
            "cpclink {log} exits cleanly on Ctrl-C\n{}",
            lab.logs()
        );
        let stats: serde_json::Value = serde_json::from_str(lab.log(log, "out").trim())
            .unwrap_or_else(|e| panic!("final counters of {log}: {e}\n{}", lab.logs()));
        assert!(stats["rx_delivered"].as_u64().unwrap() > 0);
        assert_eq!(stats["rx_auth_failed"], 0);
        assert_eq!(stats["tx_no_sa"], 0);
        let count = |name: &str| {
            let n = stats[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{log}'s final counters lack {name}"));
            assert!(n > 0, "{log} counted no {name}");
            n as f64
        };
        if *log == "a" {
            // A sent the bulk: the kernel handed it TCP super-packets, each cut into many.
            let per_read = count("tx_packets") / count("tun_reads");
            assert!(
                per_read >= 4.0,
                "{per_read:.1} inner packets per TUN read at a: no super-packets from the kernel"
            );
        } else {
            // B received it: decrypted segments went back to the kernel coalesced.
            let per_write = count("rx_delivered") / count("tun_writes");
            assert!(
                per_write >= 4.0,
                "{per_write:.1} inner packets per TUN write at b: segments were not coalesced"
            );
            println!("b wrote {per_write:.1} inner packets per TUN write");
        }
    }
}

/// SIGHUP re-reads the configuration: a new prefix for the peer routes at once while a
/// steady ping loses nothing; a broken file is refused with its error and the running
/// configuration keeps working.
#[test]
fn sighup_changes_routes_without_losing_a_packet_and_refuses_a_bad_file() {
    if let Some(reason) = netns_skip_reason(&["ip", "tcpdump", "ping", "python3"]) {
        println!("skipped: {reason}");
        return;
    }
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("cpclink-reload-{id}"));
    fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        a: format!("cpc-ra-{id}"),
        b: format!("cpc-rb-{id}"),
        dir,
        children: Vec::new(),
    };
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let (va, vb) = (
        format!("cra{}", id % 100_000),
        format!("crb{}", id % 100_000),
    );
    for cmd in [
        format!("ip netns add {a}"),
        format!("ip netns add {b}"),
        format!("ip link add {va} netns {a} type veth peer name {vb} netns {b}"),
        format!("ip -n {a} link set lo up"),
        format!("ip -n {b} link set lo up"),
        format!("ip -n {a} addr add 10.97.0.1/24 dev {va}"),
        format!("ip -n {b} addr add 10.97.0.2/24 dev {vb}"),
        format!("ip -n {a} link set {va} up"),
        format!("ip -n {b} link set {vb} up"),
    ] {
        run(&cmd.split_whitespace().collect::<Vec<_>>()).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_cpclink");
    let a_conf = |prefixes: &str| {
        config(
            "10.97.0.1",
            "10.97.0.2",
            "10.200.0.2/32",
            [KEY_A, KEY_A2],
            [KEY_B, KEY_B2],
        )
        .replace("prefixes = [\"10.200.0.2/32\"]", prefixes)
    };
    let conf_a = lab.dir.join("a.toml");
    fs::write(&conf_a, a_conf("prefixes = [\"10.200.0.2/32\"]")).unwrap();
    fs::write(
        lab.dir.join("b.toml"),
        config(
            "10.97.0.2",
            "10.97.0.1",
            "10.200.0.1/32",
            [KEY_B, KEY_B2],
            [KEY_A, KEY_A2],
        ),
    )
    .unwrap();
    let conf_b = lab.dir.join("b.toml").display().to_string();
    let pid_a = lab.spawn(&a, &[bin, "run", "--config", conf_a.to_str().unwrap()], "a");
    lab.spawn(&b, &[bin, "run", "--config", &conf_b], "b");
    lab.wait_for("both appliances up", || {
        lab.log("a", "err").contains("transmit SPIs")
            && lab.log("b", "err").contains("transmit SPIs")
    });
    for (ns, addr) in [
        (&a, "10.200.0.1/24"),
        (&b, "10.200.0.2/24"),
        (&b, "10.200.0.3/32"),
    ] {
        run(&["ip", "-n", ns, "addr", "add", addr, "dev", "cpc0"]).unwrap();
    }
    lab.exec(&a, &["ping", "-c", "3", "-W", "2", "10.200.0.2"])
        .unwrap_or_else(|e| panic!("ping before the reload: {e}\n{}", lab.logs()));
    // Lab mode says plainly what it does not protect against.
    assert!(
        lab.log("a", "err").contains(
            "a receiver keeps no replay state across restarts, so packets captured before a restart are accepted once more after it"
        ),
        "{}",
        lab.logs()
    );
    assert!(
        lab.exec(&a, &["ping", "-c", "1", "-W", "1", "10.200.0.3"])
            .is_err(),
        "10.200.0.3 is not routed before the reload"
    );

    // A steady flow across both reloads: 400 pings, 5 ms apart.
    lab.spawn(
        &a,
        &["ping", "-i", "0.005", "-c", "400", "-W", "2", "10.200.0.2"],
        "steady",
    );
    std::thread::sleep(Duration::from_millis(500));
    fs::write(
        &conf_a,
        a_conf("prefixes = [\"10.200.0.2/32\", \"10.200.0.3/32\"]"),
    )
    .unwrap();
    run(&["kill", "-HUP", &pid_a.to_string()]).unwrap();
    lab.wait_for("the reload", || {
        lab.log("a", "err")
            .contains("reload 1 applied: peers or routes changed")
    });
    lab.exec(&a, &["ping", "-c", "2", "-W", "2", "10.200.0.3"])
        .unwrap_or_else(|e| panic!("the new prefix routes after SIGHUP: {e}\n{}", lab.logs()));

    fs::write(
        &conf_a,
        "[appliance]\nlisten = \"10.97.0.1:1000\"\nworkers = \"two\"\n",
    )
    .unwrap();
    run(&["kill", "-HUP", &pid_a.to_string()]).unwrap();
    lab.wait_for("the refusal", || {
        lab.log("a", "err")
            .contains("the running configuration stays")
    });
    let log = lab.log("a", "err");
    assert!(
        log.contains("a.toml:3: [appliance].workers: invalid type"),
        "the refusal names the file, the line and the field: {log}"
    );
    lab.exec(&a, &["ping", "-c", "2", "-W", "2", "10.200.0.3"])
        .unwrap_or_else(|e| {
            panic!(
                "the running configuration stays after a bad file: {e}\n{}",
                lab.logs()
            )
        });

    lab.wait_for("the steady flow to end", || {
        lab.log("steady", "out").contains("packets transmitted")
    });
    let steady = lab.log("steady", "out");
    assert!(
        steady.contains("400 packets transmitted, 400 received"),
        "no packet of the steady flow lost across the reloads: {steady}"
    );
    interrupt(pid_a).unwrap();
}
