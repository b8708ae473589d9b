//! Network namespaces for tests and benchmarks: create, run code inside (a thread that
//! joins the namespace, so sockets opened there belong to it), delete on drop.

use std::fs::File;
use std::process::{Command, Output};

use nix::sched::{setns, CloneFlags};

use crate::Error;

/// A named network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (with `ip netns add`) and brings its loopback up.
    pub fn create(name: &str) -> Result<Self, Error> {
        run_ip(&["netns", "add", name]).map_err(|reason| Error::Netns {
            name: name.into(),
            reason,
        })?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread inside the namespace and returns its result. Sockets `f` opens
    /// stay in the namespace after it returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let path = format!("/run/netns/{}", self.name);
        let err = |reason: String| Error::Netns {
            name: self.name.clone(),
            reason,
        };
        let file = File::open(&path).map_err(|e| err(format!("opening {path}: {e}")))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| err(format!("setns: {e}")))?;
                Ok(f())
            })
            .join()
            .map_err(|_| err("the closure panicked".into()))?
        })
    }

    /// Runs `ip -n NAME ARGS...`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full).map_err(|reason| Error::Netns {
            name: self.name.clone(),
            reason,
        })
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let out = self.exec(&["sysctl", "-qw", &format!("{key}={value}")])?;
        if !out.status.success() {
            return Err(Error::Netns {
                name: self.name.clone(),
                reason: format!(
                    "sysctl {key}={value}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> Result<Output, Error> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .map_err(|e| Error::Netns {
                name: self.name.clone(),
                reason: format!("running {cmd:?}: {e}"),
            })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_ip(&["netns", "del", &self.name]);
    }
}

fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why namespace tests cannot run here, or None when they can (root, `ip`, seg6).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (CAP_NET_ADMIN) for network namespaces".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs the ip command (iproute2)".into());
    }
    let probe = format!("cpclink-probe-{}", std::process::id());
    let ns = match Netns::create(&probe) {
        Ok(ns) => ns,
        Err(e) => return Some(format!("cannot create a network namespace: {e}")),
    };
    match ns.run(cpclink_srv6::program::Programmer::new) {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("kernel lacks IPv6 segment routing: {e}")),
        Err(e) => Some(e.to_string()),
    }
}
