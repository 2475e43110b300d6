//! Plumbing shared by the broker and registry harnesses: where cached artifacts live,
//! fetching them with Maven once, free loopback ports, and running a JVM under a watchdog
//! so that it never outlives the test process.

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Overrides where cached jars and per-run scratch directories go.
pub const INFRA_DIR_ENV: &str = "SYNCLAG_TEST_INFRA_DIR";

/// `target/test-infra` (or `$SYNCLAG_TEST_INFRA_DIR`): cached jars and per-run scratch
/// directories.
pub fn infra_dir() -> PathBuf {
    let dir = match std::env::var_os(INFRA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            tmp.parent().unwrap_or(tmp).join("test-infra")
        }
    };
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create test infra dir {}: {e}", dir.display()));
    dir
}

/// The Maven projects under `tests/harness/`.
pub fn harness_pom(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("harness")
        .join(name)
        .join("pom.xml")
}

/// Run directories (logs of past test runs) older than this are removed.
const KEEP_RUNS_FOR: Duration = Duration::from_secs(3 * 24 * 3600);

/// A fresh directory under `target/test-infra/runs/` for one service of this process.
pub fn run_dir(service: &str) -> PathBuf {
    let runs = infra_dir().join("runs");
    prune_old_runs(&runs);
    let dir = runs.join(format!(
        "{service}-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create run dir {}: {e}", dir.display()));
    dir
}

fn prune_old_runs(runs: &Path) {
    let Ok(entries) = fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP_RUNS_FOR);
        if old {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}")
}

/// Makes sure `dest` holds what `mvn <goal_args>` on `pom` puts into the directory named by
/// the `-D<out_property>=` argument. Runs Maven only when `dest` does not exist yet.
///
/// Maven writes into a private temporary directory that is then renamed to `dest` in one
/// step, so concurrent first use from several test binaries is safe: whoever renames first
/// wins and the others discard their copy.
pub fn fetch_with_maven(
    what: &str,
    pom: &Path,
    goal_args: &[String],
    out_property: &str,
    dest: &Path,
) {
    if dest.is_dir() {
        return;
    }
    let parent = dest.parent().expect("cache dir has a parent");
    fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    let stem = dest
        .file_name()
        .and_then(|n| n.to_str())
        .expect("cache dir has a UTF-8 name");
    let suffix = format!("{}-{}", std::process::id(), unique_suffix());
    let tmp = parent.join(format!(".{stem}.partial-{suffix}"));
    let work = parent.join(format!(".{stem}.maven-{suffix}"));

    let mut cmd = Command::new("mvn");
    cmd.arg("-B")
        .arg("-q")
        .arg("-f")
        .arg(pom)
        .args(goal_args)
        .arg(format!("-D{out_property}={}", tmp.display()))
        .arg(format!("-Dharness.build.dir={}", work.display()))
        .stdin(Stdio::null());
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "cannot fetch {what}: Maven (`mvn`) is not installed or not on PATH. \
             Install Maven and a Java 17+ runtime (`.ci/run` does this on Debian)."
        ),
        Err(e) => panic!("cannot fetch {what}: failed to run mvn: {e}"),
    };
    let _ = fs::remove_dir_all(&work);
    if !output.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        panic!(
            "cannot fetch {what}: `mvn -f {} {}` failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            pom.display(),
            goal_args.join(" "),
            output.status,
            tail_of(&String::from_utf8_lossy(&output.stdout), 60),
            tail_of(&String::from_utf8_lossy(&output.stderr), 60),
        );
    }
    if !tmp.is_dir() {
        panic!(
            "cannot fetch {what}: Maven succeeded but wrote nothing to {}",
            tmp.display()
        );
    }
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_dir_all(&tmp);
        if !dest.is_dir() {
            panic!("cannot move fetched {what} into {}: {e}", dest.display());
        }
        // Another test binary finished the same fetch first; its copy is as good as ours.
    }
}

/// Ports on 127.0.0.1 that were free a moment ago, never one handed out before in this
/// process: the kernel may give a port just released by a probe to the next probe, so a
/// service's port and a broker's chosen one after it could otherwise be the same. All
/// probes are held open together while choosing, so they are distinct. A service may still
/// lose one to another process in a race; callers retry on bind errors.
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut probes: Vec<TcpListener> = Vec::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
        let port = probe
            .local_addr()
            .expect("local addr of probe socket")
            .port();
        if handed.insert(port) {
            ports.push(port);
        }
        probes.push(probe);
    }
    ports
}

/// The `java` to run: `$JAVA_HOME/bin/java` when JAVA_HOME is set, else `java` from PATH.
pub fn java_program() -> PathBuf {
    match std::env::var_os("JAVA_HOME") {
        Some(home) if !home.is_empty() => Path::new(&home).join("bin").join("java"),
        _ => PathBuf::from("java"),
    }
}

/// Runs `"$@"` in the background, remembers its PID, and stops it by that PID (TERM, then
/// KILL) as soon as the process given as `$1` is gone. Removes the scratch dir `$2` (if not
/// empty) once the service has exited.
const WATCHDOG: &str = r#"
parent=$1; scratch=$2; pidfile=$3; shift 3
"$@" &
svc=$!
echo "$svc" > "$pidfile"
(
  while kill -0 "$parent" 2>/dev/null; do sleep 1; done
  kill -TERM "$svc" 2>/dev/null
  i=0
  while kill -0 "$svc" 2>/dev/null && [ "$i" -lt 20 ]; do sleep 0.5; i=$((i + 1)); done
  kill -KILL "$svc" 2>/dev/null
) &
guard=$!
wait "$svc"
status=$?
kill "$guard" 2>/dev/null
if [ -n "$scratch" ]; then rm -rf "$scratch"; fi
echo "[watchdog] service $svc exited with status $status"
exit "$status"
"#;

/// A JVM (or other program) started under [`WATCHDOG`], with its output in `log`.
pub struct Service {
    name: String,
    watchdog: Mutex<Child>,
    pid_file: PathBuf,
    pub log: PathBuf,
}

impl Service {
    /// Starts `program args..` in the directory of `log`, with stdout and stderr appended to
    /// `log`. `scratch`, if given, is deleted when the program exits.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        scratch: Option<&Path>,
    ) -> Service {
        Service::spawn_guarded_by(std::process::id(), name, program, args, log, scratch)
    }

    /// Like [`Service::spawn`], but the service is stopped when process `parent` (instead of
    /// this test process) is gone.
    pub fn spawn_guarded_by(
        parent: u32,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        scratch: Option<&Path>,
    ) -> Service {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {name} log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let pid_file = log.with_extension("pid");
        let _ = fs::remove_file(&pid_file);
        let mut command = Command::new("sh");
        if let Some(dir) = log.parent() {
            command.current_dir(dir);
        }
        let child = command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("synclag-test-watchdog")
            .arg(parent.to_string())
            .arg(
                scratch
                    .map(|p| p.as_os_str().to_owned())
                    .unwrap_or_default(),
            )
            .arg(&pid_file)
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} watchdog (sh): {e}"));
        Service {
            name: name.to_owned(),
            watchdog: Mutex::new(child),
            pid_file,
            log: log.to_owned(),
        }
    }

    /// `Some(status)` once the service has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.watchdog.lock().unwrap_or_else(|p| p.into_inner());
        child.try_wait().ok().flatten()
    }

    /// The service's own PID, once the watchdog has started it.
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Stops the service by its PID and waits for it to exit.
    pub fn stop(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let mut child = self.watchdog.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.wait();
    }

    /// The last `lines` lines of the service log, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The last `lines` lines of a file (reads at most its last 256 KiB).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let mut buf = Vec::new();
    match fs::File::open(path) {
        Ok(mut f) => {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let start = len.saturating_sub(256 * 1024);
            if f.seek(SeekFrom::Start(start)).is_ok() {
                let _ = f.read_to_end(&mut buf);
            }
        }
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    }
    tail_of(&String::from_utf8_lossy(&buf), lines)
}

fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Fails loudly, naming the fix, when no Java runtime can be run.
pub fn require_java(what: &str) {
    let java = java_program();
    match Command::new(&java)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "cannot start {what}: `{} -version` failed with {s}",
            java.display()
        ),
        Err(e) => panic!(
            "cannot start {what}: no Java runtime ({}: {e}). Install a Java 17+ runtime \
             (e.g. openjdk-17-jre-headless; `.ci/run` does this) or set JAVA_HOME.",
            java.display()
        ),
    }
}

/// Polls `ready` every 100 ms until it is true, the service exits, or `timeout` passes.
/// Returns Err with a description (including the log tail) on failure.
pub fn await_ready(
    service: &Service,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = std::time::Instant::now();
    loop {
        if ready() {
            return Ok(start.elapsed());
        }
        if let Some(status) = service.exited() {
            return Err(format!(
                "{} exited during startup with {status}; log {}:\n{}",
                service.name(),
                service.log.display(),
                service.log_tail(60)
            ));
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "{} was not ready within {timeout:?}; log {}:\n{}",
                service.name(),
                service.log.display(),
                service.log_tail(60)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `start` once per process and hands out its result. If it panics, the panic message
/// is kept and every later caller fails with it at once, instead of trying (and waiting for)
/// the same failing start-up again.
pub fn start_once<T>(
    cell: &'static OnceLock<Result<T, String>>,
    start: impl FnOnce() -> T,
) -> &'static T {
    let result = cell.get_or_init(|| {
        panic::catch_unwind(AssertUnwindSafe(start)).map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "start-up panicked".to_owned())
        })
    });
    match result {
        Ok(value) => value,
        Err(message) => panic!("{message}"),
    }
}
