//! What a figure cost in CPU: how many of the machine's cores were busy over an interval, and
//! how many of them given processes used, read from `/proc/stat` and `/proc/<pid>/stat`.
//!
//! On a shared machine a throughput or latency figure depends on who else had the cores;
//! the CPU it took is what lets two paths be compared per core, and shows when a run had no
//! core to spare (a tail set by scheduling, not by the path). Both files count in the same
//! clock ticks, so a process's share needs no tick rate: its ticks over the machine's.

use std::time::Instant;

/// One reading of the machine's CPU time and, optionally, some processes'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuReading {
    /// When it was read.
    at: Instant,
    /// Ticks the cores spent working (user, nice, system, irq, softirq), all cores together.
    busy: u64,
    /// Ticks of every kind (busy, idle, iowait, steal), all cores together.
    total: u64,
    /// How many cores `/proc/stat` lists.
    cores: usize,
    /// User and system ticks of each watched process (none for one gone).
    processes: Vec<Option<u64>>,
}

/// What one or more intervals cost, in core-seconds; intervals add up with [`CpuUse::add`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CpuUse {
    /// Wall seconds covered.
    pub seconds: f64,
    /// Core-seconds the machine's cores were busy in them.
    pub busy_core_secs: f64,
    /// Core-seconds each watched process used in them, in the order given (0 for one gone).
    pub process_core_secs: Vec<f64>,
}

impl CpuUse {
    /// Adds another interval's use (of the same processes, in the same order).
    pub fn add(&mut self, other: &CpuUse) {
        self.seconds += other.seconds;
        self.busy_core_secs += other.busy_core_secs;
        let n = self
            .process_core_secs
            .len()
            .max(other.process_core_secs.len());
        self.process_core_secs.resize(n, 0.0);
        for (sum, secs) in self
            .process_core_secs
            .iter_mut()
            .zip(&other.process_core_secs)
        {
            *sum += secs;
        }
    }

    /// The machine's busy cores on average; `None` over no time.
    pub fn busy_cores(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.busy_core_secs / self.seconds)
    }

    /// Each watched process's cores on average; empty over no time.
    pub fn process_cores(&self) -> Vec<f64> {
        if self.seconds > 0.0 {
            self.process_core_secs
                .iter()
                .map(|c| c / self.seconds)
                .collect()
        } else {
            Vec::new()
        }
    }
}

impl CpuReading {
    /// Reads the machine's counters and those of `pids`; `None` where `/proc/stat` cannot be
    /// read (not Linux, no procfs).
    pub fn now(pids: &[u32]) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let processes = pids
            .iter()
            .map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| process_ticks(&s))
            })
            .collect();
        Self::parse(&stat, processes, Instant::now())
    }

    /// The machine's counters from the text of `/proc/stat`, read at `at`.
    pub fn parse(stat: &str, processes: Vec<Option<u64>>, at: Instant) -> Option<Self> {
        let mut lines = stat.lines();
        let fields: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        let busy = field(0) + field(1) + field(2) + field(5) + field(6);
        let total = busy + field(3) + field(4) + field(7);
        let cores = lines
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        (cores > 0).then_some(Self {
            at,
            busy,
            total,
            cores,
            processes,
        })
    }

    /// What the interval from `earlier` to `self` cost; no core-seconds when no tick passed.
    pub fn since(&self, earlier: &CpuReading) -> CpuUse {
        let seconds = self.at.saturating_duration_since(earlier.at).as_secs_f64();
        let total = self.total.saturating_sub(earlier.total);
        // Ticks over all cores' ticks, times the cores, times the wall time: core-seconds.
        let core_secs = |ticks: u64| {
            if total == 0 {
                0.0
            } else {
                self.cores as f64 * ticks as f64 / total as f64 * seconds
            }
        };
        CpuUse {
            seconds,
            busy_core_secs: core_secs(self.busy.saturating_sub(earlier.busy)),
            process_core_secs: self
                .processes
                .iter()
                .zip(&earlier.processes)
                .map(|(now, then)| match (now, then) {
                    (Some(now), Some(then)) => core_secs(now.saturating_sub(*then)),
                    _ => 0.0,
                })
                .collect(),
        }
    }
}

/// User plus system ticks from the text of `/proc/<pid>/stat`: fields 14 and 15, counted
/// after the command name's closing parenthesis (the name itself may hold spaces).
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STAT_BEFORE: &str = "cpu  1000 0 500 8000 100 0 50 10 0 0\n\
                               cpu0 500 0 250 4000 50 0 25 5 0 0\n\
                               cpu1 500 0 250 4000 50 0 25 5 0 0\n\
                               intr 12345\n";
    // 100 ticks later on each of two cores: 150 busy (user 100, system 40, softirq 10),
    // 40 idle, 10 stolen.
    const STAT_AFTER: &str = "cpu  1100 0 540 8040 100 0 60 20 0 0\n\
                              cpu0 550 0 270 4020 50 0 30 10 0 0\n\
                              cpu1 550 0 270 4020 50 0 30 10 0 0\n";

    fn interval(before: Vec<Option<u64>>, after: Vec<Option<u64>>, secs: u64) -> CpuUse {
        let t0 = Instant::now();
        let before = CpuReading::parse(STAT_BEFORE, before, t0).unwrap();
        let after = CpuReading::parse(STAT_AFTER, after, t0 + Duration::from_secs(secs)).unwrap();
        assert_eq!(before.cores, 2);
        after.since(&before)
    }

    #[test]
    fn busy_cores_come_from_the_tick_differences_and_stolen_time_is_not_busy() {
        let used = interval(vec![Some(10)], vec![Some(90)], 2);
        assert_eq!(used.seconds, 2.0);
        // 150 of 200 ticks busy on 2 cores: 1.5 cores, 3 core-seconds over 2 s.
        assert!((used.busy_core_secs - 3.0).abs() < 1e-9, "{used:?}");
        assert_eq!(used.busy_cores(), Some(1.5));
        // The process's 80 ticks of 200: 0.8 cores.
        assert!((used.process_cores()[0] - 0.8).abs() < 1e-9, "{used:?}");
    }

    #[test]
    fn a_process_gone_by_the_second_reading_counts_nothing() {
        let used = interval(vec![Some(10), Some(5)], vec![None, Some(25)], 1);
        let cores = used.process_cores();
        assert_eq!(cores[0], 0.0);
        assert!((cores[1] - 0.2).abs() < 1e-9, "{cores:?}");
    }

    #[test]
    fn intervals_add_up_weighted_by_their_length() {
        let mut sum = interval(vec![Some(0)], vec![Some(100)], 1); // 1.5 busy, 1.0 process
        sum.add(&interval(vec![Some(0)], vec![Some(0)], 3)); // 1.5 busy, 0 process
        assert_eq!(sum.seconds, 4.0);
        assert_eq!(sum.busy_cores(), Some(1.5));
        assert!((sum.process_cores()[0] - 0.25).abs() < 1e-9, "{sum:?}");
        assert_eq!(CpuUse::default().busy_cores(), None, "no time, no average");
    }

    #[test]
    fn a_process_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat = "4242 (cpclink (w 0)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    700 300 0 0 20 0 3 0 100 0 0";
        assert_eq!(process_ticks(stat), Some(1000));
        assert_eq!(process_ticks("garbage"), None);
    }

    #[test]
    fn the_live_machine_reads_and_an_interval_is_within_its_cores() {
        let before = CpuReading::now(&[std::process::id()]).expect("procfs");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(0u64);
        }
        std::thread::sleep(Duration::from_millis(20));
        let used = CpuReading::now(&[std::process::id()])
            .expect("procfs")
            .since(&before);
        let busy = used.busy_cores().expect("time passed");
        assert!(busy <= before.cores as f64 + 1e-9, "{used:?}");
        // This process spun for 100 ms of the interval: at 100 ticks a second that shows.
        assert!(used.process_cores()[0] > 0.0, "{used:?}");
    }
}
