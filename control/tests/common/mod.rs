//! What the tests that run `cpclink` processes in network namespaces share: commands, the
//! root/tool check, and a lab of namespaces, processes and logs removed on drop.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command; its stdout, or why it failed.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why a namespace test cannot run here (not root, a tool or `/dev/net/tun` missing).
pub fn netns_skip_reason(tools: &[&str]) -> Option<String> {
    if sh(&["id", "-u"]).ok()?.trim() != "0" {
        return Some("needs root for network namespaces and TUN".into());
    }
    for tool in tools {
        if sh(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            return Some(format!("needs {tool}"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("needs /dev/net/tun".into());
    }
    None
}

/// Namespaces, the processes run in them and a scratch directory with their logs; all
/// killed and removed on drop.
pub struct Lab {
    /// The namespaces, deleted on drop.
    pub namespaces: Vec<String>,
    /// Scratch directory: configs and `NAME.out`/`NAME.err` logs.
    pub dir: PathBuf,
    /// Running processes by name.
    pub children: Vec<(String, Child)>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    /// A lab in a fresh scratch directory named after `tag` and this process.
    pub fn new(tag: &str, namespaces: Vec<String>) -> Self {
        let dir = std::env::temp_dir().join(format!("cpclink-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            namespaces,
            dir,
            children: Vec::new(),
        }
    }

    /// Starts `args` in `ns`, its output appended to `name.out`/`name.err` (a restarted
    /// process keeps one log).
    pub fn spawn(&mut self, ns: &str, name: &str, args: &[&str]) -> u32 {
        let file = |ext: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{name}.{ext}")))
                .unwrap()
        };
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(file("out"))
            .stderr(file("err"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        pid
    }

    /// Starts `cpclink ARGS` in `ns`.
    pub fn cpclink(&mut self, ns: &str, name: &str, args: &[&str]) -> u32 {
        let mut all = vec![env!("CARGO_BIN_EXE_cpclink")];
        all.extend_from_slice(args);
        self.spawn(ns, name, &all)
    }

    /// The first running process called `name`.
    pub fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
    }

    /// Waits for the first process called `name` to end and forgets it.
    pub fn wait(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.wait();
        }
    }

    /// One log of `name` (`out` or `err`).
    pub fn log(&self, name: &str, ext: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.{ext}"))).unwrap_or_default()
    }

    /// Every process's stderr, for a failing assertion's message.
    pub fn logs(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter_map(|f| f.strip_suffix(".err").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|n| format!("--- {n}:\n{}", self.log(n, "err")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls `done` for up to a minute.
    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "gave up waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `cpclink keymgr --config DIR/authority.toml ARGS`.
    pub fn keymgr(&self, args: &[&str]) -> Result<String, String> {
        let config = self.dir.join("authority.toml").display().to_string();
        let mut all = vec![env!("CARGO_BIN_EXE_cpclink"), "keymgr", "--config", &config];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Three pings from namespace `from` to `to`.
    pub fn ping(&self, from: usize, to: &str) -> Result<String, String> {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.namespaces[from],
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            to,
        ])
    }
}
