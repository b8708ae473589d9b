//! `cpclink run` refuses a wrong configuration before touching the system, naming the file,
//! the field and the fix, with exit status 1.

use std::process::Command;

fn run_with(config: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("cpclink-run-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cpclink"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_wrong_config_is_refused_with_file_field_and_fix() {
    let key = "11".repeat(32);
    let (ok, err) = run_with(&format!(
        "[appliance]\nlisten = \"127.0.0.1:1000\"\nmaster_keys = [\"{key}\", \"{key}\"]\n\
         [[peers]]\nname = \"b\"\nendpoint = \"127.0.0.2\"\nmaster_keys = [\"{key}\", \"{key}\"]\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("bad.toml:6: [peers.b].endpoint: \"127.0.0.2\" has no port; write host:port"),
        "{err}"
    );
    let (ok, err) = run_with("[appliance]\nlisten = \"127.0.0.1:1000\"\n");
    assert!(!ok);
    assert!(
        err.contains("bad.toml:1: [appliance]: no keys") && err.contains("or a [keymgr] section"),
        "{err}"
    );
}

#[test]
fn a_keymgr_section_with_a_missing_file_is_refused_before_anything_starts() {
    let (ok, err) = run_with(
        "[appliance]\nlisten = \"127.0.0.1:0\"\n\
         [keymgr]\nappliance = \"a\"\nauthority = \"127.0.0.1:7000\"\nlisten = \"127.0.0.1:0\"\n\
         state_dir = \"agent\"\nkek_file = \"no-such-kek\"\nca_cert = \"no-such-ca.pem\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("bad.toml:9: [keymgr].ca_cert:")
            && err.contains("no-such-ca.pem: cannot read")
            && err.contains("copy the authority's ca.pem"),
        "{err}"
    );
    assert!(
        !err.contains("listening on"),
        "refused before the data plane started: {err}"
    );
}

#[test]
fn a_wrong_type_names_the_section_the_line_and_what_to_write() {
    let key = "11".repeat(32);
    let (ok, err) = run_with(&format!(
        "[appliance]\nlisten = \"127.0.0.1:1000\"\nworkers = \"two\"\nmaster_keys = [\"{key}\", \"{key}\"]\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("bad.toml:3: [appliance].workers: invalid type: string \"two\"")
            && err.contains("a whole number"),
        "{err}"
    );
}

#[test]
fn an_address_this_machine_cannot_bind_is_refused_before_the_tun_device_exists() {
    let key = "11".repeat(32);
    let (ok, err) = run_with(&format!(
        "[appliance]\nlisten = \"192.0.2.77:1000\"\nmaster_keys = [\"{key}\", \"{key}\"]\n\
         [tun]\nname = \"cpcbind0\"\n"
    ));
    assert!(!ok);
    assert!(
        err.contains("bad.toml:2: [appliance].listen: cannot bind 192.0.2.77:1000")
            && err.contains("give an address of this machine"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net/cpcbind0").exists(),
        "no TUN device was created for a configuration that cannot run"
    );
}

#[test]
fn config_check_says_what_a_good_file_sets_up_and_refuses_a_bad_one_like_run() {
    let dir = std::env::temp_dir().join(format!("cpclink-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = "11".repeat(32);
    let check = |text: &str| {
        let path = dir.join("a.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_cpclink"))
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = check(&format!(
        "[appliance]\nlisten = \"127.0.0.1:1000\"\nworkers = 2\nmaster_keys = [\"{key}\", \"{key}\"]\n\
         [[peers]]\nname = \"b\"\nendpoint = \"127.0.0.2:1000\"\nmaster_keys = [\"{key}\", \"{key}\"]\n"
    ));
    assert!(ok);
    assert!(
        out.contains("a.toml: valid: listens on 127.0.0.1:1000, 2 worker(s), lab keys, 1 peer(s)"),
        "{out}"
    );
    let (ok, _, err) = check(&format!(
        "[appliance]\nlisten = \"127.0.0.1:1000\"\nworkers = \"two\"\nmaster_keys = [\"{key}\", \"{key}\"]\n"
    ));
    assert!(!ok);
    assert!(err.contains("a.toml:3: [appliance].workers"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
