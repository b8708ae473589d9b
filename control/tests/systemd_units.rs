//! The systemd units in `deploy/systemd/` are valid units whose command lines this build
//! accepts: checked with `systemd-analyze verify` (no systemd needs to run) against this
//! build's binary, and each `ExecStart`'s flags parsed by the binary itself.

use std::path::Path;
use std::process::Command;

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd");

fn units() -> Vec<(String, String)> {
    let mut units: Vec<(String, String)> = std::fs::read_dir(UNITS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    units.sort();
    units
}

#[test]
fn every_unit_verifies_and_its_command_line_parses() {
    let units = units();
    assert!(
        units.len() >= 2,
        "the appliance's and the authority's units"
    );
    let binary = env!("CARGO_BIN_EXE_cpclink");
    for (name, text) in &units {
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{name}: no ExecStart"));
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/bin/cpclink"), "{name}");
        // The flags before the command, and the command itself, with --help: the binary
        // refuses an unknown flag or subcommand, so a unit left behind by a rename fails.
        let args: Vec<&str> = words.collect();
        let out = Command::new(binary)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: cpclink {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        for needed in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "StateDirectory=",
        ] {
            assert!(text.contains(needed), "{name} lacks {needed}");
        }
        if name.contains("appliance") {
            // `systemctl reload` is SIGHUP, which the appliance takes as a reload.
            assert!(
                text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
                "{name}"
            );
        }
    }

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &units {
        let path = dir.path().join(name);
        std::fs::write(&path, text.replace("/usr/bin/cpclink", binary)).unwrap();
        verify(&path);
    }
}

fn verify(path: &Path) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines about the host (no running systemd, other units on it) are not the unit's.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains(path.file_name().unwrap().to_str().unwrap()))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "{}: {said}",
        path.display()
    );
}
