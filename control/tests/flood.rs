//! Floods survived: two `cpclink run` appliances (lab keys, a TUN tunnel each) carry valid
//! UDP paced at a fixed rate while a third namespace on the same bridge floods the receiving
//! appliance's PSP port with unknown-SPI, malformed and replayed packets, and the key
//! plane's QUIC port (an authority beside the receiver) with garbage and real connection
//! attempts. Measured and asserted:
//!
//! - the valid traffic's loss before and during the flood (at most 1% during);
//! - the receiver's drop counters by reason account for what the flooder sent, and no flood
//!   packet is delivered (no sequence number arrives twice, nothing fails to authenticate);
//! - the flooder's address is a configured peer's, so its made-up SPIs cost derivations
//!   from that peer's budget; the legitimate sender restarts mid-flood with fresh SPIs and
//!   its traffic flows again within half a second of it being up (its derivations come
//!   from its own budget);
//! - the QUIC listener keeps completing handshakes during the garbage flood.
//!
//! The helpers (paced source, sink, flooders) are this test binary itself, started inside
//! the namespaces in the role the environment names (see [`flood_role`]).
//!
//! Rates: valid 200 Mbit/s (25,000 datagrams of 1,000 bytes a second), asked flood 100,000
//! packets/s at the PSP port and 20,000 garbage datagrams/s plus 50 QUIC handshakes/s at the
//! key plane, all on this machine's two cores; `CPCLINK_FLOOD_VALID_PPS`, `CPCLINK_FLOOD_PPS`,
//! `CPCLINK_FLOOD_QUIC_PPS` and `CPCLINK_FLOOD_HANDSHAKES` change them. The pacers skip what
//! they cannot send in time rather than burst it later, and the test prints the rates they
//! achieved. Measured here (2 cores, load average 8 to 10 from other builds): valid loss 0%
//! before and 0% during a flood that reached 49,000 packets/s (the flooder gets what CPU is
//! left), every flood packet counted under its reason, the restarted peer flowing again
//! within the millisecond it was up; 500 Mbit/s of valid traffic lost 0.9% before any
//! flood, so 200 Mbit/s is the rate this machine carries loss-free. The debug profile is
//! optimised, so it carries these rates; `CPCLINK_FLOOD_BIN` names another `cpclink` (a
//! release build) when a slower machine needs it.
//! Needs root (namespaces, TUN) and tcpdump; skips with a reason otherwise.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::{netns_skip_reason, sh, Lab};

const KEY_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const KEY_A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const KEY_B: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";
const KEY_B2: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const KEY_C: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const KEY_C2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";

/// The environment variable that makes [`flood_role`] a helper, and its arguments.
const ROLE: &str = "CPCLINK_FLOOD_ROLE";
const ARGS: &str = "CPCLINK_FLOOD_ARGS";
/// Helper output lines the test reads start with this.
const MARK: &str = "flood:";

/// Bytes of each valid datagram (inner UDP payload).
const DATAGRAM: usize = 1000;
/// The sink's sequence buckets: a tenth of a second of the source's pacing each.
const BUCKETS_PER_SECOND: u64 = 10;
const SINK_PORT: u16 = 5400;
const PSP_PORT: u16 = 1000;
const QUIC_PORT: u16 = 7000;

/// Seconds of the timeline (from the source's start).
const QUIET_UNTIL: f64 = 7.0;
const FLOOD_SECS: f64 = 16.0;
const RESTART_AFTER: f64 = 7.0;
const SOURCE_SECS: f64 = QUIET_UNTIL + FLOOD_SECS + 3.0;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64: the flood's bytes need to be varied, not unpredictable.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let n = self.next().to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }
}

/// Paces `per_second` events in ticks of half a millisecond for `secs`, calling `send(i)`
/// for each. A pacer that falls behind (the machine is busy) skips the events it missed
/// rather than bursting them later, so the offered rate never exceeds what was asked;
/// returns how many events were skipped.
fn paced(per_second: u64, secs: f64, mut send: impl FnMut(u64)) -> u64 {
    let start = Instant::now();
    let total = (per_second as f64 * secs) as u64;
    let slack = per_second / 100 + 1;
    let (mut i, mut skipped) = (0, 0);
    while i < total && start.elapsed().as_secs_f64() < secs {
        let due = ((start.elapsed().as_secs_f64() * per_second as f64) as u64 + 1).min(total);
        if due > i + slack {
            skipped += due - slack - i;
            i = due - slack;
        }
        while i < due {
            send(i);
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    skipped
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK} {line}");
    let _ = out.flush();
}

/// The valid sender: `DST PPS SECS`. Datagrams carry their sequence number; a send that
/// fails (the tunnel is down while its appliance restarts) is not counted as sent.
fn role_source(args: &[String]) {
    let dst: SocketAddr = args[0].parse().unwrap();
    let pps: u64 = args[1].parse().unwrap();
    let secs: f64 = args[2].parse().unwrap();
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    let per_bucket = pps / BUCKETS_PER_SECOND;
    let buckets = (secs * BUCKETS_PER_SECOND as f64).ceil() as usize;
    let mut sent = vec![0u64; buckets + 1];
    let mut at = vec![0u64; buckets + 1];
    let mut datagram = [0u8; DATAGRAM];
    let start = unix_ms();
    say(format!("start {start}"));
    let skipped = paced(pps, secs, |seq| {
        let bucket = (seq / per_bucket) as usize;
        if at[bucket] == 0 {
            at[bucket] = unix_ms() - start;
        }
        datagram[..8].copy_from_slice(&seq.to_be_bytes());
        if socket.send_to(&datagram, dst).is_ok() {
            sent[bucket] += 1;
        }
    });
    say(format!("skipped {skipped}"));
    say(format!("at {}", join(&at)));
    say(format!("sent {}", join(&sent)));
}

/// The valid receiver: `BIND PPS SECS`. Counts datagrams per bucket of sequence numbers,
/// the duplicates and the malformed, and the gaps of over 50 ms in arrivals (at the valid
/// rates, thousands of datagrams).
fn role_sink(args: &[String]) {
    let bind: SocketAddr = args[0].parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    // The receiving application's own buffer (4 MiB, the host's rmem_max here) absorbs the
    // scheduling delays of a busy machine, as any bulk receiver's would: a drop there is
    // the sink's, not the tunnel's, and the test is about the tunnel.
    socket.set_recv_buffer_size(4 << 20).unwrap();
    socket.bind(&bind.into()).unwrap();
    let socket = UdpSocket::from(socket);
    let pps: u64 = args[1].parse().unwrap();
    let secs: f64 = args[2].parse().unwrap();
    let per_bucket = pps / BUCKETS_PER_SECOND;
    let total = (pps as f64 * secs) as u64;
    let mut seen = vec![false; total as usize + per_bucket as usize];
    let mut received = vec![0u64; seen.len() / per_bucket as usize + 1];
    let (mut duplicates, mut bad) = (0u64, 0u64);
    let mut gaps = Vec::new();
    let mut last: Option<u64> = None;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    say("ready".into());
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 8.0);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok(n) = socket.recv(&mut buf) else {
            if last.is_some_and(|l| {
                unix_ms() - l > 3000 && Instant::now() + Duration::from_secs(8) > deadline
            }) {
                break;
            }
            continue;
        };
        let now = unix_ms();
        if let Some(l) = last {
            if now - l > 50 {
                gaps.push((l, now));
            }
        }
        last = Some(now);
        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
        if n != DATAGRAM || buf[8..n].iter().any(|&b| b != 0) || seq as usize >= seen.len() {
            bad += 1;
            continue;
        }
        if std::mem::replace(&mut seen[seq as usize], true) {
            duplicates += 1;
        } else {
            received[(seq / per_bucket) as usize] += 1;
        }
    }
    say(format!("received {}", join(&received)));
    say(format!("duplicates {duplicates} bad {bad}"));
    for (from, to) in gaps {
        say(format!("gap {from} {to}"));
    }
}

/// The data-port flooder: `DST PPS SECS REPLAYS`, where REPLAYS holds captured PSP
/// datagrams, each after a 2-byte big-endian length. Kinds in turn: unknown SPI (a
/// well-formed PSP header, an SPI nobody allocated, junk ciphertext), malformed (shorter
/// than a PSP header), replayed (a captured datagram sent again).
fn role_flood(args: &[String]) {
    let dst: SocketAddr = args[0].parse().unwrap();
    let pps: u64 = args[1].parse().unwrap();
    let secs: f64 = args[2].parse().unwrap();
    let raw = std::fs::read(&args[3]).unwrap();
    let mut replays = Vec::new();
    let mut at = 0;
    while at + 2 <= raw.len() {
        let len = usize::from(u16::from_be_bytes([raw[at], raw[at + 1]]));
        replays.push(raw[at + 2..at + 2 + len].to_vec());
        at += 2 + len;
    }
    assert!(!replays.is_empty(), "no captured datagram to replay");
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut sent = [0u64; 3];
    let mut unknown = [0u8; 16 + 128 + 16];
    let mut short = [0u8; 15];
    let start = Instant::now();
    let skipped = paced(pps, secs, |i| {
        let kind = (i % 3) as usize;
        let ok = match kind {
            0 => {
                noise.fill(&mut unknown);
                // next header IPv4, hdr_ext_len 1, crypt offset 0, version 1 with the
                // always-one bit; SPI bit 31 either generation.
                unknown[..4].copy_from_slice(&[4, 1, 0, 0x05]);
                socket.send_to(&unknown, dst)
            }
            1 => {
                noise.fill(&mut short);
                let len = 1 + (noise.next() % 15) as usize;
                socket.send_to(&short[..len], dst)
            }
            _ => socket.send_to(&replays[(i / 3) as usize % replays.len()], dst),
        };
        if ok.is_ok() {
            sent[kind] += 1;
        }
    });
    let secs = start.elapsed().as_secs_f64();
    say(format!(
        "sent unknown {} malformed {} replayed {} secs {secs:.2} skipped {skipped}",
        sent[0], sent[1], sent[2]
    ));
}

/// The key-plane flooder: `DST GARBAGE_PPS HANDSHAKES_PER_SECOND SECS CA_PEM`. Garbage
/// datagrams (half of them shaped like QUIC Initials of 1,200 bytes, so the listener
/// derives Initial keys and tries them) from one thread; real QUIC connections with TLS
/// handshakes to the authority, closed at once, from another.
fn role_quic(args: &[String]) {
    let dst: SocketAddr = args[0].parse().unwrap();
    let pps: u64 = args[1].parse().unwrap();
    let rate: u64 = args[2].parse().unwrap();
    let secs: f64 = args[3].parse().unwrap();
    let ca =
        cpclink_keymgr::pki::cert_from_pem(&std::fs::read_to_string(&args[4]).unwrap()).unwrap();
    let garbage = std::thread::spawn(move || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut noise = Noise(0x2545_f491_4f6c_dd1d);
        let mut buf = [0u8; 1200];
        let mut sent = 0u64;
        paced(pps, secs, |i| {
            noise.fill(&mut buf);
            let len = if i % 2 == 0 {
                // Long header, Initial, version 1, 8-byte DCID and SCID.
                buf[..6].copy_from_slice(&[0xc3, 0, 0, 0, 1, 8]);
                buf[14] = 8;
                1200
            } else {
                1 + (noise.next() % 1200) as usize
            };
            if socket.send_to(&buf[..len], dst).is_ok() {
                sent += 1;
            }
        });
        sent
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (attempted, ok, times) = runtime.block_on(async move {
        let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(cpclink_keymgr::tls::client_config(&ca, None).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        let start = Instant::now();
        let total = (rate as f64 * secs) as u64;
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let connecting = endpoint.connect(dst, cpclink_keymgr::pki::AUTHORITY_NAME);
            tasks.spawn(async move {
                let begun = Instant::now();
                let connecting = connecting.ok()?;
                let conn = tokio::time::timeout(Duration::from_secs(3), connecting)
                    .await
                    .ok()?
                    .ok()?;
                let took = begun.elapsed();
                conn.close(0u32.into(), b"flood");
                Some(took)
            });
        }
        let mut times = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(Some(took)) = done {
                times.push(took.as_secs_f64() * 1000.0);
            }
        }
        endpoint.wait_idle().await;
        (total, times.len(), times)
    });
    let mut times = times;
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let garbage = garbage.join().unwrap();
    say(format!(
        "quic garbage {garbage} attempted {attempted} completed {ok} p50_ms {:.1} p99_ms {:.1}",
        pct(0.5),
        pct(0.99)
    ));
}

fn join(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Not a test of its own: the helpers of
/// [`flood_keeps_valid_loss_under_one_percent_and_derivations_apart`], run inside a
/// namespace by that test with `CPCLINK_FLOOD_ROLE` set; without it, returns at once.
#[test]
#[ignore = "a helper role the flood test starts inside a namespace"]
fn flood_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<String> = std::env::var(ARGS)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    match role.as_str() {
        "source" => role_source(&args),
        "sink" => role_sink(&args),
        "flood" => role_flood(&args),
        "quic" => role_quic(&args),
        other => panic!("no role {other}"),
    }
}

/// A helper's output lines after the marker, keyed by their first word.
fn said(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // libtest prints `test flood_role ... ` before the first line, on the same line.
    for line in out
        .lines()
        .filter_map(|l| l.find(MARK).map(|at| &l[at + MARK.len()..]))
    {
        let mut words = line.split_whitespace();
        if let Some(key) = words.next() {
            lines
                .entry(key.to_owned())
                .or_default()
                .push(words.collect::<Vec<_>>().join(" "));
        }
    }
    lines
}

fn numbers(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// `word value` pairs of a line as a map.
fn pairs(line: &str) -> BTreeMap<String, f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .chunks(2)
        .filter_map(|p| Some((p[0].to_owned(), p.get(1)?.parse().ok()?)))
        .collect()
}

fn config(listen: &str, peers: &[(&str, &str, &str, [&str; 2])], own: [&str; 2]) -> String {
    let mut text = format!(
        "[appliance]\nlisten = \"{listen}:{PSP_PORT}\"\nworkers = 1\nio = \"auto\"\n\
         master_keys = [\"{}\", \"{}\"]\n\n[tun]\nname = \"cpc0\"\npath_mtu = 1500\n",
        own[0], own[1]
    );
    for (name, endpoint, prefix, keys) in peers {
        text += &format!(
            "\n[[peers]]\nname = \"{name}\"\nendpoint = \"{endpoint}:{PSP_PORT}\"\n\
             prefixes = [\"{prefix}\"]\nmaster_keys = [\"{}\", \"{}\"]\n",
            keys[0], keys[1]
        );
    }
    text
}

/// UDP datagrams the kernel of namespace `ns` dropped for full receive buffers.
fn rcvbuf_errors(ns: &str) -> u64 {
    let snmp = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).unwrap();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let names: Vec<&str> = udp[0].split_whitespace().collect();
    let values: Vec<&str> = udp[1].split_whitespace().collect();
    names
        .iter()
        .position(|n| *n == "RcvbufErrors")
        .and_then(|i| values[i].parse().ok())
        .unwrap_or(0)
}

/// The PSP datagrams (UDP payloads to the PSP port) of an Ethernet pcap, length-prefixed.
fn psp_payloads(pcap: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + caplen).min(pcap.len())];
        at += 16 + caplen;
        if frame.len() < 14 + 20 || u16::from_be_bytes([frame[12], frame[13]]) != 0x0800 {
            continue;
        }
        let ip = &frame[14..];
        let udp = &ip[usize::from(ip[0] & 0x0f) * 4..];
        if ip[9] != 17 || u16::from_be_bytes([udp[2], udp[3]]) != PSP_PORT {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]])) - 8;
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&udp[8..8 + len]);
    }
    out
}

/// A helper role of this test binary in namespace `ns`.
fn helper(lab: &mut Lab, ns: &str, name: &str, role: &str, args: &str) {
    let exe = std::env::current_exe().unwrap();
    let role = format!("{ROLE}={role}");
    let args = format!("{ARGS}={args}");
    lab.spawn(
        ns,
        name,
        &[
            "env",
            &role,
            &args,
            exe.to_str().unwrap(),
            "flood_role",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
    );
}

/// Starts `cpclink run` (or `CPCLINK_FLOOD_BIN`) with `DIR/NAME.toml` in `ns`.
fn appliance(lab: &mut Lab, ns: &str, name: &str) -> u32 {
    let bin = std::env::var("CPCLINK_FLOOD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cpclink").to_owned());
    let conf = lab.dir.join(format!("{name}.toml")).display().to_string();
    lab.spawn(ns, name, &[&bin, "run", "--config", &conf])
}

/// Interrupts `name` (its final counters go to its stdout) and waits for it.
fn stop(lab: &mut Lab, name: &str, pid: u32) {
    sh(&["kill", "-INT", &pid.to_string()]).unwrap();
    let status = lab.child(name).wait().unwrap();
    assert!(status.success(), "{name} exits cleanly\n{}", lab.logs());
    lab.wait(name);
}

/// The last final-counters line of `name`'s stdout.
fn counters(lab: &Lab, name: &str, nth_from_end: usize) -> serde_json::Value {
    let out = lab.log(name, "out");
    let line = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .rev()
        .nth(nth_from_end)
        .unwrap_or_else(|| panic!("final counters of {name}\n{}", lab.logs()));
    serde_json::from_str(line).unwrap()
}

/// Loss over the buckets that lie wholly inside the `[from, to)` windows (ms from the
/// source's start): (sent, received).
fn loss_in(sent: &[u64], received: &[u64], at: &[u64], windows: &[(u64, u64)]) -> (u64, u64) {
    let bucket_ms = 1000 / BUCKETS_PER_SECOND;
    let mut totals = (0, 0);
    for (b, &s) in sent.iter().enumerate() {
        let start = at[b];
        if s == 0 || b + 1 >= sent.len() {
            continue;
        }
        if windows
            .iter()
            .any(|&(from, to)| start >= from && start + bucket_ms <= to)
        {
            totals.0 += s;
            totals.1 += received.get(b).copied().unwrap_or(0).min(s);
        }
    }
    totals
}

#[test]
fn flood_keeps_valid_loss_under_one_percent_and_derivations_apart() {
    if let Some(reason) = netns_skip_reason(&["ip", "tcpdump", "env"]) {
        println!("skipped: {reason}");
        return;
    }
    let valid_pps = env_u64("CPCLINK_FLOOD_VALID_PPS", 25_000);
    let flood_pps = env_u64("CPCLINK_FLOOD_PPS", 100_000);
    let quic_pps = env_u64("CPCLINK_FLOOD_QUIC_PPS", 20_000);
    let handshakes = env_u64("CPCLINK_FLOOD_HANDSHAKES", 50);
    let id = std::process::id();
    let names = ["hub", "a", "b", "f"].map(|n| format!("cpf-{n}-{id}"));
    let mut lab = Lab::new("flood", names.to_vec());
    let [hub, a, b, f] = names;
    let short = id % 100_000;
    let mut setup = vec![
        format!("ip netns add {hub}"),
        format!("ip -n {hub} link add br0 type bridge"),
        format!("ip -n {hub} link set br0 up"),
    ];
    for (ns, host) in [(&a, 1), (&b, 2), (&f, 3)] {
        let (inner, outer) = (format!("cf{host}i{short}"), format!("cf{host}o{short}"));
        setup.extend([
            format!("ip netns add {ns}"),
            format!("ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"),
            format!("ip link add {inner} netns {ns} type veth peer name {outer} netns {hub}"),
            format!("ip -n {hub} link set {outer} master br0 up"),
            format!("ip -n {ns} link set lo up"),
            format!("ip -n {ns} addr add 10.96.0.{host}/24 dev {inner}"),
            format!("ip -n {ns} link set {inner} up"),
        ]);
    }
    for cmd in &setup {
        sh(&cmd.split_whitespace().collect::<Vec<_>>()).unwrap();
    }
    let b_veth = format!("cf2i{short}");

    // b knows a third peer, c, at the flooder's address: its made-up SPIs are derived
    // against (and throttled by) c's budget, not a's.
    let d = lab.dir.clone();
    std::fs::write(
        d.join("a.toml"),
        config(
            "10.96.0.1",
            &[("b", "10.96.0.2", "10.200.0.2/32", [KEY_B, KEY_B2])],
            [KEY_A, KEY_A2],
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("b.toml"),
        config(
            "10.96.0.2",
            &[
                ("a", "10.96.0.1", "10.200.0.1/32", [KEY_A, KEY_A2]),
                ("c", "10.96.0.3", "10.200.0.3/32", [KEY_C, KEY_C2]),
            ],
            [KEY_B, KEY_B2],
        ),
    )
    .unwrap();
    // The key plane beside b: an authority on b's address (minting a token creates its CA).
    std::fs::write(d.join("kek"), "3e".repeat(32)).unwrap();
    std::fs::write(
        d.join("authority.toml"),
        format!(
            "listen = \"10.96.0.2:{QUIC_PORT}\"\nstate_dir = \"{}\"\nkek_file = \"{}\"\n",
            d.join("authority").display(),
            d.join("kek").display()
        ),
    )
    .unwrap();
    lab.keymgr(&["token", "create", "--appliance", "x", "--centre", "dc1"])
        .unwrap();
    let authority_toml = d.join("authority.toml").display().to_string();
    lab.cpclink(
        &b,
        "authority",
        &["keymgr", "run", "--config", &authority_toml],
    );
    lab.wait_for("the authority", || lab.keymgr(&["status"]).is_ok());

    let pid_a = appliance(&mut lab, &a, "a");
    let pid_b = appliance(&mut lab, &b, "b");
    lab.wait_for("both appliances up", || {
        lab.log("a", "err").contains("transmit SPIs")
            && lab.log("b", "err").contains("transmit SPIs")
    });
    for (ns, addr) in [(&a, "10.200.0.1/24"), (&b, "10.200.0.2/24")] {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", "cpc0"]).unwrap();
    }
    let rcvbuf_before = rcvbuf_errors(&b);

    helper(
        &mut lab,
        &b,
        "sink",
        "sink",
        &format!("10.200.0.2:{SINK_PORT} {valid_pps} {SOURCE_SECS}"),
    );
    lab.wait_for("the sink", || {
        said(&lab.log("sink", "out")).contains_key("ready")
    });
    // A capture of a's datagrams, for the flooder to replay.
    let pcap = d.join("replay.pcap").display().to_string();
    lab.spawn(
        &b,
        "tcpdump",
        &[
            "tcpdump",
            "-i",
            &b_veth,
            "-n",
            "-U",
            "-s",
            "0",
            "-c",
            "300",
            "-w",
            &pcap,
            "udp and src host 10.96.0.1 and dst port 1000",
        ],
    );
    lab.wait_for("tcpdump", || {
        lab.log("tcpdump", "err").contains("listening")
    });
    helper(
        &mut lab,
        &a,
        "source",
        "source",
        &format!("10.200.0.2:{SINK_PORT} {valid_pps} {SOURCE_SECS}"),
    );
    lab.wait_for("the source", || {
        said(&lab.log("source", "out")).contains_key("start")
    });
    let source_start: u64 = said(&lab.log("source", "out"))["start"][0].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.child("tcpdump").try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the capture\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let replays = psp_payloads(&std::fs::read(&pcap).unwrap());
    std::fs::write(d.join("replays"), &replays).unwrap();

    let at = |secs: f64| source_start + (secs * 1000.0) as u64;
    let sleep_until = |when: u64| {
        let now = unix_ms();
        if when > now {
            std::thread::sleep(Duration::from_millis(when - now));
        }
    };
    sleep_until(at(QUIET_UNTIL));
    let flood_start = unix_ms();
    let replays_path = d.join("replays").display().to_string();
    helper(
        &mut lab,
        &f,
        "flood",
        "flood",
        &format!("10.96.0.2:{PSP_PORT} {flood_pps} {FLOOD_SECS} {replays_path}"),
    );
    let ca = d.join("authority").join("ca.pem").display().to_string();
    helper(
        &mut lab,
        &f,
        "quic",
        "quic",
        &format!("10.96.0.2:{QUIC_PORT} {quic_pps} {handshakes} {FLOOD_SECS} {ca}"),
    );

    // Mid-flood, a restarts: new random SPIs that b must derive while c's budget is spent.
    sleep_until(flood_start + (RESTART_AFTER * 1000.0) as u64);
    let restart_begun = unix_ms();
    stop(&mut lab, "a", pid_a);
    let pid_a = appliance(&mut lab, &a, "a");
    lab.wait_for("a up again", || {
        lab.log("a", "err").matches("transmit SPIs").count() >= 2
    });
    sh(&[
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
    let a_ready = unix_ms();

    lab.wait_for("the flooders to finish", || {
        said(&lab.log("flood", "out")).contains_key("sent")
            && said(&lab.log("quic", "out")).contains_key("quic")
    });
    let flood_end = unix_ms();
    lab.wait_for("the source to finish", || {
        said(&lab.log("source", "out")).contains_key("sent")
    });
    lab.wait_for("the sink to finish", || {
        said(&lab.log("sink", "out")).contains_key("received")
    });
    let rcvbuf_dropped = rcvbuf_errors(&b) - rcvbuf_before;
    stop(&mut lab, "b", pid_b);
    stop(&mut lab, "a", pid_a);
    let authority_alive = lab.keymgr(&["status"]).is_ok();

    // The figures.
    let source = said(&lab.log("source", "out"));
    let sink = said(&lab.log("sink", "out"));
    let sent = numbers(&source["sent"][0]);
    let at_ms = numbers(&source["at"][0]);
    let received = numbers(&sink["received"][0]);
    let rel = |t: u64| t.saturating_sub(source_start);
    let before = loss_in(&sent, &received, &at_ms, &[(1000, rel(flood_start))]);
    let during = loss_in(
        &sent,
        &received,
        &at_ms,
        &[
            (rel(flood_start) + 500, rel(restart_begun)),
            (rel(a_ready) + 1000, rel(flood_end).saturating_sub(500)),
        ],
    );
    let loss = |(s, r): (u64, u64)| 100.0 * (s - r) as f64 / s.max(1) as f64;
    let flood = pairs(&said(&lab.log("flood", "out"))["sent"][0]);
    let quic = pairs(&said(&lab.log("quic", "out"))["quic"][0]);
    let b_stats = counters(&lab, "b", 0);
    let a_sealed: u64 = (0..2)
        .map(|n| counters(&lab, "a", n)["tx_packets"].as_u64().unwrap_or(0))
        .sum();
    let count = |name: &str| b_stats[name].as_u64().unwrap_or(0);
    let resumed = sink
        .get("gap")
        .into_iter()
        .flatten()
        .map(|g| numbers(g))
        .filter(|g| g[1] >= restart_begun)
        .map(|g| g[1])
        .next();
    let flood_total = flood["unknown"] + flood["malformed"] + flood["replayed"];
    let flood_rate = flood_total / flood["secs"];
    let reasons = [
        "rx_unknown_spi",
        "rx_derive_throttled",
        "rx_malformed",
        "rx_replayed",
        "rx_too_old",
        "rx_unknown_peer",
        "rx_auth_failed",
        "rx_iv_out_of_range",
        "rx_rejected",
    ];
    println!(
        "valid {valid_pps} datagrams/s of {DATAGRAM} B ({:.0} Mbit/s; {} not offered while the source was behind): loss before {:.3}% ({}/{}), during {:.3}% ({}/{})",
        valid_pps as f64 * DATAGRAM as f64 * 8.0 / 1e6,
        source["skipped"][0],
        loss(before),
        before.0 - before.1,
        before.0,
        loss(during),
        during.0 - during.1,
        during.0
    );
    println!(
        "the source offered {}, a sealed {a_sealed} (both runs), b delivered {}, the sink received {}",
        sent.iter().sum::<u64>(),
        count("rx_delivered"),
        received.iter().sum::<u64>()
    );
    println!(
        "flood at the PSP port: {flood_total:.0} packets in {:.1} s = {flood_rate:.0}/s (asked {flood_pps}/s; {} skipped while the flooder was behind): unknown SPI {}, malformed {}, replayed {}",
        flood["secs"], flood["skipped"], flood["unknown"], flood["malformed"], flood["replayed"]
    );
    println!(
        "b's drops by reason: {}; UDP receive-buffer drops in b's namespace {rcvbuf_dropped}",
        reasons
            .iter()
            .map(|r| format!("{r} {}", count(r)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "key plane: {:.0} garbage datagrams; {:.0} of {:.0} QUIC handshakes completed during the flood, p50 {:.1} ms, p99 {:.1} ms; authority answers after: {authority_alive}",
        quic["garbage"], quic["completed"], quic["attempted"], quic["p50_ms"], quic["p99_ms"]
    );
    println!(
        "a restarted mid-flood: down {} ms, its traffic flowed again {} ms after it was up",
        a_ready - restart_begun,
        resumed.map_or("never".into(), |r| (r as i64 - a_ready as i64).to_string())
    );

    // What the flood must not do.
    let (duplicates, bad) = {
        let d = pairs(&format!("duplicates {}", sink["duplicates"][0]));
        (d["duplicates"], d["bad"])
    };
    assert_eq!(duplicates, 0.0, "a replayed datagram was delivered twice");
    assert_eq!(bad, 0.0, "a flood packet was delivered to the sink");
    assert_eq!(
        count("rx_auth_failed"),
        0,
        "nothing the flooder sent authenticates"
    );
    let valid_sent: u64 = sent.iter().sum();
    assert!(
        count("rx_delivered") <= valid_sent,
        "b delivered {} inner packets, a's source sent {valid_sent}: flood packets delivered",
        count("rx_delivered")
    );

    // The drops account for the flood: each reason at most what was sent of its kind, and
    // together, with what the kernel dropped before b read it, the whole flood.
    assert!(count("rx_unknown_spi") as f64 <= flood["unknown"]);
    assert!(count("rx_malformed") as f64 <= flood["malformed"]);
    let replays_counted = count("rx_replayed") + count("rx_too_old");
    assert!(replays_counted as f64 <= flood["replayed"]);
    let counted = count("rx_unknown_spi") + count("rx_malformed") + replays_counted;
    assert!(
        (counted + rcvbuf_dropped) as f64 >= 0.99 * flood_total,
        "b counted {counted} of {flood_total} flood packets (the kernel dropped {rcvbuf_dropped})"
    );
    assert!(
        count("rx_derive_throttled") > 0,
        "the made-up SPIs from c's address spent c's derivation budget"
    );

    // And what it must not take.
    assert!(
        loss(before) <= 0.1,
        "the valid rate is not carried without loss before the flood: {:.3}%; lower CPCLINK_FLOOD_VALID_PPS or use CPCLINK_FLOOD_BIN",
        loss(before)
    );
    assert!(
        loss(during) <= 1.0,
        "valid loss during the flood {:.3}% > 1%",
        loss(during)
    );
    let resumed = resumed.expect("a's traffic flowed again after its restart");
    assert!(
        resumed.saturating_sub(a_ready) <= 500,
        "a's traffic flowed again {} ms after it was up: its derivations were starved",
        resumed.saturating_sub(a_ready)
    );
    assert!(authority_alive, "the authority answers after the flood");
    assert!(
        quic["completed"] >= 0.9 * quic["attempted"],
        "the QUIC listener completed {} of {} handshakes during the flood",
        quic["completed"],
        quic["attempted"]
    );
}
