//! The audit log: every enrolment, issuance, rotation and revocation as one JSON line, each
//! carrying the SHA-256 of its predecessor, so editing, deleting or reordering any line
//! breaks the chain.
//!
//! Line `n` is `{"seq":n,"time":…,"event":{…},"prev":"<hex>","hash":"<hex>"}` where
//! `hash = SHA-256(prev ‖ canonical JSON of {seq, time, event})` and the first `prev` is 32
//! zero bytes. A sidecar file `<log>.head` holds the last `seq` and `hash` so that cutting
//! lines off the end is detected too.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

use crate::prefix::InnerPrefix;
use crate::{Error, Result};

mod store_chain;

pub(crate) use store_chain::MAX_GROUP as MAX_STORE_GROUP;
pub use store_chain::{store_records, verify_store, StoreChain};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// An enrolment token was minted.
    TokenCreated {
        /// The token's id (not its secret).
        token_id: String,
        /// The appliance it enrols.
        appliance: String,
        /// Who asked (the operator's uid on the admin socket, or the command line).
        by: String,
        /// The tenant it enrols into; empty in lines written before it was recorded.
        #[serde(default)]
        tenant: String,
        /// Unix time it expires; 0 in lines written before it was recorded.
        #[serde(default)]
        expires: u64,
    },
    /// An operator assigned inner prefixes to an appliance.
    PrefixesAssigned {
        /// The appliance.
        appliance: String,
        /// The prefixes added.
        prefixes: Vec<InnerPrefix>,
        /// Who asked.
        by: String,
    },
    /// An operator removed inner prefixes from an appliance's assignment.
    PrefixesRemoved {
        /// The appliance.
        appliance: String,
        /// The prefixes removed.
        prefixes: Vec<InnerPrefix>,
        /// Who asked.
        by: String,
    },
    /// An appliance announced a prefix it was not assigned: a refused hijack attempt.
    PrefixRefused {
        /// The appliance that announced it.
        appliance: String,
        /// The prefix.
        prefix: InnerPrefix,
        /// Why it was refused (naming the appliance it is assigned to, if any).
        reason: String,
    },
    /// An appliance redeemed a token and received a certificate.
    Enrolled {
        /// The appliance id.
        appliance: String,
        /// Its centre.
        centre: String,
        /// The certificate serial, hex.
        serial: String,
    },
    /// The directory or policy changed.
    DirectoryChanged {
        /// The new directory version.
        version: u64,
        /// What changed, in words.
        change: String,
    },
    /// A master-key rotation was ordered.
    RotationOrdered {
        /// The rotation's sequence number.
        rotation: u64,
        /// Who ordered it (`schedule` for the rotation schedule); empty in lines written
        /// before it was recorded.
        #[serde(default)]
        by: String,
    },
    /// An appliance confirmed it rotated to a new generation.
    Rotated {
        /// The appliance.
        appliance: String,
        /// Its new key epoch.
        epoch: u64,
    },
    /// An appliance was revoked.
    Revoked {
        /// The appliance.
        appliance: String,
        /// Who revoked it; empty in lines written before it was recorded.
        #[serde(default)]
        by: String,
    },
    /// An operator revoked an enrolment token before it was redeemed.
    TokenRevoked {
        /// The token's id.
        token_id: String,
        /// Who revoked it.
        by: String,
    },
    /// An appliance reported an operator action on its own management API (or signal):
    /// a reload applied or refused, or a request its API refused. The appliance is the
    /// one whose certificate carried the report.
    ApplianceReported {
        /// The reporting appliance.
        appliance: String,
        /// What happened there.
        report: ApplianceReport,
    },
    /// A management API refused a request (no valid credential, too small a role, or a
    /// tenant scope that does not cover it).
    ApiRefused {
        /// Who asked, if a credential named them.
        by: Option<String>,
        /// The request (`POST /v1/rotate`).
        what: String,
        /// The HTTP status answered (401 or 403).
        status: u16,
        /// Why.
        reason: String,
    },
    /// An operator credential for the management APIs was issued.
    CredentialIssued {
        /// The token id or certificate serial.
        id: String,
        /// Whom it names.
        name: String,
        /// Its role.
        role: String,
        /// The tenant it is scoped to, if any.
        tenant: Option<String>,
        /// `token` or `certificate`.
        credential: String,
        /// Unix time it expires.
        expires: u64,
        /// Who issued it.
        by: String,
    },
    /// An operator ordered a revoked appliance replaced: a token for its id that only a
    /// new agent (fresh keys, new certificate) can redeem.
    ReplacementOrdered {
        /// The appliance.
        appliance: String,
        /// The serial of the revoked certificate, which stays refused.
        old_serial: String,
        /// The id of the replacement token.
        token_id: String,
        /// Who asked.
        by: String,
    },
    /// The replacement enrolled: the entry is live again under a new certificate.
    Replaced {
        /// The appliance.
        appliance: String,
        /// The serial of the revoked certificate, which stays refused.
        old_serial: String,
        /// The serial of the new certificate.
        new_serial: String,
        /// Who ordered the replacement.
        ordered_by: String,
    },
    /// An operator opened an appliance's escrowed master keys.
    EscrowOpened {
        /// The appliance.
        appliance: String,
        /// The key epoch opened.
        epoch: u64,
        /// Who opened them; empty in lines written before it was recorded.
        #[serde(default)]
        by: String,
    },
    /// An authority replica won the election and leads from this line on.
    LeaderElected {
        /// The replica's candidate id.
        replica: String,
        /// The fencing revision of its leader key.
        term: i64,
    },
    /// An appliance's master keys were escrowed to the authority.
    Escrowed {
        /// The appliance.
        appliance: String,
        /// The key epoch escrowed.
        epoch: u64,
    },
}

impl AuditEvent {
    /// The event's kind, as its line's `kind` field spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TokenCreated { .. } => "token_created",
            Self::TokenRevoked { .. } => "token_revoked",
            Self::PrefixesAssigned { .. } => "prefixes_assigned",
            Self::PrefixesRemoved { .. } => "prefixes_removed",
            Self::PrefixRefused { .. } => "prefix_refused",
            Self::Enrolled { .. } => "enrolled",
            Self::DirectoryChanged { .. } => "directory_changed",
            Self::RotationOrdered { .. } => "rotation_ordered",
            Self::Rotated { .. } => "rotated",
            Self::Revoked { .. } => "revoked",
            Self::ApiRefused { .. } => "api_refused",
            Self::ApplianceReported { .. } => "appliance_reported",
            Self::CredentialIssued { .. } => "credential_issued",
            Self::ReplacementOrdered { .. } => "replacement_ordered",
            Self::Replaced { .. } => "replaced",
            Self::EscrowOpened { .. } => "escrow_opened",
            Self::Escrowed { .. } => "escrowed",
            Self::LeaderElected { .. } => "leader_elected",
        }
    }
}

/// An operator action at an appliance, which its agent reports to the authority's audit
/// log so every write and every refusal anywhere is in one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplianceReport {
    /// A configuration reload was applied.
    Reloaded {
        /// Who asked (`api:NAME`, `signal:SIGHUP`).
        by: String,
        /// What changed, in words.
        applied: String,
    },
    /// A configuration reload was refused; the running configuration stayed.
    ReloadRefused {
        /// Who asked.
        by: String,
        /// Why, naming the file and field.
        reason: String,
    },
    /// The appliance's management API refused a request.
    ApiRefused {
        /// Who asked, if a credential named them.
        by: Option<String>,
        /// The request (`POST /v1/reload`).
        what: String,
        /// The HTTP status answered (401 or 403).
        status: u16,
        /// Why.
        reason: String,
    },
    /// A setting of the running appliance was changed through its management API
    /// (not in its configuration file: it lasts until the next start).
    SettingChanged {
        /// Who asked (`api:NAME`).
        by: String,
        /// The setting (`stage_sample_every`).
        setting: String,
        /// Its new value.
        value: String,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: u64,
    event: &'a AuditEvent,
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time: u64,
    /// The event.
    pub event: AuditEvent,
    /// The hash of the previous line, hex.
    pub prev: String,
    /// This line's hash, hex.
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// Chains `events` after line `seq` whose hash is `prev`: the records as every sink writes
/// them (the log file here, the store in [`store_chain`]).
fn chain(mut seq: u64, mut prev: [u8; 32], events: Vec<AuditEvent>) -> Vec<AuditRecord> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let hash = chain_hash(&prev, seq, time, &event);
        out.push(AuditRecord {
            seq,
            time,
            event,
            prev: hex::encode(prev),
            hash: hex::encode(hash),
        });
        prev = hash;
    }
    out
}

fn chain_hash(prev: &[u8; 32], seq: u64, time: u64, event: &AuditEvent) -> [u8; 32] {
    let body = serde_json::to_vec(&Body { seq, time, event }).unwrap_or_default();
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(&body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn head_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

/// The outcome of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines in the chain.
    pub lines: u64,
    /// The hash of the last line, hex (publish it to anchor the log).
    pub head: String,
}

/// Checks every line of the log at `path` and its head file. A log with no head file is
/// refused: a log and its head removed together would otherwise read as an empty chain.
pub fn verify(path: &Path) -> Result<Verified> {
    let hp = head_path(path);
    if !hp.exists() {
        return Err(Error::AuditBroken {
            path: hp,
            line: 0,
            reason: "no head file: nothing anchors the chain (an authority writes one when it opens its log, even before the first line, so a missing head means the log, the head or both were removed; restore them from backup)".into(),
        });
    }
    let (records, torn) = read_chain(path)?;
    if torn {
        return Err(Error::AuditBroken {
            path: path.to_owned(),
            line: records.len() + 1,
            reason: "incomplete last line".into(),
        });
    }
    check_head(path, &records)?;
    Ok(Verified {
        lines: records.len() as u64,
        head: records
            .last()
            .map_or_else(|| hex::encode([0u8; 32]), |r| r.hash.clone()),
    })
}

fn check_head(path: &Path, records: &[AuditRecord]) -> Result<()> {
    let hp = head_path(path);
    let head: Head = match std::fs::read(&hp) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::AuditBroken {
            path: hp.clone(),
            line: 1,
            reason: format!("unreadable head file: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && records.is_empty() => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", hp.display()), e)),
    };
    // The head is written after each group of lines is durable, so a crash may leave it up to
    // one group (`MAX_GROUP` lines) behind, never ahead.
    let anchored = head
        .seq
        .checked_sub(1)
        .and_then(|i| records.get(i as usize));
    match anchored {
        Some(r) if r.hash == head.hash && records.len() as u64 <= head.seq + MAX_GROUP as u64 => {
            Ok(())
        }
        Some(r) if r.hash == head.hash => Err(Error::AuditBroken {
            path: path.to_owned(),
            line: records.len(),
            reason: format!("{} lines but head says {}", records.len(), head.seq),
        }),
        None if head.seq == 0 => Ok(()),
        _ => Err(Error::AuditBroken {
            path: path.to_owned(),
            line: records.len(),
            reason: format!(
                "log ends at line {} but its head file names line {} with another hash: lines were removed or rewritten",
                records.len(),
                head.seq
            ),
        }),
    }
}

/// Reads and checks the chain; returns the records and whether the last line was torn
/// (written only in part, without its newline).
/// Every line of the log at `path`, in order (a torn last line left out), read without
/// checking the chain: for showing it; [`verify`] checks it.
pub fn records(path: &Path) -> Result<Vec<AuditRecord>> {
    Ok(read_chain(path)?.0)
}

fn read_chain(path: &Path) -> Result<(Vec<AuditRecord>, bool)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut prev = [0u8; 32];
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Ok((records, false));
        }
        let lineno = records.len() + 1;
        if !line.ends_with('\n') {
            return Ok((records, true));
        }
        let broken = |reason: String| Error::AuditBroken {
            path: path.to_owned(),
            line: lineno,
            reason,
        };
        let rec: AuditRecord = serde_json::from_str(line.trim_end())
            .map_err(|e| broken(format!("not a record: {e}")))?;
        if rec.seq != lineno as u64 {
            return Err(broken(format!(
                "sequence {} where {lineno} was expected",
                rec.seq
            )));
        }
        if rec.prev != hex::encode(prev) {
            return Err(broken(
                "does not follow the previous line (prev hash differs)".into(),
            ));
        }
        let hash = chain_hash(&prev, rec.seq, rec.time, &rec.event);
        if rec.hash != hex::encode(hash) {
            return Err(broken(
                "content does not match its hash (line edited)".into(),
            ));
        }
        prev = hash;
        records.push(rec);
    }
}

/// Lines written with one fsync at most; the head file follows each group, so after a crash
/// the log may run ahead of its head by up to this many lines. Large enough that the
/// acknowledgements of a rotation reaching thousands of appliances at once go to disk in a
/// few writes, not one per line.
pub const MAX_GROUP: usize = 1024;

/// An append-only, hash-chained audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    seq: u64,
    prev: [u8; 32],
    /// Lines by event kind, over the whole chain.
    kinds: std::collections::BTreeMap<&'static str, u64>,
    /// Groups written (one write and one fsync each) since it was opened.
    writes: u64,
}

impl AuditLog {
    /// Opens the log, checking the whole chain first. A torn last line (a crash mid-write,
    /// never acknowledged) is cut off; any other break refuses to open.
    pub fn open(path: &Path) -> Result<Self> {
        let (records, torn) = read_chain(path)?;
        check_head(path, &records)?;
        if torn {
            let good: u64 = records
                .iter()
                .map(|r| serde_json::to_string(r).map_or(0, |s| s.len() as u64 + 1))
                .sum();
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            f.set_len(good)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(format!("truncating torn line of {}", path.display()), e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let (seq, prev) = match records.last() {
            // A new log is anchored at once (head at line 0), so that an authority that has
            // written nothing yet verifies as an empty chain, and a missing head always means
            // something was removed.
            None if !head_path(path).exists() => {
                write_head(path, 0, hex::encode([0u8; 32]))?;
                (0, [0u8; 32])
            }
            None => (0, [0u8; 32]),
            Some(r) => {
                let mut prev = [0u8; 32];
                hex::decode_to_slice(&r.hash, &mut prev).map_err(|_| Error::AuditBroken {
                    path: path.to_owned(),
                    line: records.len(),
                    reason: "hash is not hex".into(),
                })?;
                (r.seq, prev)
            }
        };
        let mut kinds = std::collections::BTreeMap::new();
        for r in &records {
            *kinds.entry(r.event.kind()).or_insert(0) += 1;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            seq,
            prev,
            kinds,
            writes: 0,
        })
    }

    /// Lines in the chain.
    pub fn lines(&self) -> u64 {
        self.seq
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Groups of lines written since the log was opened: one write and one fsync each.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Lines in the chain by event kind (`revoked`, `api_refused`, …).
    pub fn kinds(&self) -> &std::collections::BTreeMap<&'static str, u64> {
        &self.kinds
    }

    /// Appends `event` and makes it durable before returning.
    pub fn append(&mut self, event: AuditEvent) -> Result<()> {
        self.append_all(vec![event])
    }

    /// Appends `events` in order with one write and one fsync (group commit): each line
    /// is chained exactly as if appended alone.
    pub fn append_all(&mut self, mut events: Vec<AuditEvent>) -> Result<()> {
        while events.len() > MAX_GROUP {
            let rest = events.split_off(MAX_GROUP);
            self.append_group(events)?;
            events = rest;
        }
        self.append_group(events)
    }

    /// One group of at most `MAX_GROUP` lines: one write, one fsync, then the head.
    fn append_group(&mut self, events: Vec<AuditEvent>) -> Result<()> {
        let records = chain(self.seq, self.prev, events);
        let Some(last) = records.last() else {
            return Ok(());
        };
        let (seq, last_hash) = (last.seq, last.hash.clone());
        let mut prev = [0u8; 32];
        // Written by `chain` from a 32-byte hash: always 64 hex digits.
        let _ = hex::decode_to_slice(&last_hash, &mut prev);
        let mut lines = String::new();
        let mut kinds = Vec::with_capacity(records.len());
        for rec in &records {
            kinds.push(rec.event.kind());
            lines.push_str(&serde_json::to_string(rec).unwrap_or_default());
            lines.push('\n');
        }
        if lines.is_empty() {
            return Ok(());
        }
        let ctx = || format!("appending to {}", self.path.display());
        self.file
            .write_all(lines.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(ctx(), e))?;
        self.seq = seq;
        self.prev = prev;
        self.writes += 1;
        for kind in kinds {
            *self.kinds.entry(kind).or_insert(0) += 1;
        }
        write_head(&self.path, seq, last_hash)
    }
}

/// Replaces the head file of the log at `path` atomically (write, fsync, rename).
fn write_head(path: &Path, seq: u64, hash: String) -> Result<()> {
    let head = serde_json::to_vec(&Head { seq, hash }).unwrap_or_default();
    let hp = head_path(path);
    let tmp = hp.with_extension("head.tmp");
    std::fs::write(&tmp, head)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &hp))
        .map_err(|e| Error::io(format!("writing {}", hp.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_counted_as_the_lines_spell_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let events = [
            AuditEvent::Revoked {
                appliance: "a".into(),
                by: "api:noc".into(),
            },
            AuditEvent::ApiRefused {
                by: None,
                what: "POST /v1/rotate".into(),
                status: 401,
                reason: "no token".into(),
            },
            AuditEvent::RotationOrdered {
                rotation: 1,
                by: "schedule".into(),
            },
        ];
        let mut log = AuditLog::open(&path).unwrap();
        log.append_all(events.to_vec()).unwrap();
        for e in &events {
            assert_eq!(serde_json::to_value(e).unwrap()["kind"], e.kind());
        }
        // Counted again from the chain when reopened.
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.lines(), 3);
        assert_eq!(log.kinds().get("api_refused"), Some(&1));
        assert_eq!(records(&path).unwrap()[0].event, events[0]);
        // A line written before `by` was recorded still reads.
        let old: AuditEvent =
            serde_json::from_str(r#"{"kind": "revoked", "appliance": "b"}"#).unwrap();
        assert_eq!(old.kind(), "revoked");
    }

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append(AuditEvent::Rotated {
                appliance: format!("a{i}"),
                epoch: i,
            })
            .unwrap();
        }
        (dir, path)
    }

    #[test]
    fn a_crash_between_a_group_and_its_head_still_opens() {
        let (_dir, path) = log_with(2);
        let head = std::fs::read(head_path(&path)).unwrap();
        let rotated = |i: u64| AuditEvent::Rotated {
            appliance: format!("g{i}"),
            epoch: i,
        };
        let mut log = AuditLog::open(&path).unwrap();
        log.append_all((0..MAX_GROUP as u64).map(rotated).collect())
            .unwrap();
        drop(log);
        // The state a kill -9 leaves after the group's fsync, before its head is written.
        std::fs::write(head_path(&path), &head).unwrap();
        let mut log = AuditLog::open(&path).expect("a whole group ahead of the head opens");
        log.append(rotated(99)).unwrap();
        assert_eq!(verify(&path).unwrap().lines, 2 + MAX_GROUP as u64 + 1);
        // More than a group ahead is not what a crash leaves.
        let (_dir2, path2) = log_with(2);
        let head2 = std::fs::read(head_path(&path2)).unwrap();
        let mut log = AuditLog::open(&path2).unwrap();
        log.append_all((0..MAX_GROUP as u64 + 1).map(rotated).collect())
            .unwrap();
        drop(log);
        std::fs::write(head_path(&path2), &head2).unwrap();
        assert!(AuditLog::open(&path2).is_err());
    }

    #[test]
    fn a_group_commit_chains_like_single_appends() {
        let (_dir, path) = log_with(2);
        let mut log = AuditLog::open(&path).unwrap();
        let rotated = |i: u64| AuditEvent::Rotated {
            appliance: format!("g{i}"),
            epoch: i,
        };
        log.append_all((0..3).map(rotated).collect()).unwrap();
        log.append_all(Vec::new()).unwrap();
        log.append(rotated(9)).unwrap();
        drop(log);
        let v = verify(&path).unwrap();
        assert_eq!(v.lines, 6);
        // Reopened, the chain continues from the batch's last line.
        AuditLog::open(&path).unwrap().append(rotated(10)).unwrap();
        assert_eq!(verify(&path).unwrap().lines, 7);
        // Cutting the batch's last line off is detected by the head, as for any line.
        let kept: Vec<String> = lines(&path)[..4].to_vec();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        assert!(verify(&path).is_err());
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn intact_chain_verifies_and_reopens() {
        let (_d, path) = log_with(5);
        assert_eq!(verify(&path).unwrap().lines, 5);
        let mut log = AuditLog::open(&path).unwrap();
        log.append(AuditEvent::Revoked {
            appliance: "x".into(),
            by: "test".into(),
        })
        .unwrap();
        assert_eq!(verify(&path).unwrap().lines, 6);
    }

    #[test]
    fn edited_line_is_detected() {
        let (_d, path) = log_with(5);
        let mut l = lines(&path);
        l[2] = l[2].replace("\"a2\"", "\"evil\"");
        write_lines(&path, &l);
        let err = verify(&path).unwrap_err();
        assert!(matches!(err, Error::AuditBroken { line: 3, .. }), "{err}");
    }

    #[test]
    fn deleted_middle_line_is_detected() {
        let (_d, path) = log_with(5);
        let mut l = lines(&path);
        l.remove(1);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(Error::AuditBroken { line: 2, .. })
        ));
    }

    #[test]
    fn deleted_last_lines_are_detected_by_the_head() {
        let (_d, path) = log_with(5);
        let mut l = lines(&path);
        l.truncate(3);
        write_lines(&path, &l);
        assert!(matches!(verify(&path), Err(Error::AuditBroken { .. })));
    }

    #[test]
    fn reordered_lines_are_detected() {
        let (_d, path) = log_with(5);
        let mut l = lines(&path);
        l.swap(1, 3);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(Error::AuditBroken { line: 2, .. })
        ));
    }

    #[test]
    fn torn_last_line_is_cut_on_open_but_fails_verification_before() {
        let (_d, path) = log_with(3);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,\"ti").unwrap();
        assert!(verify(&path).is_err());
        let mut log = AuditLog::open(&path).unwrap();
        log.append(AuditEvent::Revoked {
            appliance: "y".into(),
            by: "test".into(),
        })
        .unwrap();
        assert_eq!(verify(&path).unwrap().lines, 4);
    }

    #[test]
    fn open_refuses_a_broken_chain() {
        let (_d, path) = log_with(3);
        let mut l = lines(&path);
        l.swap(0, 1);
        write_lines(&path, &l);
        assert!(AuditLog::open(&path).is_err());
    }

    #[test]
    fn a_log_without_its_head_file_does_not_verify_as_an_empty_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("no head file"), "{err}");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(verify(&path), Err(Error::AuditBroken { .. })));
    }

    #[test]
    fn a_log_opened_but_never_written_verifies_as_empty_until_its_head_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        drop(AuditLog::open(&path).unwrap());
        let v = verify(&path).unwrap();
        assert_eq!((v.lines, v.head), (0, hex::encode([0u8; 32])));
        // Reopening keeps the anchor; removing it is refused, not read as an empty chain.
        drop(AuditLog::open(&path).unwrap());
        assert_eq!(verify(&path).unwrap().lines, 0);
        std::fs::remove_file(head_path(&path)).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(
            err.contains("no head file") && err.contains("removed"),
            "{err}"
        );
    }
}
