//! `cpclink bench compare OLD.json NEW.json`: every figure the two suite reports share,
//! its change, and whether the change is larger than the noise the rounds themselves showed.
//!
//! A change counts when the two runs' rounds do not overlap at all and the change of the
//! medians exceeds the larger relative spread (max − min over median) of either run; with
//! one round per run only the first condition can hold. Anything else is noise.

use serde::Serialize;

use crate::suite::report::{Figure, Report, Table};

/// What a change amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Worse by more than the rounds' spread.
    Regression,
    /// Better by more than the rounds' spread.
    Improvement,
    /// Within what the rounds varied by.
    Noise,
}

impl Verdict {
    /// How the verdict reads in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Regression => "REGRESSION",
            Self::Improvement => "improvement",
            Self::Noise => "noise",
        }
    }
}

/// One figure compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Stage the figure belongs to.
    pub stage: String,
    /// Figure name.
    pub figure: String,
    /// Unit.
    pub unit: String,
    /// Old median.
    pub old: f64,
    /// New median.
    pub new: f64,
    /// (new − old) / old.
    pub change: f64,
    /// The larger relative spread of the two runs' rounds.
    pub spread: f64,
    /// What the change amounts to.
    pub verdict: Verdict,
}

/// Relative spread of a figure's rounds: (max − min) / median.
fn spread(figure: &Figure) -> f64 {
    let (lo, hi) = range(figure);
    if figure.value.abs() > 0.0 {
        (hi - lo) / figure.value.abs()
    } else {
        0.0
    }
}

fn range(figure: &Figure) -> (f64, f64) {
    let values = if figure.rounds.is_empty() {
        std::slice::from_ref(&figure.value)
    } else {
        &figure.rounds[..]
    };
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Judges one figure measured in two runs.
pub fn judge(old: &Figure, new: &Figure) -> (f64, f64, Verdict) {
    let change = if old.value.abs() > 0.0 {
        (new.value - old.value) / old.value.abs()
    } else {
        0.0
    };
    let spread = spread(old).max(spread(new));
    let ((old_lo, old_hi), (new_lo, new_hi)) = (range(old), range(new));
    let apart = new_lo > old_hi || new_hi < old_lo;
    let verdict = if !apart || change.abs() <= spread || !change.is_finite() {
        Verdict::Noise
    } else if (change > 0.0) == old.higher_is_better {
        Verdict::Improvement
    } else {
        Verdict::Regression
    };
    (change, spread, verdict)
}

/// Every figure both reports have, in the new report's order.
pub fn compare(old: &Report, new: &Report) -> Vec<Change> {
    let mut changes = Vec::new();
    for stage in &new.stages {
        let Some(old_stage) = old.stages.iter().find(|s| s.name == stage.name) else {
            continue;
        };
        for figure in &stage.figures {
            let Some(before) = old_stage.figure(&figure.name) else {
                continue;
            };
            let (change, spread, verdict) = judge(before, figure);
            changes.push(Change {
                stage: stage.name.clone(),
                figure: figure.name.clone(),
                unit: figure.unit.clone(),
                old: before.value,
                new: figure.value,
                change,
                spread,
                verdict,
            });
        }
    }
    changes
}

/// The comparison as a table.
pub fn table(changes: &[Change]) -> Table {
    let mut table = Table::new(
        "change per figure",
        &[
            "stage",
            "figure",
            "old",
            "new",
            "unit",
            "change",
            "round spread",
            "verdict",
        ],
    );
    for c in changes {
        table.push(vec![
            c.stage.clone(),
            c.figure.clone(),
            format!("{:.3}", c.old),
            format!("{:.3}", c.new),
            c.unit.clone(),
            format!("{:+.1}%", c.change * 100.0),
            format!("{:.1}%", c.spread * 100.0),
            c.verdict.name().to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(rounds: &[f64], higher_is_better: bool) -> Figure {
        Figure::from_rounds("f".into(), "Gbit/s", higher_is_better, rounds.to_vec())
    }

    #[test]
    fn a_planted_regression_is_flagged_and_noise_is_not() {
        let old = figure(&[10.0, 10.3, 9.8], true);
        // Noise: the same spread, shifted within it.
        let (_, _, verdict) = judge(&old, &figure(&[10.1, 9.9, 10.2], true));
        assert_eq!(verdict, Verdict::Noise);
        // A 15% drop, rounds far apart.
        let (change, spread, verdict) = judge(&old, &figure(&[8.5, 8.6, 8.4], true));
        assert_eq!(verdict, Verdict::Regression);
        assert!((change + 0.15).abs() < 0.01 && spread < 0.06);
        // For latency, lower is better: the same numbers read the other way.
        let old_latency = figure(&[10.0, 10.3, 9.8], false);
        let (_, _, verdict) = judge(&old_latency, &figure(&[8.5, 8.6, 8.4], false));
        assert_eq!(verdict, Verdict::Improvement);
        // Rounds apart but the change within a noisy run's spread: noise.
        let noisy = figure(&[6.0, 10.0, 14.0], true);
        let (_, _, verdict) = judge(&noisy, &figure(&[14.5, 14.6], true));
        assert_eq!(verdict, Verdict::Noise);
    }
}
