//! The quick suite end to end: its JSON and Markdown say the same, its plots are SVG, its
//! CSVs are its tables, and what cannot run here is skipped with a reason instead of failing.
//! Stages needing root (latency, tunnel, route programming) run when root and skip otherwise.

use std::collections::BTreeMap;

use cpclink_bench::compare::{self, Verdict};
use cpclink_bench::suite::report::{Report, StageStatus};
use cpclink_bench::suite::{self, SuitePlan};

/// The Markdown tables of a report, by the `### title` above each: rows of trimmed cells.
fn markdown_tables(markdown: &str) -> BTreeMap<String, Vec<Vec<String>>> {
    let mut tables = BTreeMap::new();
    let mut title = None;
    let mut rows: Vec<Vec<String>> = Vec::new();
    for line in markdown.lines().chain([""]) {
        if let Some(t) = line.strip_prefix("### ") {
            title = Some(t.to_string());
            rows.clear();
        } else if line.starts_with('|') {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            if !cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                rows.push(cells);
            }
        } else if !rows.is_empty() {
            if let Some(t) = title.take() {
                tables.insert(t, std::mem::take(&mut rows));
            }
            rows.clear();
        }
    }
    tables
}

/// Every opening tag closed in order, self-closing tags and declarations aside.
fn tags_balance(svg: &str) -> bool {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else {
            return false;
        };
        let tag = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name = |t: &str| t.split_whitespace().next().unwrap_or("").to_string();
        if let Some(closing) = tag.strip_prefix('/') {
            if stack.pop() != Some(name(closing)) {
                return false;
            }
        } else {
            stack.push(name(tag));
        }
    }
    stack.is_empty()
}

#[test]
fn the_quick_suite_writes_a_report_whose_json_matches_its_markdown_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let plan = SuitePlan {
        quick: true,
        out: dir.path().to_path_buf(),
        only: Vec::new(),
        // No cpclink binary in a test: the tunnel stage must skip that peer with a reason.
        cpclink: None,
        progress: false,
    };
    let report = suite::run(&plan).unwrap();
    let text = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
    assert_eq!(text, serde_json::to_string_pretty(&report).unwrap());
    let report: Report = serde_json::from_str(&text).unwrap();
    let markdown = std::fs::read_to_string(dir.path().join("report.md")).unwrap();

    // Every table in the JSON is in the Markdown, cell for cell, and in its CSV.
    let tables = markdown_tables(&markdown);
    let mut compared = 0;
    for stage in &report.stages {
        for (i, table) in stage.tables.iter().enumerate() {
            let rows = tables
                .get(&table.title)
                .unwrap_or_else(|| panic!("no Markdown table {:?}", table.title));
            assert_eq!(rows[0], table.columns, "{}", table.title);
            assert_eq!(&rows[1..], &table.rows[..], "{}", table.title);
            let csv =
                std::fs::read_to_string(dir.path().join(format!("{}-{}.csv", stage.name, i + 1)))
                    .unwrap();
            assert_eq!(csv.lines().count(), 1 + table.rows.len(), "{}", table.title);
            compared += 1;
        }
    }
    assert!(compared >= 3, "{compared} tables");
    for line in &report.summary {
        assert!(markdown.contains(line.as_str()));
    }

    // The machine is described.
    assert!(!report.machine.cpu.is_empty() && report.machine.cores > 0);
    assert!(!report.machine.load_after.is_empty() && !report.machine.kernel.is_empty());
    assert!(markdown.contains(" git commit |"), "{markdown}");

    let stage = |name: &str| report.stages.iter().find(|s| s.name == name).unwrap();
    for name in ["crypto", "dataplane", "engine-ndr", "keyplane", "path"] {
        assert_eq!(stage(name).status, StageStatus::Ran, "{name}");
        assert!(!stage(name).figures.is_empty(), "{name}");
    }
    // The bound stands beside every encrypted figure.
    let dataplane = &stage("dataplane").tables[0];
    let bound = dataplane
        .columns
        .iter()
        .position(|c| c == "bound Gbit/s")
        .unwrap();
    for row in dataplane.rows.iter().filter(|r| r[3] != "plain") {
        assert!(row[bound].parse::<f64>().unwrap() > 0.0, "{row:?}");
    }
    let root = nix::unistd::geteuid().is_root();
    for name in ["latency", "tunnel"] {
        match (&stage(name).status, root) {
            (StageStatus::Skipped(why), false) => assert!(why.contains("root"), "{why}"),
            (StageStatus::Ran, true) => {}
            (other, _) => panic!("{name}: {other:?}"),
        }
    }
    if root {
        // No cpclink binary and (here) no userspace WireGuard: skipped, each with its reason.
        let skipped = stage("tunnel")
            .tables
            .iter()
            .find(|t| t.title == "peers skipped")
            .unwrap();
        let reason = |peer: &str| {
            skipped
                .rows
                .iter()
                .find(|r| r[0] == peer)
                .map(|r| r[1].clone())
        };
        assert!(reason("cpclink").unwrap().contains("no cpclink binary"));
        if which("boringtun-cli").is_none() {
            assert_eq!(
                reason("boringtun").unwrap(),
                "boringtun-cli not found on PATH"
            );
        }
        assert!(stage("tunnel").figure("TCP veth").is_some());
        assert!(report.files.iter().any(|f| f.ends_with(".hlog")));
        let log = std::fs::read_to_string(dir.path().join("latency-50pct.hlog")).unwrap();
        assert!(log.contains("Tag=cpclink-one-way,"), "{log}");
    }

    // Plots exist and are SVG.
    for plot in [
        "crypto.svg",
        "dataplane-throughput.svg",
        "dataplane-scaling.svg",
        "keyplane.svg",
    ] {
        assert!(report.plots.iter().any(|p| p == plot), "{plot} not listed");
    }
    for plot in &report.plots {
        let svg = std::fs::read_to_string(dir.path().join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") || svg.starts_with("<?xml"),
            "{plot}"
        );
        assert!(tags_balance(&svg), "{plot}: tags do not balance");
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "{plot}: no line"
        );
    }

    // A report compared with itself shows no change beyond noise.
    let same = compare::compare(&report, &report);
    assert!(!same.is_empty() && same.iter().all(|c| c.verdict == Verdict::Noise));
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[test]
fn compare_flags_a_planted_regression_in_a_report_and_not_noise() {
    use cpclink_bench::suite::machine::Machine;
    use cpclink_bench::suite::report::{Figure, Stage};
    let report = |scale: f64, jitter: f64| Report {
        quick: true,
        started_unix: 0,
        seconds: 1.0,
        machine: Machine::describe(),
        summary: vec![],
        stages: vec![{
            let mut s = Stage::new("dataplane");
            s.figures = vec![
                Figure::from_rounds(
                    "steady".into(),
                    "Gbit/s",
                    true,
                    vec![10.0, 10.2 + jitter, 9.9],
                ),
                Figure::from_rounds(
                    "planted".into(),
                    "Gbit/s",
                    true,
                    vec![20.0 * scale, 20.3 * scale, 19.8 * scale],
                ),
            ];
            s
        }],
        plots: vec![],
        files: vec![],
    };
    let changes = compare::compare(&report(1.0, 0.0), &report(0.8, 0.1));
    let verdict = |name: &str| changes.iter().find(|c| c.figure == name).unwrap().verdict;
    assert_eq!(verdict("planted"), Verdict::Regression);
    assert_eq!(verdict("steady"), Verdict::Noise);
    let text = compare::table(&changes).markdown();
    assert!(
        text.contains("REGRESSION") && text.contains("-20.0%"),
        "{text}"
    );
}
