//! CPU time of the processes in a benchmark, read from `/proc` before and after a case: where the
//! cores went per call (the servers, PostgreSQL, the load generator) and how busy the machine was.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// Which processes a [`Sample`] follows.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Named servers (the bench's children), by pid.
    pub servers: Vec<(&'static str, u32)>,
    /// Clock ticks per second of `/proc`'s times (`getconf CLK_TCK`).
    ticks_per_second: f64,
}

impl Watched {
    pub fn new(servers: Vec<(&'static str, u32)>) -> Self {
        let ticks_per_second = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            // Linux's USER_HZ everywhere we run.
            .unwrap_or(100.0);
        Self {
            servers,
            ticks_per_second,
        }
    }

    /// The CPU seconds spent so far by each party.
    pub fn sample(&self) -> Sample {
        let own = proc_times(Path::new("/proc/self/stat"));
        Sample {
            servers: self
                .servers
                .iter()
                .map(|(name, pid)| {
                    let times = proc_times(&PathBuf::from(format!("/proc/{pid}/stat")));
                    (*name, self.seconds(times.map(|(own, _)| own)))
                })
                .collect(),
            postgres: postgres_ticks()
                .into_iter()
                .map(|(pid, ticks)| (pid, ticks as f64 / self.ticks_per_second))
                .collect(),
            generator: self.seconds(own.map(|(own, _)| own)),
            // Children that have exited and been waited for (wrk): the kernel adds their time
            // here, while the servers, still running, are counted by pid.
            exited_children: self.seconds(own.map(|(_, children)| children)),
            machine: machine_ticks().map(|(busy, all)| {
                (
                    busy as f64 / self.ticks_per_second,
                    all as f64 / self.ticks_per_second,
                )
            }),
        }
    }

    fn seconds(&self, ticks: Option<u64>) -> f64 {
        ticks.map_or(0.0, |ticks| ticks as f64 / self.ticks_per_second)
    }
}

/// CPU seconds of each party at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    servers: Vec<(&'static str, f64)>,
    postgres: HashMap<u32, f64>,
    generator: f64,
    exited_children: f64,
    /// Busy and total seconds of all cores.
    machine: Option<(f64, f64)>,
}

/// CPU spent between two samples.
#[derive(Debug, Clone, Default)]
pub struct Spent {
    /// Seconds per named server.
    pub servers: Vec<(&'static str, f64)>,
    pub postgres: f64,
    /// This process (the load generator and the in-process test auth server).
    pub generator: f64,
    /// Child processes that ran and exited in between (wrk).
    pub exited_children: f64,
    /// The share of all cores that was busy, 0–1.
    pub machine_busy: Option<f64>,
}

impl Sample {
    /// What was spent from `self` to `later`. PostgreSQL backends that started in between count
    /// whole.
    pub fn until(&self, later: &Sample) -> Spent {
        Spent {
            servers: later
                .servers
                .iter()
                .map(|(name, after)| {
                    let before = self
                        .servers
                        .iter()
                        .find(|(other, _)| other == name)
                        .map_or(0.0, |(_, before)| *before);
                    (*name, after - before)
                })
                .collect(),
            postgres: later
                .postgres
                .iter()
                .map(|(pid, after)| after - self.postgres.get(pid).copied().unwrap_or(0.0))
                .sum(),
            generator: later.generator - self.generator,
            exited_children: later.exited_children - self.exited_children,
            machine_busy: self.machine.zip(later.machine).map(
                |((busy_before, all_before), (busy_after, all_after))| {
                    (busy_after - busy_before) / (all_after - all_before).max(f64::EPSILON)
                },
            ),
        }
    }
}

impl Spent {
    /// A named server's CPU seconds.
    pub fn server(&self, name: &str) -> f64 {
        self.servers
            .iter()
            .find(|(other, _)| *other == name)
            .map_or(0.0, |(_, seconds)| *seconds)
    }
}

/// The pid of this process's child running `program` (a server a [`kit::testing::Binary`]
/// started, which does not tell its pid).
pub fn child_running(program: &Path) -> Option<u32> {
    let program = program.canonicalize().ok()?;
    let own = std::process::id();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let parent: u32 = stat_fields(&stat)?.get(1)?.parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (parent == own && exe == program).then_some(pid)
    })
}

/// The fields of a `/proc/<pid>/stat` line after the command name (which may hold spaces), so
/// index 0 is the state, 1 the parent, 11 utime, 12 stime, 13 cutime, 14 cstime.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().collect())
}

/// A process's own ticks (user + system, all threads) and its waited-for children's.
fn proc_times(path: &Path) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let fields = stat_fields(&stat)?;
    let tick = |index: usize| fields.get(index)?.parse::<u64>().ok();
    Some((tick(11)? + tick(12)?, tick(13)? + tick(14)?))
}

/// Every PostgreSQL process's ticks, by pid.
fn postgres_ticks() -> HashMap<u32, u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            if !stat.contains("(postgres)") {
                return None;
            }
            let (own, _) = proc_times(&PathBuf::from(format!("/proc/{pid}/stat")))?;
            Some((pid, own))
        })
        .collect()
}

/// The machine's busy and total ticks over all cores (`/proc/stat`'s `cpu` line; idle and
/// iowait are not busy).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((all - idle, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_name_with_spaces_and_parentheses() {
        let fields = stat_fields("42 (tokio (rt) w) S 7 42 42 0 -1 0 0 0 0 0 15 3 2 1 20")
            .unwrap_or_default();
        assert_eq!(fields.first(), Some(&"S"));
        assert_eq!(fields.get(1), Some(&"7"));
        assert_eq!(fields.get(11), Some(&"15"));
        assert_eq!(fields.get(14), Some(&"1"));
    }

    #[test]
    fn this_process_spends_cpu() {
        let watched = Watched::new(Vec::new());
        let before = watched.sample();
        let mut sum = 0_u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(100) {
            sum = sum.wrapping_add(std::hint::black_box(1));
        }
        let spent = before.until(&watched.sample());
        assert!(sum > 0 && spent.generator >= 0.0, "{spent:?}");
        assert!(
            spent.machine_busy.is_some_and(|busy| busy > 0.0),
            "{spent:?}"
        );
    }
}
