//! What a figure cost in CPU: how many of the machine's cores were busy over an interval, and
//! how many of them given processes used, read from `/proc/stat` and `/proc/<pid>/stat`.
//!
//! On a shared machine a throughput or latency figure depends on who else had the cores;
//! the CPU it took is what lets two paths be compared per core, and shows when a run had no
//! core to spare (a tail set by scheduling, not by the path). Both files count in the same
//! clock ticks, so a process's share needs no tick rate: its ticks over the machine's.

/// One reading of the machine's CPU time and, optionally, some processes'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuReading {
    /// Ticks the cores spent working (user, nice, system, irq, softirq), all cores together.
    busy: u64,
    /// Ticks of every kind (busy, idle, iowait, steal), all cores together.
    total: u64,
    /// Ticks the hypervisor took from the cores.
    steal: u64,
    /// How many cores `/proc/stat` lists.
    cores: usize,
    /// User and system ticks of each watched process (none for one gone).
    processes: Vec<Option<u64>>,
}

/// What an interval between two readings cost.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CpuUse {
    /// Cores busy on average over the interval (0 ..= the machine's cores).
    pub busy_cores: f64,
    /// Cores each watched process used on average, in the order they were given (0 for
    /// one gone).
    pub process_cores: Vec<f64>,
    /// Cores' worth of time the hypervisor took.
    pub steal_cores: f64,
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
        Self::parse(&stat, processes)
    }

    /// The machine's counters from the text of `/proc/stat`.
    pub fn parse(stat: &str, processes: Vec<Option<u64>>) -> Option<Self> {
        let mut lines = stat.lines();
        let fields: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        let busy = at(0) + at(1) + at(2) + at(5) + at(6);
        let steal = at(7);
        let total = busy + at(3) + at(4) + steal;
        let cores = lines
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        (cores > 0).then_some(Self {
            busy,
            total,
            steal,
            cores,
            processes,
        })
    }

    /// What the interval from `earlier` to `self` cost; zero when no tick passed.
    pub fn since(&self, earlier: &CpuReading) -> CpuUse {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return CpuUse::default();
        }
        let cores = |ticks: u64| self.cores as f64 * ticks as f64 / total as f64;
        let process_cores = self
            .processes
            .iter()
            .zip(&earlier.processes)
            .map(|(now, then)| match (now, then) {
                (Some(now), Some(then)) => cores(now.saturating_sub(*then)),
                _ => 0.0,
            })
            .collect();
        CpuUse {
            busy_cores: cores(self.busy.saturating_sub(earlier.busy)),
            process_cores,
            steal_cores: cores(self.steal.saturating_sub(earlier.steal)),
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

    const STAT_BEFORE: &str = "cpu  1000 0 500 8000 100 0 50 10 0 0\n\
                               cpu0 500 0 250 4000 50 0 25 5 0 0\n\
                               cpu1 500 0 250 4000 50 0 25 5 0 0\n\
                               intr 12345\n";
    // 100 ticks later on each of two cores: 150 busy (user 100, system 40, softirq 10),
    // 40 idle, 10 stolen.
    const STAT_AFTER: &str = "cpu  1100 0 540 8040 100 0 60 20 0 0\n\
                              cpu0 550 0 270 4020 50 0 30 10 0 0\n\
                              cpu1 550 0 270 4020 50 0 30 10 0 0\n";

    #[test]
    fn busy_and_stolen_cores_come_from_the_tick_differences() {
        let before = CpuReading::parse(STAT_BEFORE, vec![Some(10)]).unwrap();
        let after = CpuReading::parse(STAT_AFTER, vec![Some(90)]).unwrap();
        let used = after.since(&before);
        assert_eq!(before.cores, 2);
        assert!((used.busy_cores - 1.5).abs() < 1e-9, "{used:?}");
        assert!((used.steal_cores - 0.1).abs() < 1e-9, "{used:?}");
        assert_eq!(used.process_cores.len(), 1);
        assert!((used.process_cores[0] - 0.8).abs() < 1e-9, "{used:?}");
    }

    #[test]
    fn a_process_gone_by_the_second_reading_counts_nothing() {
        let before = CpuReading::parse(STAT_BEFORE, vec![Some(10), Some(5)]).unwrap();
        let after = CpuReading::parse(STAT_AFTER, vec![None, Some(25)]).unwrap();
        let used = after.since(&before).process_cores;
        assert_eq!(used[0], 0.0);
        assert!((used[1] - 0.2).abs() < 1e-9, "{used:?}");
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
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(100) {
            std::hint::black_box(0u64);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let used = CpuReading::now(&[std::process::id()])
            .expect("procfs")
            .since(&before);
        assert!(used.busy_cores <= before.cores as f64 + 1e-9, "{used:?}");
        // This process spun for 100 ms of the interval: at 100 ticks a second that shows.
        assert!(used.process_cores[0] > 0.0, "{used:?}");
    }
}
