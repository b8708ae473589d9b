//! `cpclink srv6`: SRH decode and encode, and the CATS what-if path selector.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use cpclink_bench::path as bench;
use cpclink_srv6::inspect::decode_packet;
use cpclink_srv6::select::SelectorConfig;
use cpclink_srv6::{HmacKey, PathSelector, SegmentList, SrhRepr, Topology};

/// SRv6 packet tools and path selection.
#[derive(Debug, Args)]
pub struct Srv6Args {
    #[command(subcommand)]
    command: Srv6Command,
}

#[derive(Debug, Subcommand)]
enum Srv6Command {
    /// Decode the SRH of an IPv6 packet (hex, starting at the IPv6 header) and print JSON.
    Decode {
        /// The packet in hex; spaces and colons are ignored.
        #[arg(long)]
        packet: String,
        /// Verify the HMAC TLV with this key, as KEYID:SECRET_HEX.
        #[arg(long, value_name = "KEYID:SECRET_HEX")]
        hmac_key: Option<String>,
    },
    /// Build an SRH for a segment list and print it in hex.
    Encode {
        /// Segments in visiting order (first visited first), comma-separated.
        #[arg(long)]
        segments: String,
        /// Next Header after the SRH (41: IPv6 inside, 4: IPv4 inside).
        #[arg(long, default_value_t = 41)]
        next_header: u8,
        /// Add an HMAC TLV with this key, as KEYID:SECRET_HEX (needs --source).
        #[arg(long, value_name = "KEYID:SECRET_HEX")]
        hmac_key: Option<String>,
        /// Outer IPv6 source address: part of the HMAC text.
        #[arg(long)]
        source: Option<Ipv6Addr>,
    },
    /// What-if path selection: read a topology and service request, print the chosen site,
    /// its segment list and why (file format: srv6/README.md).
    Select {
        /// Topology file (TOML).
        #[arg(long)]
        input: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark: selection decisions per second, and seg6 route programming rate (root).
    Bench {
        /// Sites in the synthetic topology.
        #[arg(long, default_value_t = 1000)]
        sites: usize,
        /// Candidate (site, path) pairs.
        #[arg(long, default_value_t = 10_000)]
        paths: usize,
        /// Seconds to run the selection benchmark.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Routes to program (0 skips; needs root).
        #[arg(long, default_value_t = 1000)]
        routes: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `cpclink srv6 ...`.
pub fn run(args: Srv6Args) -> ExitCode {
    match execute(args) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cpclink srv6: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: Srv6Args) -> Result<String, String> {
    match args.command {
        Srv6Command::Decode { packet, hmac_key } => {
            let clean: String = packet
                .chars()
                .filter(|c| !c.is_whitespace() && *c != ':')
                .collect();
            let bytes = hex::decode(&clean).map_err(|e| format!("--packet is not hex: {e}"))?;
            let key = hmac_key
                .as_deref()
                .map(HmacKey::parse)
                .transpose()
                .map_err(|e| format!("--hmac-key: {e}"))?;
            let decoded = decode_packet(&bytes, key.as_ref()).map_err(|e| e.to_string())?;
            let json = serde_json::to_string_pretty(&decoded).map_err(|e| e.to_string())?;
            if key.is_some() {
                // Asked to verify: anything but a verified HMAC is a failure (as `psp open`
                // fails a packet that does not authenticate), with the decode still shown.
                let refusal = match &decoded.hmac {
                    None => Some("the SRH carries no HMAC TLV to verify".to_owned()),
                    Some(h) if h.valid != Some(true) => Some(format!(
                        "the HMAC (key id {}) does not verify with --hmac-key{}",
                        h.key_id,
                        h.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    )),
                    Some(_) => None,
                };
                if let Some(refusal) = refusal {
                    println!("{json}");
                    return Err(refusal);
                }
            }
            Ok(json)
        }
        Srv6Command::Encode {
            segments,
            next_header,
            hmac_key,
            source,
        } => {
            let list = SegmentList::parse(&segments).map_err(|e| format!("--segments: {e}"))?;
            let mut srh = SrhRepr::from_segment_list(&list, next_header);
            if let Some(k) = hmac_key {
                let key = HmacKey::parse(&k).map_err(|e| format!("--hmac-key: {e}"))?;
                let source = source
                    .ok_or("--hmac-key needs --source: the HMAC covers the outer source address")?;
                srh.sign(source, &key).map_err(|e| e.to_string())?;
            }
            srh.to_bytes().map(hex::encode).map_err(|e| e.to_string())
        }
        Srv6Command::Select { input, json } => {
            let topo = Topology::load(&input).map_err(|e| e.to_string())?;
            let decision = PathSelector::new(SelectorConfig::default())
                .decide(&topo, topo.now_ms)
                .map_err(|e| e.to_string())?;
            if json {
                return serde_json::to_string_pretty(&decision).map_err(|e| e.to_string());
            }
            Ok(format!(
                "site {} via {}\nsegments {}\n{}",
                decision.site,
                topo.describe_path(decision.path_index),
                decision.segments,
                decision.explanation
            ))
        }
        Srv6Command::Bench {
            sites,
            paths,
            seconds,
            routes,
            json,
        } => {
            let duration = std::time::Duration::try_from_secs_f64(seconds)
                .map_err(|e| format!("--seconds: {e}"))?;
            let sel = bench::selection(sites, paths, duration).map_err(|e| e.to_string())?;
            let prog = match routes {
                0 => None,
                n => Some(match cpclink_bench::netns::unavailable() {
                    Some(reason) => Err(format!("skipped: {reason}")),
                    None => bench::programming(n).map_err(|e| e.to_string()),
                }),
            };
            // Where the SRH is added: by the kernel's seg6 route or by the engine itself.
            let srh = prog.as_ref().map(|p| match p {
                Ok(_) => bench::srh_cost(200_000, 1400 + 32).map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            });
            if json {
                let prog = prog.map(|p| match p {
                    Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                });
                let srh = srh.map(|r| match r {
                    Ok(r) => serde_json::to_value(r).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e }),
                });
                return serde_json::to_string_pretty(
                    &serde_json::json!({ "selection": sel, "programming": prog, "srh": srh }),
                )
                .map_err(|e| e.to_string());
            }
            let mut out = format!(
                "selection: {} sites, {} candidate paths: {:.0} decisions/s ({:.2e} candidates/s; {} decisions in {:.2} s)",
                sel.sites, sel.candidate_paths, sel.decisions_per_sec, sel.candidates_per_sec, sel.decisions, sel.seconds
            );
            match prog {
                Some(Ok(p)) => out.push_str(&format!(
                    "\nprogramming {} seg6 encap routes (2 SIDs + HMAC TLV): add {:.0}/s, reconcile-replace {:.0}/s, reconcile-no-op {:.0}/s, remove {:.0}/s",
                    p.routes, p.add_per_sec, p.reconcile_replace_per_sec, p.reconcile_noop_per_sec, p.remove_per_sec
                )),
                Some(Err(e)) => out.push_str(&format!("\nprogramming: {e}")),
                None => {}
            }
            if let Some(Ok(r)) = srh {
                out.push_str(&format!(
                    "\nSRH with HMAC on {} B datagrams, CPU per datagram:\
                     \n  one per send: plain route {:.0} ns, kernel seg6 encap route {:.0} ns ({:.2}x)\
                     \n  GSO batches of 40 (how the engine sends): plain route {:.0} ns, kernel seg6 encap route {:.0} ns ({:.2}x)\
                     \n  the engine building outer header, SRH and HMAC itself: {:.0} ns, then one raw send per datagram (no GSO)",
                    r.payload,
                    r.plain_send_ns,
                    r.kernel_srh_send_ns,
                    r.kernel_srh_send_ns / r.plain_send_ns,
                    r.gso_plain_send_ns,
                    r.gso_kernel_srh_send_ns,
                    r.gso_kernel_srh_send_ns / r.gso_plain_send_ns,
                    r.engine_build_ns
                ));
            }
            Ok(out)
        }
    }
}
