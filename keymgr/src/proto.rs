//! Control-channel messages and their framing.
//!
//! A frame is `length (u32, big-endian) ‖ version (u8) ‖ postcard payload`, where the length
//! counts the version byte and the payload. A frame longer than [`MAX_FRAME`], of another
//! version, or whose payload does not decode is an error: the reader answers with
//! [`Message::Error`] and closes the stream; nothing panics.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::audit::ApplianceReport;
use crate::directory::{ApplianceEntry, Delta, Rule};
use crate::prefix::{InnerPrefix, Refusal};
use crate::{Error, Result};

/// The protocol version every frame carries.
pub const VERSION: u8 = 1;
/// The largest frame accepted, version byte included.
pub const MAX_FRAME: usize = 1 << 20;
/// How many appliances one snapshot frame carries.
pub const SNAPSHOT_CHUNK: usize = 512;

/// A message on the control channel (authority ↔ appliance and appliance ↔ appliance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Appliance → authority, without a client certificate: redeem a token.
    Enrol {
        /// The one-time token.
        token: String,
        /// The appliance the agent is configured as; a token naming another is refused
        /// without being spent.
        appliance: String,
        /// A PKCS#10 CSR for the appliance's own key, DER.
        csr: Vec<u8>,
        /// The agent's control address, `host:port`.
        control: String,
        /// The appliance's data-plane endpoints.
        endpoints: Vec<String>,
        /// The appliance's capabilities.
        capabilities: Vec<String>,
    },
    /// Authority → appliance: the signed certificate, DER.
    Enrolled {
        /// The certificate, followed (DER back to back) by the CA certificates that chain it
        /// to the operator's root when the authority issues under the operator's intermediate.
        cert: Vec<u8>,
    },
    /// Appliance → authority: start the directory feed and report where the agent listens,
    /// what it publishes and which inner prefixes its centre serves.
    Subscribe {
        /// The agent's control address, `host:port`.
        control: String,
        /// The appliance's data-plane endpoints.
        endpoints: Vec<String>,
        /// The appliance's capabilities.
        capabilities: Vec<String>,
        /// The inner prefixes it announces; the directory lists those assigned to it.
        prefixes: Vec<InnerPrefix>,
    },
    /// Authority → appliance: part of a full copy of the directory.
    Snapshot {
        /// The directory version the snapshot is of.
        version: u64,
        /// The newest rotation ordered so far.
        rotation: u64,
        /// Some of the appliances.
        appliances: Vec<ApplianceEntry>,
        /// The policy (sent with the last chunk).
        rules: Vec<Rule>,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Authority → appliance: one directory change.
    Delta(Delta),
    /// Authority → appliance: rotate the master keys.
    RotateOrder {
        /// The rotation's sequence number.
        rotation: u64,
    },
    /// Appliance → authority: the directory version now applied.
    Applied {
        /// The version.
        version: u64,
    },
    /// Appliance → authority: the rotation is done.
    Rotated {
        /// The rotation obeyed.
        rotation: u64,
        /// The agent's key epoch after it.
        epoch: u64,
    },
    /// Appliance → appliance: grant me a transmit SA towards you.
    SaRequest {
        /// The PSP version (suite) wanted.
        suite: u8,
    },
    /// Appliance → appliance: the SA granted.
    SaGrant {
        /// The SPI.
        spi: u32,
        /// The PSP version (suite).
        suite: u8,
        /// The SA key.
        key: Vec<u8>,
        /// The granting agent's key epoch the SPI's generation holds.
        epoch: u64,
        /// Seconds the SA may be used before it should be replaced.
        lifetime_secs: u64,
    },
    /// Appliance → appliance: I rotated; fetch a new SA from me.
    RekeyNotice {
        /// The new epoch.
        epoch: u64,
    },
    /// The request was refused or a frame was bad; the stream closes after this.
    Error {
        /// Why, in words.
        reason: String,
    },
    /// Authority → appliance: the X25519 key to escrow master keys to, and the newest key
    /// epoch already escrowed by this appliance (0 for none).
    EscrowKey {
        /// The escrow public key.
        public: Vec<u8>,
        /// The epoch held.
        held: u64,
    },
    /// Appliance → authority: both master-key generations, sealed to the escrow key.
    Escrow {
        /// The appliance's key epoch the keys are current at.
        epoch: u64,
        /// The sealed box ([`crate::seal::seal_to`]).
        sealed: Vec<u8>,
    },
    /// Authority → appliance: the announced prefixes left out of the directory, and why;
    /// sent after each snapshot and whenever an assignment changes the answer (empty: all
    /// accepted).
    PrefixesRefused {
        /// Every announced prefix now refused.
        refused: Vec<Refusal>,
    },
    /// Appliance → appliance: the compute metrics of the services the sender's centre
    /// hosts ([`crate::metrics`]); no reply. Opaque to the key plane.
    /// Last, as every new message is: postcard numbers variants by position.
    Metrics {
        /// The advertisement, at most [`crate::metrics::MAX_ADVERTISEMENT`] bytes.
        advertisement: Vec<u8>,
        /// ECDSA P-256 SHA-256 (ASN.1 DER) by the sender's certificate key over
        /// [`crate::metrics::signed_text`].
        signature: Vec<u8>,
    },
    /// Appliance → authority: an operator action at the appliance, for the authority's
    /// audit log (the appliance is the one the connection authenticated); no reply.
    Report(ApplianceReport),
    /// Appliance → authority, on a stream of its own over the connection its certificate
    /// authenticated: a CSR for a renewed certificate of the same identity, sent before the
    /// current one expires. No token: the connection is the proof.
    Renew {
        /// The certificate signing request (DER), for the key the appliance holds.
        csr: Vec<u8>,
    },
    /// Authority → appliance: the renewed certificate (DER); the directory lists its serial
    /// from now on.
    Renewed {
        /// The certificate, followed by its chain as in [`Message::Enrolled`].
        cert: Vec<u8>,
    },
}

impl Message {
    /// Wipes key material carried by the message.
    pub fn zeroize(&mut self) {
        if let Self::SaGrant { key, .. } = self {
            zeroize::Zeroize::zeroize(key);
        }
    }
}

/// Operator commands to a running authority over its local admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Revoke an appliance everywhere.
    Revoke {
        /// The appliance id.
        appliance: String,
    },
    /// Order every appliance to rotate now.
    Rotate,
    /// Replace the policy.
    SetRules(Vec<Rule>),
    /// Report the directory version and counts.
    Status,
    /// Mint an enrolment token (audited), assigning `prefixes` to the appliance first.
    CreateToken {
        /// The appliance id the certificate will name.
        appliance: String,
        /// Its centre.
        centre: String,
        /// Its tenant.
        tenant: String,
        /// Lifetime in seconds; `None` for the configured default.
        ttl_secs: Option<u64>,
        /// Inner prefixes to assign to it.
        prefixes: Vec<InnerPrefix>,
    },
    /// Assign inner prefixes to an appliance (refused if one overlaps another's).
    AssignPrefixes {
        /// The appliance.
        appliance: String,
        /// The prefixes to add to its assignment.
        prefixes: Vec<InnerPrefix>,
    },
    /// Remove inner prefixes from an appliance's assignment; the directory withdraws them.
    RemovePrefixes {
        /// The appliance.
        appliance: String,
        /// The prefixes, each exactly as assigned.
        prefixes: Vec<InnerPrefix>,
    },
    /// List every appliance's assigned, announced and accepted prefixes.
    ListPrefixes,
    /// Order a revoked appliance replaced: a token (audited) that a new agent with fresh
    /// keys redeems for a new certificate; the old certificate stays refused.
    Replace {
        /// The revoked appliance's id, which the replacement takes over.
        appliance: String,
        /// Its centre.
        centre: String,
        /// Its tenant.
        tenant: String,
        /// Lifetime in seconds; `None` for the configured default.
        ttl_secs: Option<u64>,
        /// Inner prefixes to add to its assignment.
        prefixes: Vec<InnerPrefix>,
    },
}

/// One appliance as `keymgr status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplianceStatus {
    /// Its directory entry.
    pub entry: ApplianceEntry,
    /// Whether its agent holds a connection to the authority now.
    pub connected: bool,
    /// When its agent last connected or left, unix seconds; `None` if not since the
    /// authority started.
    pub last_seen: Option<u64>,
    /// The key epoch it last reported after a rotation; `None` if none yet.
    pub epoch: Option<u64>,
    /// The key generation (0 or 1) that epoch is in.
    pub generation: Option<u8>,
    /// The newest rotation it reported obeying (since the authority started).
    pub rotation: Option<u64>,
}

/// One appliance's inner prefixes, as the authority holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRecord {
    /// The appliance.
    pub appliance: String,
    /// What the operator assigned to it.
    pub assigned: Vec<InnerPrefix>,
    /// What its agent last announced (since the authority started).
    pub announced: Vec<InnerPrefix>,
    /// What the directory lists for it.
    pub accepted: Vec<InnerPrefix>,
}

/// The authority's answer on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    /// Done; the directory version or rotation number it produced.
    Done(u64),
    /// The state of the authority.
    Status {
        /// Directory version.
        version: u64,
        /// Appliances listed.
        appliances: usize,
        /// Appliances revoked.
        revoked: usize,
        /// Rotations ordered.
        rotation: u64,
        /// Appliances connected now.
        connected: usize,
        /// Each appliance, in id order.
        listed: Vec<ApplianceStatus>,
    },
    /// The command failed.
    Error(String),
    /// A minted enrolment token.
    Token(String),
    /// Every appliance's prefixes, by appliance id.
    Prefixes(Vec<PrefixRecord>),
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<()> {
    let payload = postcard::to_stdvec(msg).map_err(|e| Error::Frame(format!("encode: {e}")))?;
    if payload.len() + 1 > MAX_FRAME {
        return Err(Error::Frame(format!(
            "message of {} bytes exceeds the {MAX_FRAME}-byte frame limit",
            payload.len()
        )));
    }
    let mut buf = Vec::with_capacity(payload.len() + 5);
    buf.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    buf.push(VERSION);
    buf.extend_from_slice(&payload);
    w.write_all(&buf)
        .await
        .map_err(|e| Error::io("writing frame", e))?;
    zeroize::Zeroize::zeroize(&mut buf);
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream (between frames). Not cancel-safe: a
/// read dropped part-way (by `select!`) loses the bytes read; loops that select use
/// [`FrameReader`].
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r
            .read(&mut len[got..])
            .await
            .map_err(|e| Error::io("reading frame length", e))?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(Error::Frame("stream ended inside a frame length".into()));
        }
        got += n;
    }
    let len = frame_len(len)?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf)
        .await
        .map_err(|e| Error::io("reading frame body", e))?;
    decode_frame(&buf).map(Some)
}

/// The body length a frame's 4-byte header announces, refused outside `1..=MAX_FRAME`.
fn frame_len(header: [u8; 4]) -> Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(Error::Frame(format!(
            "frame of {len} bytes (allowed 1..={MAX_FRAME})"
        )));
    }
    Ok(len)
}

/// Decodes a frame body: the version byte, then the postcard message.
fn decode_frame<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body[0] != VERSION {
        return Err(Error::Frame(format!(
            "frame version {} (this build speaks {VERSION})",
            body[0]
        )));
    }
    postcard::from_bytes(&body[1..]).map_err(|e| Error::Frame(format!("undecodable message: {e}")))
}

/// Reads frames from a stream, keeping a partly read frame between calls, so that a
/// [`FrameReader::next`] dropped by `select!` loses nothing and the next call resumes.
/// The buffer is wiped when dropped (frames carry SA keys).
pub struct FrameReader<R> {
    stream: R,
    buf: zeroize::Zeroizing<Vec<u8>>,
}

impl<R> std::fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `stream`.
    pub fn new(stream: R) -> Self {
        Self {
            stream,
            buf: zeroize::Zeroizing::new(Vec::new()),
        }
    }

    /// The next frame; `None` at a clean end of stream (between frames). Cancel-safe.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        loop {
            if let Some(header) = self.buf.first_chunk::<4>() {
                let len = frame_len(*header)?;
                if self.buf.len() >= 4 + len {
                    let msg = decode_frame(&self.buf[4..4 + len]);
                    self.buf.drain(..4 + len);
                    return msg.map(Some);
                }
            }
            let mut chunk = zeroize::Zeroizing::new([0u8; 4096]);
            // Cancel-safe: nothing is consumed unless this read completes, and what it
            // read is kept before the next await.
            let n = self
                .stream
                .read(chunk.as_mut())
                .await
                .map_err(|e| Error::io("reading frame", e))?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Error::Frame("stream ended inside a frame".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode(bytes: &[u8]) -> Result<Option<Message>> {
        let mut r = bytes;
        read_frame(&mut r).await
    }

    #[tokio::test]
    async fn frame_reader_survives_reads_dropped_part_way() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut frames = FrameReader::new(server);
        let msg = Message::Report(crate::audit::ApplianceReport::ReloadRefused {
            by: "api:ops".into(),
            reason: "x".repeat(300),
        });
        let mut first = Vec::new();
        write_frame(&mut first, &msg).await.unwrap();
        // The frame arrives in pieces; a read in progress is dropped after each, and the
        // frame comes out whole only after its last piece.
        let pieces: Vec<&[u8]> = first.chunks(50).collect();
        for (i, piece) in pieces.iter().enumerate() {
            client.write_all(piece).await.unwrap();
            let read = tokio::time::timeout(
                std::time::Duration::from_millis(20),
                frames.next::<Message>(),
            )
            .await;
            if i + 1 < pieces.len() {
                assert!(read.is_err(), "a frame came out after piece {i}");
            } else {
                assert_eq!(read.unwrap().unwrap(), Some(msg.clone()));
            }
        }
        let mut second = Vec::new();
        write_frame(&mut second, &Message::RekeyNotice { epoch: 3 })
            .await
            .unwrap();
        client.write_all(&second).await.unwrap();
        assert_eq!(
            frames.next::<Message>().await.unwrap(),
            Some(Message::RekeyNotice { epoch: 3 })
        );
        drop(client);
        assert_eq!(frames.next::<Message>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn frame_reader_refuses_a_stream_cut_inside_a_frame() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &Message::RekeyNotice { epoch: 3 })
            .await
            .unwrap();
        let mut frames = FrameReader::new(&bytes[..bytes.len() - 1]);
        assert!(matches!(
            frames.next::<Message>().await,
            Err(Error::Frame(_))
        ));
    }

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        let msg = Message::SaRequest { suite: 1 };
        write_frame(&mut buf, &msg).await.unwrap();
        write_frame(&mut buf, &Message::RekeyNotice { epoch: 9 })
            .await
            .unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame::<_, Message>(&mut r).await.unwrap(), Some(msg));
        assert_eq!(
            read_frame::<_, Message>(&mut r).await.unwrap(),
            Some(Message::RekeyNotice { epoch: 9 })
        );
        assert_eq!(read_frame::<_, Message>(&mut r).await.unwrap(), None);
    }

    #[tokio::test]
    async fn policy_survives_the_wire() {
        // postcard is not self-describing: a field skipped when empty would shift the rest.
        use crate::directory::Selector;
        let rules = vec![
            Rule::same_tenant(),
            Rule {
                a: Selector {
                    centre: Some("dc1".into()),
                    ..Selector::default()
                },
                b: Selector::default(),
                same_tenant: false,
            },
        ];
        let msg = Message::Snapshot {
            version: 3,
            rotation: 1,
            appliances: vec![],
            rules,
            last: true,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &msg).await.unwrap();
        assert_eq!(decode(&buf).await.unwrap(), Some(msg));
    }

    /// postcard numbers variants by position: a message inserted before others would make
    /// this build misread every later one from a build without it.
    #[tokio::test]
    async fn new_messages_keep_the_numbers_of_the_old_ones() {
        let first_byte = |m: &Message| postcard::to_stdvec(m).unwrap()[0];
        assert_eq!(first_byte(&Message::RekeyNotice { epoch: 1 }), 10);
        assert_eq!(
            first_byte(&Message::PrefixesRefused { refused: vec![] }),
            14
        );
        let metrics = Message::Metrics {
            advertisement: b"gpu 7".to_vec(),
            signature: vec![0x30, 1, 2],
        };
        assert_eq!(first_byte(&metrics), 15);
        let mut buf = Vec::new();
        write_frame(&mut buf, &metrics).await.unwrap();
        assert_eq!(decode(&buf).await.unwrap(), Some(metrics));
    }

    #[tokio::test]
    async fn bad_frames_are_errors() {
        // Oversized.
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(decode(&huge).await, Err(Error::Frame(_))));
        // Empty.
        assert!(matches!(decode(&[0, 0, 0, 0]).await, Err(Error::Frame(_))));
        // Unknown version.
        assert!(matches!(
            decode(&[0, 0, 0, 2, 9, 0]).await,
            Err(Error::Frame(_))
        ));
        // Unknown message variant.
        assert!(matches!(
            decode(&[0, 0, 0, 2, VERSION, 200]).await,
            Err(Error::Frame(_))
        ));
        // Truncated body and truncated length.
        assert!(decode(&[0, 0, 0, 9, VERSION]).await.is_err());
        assert!(decode(&[0, 0]).await.is_err());
    }
}
