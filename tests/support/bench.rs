//! Helpers for the load commands under `benches/` (they include this harness with
//! `#[path = "../tests/support/mod.rs"] mod support;`).

/// Whether the target runs as a benchmark (`cargo bench` passes `--bench`). Run by
/// `cargo test --all-targets` without it, a load command does a small smoke run of the
/// same code path instead.
pub fn is_bench_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The command line as `--flag value` pairs, without cargo's `--bench`.
pub fn flag_pairs() -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        out.push((flag, value));
    }
    Ok(out)
}

/// User + system CPU seconds of this process so far (Linux `/proc`; 0 elsewhere).
pub fn cpu_seconds() -> f64 {
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (100 per
    // second on mainstream Linux builds); the command name before them may hold spaces.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / 100.0)
        })
        .unwrap_or(0.0)
}

/// (user + system CPU seconds, RSS MiB, peak RSS MiB) of this process.
pub fn usage() -> (f64, f64, f64) {
    let cpu = cpu_seconds();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}
