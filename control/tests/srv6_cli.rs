//! `cpclink srv6` end to end through the binary.

use std::process::Command;

fn cpclink(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cpclink"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A packet captured at a transit router in the srv6 namespace test: the ingress kernel's
/// seg6 encap route wrote the SRH and its HMAC (key 7, secret "egress-domain-secret").
const KERNEL_PACKET: &str = "600d39ff00872b40fd00000a000000000000000000000001fd0002000002000000000000000000062909040001080000fd000200000200000000000000000006fd000100000200000000000000000001052600000000000727c398507107142844bdf9af85e2eebb642ea44d257aa9d412e1f704031674ef600d39ff000f1140fd00000a000000000000000000000001fd00005e000000000000000000000001a4142328000ffa8b70726f62652030";
const KEY: &str = "7:6567726573732d646f6d61696e2d736563726574";

#[test]
fn decode_verifies_a_kernel_written_hmac() {
    let (ok, out, err) = cpclink(&[
        "srv6",
        "decode",
        "--packet",
        KERNEL_PACKET,
        "--hmac-key",
        KEY,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["source"], "fd00:a::1");
    assert_eq!(
        v["segments"],
        serde_json::json!(["fd00:200:2::6", "fd00:100:2::1"])
    );
    assert_eq!(
        (v["segments_left"].as_u64(), v["last_entry"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(v["hmac"], serde_json::json!({"key_id": 7, "valid": true}));
    let (ok, out, err) = cpclink(&[
        "srv6",
        "decode",
        "--packet",
        KERNEL_PACKET,
        "--hmac-key",
        "7:00",
    ]);
    assert!(!ok, "a wrong key fails the command");
    assert!(err.contains("does not verify with --hmac-key"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hmac"]["valid"], false);
    let (_, out, _) = cpclink(&["srv6", "decode", "--packet", KERNEL_PACKET]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hmac"], serde_json::json!({"key_id": 7}));
}

#[test]
fn decode_with_a_key_fails_when_the_srh_carries_no_hmac() {
    // An SRH with no HMAC TLV, behind an IPv6 header: asked to verify, there is nothing to
    // verify, and that must not read as success.
    let (ok, srh, err) = cpclink(&["srv6", "encode", "--segments", "fd00::1"]);
    assert!(ok, "{err}");
    let srh = srh.trim();
    let ipv6 = format!(
        "60000000{:04x}2b40{}{}",
        srh.len() / 2,
        "fd00000a000000000000000000000001",
        "fd000000000000000000000000000001"
    );
    let packet = format!("{ipv6}{srh}");
    let (ok, out, err) = cpclink(&["srv6", "decode", "--packet", &packet]);
    assert!(ok, "without a key the decode alone succeeds: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hmac"], serde_json::Value::Null);
    let (ok, out, err) = cpclink(&["srv6", "decode", "--packet", &packet, "--hmac-key", KEY]);
    assert!(!ok, "no HMAC to verify fails the command: {out}");
    assert!(err.contains("carries no HMAC TLV"), "{err}");
    // The decode is still shown.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["segments"], serde_json::json!(["fd00::1"]));
}

#[test]
fn encode_matches_what_the_kernel_wrote() {
    // The same segment list, source and key give the SRH the kernel put on the wire
    // (bytes 40..120 of the packet; only Segments Left differs, and it is not covered
    // by the HMAC).
    let (ok, out, err) = cpclink(&[
        "srv6",
        "encode",
        "--segments",
        "fd00:100:2::1,fd00:200:2::6",
        "--hmac-key",
        KEY,
        "--source",
        "fd00:a::1",
    ]);
    assert!(ok, "{err}");
    let mut kernel = hex::decode(&KERNEL_PACKET[80..240]).unwrap();
    kernel[3] = 1; // captured after t2's End decremented Segments Left
    assert_eq!(out.trim(), hex::encode(kernel));
    let (ok, _, err) = cpclink(&["srv6", "encode", "--segments", "fd00::1", "--hmac-key", KEY]);
    assert!(!ok && err.contains("--source"), "{err}");
}

#[test]
fn decode_rejects_malformed_input_with_a_reason() {
    let mut bad = KERNEL_PACKET.to_string();
    bad.replace_range(86..88, "05"); // Segments Left 5 > Last Entry 1 + 1
    let (ok, _, err) = cpclink(&["srv6", "decode", "--packet", &bad]);
    assert!(!ok);
    assert!(
        err.contains("segments left 5 is greater than last entry 1 + 1"),
        "{err}"
    );
    let (ok, _, err) = cpclink(&["srv6", "decode", "--packet", "zz"]);
    assert!(!ok && err.contains("not hex"), "{err}");
}

#[test]
fn select_reads_the_arvr_example() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../srv6/examples/arvr.toml");
    let (ok, out, err) = cpclink(&["srv6", "select", "--input", file]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("site site3 via ingress → site3\nsegments fd00:200:3::6\n"),
        "{out}"
    );
    let (ok, out, _) = cpclink(&["srv6", "select", "--input", file, "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["site"], "site3");
    assert_eq!(
        v["explanation"]["rejected"],
        serde_json::json!([["latency bound", 2]])
    );
}

#[test]
fn select_errors_name_file_and_field() {
    let dir = std::env::temp_dir().join(format!("cpclink-select-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("topology.toml");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../srv6/examples/arvr.toml"
    ))
    .unwrap();
    std::fs::write(
        &file,
        text.replace(
            "compute_delay_ms = 10.0",
            "compute_delay_ms = 10.0, cpu_load = 1.7",
        ),
    )
    .unwrap();
    let (ok, _, err) = cpclink(&["srv6", "select", "--input", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(
        err.contains(
            "topology.toml:24: [[sites]][1].metrics.cpu_load: 1.7 is out of range; write a fraction from 0.0 to 1.0"
        ),
        "{err}"
    );
}
