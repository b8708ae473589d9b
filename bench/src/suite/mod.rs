//! `cpclink bench suite`: every suite in one run, each beside its baseline, with a progress
//! bar and ETA per stage, written as `report.json` and `report.md` (both rendered from one
//! [`report::Report`]), a CSV per table, SVG plots and HdrHistogram interval logs.
//!
//! A stage that needs root or a tool this machine lacks is reported as skipped with the
//! reason; a stage that fails is reported as failed; neither stops the run.

pub mod machine;
pub mod plot;
pub mod report;

mod latency;
mod planes;
mod throughput;
mod tunnel;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Error;
use machine::Machine;
use plot::Plot;
use report::{Report, Stage, StageStatus};

pub use tunnel::{Peer, PeerKind, TunnelPlan};

/// Stage names, in the order they run.
pub const STAGES: [&str; 7] = [
    "crypto",
    "dataplane",
    "engine-ndr",
    "latency",
    "tunnel",
    "keyplane",
    "path",
];

/// What to run and where to write it.
#[derive(Debug, Clone)]
pub struct SuitePlan {
    /// The quick run (about a minute) instead of the full one.
    pub quick: bool,
    /// Directory the report, CSVs, plots and logs are written to (created if missing).
    pub out: PathBuf,
    /// Stages to run (names from [`STAGES`]); empty runs them all.
    pub only: Vec<String>,
    /// The `cpclink` binary the tunnel stage runs in each namespace (`None`: that path is
    /// skipped).
    pub cpclink: Option<PathBuf>,
    /// Draw progress bars on the terminal.
    pub progress: bool,
}

/// Why a stage ended early.
#[derive(Debug)]
enum Outcome {
    /// It cannot run here; the reason says what it needs.
    Skip(String),
    /// It failed.
    Fail(String),
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Self {
        Outcome::Fail(e.to_string())
    }
}

/// What stages hand to later ones and to the report.
#[derive(Debug, Default)]
struct Context {
    quick: bool,
    out: PathBuf,
    cpclink: Option<PathBuf>,
    /// The AEAD libraries' bare seal, Gbit/s, by (library, suite, bytes).
    bare_seal: HashMap<(String, String, usize), f64>,
    /// One worker's encrypted packets per second at 1400 B, for the engine's NDR search.
    engine_mpps: Option<f64>,
    summary: Vec<String>,
    /// Interfaces the stages sent through, for the machine description.
    nics: Vec<machine::Nic>,
    plots: Vec<(String, Plot)>,
    files: Vec<String>,
}

impl Context {
    /// Writes a file beside the report and lists it.
    fn write_file(&mut self, name: &str, contents: &str) -> Result<(), Outcome> {
        std::fs::write(self.out.join(name), contents)
            .map_err(|e| Outcome::Fail(format!("writing {name}: {e}")))?;
        self.files.push(name.to_string());
        Ok(())
    }
}

/// One stage's progress bar.
#[derive(Debug)]
struct Progress(ProgressBar);

impl Progress {
    fn steps(&self, n: usize) {
        self.0.set_length(n as u64);
    }
    fn step(&self, message: impl Into<String>) {
        self.0.inc(1);
        self.0.set_message(message.into());
    }
}

/// Runs the suite and writes everything into `plan.out`; returns the report.
pub fn run(plan: &SuitePlan) -> Result<Report, Error> {
    std::fs::create_dir_all(&plan.out).map_err(|e| io_error("creating the output directory", e))?;
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut machine = Machine::describe();
    let bars = MultiProgress::with_draw_target(if plan.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{elapsed:>4}] {wide_bar} {pos:>3}/{len:3} ETA {eta:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut cx = Context {
        quick: plan.quick,
        out: plan.out.clone(),
        cpclink: plan.cpclink.clone(),
        ..Context::default()
    };
    let mut stages = Vec::new();
    for name in STAGES {
        if !plan.only.is_empty() && !plan.only.iter().any(|o| o == name) {
            continue;
        }
        let bar = bars.add(ProgressBar::new(1).with_style(style.clone()));
        bar.set_prefix(name);
        let progress = Progress(bar);
        let mut stage = Stage::new(name);
        let stage_started = Instant::now();
        let outcome = match name {
            "crypto" => throughput::crypto(&mut cx, &mut stage, &progress),
            "dataplane" => throughput::dataplane(&mut cx, &mut stage, &progress),
            "engine-ndr" => throughput::engine_ndr(&mut cx, &mut stage, &progress),
            "latency" => latency::latency(&mut cx, &mut stage, &progress),
            "tunnel" => tunnel::stage(&mut cx, &mut stage, &progress),
            "keyplane" => planes::keyplane(&mut cx, &mut stage, &progress),
            _ => planes::path(&mut cx, &mut stage, &progress),
        };
        stage.seconds = stage_started.elapsed().as_secs_f64();
        stage.status = match outcome {
            Ok(()) => StageStatus::Ran,
            Err(Outcome::Skip(reason)) => StageStatus::Skipped(reason),
            Err(Outcome::Fail(error)) => StageStatus::Failed(error),
        };
        progress.0.finish_with_message(match &stage.status {
            StageStatus::Ran => "done".to_string(),
            StageStatus::Skipped(reason) => format!("skipped: {reason}"),
            StageStatus::Failed(error) => format!("failed: {error}"),
        });
        stages.push(stage);
    }
    machine.nics.append(&mut cx.nics);
    machine.finish();
    let mut report = Report {
        quick: plan.quick,
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        machine,
        summary: cx.summary.clone(),
        stages,
        plots: Vec::new(),
        files: Vec::new(),
    };
    write(&mut report, &mut cx)?;
    Ok(report)
}

/// Writes plots, CSVs, `report.json` and `report.md`.
fn write(report: &mut Report, cx: &mut Context) -> Result<(), Error> {
    for (name, plot) in &cx.plots {
        match plot.draw(&cx.out.join(name)) {
            Ok(true) => report.plots.push(name.clone()),
            Ok(false) => {}
            Err(e) => report
                .summary
                .push(format!("plot {name} could not be drawn: {e}")),
        }
    }
    for stage in &report.stages {
        for (i, table) in stage.tables.iter().enumerate() {
            let name = format!("{}-{}.csv", stage.name, i + 1);
            std::fs::write(cx.out.join(&name), table.csv())
                .map_err(|e| io_error("writing a CSV", e))?;
            cx.files.push(name);
        }
    }
    report.files = cx.files.clone();
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Report(e.to_string()))?;
    std::fs::write(cx.out.join("report.json"), json)
        .map_err(|e| io_error("writing report.json", e))?;
    std::fs::write(cx.out.join("report.md"), report.markdown())
        .map_err(|e| io_error("writing report.md", e))?;
    Ok(())
}

/// Reads a report written by [`run`].
pub fn read_report(path: &Path) -> Result<Report, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error("reading a report", e))?;
    serde_json::from_str(&text).map_err(|e| Error::Report(format!("{}: {e}", path.display())))
}

fn io_error(context: &'static str, source: std::io::Error) -> Error {
    Error::Io { context, source }
}

/// Seconds of the quick or the full run.
fn pick<T>(cx: &Context, quick: T, full: T) -> T {
    if cx.quick {
        quick
    } else {
        full
    }
}

/// Milliseconds as a `Duration`, chosen for the quick or the full run.
fn ms(cx: &Context, quick: u64, full: u64) -> Duration {
    Duration::from_millis(pick(cx, quick, full))
}
