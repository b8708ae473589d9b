//! `cpclink psp`: derive, seal and open single PSP packets, for checking interoperability
//! with other PSP implementations by hand. Hex in, hex out, one line on stdout.

use clap::{Args, Subcommand};

use cpclink_dataplane::crypto::{Backend, Suite};
use cpclink_dataplane::psp::{self, sealed_len};
use cpclink_dataplane::sa::{MasterKeys, Spi};
use cpclink_dataplane::wire::PspRepr;

use crate::error::Error;

/// Arguments of `cpclink psp`.
#[derive(Debug, Args)]
pub struct PspArgs {
    #[command(subcommand)]
    command: PspCommand,
}

#[derive(Debug, Subcommand)]
enum PspCommand {
    /// Print the SA key PSP derives for an SPI from a master key.
    Derive {
        /// Master key of generation 0 (64 hex digits).
        #[arg(long = "master-key", value_parser = parse_master_key)]
        master_key: [u8; 32],
        /// Master key of generation 1, for SPIs with bit 31 set (64 hex digits).
        #[arg(long = "master-key-1", value_parser = parse_master_key)]
        master_key_1: Option<[u8; 32]>,
        /// SPI (8 hex digits; bit 31 selects the generation).
        #[arg(long, value_parser = parse_spi)]
        spi: Spi,
        /// Suite the key is for.
        #[arg(long)]
        suite: Suite,
    },
    /// Print a sealed PSP packet (header, clear bytes, ciphertext, ICV) as carried in UDP.
    Seal {
        /// SA key (32 or 64 hex digits).
        #[arg(long, value_parser = parse_hex)]
        key: HexBytes,
        /// SPI (8 hex digits).
        #[arg(long, value_parser = parse_spi)]
        spi: Spi,
        /// IV, decimal.
        #[arg(long)]
        iv: u64,
        /// Suite.
        #[arg(long)]
        suite: Suite,
        /// Next header, decimal (4 for IPv4, 41 for IPv6 in tunnel mode).
        #[arg(long = "next-header")]
        next_header: u8,
        /// Bytes left in clear after the header, in 4-byte words.
        #[arg(long = "crypt-offset", default_value_t = 0)]
        crypt_offset: u8,
        /// Payload (hex).
        #[arg(long, value_parser = parse_hex)]
        payload: HexBytes,
        /// AEAD library.
        #[arg(long, default_value = "aws-lc-rs")]
        backend: Backend,
    },
    /// Verify and decrypt a PSP packet; print the next header and the payload.
    Open {
        /// SA key (32 or 64 hex digits).
        #[arg(long, value_parser = parse_hex)]
        key: HexBytes,
        /// Suite.
        #[arg(long)]
        suite: Suite,
        /// The PSP packet as carried in UDP (hex).
        #[arg(long, value_parser = parse_hex)]
        packet: HexBytes,
        /// AEAD library.
        #[arg(long, default_value = "aws-lc-rs")]
        backend: Backend,
    },
}

/// Bytes given on the command line in hex.
#[derive(Debug, Clone)]
struct HexBytes(Vec<u8>);

fn parse_hex(s: &str) -> Result<HexBytes, String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    hex::decode(s)
        .map(HexBytes)
        .map_err(|e| format!("not hex: {e}"))
}

fn parse_master_key(s: &str) -> Result<[u8; 32], String> {
    let HexBytes(bytes) = parse_hex(s)?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "a master key is 32 bytes (64 hex digits), got {} bytes",
            b.len()
        )
    })
}

fn parse_spi(s: &str) -> Result<Spi, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    if digits.is_empty() || digits.len() > 8 {
        return Err("an SPI is at most 8 hex digits, e.g. 80000001".into());
    }
    u32::from_str_radix(digits, 16)
        .map(Spi)
        .map_err(|e| format!("not hex: {e}"))
}

/// Runs `cpclink psp` and returns the line to print.
pub fn run(args: PspArgs) -> Result<String, Error> {
    match args.command {
        PspCommand::Derive {
            master_key,
            master_key_1,
            spi,
            suite,
        } => {
            let keys = match master_key_1 {
                Some(k1) => MasterKeys::with_generations(master_key, k1, 0),
                None => MasterKeys::new(master_key),
            };
            let key = keys.derive(spi, suite).map_err(|e| match e {
                cpclink_dataplane::Error::NoMasterKey(1) => Error::BadArgument {
                    arg: "--spi",
                    reason: format!("{spi} has bit 31 set (generation 1): give --master-key-1"),
                },
                other => other.into(),
            })?;
            Ok(hex::encode(key.as_bytes()))
        }
        PspCommand::Seal {
            key,
            spi,
            iv,
            suite,
            next_header,
            crypt_offset,
            payload,
            backend,
        } => {
            let (HexBytes(key), HexBytes(payload)) = (key, payload);
            if usize::from(crypt_offset) * 4 > payload.len() {
                return Err(Error::BadArgument {
                    arg: "--crypt-offset",
                    reason: format!(
                        "{crypt_offset} words ({} bytes) is longer than the {}-byte payload",
                        usize::from(crypt_offset) * 4,
                        payload.len()
                    ),
                });
            }
            let cipher = backend.cipher(suite, &key)?;
            let repr = PspRepr {
                next_header,
                crypt_offset,
                sample: false,
                drop_after_sampling: false,
                suite,
                spi,
                iv,
                vc: None,
            };
            let mut packet = vec![0u8; sealed_len(&repr, payload.len())];
            packet[repr.buffer_len()..repr.buffer_len() + payload.len()].copy_from_slice(&payload);
            psp::seal_in_place(&cipher, &repr, &mut packet)?;
            Ok(hex::encode(packet))
        }
        PspCommand::Open {
            key,
            suite,
            packet,
            backend,
        } => {
            let (HexBytes(key), HexBytes(mut packet)) = (key, packet);
            let cipher = backend.cipher(suite, &key)?;
            let opened = psp::open_in_place(&cipher, &mut packet)?;
            Ok(format!(
                "{} {}",
                opened.header.next_header,
                hex::encode(&packet[opened.payload])
            ))
        }
    }
}
