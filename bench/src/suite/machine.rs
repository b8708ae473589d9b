//! What the suite ran on: every report carries it, so figures from two machines are never
//! read as a change of code.

use serde::{Deserialize, Serialize};

use super::report::Table;

/// CPU flags that decide how fast the AEADs and the data plane can go.
pub const CRYPTO_FLAGS: [&str; 10] = [
    "aes",
    "pclmulqdq",
    "vaes",
    "vpclmulqdq",
    "avx",
    "avx2",
    "avx512f",
    "sha_ni",
    "ssse3",
    "bmi2",
];

/// The machine description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub cpu: String,
    /// Which of [`CRYPTO_FLAGS`] the CPU has.
    pub crypto_flags: Vec<String>,
    /// Cores this process may run on.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
    /// Where the packets went: every stage runs on loopback or veth, no NIC.
    pub network: String,
    /// The interfaces the stages used (and the host's own NICs, which carried no figure),
    /// each with its driver and the hardware profile that matches it.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Load average (1, 5, 15 minutes) when the run started.
    pub load_before: String,
    /// Load average when the run ended.
    pub load_after: String,
    /// Build profile of this binary.
    pub profile: String,
    /// Git commit of the source, or "unknown".
    pub commit: String,
}

impl Machine {
    /// Describes this machine now (the load average after is filled at the end).
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (cpu, crypto_flags) = parse_cpuinfo(&cpuinfo);
        Self {
            cpu,
            crypto_flags,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            network: "loopback and veth in network namespaces (no physical NIC carried a figure)"
                .into(),
            nics: [nic(
                None,
                "lo",
                "loopback (crypto, data plane, engine NDR, key plane)",
            )]
            .into_iter()
            .chain(host_nics())
            .collect(),
            load_before: load_average(),
            load_after: String::new(),
            profile: if cfg!(debug_assertions) {
                "debug (figures are not representative; build with --release)".into()
            } else {
                "release".into()
            },
            commit: git_commit(),
        }
    }

    /// Takes the load average again at the end of the run.
    pub fn finish(&mut self) {
        self.load_after = load_average();
    }

    /// The description as a two-column table.
    pub fn table(&self) -> Table {
        let mut table = Table::new("machine", &["what", "value"]);
        for (what, value) in [
            ("CPU", self.cpu.clone()),
            ("crypto flags", self.crypto_flags.join(" ")),
            ("cores", self.cores.to_string()),
            ("kernel", self.kernel.clone()),
            ("network", self.network.clone()),
            ("load average before", self.load_before.clone()),
            ("load average after", self.load_after.clone()),
            ("build profile", self.profile.clone()),
            ("git commit", self.commit.clone()),
        ] {
            table.push(vec![what.to_string(), value]);
            if what == "network" {
                for n in &self.nics {
                    table.push(vec![format!("NIC {}", n.interface), n.describe()]);
                }
            }
        }
        table
    }
}

/// An interface a stage used, as `ethtool -i` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Interface name, with what it carried (and its namespace's role) in parentheses.
    pub interface: String,
    /// Driver (`veth`, `virtio_net`, `loopback`, ...).
    pub driver: String,
    /// Driver version, firmware and bus, as `ethtool -i` gives them ("" when it gave none).
    pub detail: String,
    /// The shipped hardware profile that matches the driver, or "none".
    pub profile: String,
}

impl Nic {
    /// One line for the machine table.
    pub fn describe(&self) -> String {
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.detail)
        };
        format!("driver {}{detail}; profile {}", self.driver, self.profile)
    }
}

/// Describes `interface` (in namespace `netns`, or the host's) with `ethtool -i`; `what`
/// says what it carried. Loopback has no driver for ethtool and is named as such.
pub fn nic(netns: Option<&str>, interface: &str, what: &str) -> Nic {
    let mut command = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "ethtool", "-i", interface]);
            c
        }
        None => {
            let mut c = std::process::Command::new("ethtool");
            c.args(["-i", interface]);
            c
        }
    };
    let info = command
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let (driver, detail) = match info {
        Some(text) => parse_ethtool_info(&text),
        None if interface == "lo" => ("loopback".to_string(), String::new()),
        None => (
            "unknown".to_string(),
            "ethtool -i gave nothing (is ethtool installed?)".to_string(),
        ),
    };
    let profile = cpclink_hw::ProfileSet::shipped()
        .ok()
        .and_then(|set| set.best_match(&driver, None).map(|p| p.name.clone()))
        .unwrap_or_else(|| "none".into());
    Nic {
        interface: format!("{interface} ({what})"),
        driver,
        detail,
        profile,
    }
}

/// The host's interfaces backed by a device (its NICs), which no stage sends through.
fn host_nics() -> Vec<Nic> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("device").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|n| nic(None, n, "host NIC, carried no figure"))
        .collect()
}

/// `driver` and a one-line detail (version, firmware, bus) from `ethtool -i` output.
pub fn parse_ethtool_info(text: &str) -> (String, String) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty() && v != "N/A")
    };
    let driver = field("driver").unwrap_or_else(|| "unknown".into());
    let detail = [
        ("version", "version"),
        ("firmware-version", "firmware"),
        ("bus-info", "bus"),
    ]
    .iter()
    .filter_map(|(key, label)| field(key).map(|v| format!("{label} {v}")))
    .collect::<Vec<_>>()
    .join(", ");
    (driver, detail)
}

/// The CPU model and which crypto flags it has, from /proc/cpuinfo's first processor.
pub fn parse_cpuinfo(cpuinfo: &str) -> (String, Vec<String>) {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu = field("model name").unwrap_or_else(|| "unknown".into());
    let flags = field("flags").unwrap_or_default();
    let present: Vec<&str> = flags.split_whitespace().collect();
    let crypto = CRYPTO_FLAGS
        .iter()
        .filter(|f| present.contains(f))
        .map(|f| f.to_string())
        .collect();
    (cpu, crypto)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

fn load_average() -> String {
    let line = read_trimmed("/proc/loadavg");
    line.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The commit of the source tree this crate was built from, when git and the tree are
/// still there; "unknown" otherwise.
fn git_commit() -> String {
    let tree = env!("CARGO_MANIFEST_DIR");
    std::process::Command::new("git")
        .args(["-C", tree, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_crypto_flags_come_from_the_first_processor() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 3.0GHz\n\
                       flags\t\t: fpu sse2 aes avx2 pclmulqdq sha_ni\n\nprocessor\t: 1\n";
        let (cpu, flags) = parse_cpuinfo(cpuinfo);
        assert_eq!(cpu, "Example CPU @ 3.0GHz");
        assert_eq!(flags, ["aes", "pclmulqdq", "avx2", "sha_ni"]);
        assert_eq!(parse_cpuinfo("").0, "unknown");
    }

    #[test]
    fn ethtool_info_gives_the_driver_and_what_it_has_besides() {
        let veth = "driver: veth\nversion: 1.0\nfirmware-version: \nexpansion-rom-version: \n\
                    bus-info: \nsupports-statistics: yes\n";
        assert_eq!(
            parse_ethtool_info(veth),
            ("veth".to_string(), "version 1.0".to_string())
        );
        let nic =
            "driver: ice\nversion: 6.1.0\nfirmware-version: 4.20 0x8001\nbus-info: 0000:3b:00.0\n";
        assert_eq!(
            parse_ethtool_info(nic).1,
            "version 6.1.0, firmware 4.20 0x8001, bus 0000:3b:00.0"
        );
        assert_eq!(parse_ethtool_info("").0, "unknown");
    }

    #[test]
    fn loopback_is_described_without_ethtool_and_matches_its_profile() {
        let lo = nic(None, "lo", "test");
        assert_eq!(lo.interface, "lo (test)");
        assert_eq!(lo.driver, "loopback");
        assert_eq!(lo.profile, "loopback");
        assert_eq!(lo.describe(), "driver loopback; profile loopback");
    }
}
