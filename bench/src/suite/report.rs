//! The suite's report: one serde model, from which `report.json`, `report.md` and the CSVs
//! are all rendered, so they cannot disagree.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::machine::Machine;

/// Everything one run of the suite measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Whether this was the quick run.
    pub quick: bool,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Seconds the whole run took.
    pub seconds: f64,
    /// The machine it ran on.
    pub machine: Machine,
    /// Headline figures, one sentence each.
    pub summary: Vec<String>,
    /// The stages, in the order they ran.
    pub stages: Vec<Stage>,
    /// SVG plots written beside the report (file names).
    pub plots: Vec<String>,
    /// Other files written beside the report (CSVs, HdrHistogram interval logs).
    pub files: Vec<String>,
}

/// One stage (crypto, data plane, latency, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Short name, also the prefix of its files.
    pub name: String,
    /// Ran, skipped or failed.
    pub status: StageStatus,
    /// Seconds the stage took.
    pub seconds: f64,
    /// What was measured and how, one sentence each.
    pub notes: Vec<String>,
    /// The stage's tables, rendered as Markdown and CSV.
    pub tables: Vec<Table>,
    /// Named figures with their per-round values, for `cpclink bench compare`.
    pub figures: Vec<Figure>,
}

impl Stage {
    /// A stage that has not run yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            status: StageStatus::Ran,
            seconds: 0.0,
            notes: Vec::new(),
            tables: Vec::new(),
            figures: Vec::new(),
        }
    }

    /// The figure called `name`, if the stage has it.
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum StageStatus {
    /// It ran and its tables are complete.
    Ran,
    /// It could not run here (no root, a tool missing); the reason says what it needs.
    Skipped(String),
    /// It started and failed; the run went on without it.
    Failed(String),
}

/// A table: a title, column names and rows of cells already formatted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// What the table shows.
    pub title: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each as many cells as columns.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            title: title.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells must not contain `|` or line breaks (Markdown) — they are replaced.
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| c.replace(['|', '\n'], "/"))
                .collect(),
        );
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let header: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        crate::markdown_table(&header, &self.rows)
    }

    /// The table as CSV (RFC 4180 quoting).
    pub fn csv(&self) -> String {
        let quote = |cell: &str| {
            if cell.contains([',', '"', '\n']) {
                format!("\"{}\"", cell.replace('"', "\"\""))
            } else {
                cell.to_string()
            }
        };
        let line = |cells: &[String]| cells.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",");
        let mut out = line(&self.columns);
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// One figure of merit, with the value of every round so a comparison can tell a change
/// from noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Unique within its stage, e.g. `encrypted aws-lc-rs aes-gcm-256 io_uring 1w 1400B`.
    pub name: String,
    /// Unit, e.g. `Gbit/s`, `µs`.
    pub unit: String,
    /// Whether a larger value is an improvement.
    pub higher_is_better: bool,
    /// The value reported (the median of the rounds).
    pub value: f64,
    /// Every round's value.
    pub rounds: Vec<f64>,
}

impl Figure {
    /// A figure whose value is the median of `rounds` (not empty).
    pub fn from_rounds(name: String, unit: &str, higher_is_better: bool, rounds: Vec<f64>) -> Self {
        Self {
            name,
            unit: unit.to_string(),
            higher_is_better,
            value: median(&rounds),
            rounds,
        }
    }
}

/// The median (mean of the middle two for an even count; NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

impl Report {
    /// The report as Markdown: summary, machine, then each stage's notes and tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mode = if self.quick { "quick" } else { "full" };
        let _ = writeln!(
            out,
            "# cpclink benchmark suite ({mode} run, {:.0} s)\n",
            self.seconds
        );
        out.push_str("## Summary\n\n");
        for line in &self.summary {
            let _ = writeln!(out, "- {line}");
        }
        out.push_str("\n## Machine\n\n");
        out.push_str(&self.machine.table().markdown());
        for stage in &self.stages {
            let _ = write!(out, "\n## {} ({:.1} s)\n\n", stage.name, stage.seconds);
            match &stage.status {
                StageStatus::Ran => {}
                StageStatus::Skipped(reason) => {
                    let _ = writeln!(out, "Skipped: {reason}\n");
                }
                StageStatus::Failed(error) => {
                    let _ = writeln!(out, "Failed: {error}\n");
                }
            }
            for note in &stage.notes {
                let _ = writeln!(out, "{note}\n");
            }
            for table in &stage.tables {
                let _ = write!(out, "### {}\n\n{}\n", table.title, table.markdown());
            }
        }
        if !self.plots.is_empty() {
            out.push_str("\n## Plots\n\n");
            for plot in &self.plots {
                let _ = writeln!(out, "![{plot}]({plot})");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut table = Table::new("t", &["a", "b"]);
        table.push(vec!["1,5".into(), "say \"hi\"".into()]);
        assert_eq!(table.csv(), "a,b\n\"1,5\",\"say \"\"hi\"\"\"\n");
    }

    #[test]
    fn cells_cannot_break_the_markdown_table() {
        let mut table = Table::new("t", &["a"]);
        table.push(vec!["x|y".into()]);
        assert_eq!(table.rows[0][0], "x/y");
        assert_eq!(table.markdown().lines().count(), 3);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
