//! `cpclink psp` as an operator runs it: hex in, one line out, exit status on failure.

use std::process::{Command, Output};

fn cpclink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpclink"))
        .args(args)
        .output()
        .expect("cpclink runs")
}

fn stdout_line(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "exactly one line: {text:?}");
    text.trim_end().to_string()
}

const MASTER0: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const MASTER1: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfefff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

/// A packet sealed by another PSP implementation (the PSP layer of Scapy, from its
/// documentation): key, SPI, IV, crypt offset 5 over an IPv4/UDP packet.
const FOREIGN_KEY: &str = "ffeeddccbbaa99887766554433221100";
const FOREIGN_PAYLOAD: &str =
    "450000250001000040117cc57f0000017f00000104d2162e0011a0c4414141414141414141";
const FOREIGN_PACKET: &str = "04010501112233440102030405060708450000250001000040117cc57f0000017f0000018e3e2b1345c76bf95cdac39b861762a0cfdffbbebbc6313a2b9de064759cdd71c9";

#[test]
fn seal_matches_a_packet_from_another_psp_implementation() {
    let iv = 0x0102_0304_0506_0708u64.to_string();
    let out = cpclink(&[
        "psp",
        "seal",
        "--key",
        FOREIGN_KEY,
        "--spi",
        "11223344",
        "--iv",
        &iv,
        "--suite",
        "aes-gcm-128",
        "--next-header",
        "4",
        "--crypt-offset",
        "5",
        "--payload",
        FOREIGN_PAYLOAD,
    ]);
    assert_eq!(stdout_line(&out), FOREIGN_PACKET);
    let out = cpclink(&[
        "psp",
        "open",
        "--key",
        FOREIGN_KEY,
        "--suite",
        "aes-gcm-128",
        "--packet",
        FOREIGN_PACKET,
    ]);
    assert_eq!(stdout_line(&out), format!("4 {FOREIGN_PAYLOAD}"));
}

#[test]
fn derive_uses_the_generation_bit_31_selects() {
    let derive = |spi: &str, suite: &str| {
        stdout_line(&cpclink(&[
            "psp",
            "derive",
            "--master-key",
            MASTER0,
            "--master-key-1",
            MASTER1,
            "--spi",
            spi,
            "--suite",
            suite,
        ]))
    };
    let gen0 = derive("00000001", "aes-gcm-256");
    let gen1 = derive("80000001", "aes-gcm-256");
    assert_eq!(gen0.len(), 64);
    assert_ne!(gen0, gen1);
    assert_eq!(derive("00000001", "aes-gcm-128").len(), 32);
    let only_gen1 = stdout_line(&cpclink(&[
        "psp",
        "derive",
        "--master-key",
        MASTER1,
        "--spi",
        "00000001",
        "--suite",
        "aes-gcm-256",
    ]));
    // The same master key as generation 0 yields the same key for the SPI's index alone.
    assert_ne!(only_gen1, gen1, "bit 31 is part of the derivation input");
    assert_ne!(only_gen1, gen0);

    let out = cpclink(&[
        "psp",
        "derive",
        "--master-key",
        MASTER0,
        "--spi",
        "80000001",
        "--suite",
        "aes-gcm-256",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--master-key-1"));
}

#[test]
fn derived_keys_seal_and_open_round_trip() {
    let key = stdout_line(&cpclink(&[
        "psp",
        "derive",
        "--master-key",
        MASTER0,
        "--spi",
        "00000007",
        "--suite",
        "aes-gcm-256",
    ]));
    let packet = stdout_line(&cpclink(&[
        "psp",
        "seal",
        "--key",
        &key,
        "--spi",
        "00000007",
        "--iv",
        "9",
        "--suite",
        "aes-gcm-256",
        "--next-header",
        "41",
        "--payload",
        "60000000cafe",
    ]));
    assert_eq!(
        &packet[..8],
        "29010005",
        "next header 41, ext len 1, version 1 (bits 5..2), one bit"
    );
    let opened = stdout_line(&cpclink(&[
        "psp",
        "open",
        "--key",
        &key,
        "--suite",
        "aes-gcm-256",
        "--packet",
        &packet,
    ]));
    assert_eq!(opened, "41 60000000cafe");
}

#[test]
fn open_failures_print_one_reason_and_exit_1() {
    let mut tampered = FOREIGN_PACKET.to_string();
    tampered.replace_range(40..41, "f");
    for (packet, reason) in [
        (tampered.as_str(), "authentication failed"),
        ("0102", "truncated"),
    ] {
        let out = cpclink(&[
            "psp",
            "open",
            "--key",
            FOREIGN_KEY,
            "--suite",
            "aes-gcm-128",
            "--packet",
            packet,
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty(), "no plaintext on failure");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
    }
}
