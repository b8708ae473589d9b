//! `cpclink keymgr`: the key-plane authority daemon, a standalone key agent, and the
//! operator commands (tokens, revocation, rotation, audit, benchmark).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use cpclink_bench::keyplane as bench;
use cpclink_keymgr::agent::{AgentOptions, KeyAgent};
use cpclink_keymgr::audit;
use cpclink_keymgr::authority::{self, Authority};
use cpclink_keymgr::config::{AgentConfig, AuthorityConfig};
use cpclink_keymgr::prefix::{self, InnerPrefix};
use cpclink_keymgr::proto::{AdminReply, AdminRequest, ApplianceStatus};

/// Arguments of `cpclink keymgr`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct KeymgrArgs {
    /// The authority's (or, for `agent`, the agent's) TOML config.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<KeymgrCommand>,
}

#[derive(Debug, Subcommand)]
enum KeymgrCommand {
    /// Run the authority daemon (the default).
    Run,
    /// Run a standalone key agent (`--config` names the agent's config).
    Agent,
    /// Enrolment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Replace a revoked appliance with new hardware: prints a token for its id that a new
    /// agent (fresh keys, empty state_dir) enrols with; the old certificate stays refused.
    Replace(TokenOrder),
    /// Revoke an appliance everywhere.
    Revoke {
        /// The appliance id.
        appliance: String,
    },
    /// Order every appliance to rotate its master keys now.
    Rotate,
    /// Show the running authority's state.
    Status,
    /// Inner prefixes assigned to appliances (what each may announce).
    Prefixes {
        #[command(subcommand)]
        command: PrefixesCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Benchmark the key plane (the same as `cpclink bench keymgr`).
    Bench(bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a one-time enrolment token and print it.
    Create(TokenOrder),
}

/// Who an enrolment token is for: `token create` and `replace` take the same order.
#[derive(Debug, Args)]
pub(super) struct TokenOrder {
    /// The appliance id the certificate will name.
    #[arg(long)]
    pub(super) appliance: String,
    /// The appliance's centre.
    #[arg(long)]
    pub(super) centre: String,
    /// The tenant the appliance serves.
    #[arg(long, default_value = "default")]
    pub(super) tenant: String,
    /// Lifetime in seconds (default: the config's token_ttl_secs).
    #[arg(long)]
    pub(super) ttl: Option<u64>,
    /// An inner prefix to assign to the appliance (repeat for more), e.g. 10.1.0.0/16.
    #[arg(long = "prefix", value_name = "PREFIX")]
    pub(super) prefixes: Vec<InnerPrefix>,
}

impl TokenOrder {
    fn create(&self) -> AdminRequest {
        AdminRequest::CreateToken {
            appliance: self.appliance.clone(),
            centre: self.centre.clone(),
            tenant: self.tenant.clone(),
            ttl_secs: self.ttl,
            prefixes: self.prefixes.clone(),
        }
    }

    fn replace(&self) -> AdminRequest {
        AdminRequest::Replace {
            appliance: self.appliance.clone(),
            centre: self.centre.clone(),
            tenant: self.tenant.clone(),
            ttl_secs: self.ttl,
            prefixes: self.prefixes.clone(),
        }
    }

    /// Prints a minted token alone on stdout (so `> enrol.token` captures just it) and
    /// what it is on stderr; any other reply as usual.
    fn print(
        &self,
        reply: AdminReply,
        what: &str,
        note: &str,
        default_ttl: u64,
    ) -> Result<ExitCode, String> {
        let AdminReply::Token(token) = &reply else {
            return print_reply(reply);
        };
        let ttl = self.ttl.unwrap_or(default_ttl);
        let mut line = format!(
            "{what} for {} (centre {}, tenant {}), single use, valid {ttl} s",
            self.appliance, self.centre, self.tenant
        );
        if !self.prefixes.is_empty() {
            line.push_str(&format!("; assigned {}", prefix::list(&self.prefixes)));
        }
        eprintln!("{line}; put it in the agent's token_file{note}");
        println!("{token}");
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, Subcommand)]
enum PrefixesCommand {
    /// Assign inner prefixes to an appliance; refused if one overlaps another appliance's.
    Assign {
        /// The appliance.
        #[arg(long)]
        appliance: String,
        /// The prefixes, e.g. 10.1.0.0/16 2001:db8:1::/48.
        #[arg(required = true)]
        prefixes: Vec<InnerPrefix>,
    },
    /// Remove inner prefixes from an appliance's assignment (the directory withdraws them).
    Remove {
        /// The appliance.
        #[arg(long)]
        appliance: String,
        /// The prefixes, each as assigned.
        #[arg(required = true)]
        prefixes: Vec<InnerPrefix>,
    },
    /// List each appliance's assigned, announced and accepted prefixes.
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit log.
    Verify {
        /// The log file (default: audit.jsonl in the config's state_dir).
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("cpclink keymgr: {e}");
    ExitCode::FAILURE
}

fn config_path(args: &KeymgrArgs) -> Result<&PathBuf, String> {
    args.config
        .as_ref()
        .ok_or_else(|| "--config FILE is required for this command".to_owned())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))
}

/// Runs `cpclink keymgr …`.
pub fn run(args: KeymgrArgs) -> ExitCode {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn run_inner(args: KeymgrArgs) -> Result<ExitCode, String> {
    let command = args.command.as_ref().unwrap_or(&KeymgrCommand::Run);
    match command {
        KeymgrCommand::Bench(b) => {
            runtime()?
                .block_on(bench::run(b, None))
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        KeymgrCommand::Audit {
            command: AuditCommand::Verify { log },
        } => {
            let checked = match log {
                Some(p) => audit::verify(p).map(|v| (p.display().to_string(), v)),
                None => {
                    // The configured chain: the state directory's log, or the store's
                    // when replicas share etcd.
                    let cfg =
                        AuthorityConfig::load(config_path(&args)?).map_err(|e| e.to_string())?;
                    runtime()?.block_on(authority::verify_audit(&cfg))
                }
            };
            match checked {
                Ok((place, v)) => {
                    println!("{place}: {} lines, chain intact, head {}", v.lines, v.head);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(fail(e)),
            }
        }
        KeymgrCommand::Agent => {
            let cfg = AgentConfig::load(config_path(&args)?).map_err(|e| e.to_string())?;
            runtime()?.block_on(async {
                let opts = AgentOptions::from_config(&cfg).map_err(|e| e.to_string())?;
                let (agent, mut events) = KeyAgent::start(opts).await.map_err(|e| e.to_string())?;
                eprintln!(
                    "key agent {} listening on {}",
                    agent.id(),
                    agent
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default()
                );
                loop {
                    tokio::select! {
                        ev = events.recv() => match ev {
                            // Events carry keys: only their kind is logged.
                            Some(ev) => tracing::debug!("{}", event_kind(&ev)),
                            // The stream ends when the authority revoked this appliance.
                            None => break,
                        },
                        _ = tokio::signal::ctrl_c() => break,
                    }
                }
                agent.shutdown();
                if agent.is_revoked() {
                    return Err(cpclink_keymgr::Error::Revoked {
                        appliance: agent.id().to_owned(),
                    }
                    .to_string());
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        KeymgrCommand::Run => {
            let cfg = AuthorityConfig::load(config_path(&args)?).map_err(|e| e.to_string())?;
            runtime()?.block_on(async {
                let auth = Authority::start(&cfg).await.map_err(|e| e.to_string())?;
                eprintln!(
                    "key-plane authority listening on {}",
                    auth.local_addr().map(|a| a.to_string()).unwrap_or_default()
                );
                let _ = tokio::signal::ctrl_c().await;
                auth.shutdown();
                // Send the closes before exiting, so agents notice at once.
                let _ = tokio::time::timeout(Duration::from_secs(2), auth.wait_closed()).await;
                Ok(ExitCode::SUCCESS)
            })
        }
        KeymgrCommand::Token {
            command: TokenCommand::Create(order),
        } => {
            let cfg = AuthorityConfig::load(config_path(&args)?).map_err(|e| e.to_string())?;
            let req = order.create();
            let reply = runtime()?.block_on(async {
                // The running daemon holds the store and the audit log: ask it. Without
                // one, mint here and write both directly.
                if authority::is_running(&cfg.state_dir).await {
                    return authority::admin_request(&cfg.state_dir, &req).await;
                }
                authority::create_token(
                    &cfg,
                    &order.appliance,
                    &order.centre,
                    &order.tenant,
                    order.ttl,
                    &order.prefixes,
                )
                .await
                .map(AdminReply::Token)
            });
            let reply = reply.map_err(|e| e.to_string())?;
            order.print(reply, "enrolment token", "", cfg.token_ttl_secs)
        }
        KeymgrCommand::Replace(order) => {
            let cfg = AuthorityConfig::load(config_path(&args)?).map_err(|e| e.to_string())?;
            let reply = admin_reply(&args, order.replace())?;
            let note = format!(
                "; {}'s old certificate stays refused, and its entry stays revoked until the new agent enrols",
                order.appliance
            );
            order.print(reply, "replacement token", &note, cfg.token_ttl_secs)
        }
        KeymgrCommand::Prefixes { command } => prefixes_command(&args, command),
        KeymgrCommand::Revoke { appliance } => {
            let reply = admin_reply(
                &args,
                AdminRequest::Revoke {
                    appliance: appliance.clone(),
                },
            )?;
            if let AdminReply::Done(version) = reply {
                println!(
                    "revoked {appliance} (directory version {version}): every peer drops its SAs and refuses it, its agent stops; new hardware in its place: `cpclink keymgr replace --appliance {appliance} --centre CENTRE`"
                );
                return Ok(ExitCode::SUCCESS);
            }
            print_reply(reply)
        }
        KeymgrCommand::Rotate => {
            let reply = admin_reply(&args, AdminRequest::Rotate)?;
            let AdminReply::Done(rotation) = reply else {
                return print_reply(reply);
            };
            // Each agent rotates on its own; wait briefly for their reports.
            let listed = await_rotation_reports(&args, rotation, ROTATION_REPORT_WAIT)?;
            println!("{}", rotation_summary(rotation, &listed));
            Ok(ExitCode::SUCCESS)
        }
        KeymgrCommand::Status => admin(&args, AdminRequest::Status),
    }
}

/// How long `rotate` waits for appliances to report their new generation.
const ROTATION_REPORT_WAIT: Duration = Duration::from_secs(2);

/// Polls the authority's status until every live appliance reported obeying `rotation`, or
/// `wait` passed; returns the last status's appliances.
fn await_rotation_reports(
    args: &KeymgrArgs,
    rotation: u64,
    wait: Duration,
) -> Result<Vec<ApplianceStatus>, String> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let listed = match admin_reply(args, AdminRequest::Status)? {
            AdminReply::Status { listed, .. } => listed,
            AdminReply::Error(e) => return Err(e),
            other => return Err(format!("unexpected status reply {other:?}")),
        };
        let waiting = listed
            .iter()
            .any(|a| !a.entry.revoked && a.rotation.is_none_or(|r| r < rotation));
        if !waiting || std::time::Instant::now() >= deadline {
            return Ok(listed);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rotated: rotation 3 ordered; dc1-edge now generation 1 (epoch 4), …`, naming those that
/// have not reported yet (and whether they are connected).
fn rotation_summary(rotation: u64, listed: &[ApplianceStatus]) -> String {
    let mut done = Vec::new();
    let mut pending = Vec::new();
    for a in listed.iter().filter(|a| !a.entry.revoked) {
        match (a.rotation, a.generation, a.epoch) {
            (Some(r), Some(g), Some(e)) if r >= rotation => {
                done.push(format!("{} now generation {g} (epoch {e})", a.entry.id));
            }
            _ if a.connected => pending.push(a.entry.id.clone()),
            _ => pending.push(format!("{} (not connected)", a.entry.id)),
        }
    }
    let mut line = format!("rotated: rotation {rotation} ordered");
    if done.is_empty() && pending.is_empty() {
        line.push_str("; no appliance is enrolled to obey it");
    }
    if !done.is_empty() {
        line.push_str("; ");
        line.push_str(&done.join(", "));
    }
    if !pending.is_empty() {
        line.push_str(&format!(
            "; not reported yet: {} (`keymgr status` shows each as it reports)",
            pending.join(", ")
        ));
    }
    line
}

fn prefixes_command(args: &KeymgrArgs, command: &PrefixesCommand) -> Result<ExitCode, String> {
    let (req, done) = match command {
        PrefixesCommand::Assign {
            appliance,
            prefixes,
        } => (
            AdminRequest::AssignPrefixes {
                appliance: appliance.clone(),
                prefixes: prefixes.clone(),
            },
            format!("assigned {} to {appliance}", prefix::list(prefixes)),
        ),
        PrefixesCommand::Remove {
            appliance,
            prefixes,
        } => (
            AdminRequest::RemovePrefixes {
                appliance: appliance.clone(),
                prefixes: prefixes.clone(),
            },
            format!("removed {} from {appliance}", prefix::list(prefixes)),
        ),
        PrefixesCommand::List => return admin(args, AdminRequest::ListPrefixes),
    };
    match admin_reply(args, req)? {
        AdminReply::Done(version) => {
            println!(
                "{done} (directory version {version}); the directory lists what its agent announces within the assignment"
            );
            Ok(ExitCode::SUCCESS)
        }
        other => print_reply(other),
    }
}

fn admin(args: &KeymgrArgs, req: AdminRequest) -> Result<ExitCode, String> {
    print_reply(admin_reply(args, req)?)
}

fn admin_reply(args: &KeymgrArgs, req: AdminRequest) -> Result<AdminReply, String> {
    let cfg = AuthorityConfig::load(config_path(args)?).map_err(|e| e.to_string())?;
    runtime()?
        .block_on(authority::admin_request(&cfg.state_dir, &req))
        .map_err(|e| e.to_string())
}

/// `12s ago`, `3h ago`, or `never` (since the authority started).
fn ago(when: Option<u64>) -> String {
    let Some(when) = when else {
        return "never".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let secs = now.saturating_sub(when);
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// Prints an authority's answer the way every command shows it.
pub(super) fn print_reply(reply: AdminReply) -> Result<ExitCode, String> {
    match reply {
        AdminReply::Done(n) => {
            println!("{n}");
            Ok(ExitCode::SUCCESS)
        }
        AdminReply::Status {
            version,
            appliances,
            revoked,
            rotation,
            connected,
            listed,
        } => {
            println!(
                "directory version {version}, {appliances} appliances ({revoked} revoked, {connected} connected), rotation {rotation}"
            );
            for a in listed {
                let e = &a.entry;
                let state = match (e.revoked, a.connected) {
                    (true, _) => "REVOKED".to_owned(),
                    (false, true) => "connected".to_owned(),
                    (false, false) => format!("last seen {}", ago(a.last_seen)),
                };
                println!(
                    "  {} centre {} tenant {}: {state}; epoch {}; endpoints {}; prefixes {}",
                    e.id,
                    e.centre,
                    e.tenant,
                    a.epoch
                        .map_or_else(|| "not reported".to_owned(), |x| x.to_string()),
                    if e.endpoints.is_empty() {
                        "none".to_owned()
                    } else {
                        e.endpoints.join(", ")
                    },
                    prefix::list(&e.prefixes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminReply::Token(token) => {
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        AdminReply::Prefixes(records) => {
            if records.is_empty() {
                println!("no prefixes assigned or announced");
            }
            for r in records {
                println!(
                    "{}: assigned {}; announced {}; in the directory {}",
                    r.appliance,
                    prefix::list(&r.assigned),
                    prefix::list(&r.announced),
                    prefix::list(&r.accepted)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminReply::Error(e) => Ok(fail(e)),
    }
}

fn event_kind(ev: &cpclink_keymgr::agent::SaEvent) -> String {
    use cpclink_keymgr::agent::SaEvent;
    match ev {
        SaEvent::InstallTx(g) => format!("install tx SA {} towards {}", g.spi, g.peer),
        SaEvent::InstallRx { peer, spi, .. } => format!("install rx SA {spi} from {peer}"),
        SaEvent::RetireRx { spis } => format!("retire {} rx SAs", spis.len()),
        SaEvent::RetirePeer { peer } => format!("retire every SA with {peer}"),
        SaEvent::Rotated { generation, epoch } => {
            format!("rotated to generation {generation}, epoch {epoch}")
        }
        SaEvent::Revoked { appliance } => format!("{appliance} revoked"),
        SaEvent::Metrics {
            peer,
            advertisement,
        } => format!("metrics from {peer} ({} bytes)", advertisement.len()),
    }
}

#[cfg(test)]
mod tests {
    use cpclink_keymgr::directory::ApplianceEntry;

    use super::*;

    fn listed(
        id: &str,
        connected: bool,
        report: Option<(u64, u64)>,
        revoked: bool,
    ) -> ApplianceStatus {
        ApplianceStatus {
            entry: ApplianceEntry {
                id: id.into(),
                centre: "dc1".into(),
                tenant: "default".into(),
                control: String::new(),
                endpoints: vec![],
                capabilities: vec![],
                cert_serial: "01".into(),
                revoked,
                prefixes: vec![],
                joined: true,
            },
            connected,
            last_seen: None,
            epoch: report.map(|(_, e)| e),
            generation: report.map(|(_, e)| cpclink_keymgr::agent::generation_at(e)),
            rotation: report.map(|(r, _)| r),
        }
    }

    #[test]
    fn rotate_says_what_each_appliance_now_holds_and_who_has_not_reported() {
        let all = [
            listed("dc1-edge", true, Some((3, 4)), false),
            listed("dc2-edge", true, Some((3, 4)), false),
        ];
        assert_eq!(
            rotation_summary(3, &all),
            "rotated: rotation 3 ordered; dc1-edge now generation 1 (epoch 4), dc2-edge now generation 1 (epoch 4)"
        );
        let some = [
            listed("dc1-edge", true, Some((3, 5)), false),
            // Reported an older rotation only: not this one yet.
            listed("dc2-edge", true, Some((2, 3)), false),
            listed("dc3-edge", false, None, false),
            listed("gone", false, None, true),
        ];
        assert_eq!(
            rotation_summary(3, &some),
            "rotated: rotation 3 ordered; dc1-edge now generation 0 (epoch 5); not reported yet: dc2-edge, dc3-edge (not connected) (`keymgr status` shows each as it reports)"
        );
        assert_eq!(
            rotation_summary(1, &[]),
            "rotated: rotation 1 ordered; no appliance is enrolled to obey it"
        );
    }
}
