//! `cpclink demo`: two appliances on loopback, encrypted synthetic traffic both ways, every
//! byte verified at the receiving sink, progress each second and a summary.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;

use cpclink_bench::dataplane::{LoopbackPair, PairOptions, SideStats};
use cpclink_bench::pacer::SourceRate;
use cpclink_bench::traffic::{MAX_PACKET, MIN_PACKET};
use cpclink_dataplane::engine::Protection;
use cpclink_dataplane::io::IoKind;

use crate::error::Error;

/// Arguments of `cpclink demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Workers per appliance.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// I/O backend: auto, io_uring or epoll.
    #[arg(long, default_value = "auto")]
    io: IoKind,
    /// Inner packet size in bytes.
    #[arg(long, default_value_t = 1400)]
    size: usize,
    /// Flows per direction.
    #[arg(long, default_value_t = 64)]
    flows: u32,
    /// Rate per direction: 5g (Gbit/s of inner packets), 800m, 200kpps, or max (unpaced,
    /// as the benchmark runs: the receiver then falls behind and the kernel drops).
    #[arg(long, default_value = "2g", value_parser = parse_rate)]
    rate: Rate,
}

/// A demo's rate: paced, or as fast as it goes.
#[derive(Debug, Clone, Copy)]
enum Rate {
    Paced(SourceRate),
    Max,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    s.parse().map(Rate::Paced)
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<(), Error> {
    if args.duration == 0 || args.duration > 3600 {
        return Err(Error::BadArgument {
            arg: "--duration",
            reason: format!(
                "{} is out of range (expected 1..=3600 seconds)",
                args.duration
            ),
        });
    }
    let sizes = MIN_PACKET..=MAX_PACKET;
    if !sizes.contains(&args.size) {
        return Err(Error::BadArgument {
            arg: "--size",
            reason: format!("{} is out of range (expected {sizes:?} bytes)", args.size),
        });
    }
    let mut out = std::io::stdout().lock();
    let pair = LoopbackPair::start(PairOptions {
        workers: args.workers.max(1),
        io: args.io,
        protection: Protection::Encrypted,
        payload: args.size,
        flows: args.flows.max(1),
        both_ways: true,
        batch_sends: cpclink_bench::dataplane::DEFAULT_BATCH_SENDS,
        gso_segments: cpclink_dataplane::io::udp::MAX_GSO_SEGMENTS,
        address: cpclink_bench::dataplane::LOOPBACK,
        rate: match args.rate {
            Rate::Paced(rate) => Some(rate),
            Rate::Max => None,
        },
        suite: cpclink_bench::dataplane::DEFAULT_SUITE,
        crypto: cpclink_dataplane::crypto::Backend::AwsLc,
        routes: 0,
        services: 0,
    })?;
    writeln!(
        out,
        "cpclink demo: appliances a ({}) and b ({}) on loopback, {} worker(s) each, {}, \
         AES-GCM-256 PSP, {} flows each way of {}-byte packets at {}, {} s",
        pair.a.local_addr(),
        pair.b.local_addr(),
        args.workers.max(1),
        pair.a.io(),
        args.flows.max(1),
        args.size,
        match args.rate {
            Rate::Paced(rate) => rate.to_string(),
            Rate::Max => "the most the sender can".into(),
        },
        args.duration
    )?;
    let start = Instant::now();
    let (mut last_a, mut last_b) = (SideStats::default(), SideStats::default());
    let mut last = start;
    for second in 1..=args.duration {
        std::thread::sleep(
            (start + Duration::from_secs(second)).saturating_duration_since(Instant::now()),
        );
        let (side_a, side_b) = pair.totals()?;
        let (a, b) = (side_a.engine, side_b.engine);
        let (ta, tb) = (side_a.traffic, side_b.traffic);
        let (la, lb) = (last_a.traffic, last_b.traffic);
        let now = Instant::now();
        let secs = (now - last).as_secs_f64();
        let drops = a.rx_dropped() + b.rx_dropped() + a.tx_dropped() + b.tx_dropped();
        writeln!(
            out,
            "{second:>4}s  a→b {:>6.2} Gbit/s {:>6.3} Mpps   b→a {:>6.2} Gbit/s {:>6.3} Mpps   \
             verified {:>9} pkts   dropped {drops}   lost in kernel {}",
            gbps(tb.sink.verified_bytes - lb.sink.verified_bytes, secs),
            (tb.sink.verified_packets - lb.sink.verified_packets) as f64 / secs / 1e6,
            gbps(ta.sink.verified_bytes - la.sink.verified_bytes, secs),
            (ta.sink.verified_packets - la.sink.verified_packets) as f64 / secs / 1e6,
            ta.sink.verified_packets + tb.sink.verified_packets,
            ta.sink.gaps + tb.sink.gaps,
        )?;
        (last_a, last_b, last) = (side_a, side_b, now);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (side_a, side_b) = pair.finish()?;
    let (a, b) = (side_a.engine, side_b.engine);
    let (ta, tb) = (side_a.traffic.sink, side_b.traffic.sink);
    writeln!(out, "\nsummary over {elapsed:.1} s:")?;
    for (name, sender, receiver, sink) in [("a→b", &a, &b, &tb), ("b→a", &b, &a, &ta)] {
        writeln!(
            out,
            "  {name}: sent {} packets, verified {} packets ({:.2} GiB, {:.2} Gbit/s average); \
             corrupt {}, out of order {}, lost in kernel {}, dropped by the receiver {}",
            sender.tx_packets,
            sink.verified_packets,
            sink.verified_bytes as f64 / f64::from(1u32 << 30),
            gbps(sink.verified_bytes, elapsed),
            sink.corrupt,
            sink.out_of_order,
            sink.gaps,
            receiver.rx_dropped(),
        )?;
    }
    let bad = ta.corrupt + tb.corrupt + ta.out_of_order + tb.out_of_order;
    let rejected = a.rx_auth_failed + b.rx_auth_failed + a.rx_replayed + b.rx_replayed;
    if bad > 0 || rejected > 0 {
        return Err(Error::Verification(format!(
            "{bad} packets corrupt or out of order, {rejected} rejected by the SAs"
        )));
    }
    if ta.verified_packets == 0 || tb.verified_packets == 0 {
        return Err(Error::Verification(
            "no traffic arrived in one direction".into(),
        ));
    }
    writeln!(out, "  every delivered byte verified; every flow in order.")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_paced_unless_it_is_max() {
        assert!(matches!(parse_rate("max"), Ok(Rate::Max)));
        assert!(matches!(
            parse_rate("2g"),
            Ok(Rate::Paced(SourceRate::BitsPerSecond(b))) if b == 2e9
        ));
        assert!(matches!(
            parse_rate("300kpps"),
            Ok(Rate::Paced(SourceRate::PacketsPerSecond(p))) if p == 300e3
        ));
        let e = parse_rate("fast").unwrap_err();
        assert!(e.contains("is not understood"), "{e}");
    }
}
