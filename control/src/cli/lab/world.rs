//! The lab's world: five network namespaces, six links, the underlay routes, the transits'
//! End SIDs and the configuration of the authority and the three appliances.
//!
//! ```text
//!                 ┌── t1 ──┬── dc2 (hosts echo)
//!   dc1 (clients) ┤        ╳
//!                 └── t2 ──┴── dc3 (hosts echo)
//! ```
//! Every centre reaches every other over t1 or t2. Each link `a–b` is a veth pair whose end
//! in `a` is named `b` and whose end in `b` is named `a`, on `fd00:NET::/64` (`a` is `::1`).
//! Centre N's appliance listens on `fd00:cc:N::1`, decapsulates at SID `fd00:200:N::100`
//! and serves inner prefix `10.N.0.0/24`; transit J's End SID is `fd00:100:J::1`. The
//! centres require a valid SRH HMAC on what enters them (`seg6_require_hmac`).

use std::path::Path;

use super::{sh, LabError};

/// Namespace name prefix; `cpclink lab down` removes every namespace that has it.
pub const PREFIX: &str = "cpclab-";
/// The centres.
pub const CENTRES: [&str; 3] = ["dc1", "dc2", "dc3"];
/// The transit routers.
pub const TRANSITS: [&str; 2] = ["t1", "t2"];
/// The centres hosting the service.
pub const HOSTS: [&str; 2] = ["dc2", "dc3"];
/// The service.
pub const SERVICE: &str = "echo";
/// Its anycast address.
pub const SERVICE_ADDRESS: &str = "10.99.0.7";
/// Its UDP port.
pub const SERVICE_PORT: u16 = 7;
/// Links: (a, b, subnet number, latency ms).
pub const LINKS: [(&str, &str, u16, f64); 6] = [
    ("dc1", "t1", 11, 1.0),
    ("dc1", "t2", 12, 2.0),
    ("t1", "dc2", 21, 1.0),
    ("t1", "dc3", 22, 1.0),
    ("t2", "dc2", 23, 1.0),
    ("t2", "dc3", 24, 1.0),
];
/// The SRH HMAC key id.
pub const HMAC_KEY_ID: u32 = 1;

/// The namespace of a node.
pub fn ns(node: &str) -> String {
    format!("{PREFIX}{node}")
}

/// A centre's number (dc2 → 2).
pub fn number(centre: &str) -> u16 {
    centre
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

/// Centre N's data-plane (and key agent) address.
pub fn appliance_address(centre: &str) -> String {
    format!("fd00:cc:{}::1", number(centre))
}

/// The SID a node's paths end at (centres) or pass through (transits).
pub fn sid(node: &str) -> String {
    if node.starts_with('t') {
        format!("fd00:100:{}::1", number(node))
    } else {
        format!("fd00:200:{}::100", number(node))
    }
}

/// The address `node` has on link `net`.
fn link_address(net: u16, a_side: bool) -> String {
    format!("fd00:{net}::{}", if a_side { 1 } else { 2 })
}

/// The links `node` ends: (its device, i.e. the other end's name; the other end's address).
fn adjacent(node: &str) -> Vec<(&'static str, String)> {
    LINKS
        .iter()
        .filter_map(|&(a, b, net, _)| {
            if a == node {
                Some((b, link_address(net, false)))
            } else if b == node {
                Some((a, link_address(net, true)))
            } else {
                None
            }
        })
        .collect()
}

/// The sysctls, set before the links exist so every interface inherits them.
fn sysctls(node: &str) -> Vec<(String, String)> {
    let hmac = if node.starts_with("dc") { "1" } else { "-1" };
    [
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.all.seg6_enabled", "1"),
        ("net.ipv6.conf.default.seg6_enabled", "1"),
        ("net.ipv6.conf.all.seg6_require_hmac", hmac),
        ("net.ipv6.conf.default.seg6_require_hmac", hmac),
        ("net.ipv6.conf.all.keep_addr_on_down", "1"),
        ("net.ipv6.conf.default.keep_addr_on_down", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `ip -n cpclab-NODE ARGS`.
pub fn ip(node: &str, args: &[&str]) -> Result<String, LabError> {
    sh(&[&["ip", "-n", &ns(node)], args].concat())
}

/// Builds the namespaces, links, addresses, End SIDs and underlay routes.
pub fn build() -> Result<(), LabError> {
    for node in CENTRES.iter().chain(&TRANSITS) {
        sh(&["ip", "netns", "add", &ns(node)])?;
        ip(node, &["link", "set", "lo", "up"])?;
        for (k, v) in sysctls(node) {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns(node),
                "sysctl",
                "-qw",
                &format!("{k}={v}"),
            ])?;
        }
    }
    for (a, b, net, _) in LINKS {
        ip(
            a,
            &[
                "link",
                "add",
                "name",
                b,
                "type",
                "veth",
                "peer",
                "name",
                a,
                "netns",
                &ns(b),
            ],
        )?;
        for (node, dev, a_side) in [(a, b, true), (b, a, false)] {
            ip(
                node,
                &[
                    "addr",
                    "add",
                    &format!("{}/64", link_address(net, a_side)),
                    "dev",
                    dev,
                    "nodad",
                ],
            )?;
            ip(node, &["link", "set", "dev", dev, "up"])?;
        }
    }
    for centre in CENTRES {
        ip(
            centre,
            &[
                "addr",
                "add",
                &format!("{}/128", appliance_address(centre)),
                "dev",
                "lo",
            ],
        )?;
    }
    for node in CENTRES.iter().chain(&TRANSITS) {
        underlay(node)?;
    }
    // Resolve neighbours now, so the first packets do not wait in a neighbour queue.
    for (a, b, net, _) in LINKS {
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            &ns(a),
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &link_address(net, false),
        ]);
        let _ = b;
    }
    Ok(())
}

/// (Re)installs `node`'s underlay routes and, on a transit, its End SID (`replace`:
/// idempotent). A link going down flushes the routes over it, the SID's too when it sat
/// on that link's device; run after every change of a link's state.
pub fn underlay(node: &str) -> Result<(), LabError> {
    let links = adjacent(node);
    if node.starts_with('t') {
        // The kernel wants a device for the SID, and one that is up: any link will do.
        let homed = links.iter().any(|(dev, _)| {
            ip(
                node,
                &[
                    "-6",
                    "route",
                    "replace",
                    &sid(node),
                    "encap",
                    "seg6local",
                    "action",
                    "End",
                    "dev",
                    dev,
                ],
            )
            .is_ok()
        });
        if !homed {
            return Err(LabError::Lab(format!(
                "{node}: no link up to hold its End SID"
            )));
        }
    }
    let via = |peer: &str| {
        links
            .iter()
            .find(|(d, _)| *d == peer)
            .map(|(_, a)| a.clone())
    };
    let mut routes: Vec<(String, String, u32)> = Vec::new();
    if node.starts_with('t') {
        for centre in CENTRES {
            if let Some(gw) = via(centre) {
                let n = number(centre);
                routes.push((format!("fd00:cc:{n}::/48"), gw.clone(), 100));
                routes.push((format!("fd00:200:{n}::/48"), gw, 100));
            }
        }
    } else {
        for transit in TRANSITS {
            if let Some(gw) = via(transit) {
                routes.push((format!("fd00:100:{}::/48", number(transit)), gw, 100));
            }
        }
        for other in CENTRES.iter().filter(|c| **c != node) {
            let n = number(other);
            for (metric, transit) in [(100, "t1"), (200, "t2")] {
                if let Some(gw) = via(transit) {
                    routes.push((format!("fd00:cc:{n}::/48"), gw.clone(), metric));
                    routes.push((format!("fd00:200:{n}::/48"), gw, metric));
                }
            }
        }
    }
    for (prefix, gw, metric) in routes {
        // A gateway on a link that is down is refused: that route comes back with the link.
        let _ = ip(
            node,
            &[
                "-6",
                "route",
                "replace",
                &prefix,
                "via",
                &gw,
                "metric",
                &metric.to_string(),
            ],
        );
    }
    Ok(())
}

/// The inner side of a centre, once its appliance has made the TUN device: its prefix on
/// the TUN, the other centres and the service behind it; the service address on the hosts.
pub fn inner(centre: &str) -> Result<(), LabError> {
    let n = number(centre);
    let run = |args: &[&str]| ip(centre, args);
    let _ = run(&["addr", "add", &format!("10.{n}.0.1/24"), "dev", "cpc0"]);
    run(&["route", "replace", "10.0.0.0/8", "dev", "cpc0"])?;
    if HOSTS.contains(&centre) {
        let _ = run(&["addr", "add", &format!("{SERVICE_ADDRESS}/32"), "dev", "lo"]);
    }
    Ok(())
}

/// Where the authority's management API listens (in dc1, beside the authority).
pub fn authority_api_url() -> String {
    format!("https://[{}]:7444", appliance_address("dc1"))
}

/// The authority's configuration; `tokens`: its management API's (name, role, SHA-256 hex).
pub fn authority_toml(dir: &Path, tokens: &[(&str, &str, String)]) -> String {
    let mut t = format!(
        "listen = \"[{addr}]:7000\"\nstate_dir = \"{}\"\nkek_file = \"{}\"\n\n[api]\nlisten = \"[{addr}]:7444\"\n\n",
        dir.join("authority").display(),
        dir.join("kek").display(),
        addr = appliance_address("dc1"),
    );
    api_tokens(&mut t, tokens);
    t
}

/// `[[api.token]]` entries.
fn api_tokens(t: &mut String, tokens: &[(&str, &str, String)]) {
    for (name, role, sha256) in tokens {
        *t += &format!(
            "[[api.token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha256}\"\n\n"
        );
    }
}

/// The metrics file a host's scheduler writes.
pub fn metrics_toml(cpu_load: f64, compute_delay_ms: f64) -> String {
    format!(
        "[[service]]\nname = \"{SERVICE}\"\ncpu_load = {cpu_load}\ncompute_delay_ms = {compute_delay_ms}\n"
    )
}

/// Where centre `centre`'s management API listens.
pub fn api_url(centre: &str) -> String {
    format!("https://[{}]:7443", appliance_address(centre))
}

/// Centre `centre`'s appliance configuration: keyed by the key plane only, steering over
/// the lab's topology; dc1 places the service, dc2 and dc3 advertise it. `tokens`: the
/// management API's (name, role, SHA-256 hex).
pub fn appliance_toml(centre: &str, tokens: &[(&str, &str, String)]) -> String {
    let n = number(centre);
    let addr = appliance_address(centre);
    let mut t = format!(
        "[appliance]\nlisten = \"[{addr}]:1000\"\nworkers = 1\n\n[tun]\nname = \"cpc0\"\n\n\
         [keymgr]\nappliance = \"{centre}\"\nauthority = \"[{auth}]:7000\"\nlisten = \"[{addr}]:7001\"\n\
         state_dir = \"{centre}-agent\"\nkek_file = \"kek\"\nca_cert = \"authority/ca.pem\"\n\
         token_file = \"{centre}.token\"\nprefixes = [\"10.{n}.0.0/24\"]\n\n\
         [paths]\nnode = \"{centre}\"\nsid = \"{sid}\"\nhmac_key_id = {HMAC_KEY_ID}\n\
         hmac_secret_file = \"srh-hmac.key\"\nsweep_ms = 100\nbuckets = 1024\nbucket_idle_ms = 5000\n\
         hold_down_ms = 1000\n\n",
        auth = appliance_address("dc1"),
        sid = sid(centre),
    );
    for transit in TRANSITS {
        t += &format!(
            "[[paths.transit]]\nname = \"{transit}\"\nsid = \"{}\"\n\n",
            sid(transit)
        );
    }
    for other in CENTRES.iter().filter(|c| **c != centre) {
        t += &format!(
            "[[paths.site]]\npeer = \"{other}\"\nsid = \"{}\"\n\n",
            sid(other)
        );
        for transit in TRANSITS {
            t += &format!("[[paths.candidate]]\nsite = \"{other}\"\nvia = [\"{transit}\"]\n\n");
        }
    }
    for (a, b, _, latency) in LINKS {
        t += &format!("[[paths.link]]\nfrom = \"{a}\"\nto = \"{b}\"\nlatency_ms = {latency:.1}\n");
        if a == centre {
            t += &format!("device = \"{b}\"\n");
        } else if b == centre {
            t += &format!("device = \"{a}\"\n");
        }
        t += "\n";
    }
    if centre == "dc1" {
        t += &format!(
            "[[services]]\nname = \"{SERVICE}\"\nprefixes = [\"{SERVICE_ADDRESS}/32\"]\n\
             sites = [{}]\nlatency_bound_ms = 50.0\n\n",
            HOSTS
                .iter()
                .map(|h| format!("\"{h}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    t += &format!(
        "[metrics]\nfile = \"{centre}-metrics.toml\"\nttl_ms = 3000\nmin_interval_ms = 300\n\
         network_file = \"network.toml\"\n\n[api]\nlisten = \"[{addr}]:7443\"\n\n"
    );
    for (name, role, sha256) in tokens {
        t += &format!(
            "[[api.token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha256}\"\n\n"
        );
    }
    t
}

/// The network telemetry's view: every link, up or down.
pub fn network_toml(down: &[(String, String)]) -> String {
    LINKS
        .iter()
        .map(|(a, b, _, _)| {
            let up = !down
                .iter()
                .any(|(x, y)| (x == a && y == b) || (x == b && y == a));
            format!("[[link]]\nfrom = \"{a}\"\nto = \"{b}\"\nup = {up}\n\n")
        })
        .collect()
}

/// Whether `a–b` is a link of the lab.
pub fn is_link(a: &str, b: &str) -> bool {
    LINKS
        .iter()
        .any(|(x, y, _, _)| (*x == a && *y == b) || (*x == b && *y == a))
}
