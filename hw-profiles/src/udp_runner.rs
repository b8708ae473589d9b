//! A throughput runner with plain UDP sockets: each worker is a sender/receiver pair; the
//! sender writes GSO super-datagrams (UDP_SEGMENT) in bursts, the receiver reads them
//! coalesced (UDP_GRO) and counts bytes. It measures the kernel's UDP path, which bounds
//! what the data plane can reach: `cpclink hw tune` runs it beside the engine as the
//! baseline of every point.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};

use crate::error::{HwError, Result};
use crate::tune::{Measurement, TrialConfig, TuneRunner};

/// UDP throughput between sockets on one address.
#[derive(Debug, Clone)]
pub struct UdpRunner {
    dev: String,
    addr: IpAddr,
    payload: usize,
    warmup: Duration,
    window: Duration,
}

impl UdpRunner {
    /// A runner for `dev`, sending to `addr` (an address of that device), `payload` bytes per
    /// datagram, measuring over `window` after `warmup`.
    pub fn new(
        dev: &str,
        addr: IpAddr,
        payload: usize,
        warmup: Duration,
        window: Duration,
    ) -> Self {
        Self {
            dev: dev.to_owned(),
            addr,
            payload,
            warmup,
            window,
        }
    }

    /// The first IPv4 address of `dev` (127.0.0.1 for `lo`).
    pub fn address_of(dev: &str) -> Result<IpAddr> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| HwError::Netlink {
            request: "getifaddrs",
            dev: dev.to_owned(),
            message: e.to_string(),
        })?;
        addrs
            .filter(|a| a.interface_name == dev)
            .find_map(|a| {
                a.address
                    .and_then(|s| s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())))
            })
            .ok_or_else(|| {
                HwError::InvalidArgument(format!(
                    "{dev} has no IPv4 address to send to (tune sends to an address of the interface; try --dev lo)"
                ))
            })
    }
}

impl TuneRunner for UdpRunner {
    fn describe(&self) -> String {
        format!(
            "udp sockets over {} to {}: UDP_SEGMENT send, UDP_GRO receive, one sender/receiver pair per worker; payload goodput",
            self.dev, self.addr
        )
    }

    fn payload_bytes(&self) -> usize {
        self.payload
    }

    fn trial_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    fn run(&mut self, t: TrialConfig) -> Result<Measurement> {
        let fail = |message: String| HwError::Trial {
            batch: t.batch,
            gso_segments: t.gso_segments,
            workers: t.workers,
            message,
        };
        // An IPv4 UDP datagram carries at most 65507 bytes; a GSO send is one datagram.
        let size = self.payload * usize::from(t.gso_segments);
        if size > 65507 || t.gso_segments == 0 || t.batch == 0 || t.workers == 0 {
            return Err(fail(format!(
                "{} B x {} segments = {size} B does not fit one UDP send (at most 65507 B), or a count is 0",
                self.payload, t.gso_segments
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..t.workers {
            let rx = UdpSocket::bind(SocketAddr::new(self.addr, 0))
                .map_err(|e| fail(format!("bind receiver: {e}")))?;
            setsockopt(&rx, sockopt::UdpGroSegment, &true)
                .map_err(|e| fail(format!("UDP_GRO: {e}")))?;
            setsockopt(&rx, sockopt::RcvBuf, &(8 << 20))
                .map_err(|e| fail(format!("SO_RCVBUF: {e}")))?;
            rx.set_read_timeout(Some(Duration::from_millis(20)))
                .map_err(|e| fail(e.to_string()))?;
            let to = rx.local_addr().map_err(|e| fail(e.to_string()))?;
            let tx = UdpSocket::bind(SocketAddr::new(self.addr, 0))
                .map_err(|e| fail(format!("bind sender: {e}")))?;
            tx.connect(to).map_err(|e| fail(format!("connect: {e}")))?;
            if t.gso_segments > 1 {
                setsockopt(&tx, sockopt::UdpGsoSegment, &(self.payload as i32))
                    .map_err(|e| fail(format!("UDP_SEGMENT: {e}")))?;
            }
            let (stop_rx, count) = (Arc::clone(&stop), Arc::clone(&received));
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop_rx.load(Ordering::Relaxed) {
                    if let Ok(n) = rx.recv(&mut buf) {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }));
            let stop_tx = Arc::clone(&stop);
            let datagram = vec![0x5au8; self.payload * usize::from(t.gso_segments)];
            let batch = t.batch;
            threads.push(std::thread::spawn(move || {
                while !stop_tx.load(Ordering::Relaxed) {
                    for _ in 0..batch {
                        // A full socket buffer (ENOBUFS/EAGAIN) just drops this send: the
                        // receiver's count is what is measured.
                        let _ = tx.send(&datagram);
                    }
                }
            }));
        }
        std::thread::sleep(self.warmup);
        let (b0, t0) = (received.load(Ordering::Relaxed), Instant::now());
        std::thread::sleep(self.window);
        let (b1, elapsed) = (received.load(Ordering::Relaxed), t0.elapsed());
        stop.store(true, Ordering::Relaxed);
        for th in threads {
            th.join()
                .map_err(|_| fail("a worker thread panicked".into()))?;
        }
        let bytes = (b1 - b0) as f64;
        let secs = elapsed.as_secs_f64();
        Ok(Measurement {
            gbps: bytes * 8.0 / secs / 1e9,
            mpps: bytes / self.payload as f64 / secs / 1e6,
            baseline_gbps: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_trial_moves_data_and_gso_counts_segments() {
        let mut r = UdpRunner::new(
            "lo",
            UdpRunner::address_of("lo").unwrap(),
            1400,
            Duration::from_millis(20),
            Duration::from_millis(150),
        );
        let one = r
            .run(TrialConfig {
                batch: 8,
                gso_segments: 1,
                workers: 1,
            })
            .unwrap();
        let gso = r
            .run(TrialConfig {
                batch: 8,
                gso_segments: 16,
                workers: 1,
            })
            .unwrap();
        assert!(one.gbps > 0.01 && gso.gbps > 0.01, "{one:?} {gso:?}");
        let too_big = r
            .run(TrialConfig {
                batch: 8,
                gso_segments: 47,
                workers: 1,
            })
            .unwrap_err()
            .to_string();
        assert!(
            too_big.contains("65800 B does not fit one UDP send"),
            "{too_big}"
        );
        // Gbit/s and Mpps describe the same bytes: Gbit/s = Mpps * payload * 8 / 1000.
        for m in [one, gso] {
            assert!((m.gbps - m.mpps * 1400.0 * 8.0 / 1000.0).abs() < 1e-6 * m.gbps.max(1.0));
        }
    }
}
