//! What a process costs, read from Linux's `/proc`: CPU time (user + system, all threads) and
//! resident memory. The benchmark reads its children's figures, so each service is measured on
//! its own, apart from the load generator and the broker.

use std::time::Duration;

use anyhow::Context as _;

/// CPU time and memory of one process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub cpu: Duration,
    /// Resident set size, bytes.
    pub rss: u64,
}

impl Sample {
    /// Microseconds of CPU per item, for `count` items done between this sample and `later`.
    pub fn cpu_us_per(&self, later: &Sample, count: u64) -> f64 {
        later.cpu.saturating_sub(self.cpu).as_secs_f64() * 1e6 / count.max(1) as f64
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on Linux almost everywhere).
fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Reads `pid`'s CPU time and resident memory.
pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} gone"))?;
    // The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let hz = ticks_per_second();
    Ok(Sample { cpu: Duration::from_millis(ticks * 1000 / hz), rss: rss_kib * 1024 })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let busy = (0..5_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b));
        assert!(busy > 0);
        let s = super::sample(std::process::id()).unwrap();
        assert!(s.rss > 1024 * 1024, "{s:?}");
    }
}
