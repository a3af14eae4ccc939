//! CPU time by whom, from Linux's `/proc`: what a benchmark's phase cost in CPU per event.
//! On a shared machine a rate moves with the other tenants; the CPU a phase spent moves much
//! less, so a change's effect on it shows in one or two runs.
//!
//! Invariant: only read, never a figure of another machine: PostgreSQL is every process named
//! `postgres` on this one (the benchmark's database is taken to be that server; `None` when
//! there is none), and a thread that ended during a phase is still counted in the process's
//! total (under "the rest of the process").

use std::path::Path;

/// `/proc` counts CPU time in ticks of USER_HZ, 100 a second on every architecture Linux
/// builds for today (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time spent so far, in ticks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cpu {
    /// This whole process (threads that ended included).
    process: u64,
    /// The lander's threads: tokio's workers, its decode threads, librdkafka's.
    lander: u64,
    /// Every process named `postgres` on this machine (a server and its backends), when any runs.
    postgres: Option<u64>,
}

/// `utime + stime` and the name of a `/proc/.../stat` file.
fn stat(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // After the name: state (field 3), ..., utime (14), stime (15).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((name, fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?))
}

fn entries(dir: &str) -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path().join("stat"))
}

impl Cpu {
    pub(super) fn now() -> Cpu {
        let process = stat(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t);
        let lander = entries("/proc/self/task")
            .filter_map(|p| stat(&p))
            .filter(|(name, _)| name.starts_with("tokio-rt-worker") || name.starts_with("lander-decode") || name.starts_with("rdk:"))
            .map(|(_, t)| t)
            .sum();
        let pg: Vec<u64> = entries("/proc")
            .filter(|p| p.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()).is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
            .filter_map(|p| stat(&p))
            .filter(|(name, _)| name == "postgres")
            .map(|(_, t)| t)
            .collect();
        Cpu { process, lander, postgres: (!pg.is_empty()).then(|| pg.iter().sum()) }
    }

    /// Microseconds of CPU per event since `self`, by whom, as one line.
    pub(super) fn per_event_since(&self, events: u64) -> String {
        let now = Cpu::now();
        let us = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / events.max(1) as f64;
        let lander = now.lander.saturating_sub(self.lander);
        let engine = now.process.saturating_sub(self.process).saturating_sub(lander);
        let pg = match (self.postgres, now.postgres) {
            // A backend that ended during the phase takes its ticks with it: never below zero.
            (Some(a), Some(b)) => format!("PostgreSQL {:.2} us (every postgres process on this machine)", us(b.saturating_sub(a))),
            _ => "PostgreSQL not on this machine".to_owned(),
        };
        format!("cpu per event: lander {:.2} us, engine and the rest of the process {:.2} us, {pg}", us(lander), us(engine))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_a_thread_spends_is_counted() {
        let before = Cpu::now();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Until the process has spent 200 ms of CPU (however busy the machine), or give up.
        while Cpu::now().process < before.process + 20 {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "no CPU time counted: {before:?}");
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let line = before.per_event_since(1);
        assert!(line.starts_with("cpu per event: lander "), "{line}");
        let engine: f64 = line.split("rest of the process ").nth(1).and_then(|r| r.split(' ').next()).and_then(|v| v.parse().ok()).expect(&line);
        assert!(engine >= 200_000.0, "this test's thread is neither tokio's nor the lander's: {line}");
    }
}
