//! The tuning runner `cpclink hw tune` uses: each trial is the data plane benchmark, two
//! cpclink engines sending encrypted synthetic flows (AES-GCM-256 PSP) to each other on an
//! address of the device, at the trial's batch, GSO segments and workers; beside it, at the
//! same point, plain UDP sockets measure what the kernel's path allows.

use std::net::IpAddr;
use std::time::Duration;

use cpclink_bench::dataplane::{self as suite, PairOptions};
use cpclink_bench::traffic::{MAX_PACKET, MIN_PACKET};
use cpclink_dataplane::engine::Protection;
use cpclink_dataplane::io::{udp::MAX_GSO_SEGMENTS, IoKind};
use cpclink_hw::tune::{Measurement, TrialConfig, TuneRunner};
use cpclink_hw::udp_runner::UdpRunner;
use cpclink_hw::HwError;

/// Measures cpclink's encrypted data plane, and optionally plain UDP beside it.
#[derive(Debug)]
pub struct EngineRunner {
    dev: String,
    address: IpAddr,
    payload: usize,
    window: Duration,
    io: IoKind,
    baseline: Option<UdpRunner>,
}

impl EngineRunner {
    /// A runner on `address` (an address of `dev`) with `payload`-byte inner packets,
    /// measuring over `window` after the suite's warm-up; with `baseline`, each trial also
    /// runs plain UDP sockets at the same batch, GSO segments and workers.
    pub fn new(
        dev: &str,
        address: IpAddr,
        payload: usize,
        window: Duration,
        baseline: bool,
    ) -> Result<Self, HwError> {
        if !(MIN_PACKET..=MAX_PACKET).contains(&payload) {
            return Err(HwError::InvalidArgument(format!(
                "--payload {payload} is out of range (expected {MIN_PACKET}..={MAX_PACKET} bytes, the synthetic packet sizes)"
            )));
        }
        Ok(Self {
            dev: dev.to_owned(),
            address,
            payload,
            window,
            io: IoKind::Auto,
            baseline: baseline
                .then(|| UdpRunner::new(dev, address, payload, Duration::from_millis(50), window)),
        })
    }
}

impl TuneRunner for EngineRunner {
    fn describe(&self) -> String {
        let baseline = if self.baseline.is_some() {
            "; udp_gbps: plain UDP sockets (UDP_SEGMENT send, UDP_GRO receive) at the same point"
        } else {
            ""
        };
        format!(
            "cpclink data plane over {} to {}: two engines, {} flows of AES-GCM-256 PSP one way, {} I/O, one worker per core each side; inner bytes the receiver verified{baseline}",
            self.dev,
            self.address,
            suite::FLOWS,
            self.io,
        )
    }

    fn payload_bytes(&self) -> usize {
        self.payload
    }

    fn trial_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    fn run(&mut self, t: TrialConfig) -> Result<Measurement, HwError> {
        let fail = |message: String| HwError::Trial {
            batch: t.batch,
            gso_segments: t.gso_segments,
            workers: t.workers,
            message,
        };
        if t.batch == 0
            || t.workers == 0
            || !(1..=MAX_GSO_SEGMENTS).contains(&t.gso_segments.into())
        {
            return Err(fail(format!(
                "batch and workers must be at least 1 and GSO segments in 1..={MAX_GSO_SEGMENTS}"
            )));
        }
        let options = PairOptions {
            workers: t.workers,
            io: self.io,
            protection: Protection::Encrypted,
            payload: self.payload,
            flows: suite::FLOWS,
            both_ways: false,
            batch_sends: t.batch as usize,
            gso_segments: usize::from(t.gso_segments),
            address: self.address,
            rate: None,
            suite: suite::DEFAULT_SUITE,
            crypto: cpclink_dataplane::crypto::Backend::AwsLc,
            routes: 0,
            services: 0,
        };
        let row = suite::measure(options, self.window).map_err(|e| fail(e.to_string()))?;
        let baseline_gbps = match &mut self.baseline {
            Some(udp) => Some(udp.run(t)?.gbps),
            None => None,
        };
        Ok(Measurement {
            gbps: row.gbps,
            mpps: row.mpps,
            baseline_gbps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_measures_the_engine_at_the_given_point() {
        let addr = UdpRunner::address_of("lo").unwrap();
        let mut r = EngineRunner::new("lo", addr, 1000, Duration::from_millis(150), true).unwrap();
        let m = r
            .run(TrialConfig {
                batch: 4,
                gso_segments: 8,
                workers: 1,
            })
            .unwrap();
        assert!(m.gbps > 0.0 && m.mpps > 0.0, "{m:?}");
        // Verified inner bytes and packets describe the same traffic of 1000-byte packets.
        assert!(
            (m.gbps - m.mpps * 1000.0 * 8.0 / 1000.0).abs() < 1e-6 * m.gbps.max(1.0),
            "{m:?}"
        );
        assert!(m.baseline_gbps.is_some_and(|g| g > 0.0), "{m:?}");
        assert!(r
            .describe()
            .starts_with("cpclink data plane over lo to 127.0.0.1"));
        let e = r
            .run(TrialConfig {
                batch: 4,
                gso_segments: 65,
                workers: 1,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("GSO segments in 1..=64"), "{e}");
        let e = EngineRunner::new("lo", addr, 8, Duration::from_millis(1), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--payload 8 is out of range"), "{e}");
    }
}
