//! Harness for the checkpoint/restart integration tests.
//!
//! Workloads are small C programs in `tests/workloads/NAME.c` (sharing
//! `tests/workloads/wl.h`), compiled once per test process with `gcc -O1 -g`
//! into `CARGO_TARGET_TMPDIR/workloads/`. The protocol with a workload:
//!
//! * `argv[1]` is a FIFO made by the harness, `argv[2]` the result file, more
//!   arguments are workload specific. stdin is `/dev/null`, stdout and stderr
//!   go to one `O_APPEND` log file in the test's directory, the working
//!   directory is the test's directory, and the workload is a session leader
//!   (`setsid`), so its process tree is self-contained.
//! * The workload builds its state, opens the FIFO, writes `ready\n` and closes
//!   it again (no pipe may stay open: pipes are not checkpointable yet). The
//!   harness blocks in `poll` on the FIFO and the workload's pidfd, so a
//!   workload that dies or hangs fails the test instead of hanging it.
//! * On SIGTERM (or the signal a test picks) the workload verifies itself,
//!   writes exactly `PASS\n` or `FAIL: ...\n` to the result file and exits.
//!
//! A checkpoint/restart round trip is then: `ckpt checkpoint PID -o DIR/img`
//! (must succeed; the workload must die of SIGKILL, the harness reaps it and
//! checks the pid is free), `ckpt restart DIR/img --detach` (must print the
//! same pid; the process must be running, untraced, with the same cmdline,
//! comm, exe, process group and session), then the signal, a pidfd wait for
//! the exit (the restored process is not our child) and the result file.
//!
//! Every process a test starts is owned by a [`Proc`], whose `Drop` kills it
//! (through its pidfd, so never a recycled pid) on every path, panics
//! included. [`TestEnv`]'s `Drop` additionally hunts for strays (processes
//! in a session we created, or whose command line mentions the test's
//! directory, e.g. a restored process whose pid we never learned): they are
//! killed, and on an otherwise passing test they fail it. The test's directory
//! is removed when the test passes and kept (path printed) when it fails.
//!
//! For process trees and other cases there are also: [`process_tree`],
//! [`proc_ids`] and [`thread_ids`] (what /proc says about a tree),
//! [`TestEnv::checkpoint_tree_and_kill`] and [`TestEnv::assert_tree_restored`]
//! (no pid still running after the checkpoint, the same tree after the restart),
//! [`TestEnv::image_processes`] (`inspect --json`), [`TestEnv::spawn_ckpt`]
//! (a `ckpt` left running, e.g. `restart` without --detach),
//! [`TestEnv::ckpt_with_env`], [`TestEnv::start_workload_in`] (start inside
//! a cgroup), [`TestCgroup`] (a cgroup directory removed on drop) and
//! [`Tracee`] (ptrace from the harness, as a debugger would).

#![allow(dead_code)] // Not every test binary uses every helper.

mod skip;
pub use skip::skip;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a workload may take to get ready, or to exit once signalled.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `ckpt` command may take.
pub const CKPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The `ckpt` binary under test.
pub fn ckpt_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ckpt"))
}

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn workload_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("workloads")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn errno_of(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Small syscall wrappers
// ---------------------------------------------------------------------------

/// `pidfd_open(pid, 0)`; the fd is close-on-exec.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).expect("pidfd_open returned an out-of-range fd");
    // SAFETY: the kernel just handed us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    let info: *const libc::siginfo_t = std::ptr::null();
    // SAFETY: a pidfd we own, a signal number, a null siginfo (the kernel then
    // builds a kill()-like one) and flags 0; no memory is written.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, info, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Polls `fds` for input (or hangup) until one is ready or `timeout` passes.
/// Returns, per fd, whether it is ready; all false on timeout.
fn poll_in(fds: &[RawFd], timeout: Duration) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let nfds = libc::nfds_t::try_from(pfds.len()).expect("too many fds");
        // SAFETY: pfds is a valid, exclusively borrowed array of nfds pollfd structs.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), nfds, ms) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {err}");
        }
        return pfds.iter().map(|p| p.revents != 0).collect();
    }
}

/// Marks every fd above stderr close-on-exec. Runs between fork and exec:
/// fds the test process inherited without close-on-exec (a jobserver or CI
/// pipe, say) must not leak into a workload, where they would be part of its
/// checkpointed state. (std's own fds are close-on-exec already.)
fn close_inherited_fds_on_exec() {
    // SAFETY: close_range takes three integers; CLOSE_RANGE_CLOEXEC only sets
    // a flag on fds of this (forked, single-threaded) process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: do it one by one (errors for unused fds are fine).
    for fd in 3..65536 {
        // SAFETY: fcntl(F_SETFD) on an arbitrary number only changes that
        // fd's close-on-exec flag, or fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. Runs between fork and exec: only open/write/close.
fn join_cgroup(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: procs is a valid NUL-terminated path; open returns a new fd or -1.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writes 1 byte from a static buffer to the fd we just opened.
    let r = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the fd we opened above, nothing else refers to it.
    unsafe { libc::close(fd) };
    if r != 1 {
        return Err(err);
    }
    Ok(())
}

/// `mkfifo(path, 0600)`.
fn mkfifo(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("NUL in path");
    // SAFETY: c is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------

/// Fields of /proc/PID/stat after the command name: index 0 is the state,
/// 1 the ppid, 2 the process group, 3 the session.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The one-letter state of a process (R, S, D, T, t, Z, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// A field of /proc/PID/status, e.g. "TracerPid".
pub fn proc_status_field(pid: i32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim().to_owned())
    })
}

/// The syscall a process is blocked in (first field of /proc/PID/syscall),
/// or `None` if it is running, gone or unreadable.
pub fn current_syscall(pid: i32) -> Option<i64> {
    let s = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    s.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|&n: &i64| n >= 0)
}

/// Where a process sleeping in nanosleep() may be found (glibc uses
/// clock_nanosleep; an interrupted one continues as restart_syscall).
pub const NANOSLEEP_SYSCALLS: &[i64] = &[
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_restart_syscall,
];
/// Where a process sleeping in pause() may be found.
pub const PAUSE_SYSCALLS: &[i64] = &[libc::SYS_pause, libc::SYS_restart_syscall];

/// Whether `sig` is in a signal mask of /proc/PID/status (`SigBlk`, `ShdPnd`,
/// `SigPnd`, ...).
pub fn signal_in_mask(pid: i32, field: &str, sig: i32) -> bool {
    proc_status_field(pid, field)
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig - 1)) != 0)
}

/// What a process looks like from outside; must survive checkpoint/restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub cmdline: String,
    pub comm: String,
    pub exe: PathBuf,
    pub pgid: i32,
    pub sid: i32,
}

pub fn identity(pid: i32) -> io::Result<Identity> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))?
        .trim_end()
        .to_owned();
    let exe = fs::read_link(format!("/proc/{pid}/exe"))?;
    let fields = stat_fields(pid).ok_or_else(|| io::Error::other("unreadable stat"))?;
    let num = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(-1);
    Ok(Identity {
        cmdline: cmdline.trim_end().to_owned(),
        comm,
        exe,
        pgid: num(2),
        sid: num(3),
    })
}

/// A one-line description of a process for failure messages.
pub fn describe_pid(pid: i32) -> String {
    match (
        proc_state(pid),
        proc_status_field(pid, "TracerPid"),
        proc_status_field(pid, "Name"),
    ) {
        (Some(state), tracer, name) => format!(
            "pid {pid}: name {}, state {state}, TracerPid {}, wchan {}",
            name.unwrap_or_default(),
            tracer.unwrap_or_default(),
            fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
        ),
        _ => format!("pid {pid}: no such process"),
    }
}

/// `prog` on PATH (or in /usr/sbin, where servers live), if it is there.
pub fn find_program(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file());
    found
}

/// Checkpoint of workload `name` run with `case` must fail naming the pid
/// and saying each of `words`; the process keeps running untraced and
/// passes its own checks.
pub fn refused_workload(test: &str, name: &str, case: &str, words: &[&str]) {
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload(name, &[case]) else {
        return;
    };
    let img = env.path("img");
    let run = env.checkpoint_must_fail(&mut w, &img, &format!("checkpoint of {name} {case}"));
    let pid = w.pid.to_string();
    assert!(
        digit_tokens(&run.stderr).contains(&pid.as_str()),
        "the error must name pid {pid}\n{}",
        run.describe()
    );
    for word in words {
        assert!(
            run.stderr.contains(word),
            "the error must say {word:?}\n{}",
            run.describe()
        );
    }
    env.assert_running_untraced(&mut w, "after the refused checkpoint");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// Maximal runs of ASCII digits in `s` (to find a pid or fd number in a message).
pub fn digit_tokens(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether
/// it held. Only for programs that cannot tell us they are ready (`sleep`,
/// `python3`, `bash`), and for bounded waits on restored processes settling;
/// our own workloads synchronise through the FIFO and pidfds instead.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ckpt checkpoint PID -o -`, its stdout a pipe for the caller to read
/// (stdin null, stderr piped).
pub fn spawn_checkpoint_to_pipe(pid: i32) -> std::process::Child {
    std::process::Command::new(ckpt_bin())
        .args(["checkpoint", &pid.to_string(), "-o", "-"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ckpt")
}

/// Waits for `c` to exit, at most `CKPT_TIMEOUT` (a panic past it).
pub fn wait_child(c: &mut std::process::Child) -> std::process::ExitStatus {
    let mut status = None;
    let exited = wait_until(CKPT_TIMEOUT, || {
        status = c.try_wait().expect("wait for the child");
        status.is_some()
    });
    assert!(
        exited,
        "pid {} did not exit within {CKPT_TIMEOUT:?}",
        c.id()
    );
    status.expect("exited")
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A process started (or restored) by a test. Dropping it kills it.
pub struct Proc {
    pub pid: i32,
    pidfd: OwnedFd,
    /// Set while the process is our child and not yet reaped.
    child: Option<Child>,
    /// Set once the process is known to have exited.
    exited: bool,
    /// Our child's exit status, once reaped.
    status: Option<ExitStatus>,
}

impl Proc {
    fn from_child(child: Child) -> Proc {
        let pid = i32::try_from(child.id()).expect("pid out of range");
        // An unreaped child's pid cannot be recycled, so this pidfd is the child.
        let pidfd = pidfd_open(pid).unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
        Proc {
            pid,
            pidfd,
            child: Some(child),
            exited: false,
            status: None,
        }
    }

    /// Takes charge of a process that is not our child (e.g. a restored one).
    pub fn adopt(pid: i32) -> io::Result<Proc> {
        Ok(Proc {
            pid,
            pidfd: pidfd_open(pid)?,
            child: None,
            exited: false,
            status: None,
        })
    }

    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    pub fn signal(&self, sig: i32) -> io::Result<()> {
        pidfd_send_signal(&self.pidfd, sig)
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        if !self.exited && poll_in(&[self.pidfd.as_raw_fd()], Duration::ZERO)[0] {
            self.exited = true;
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit. Returns `None` on
    /// timeout, else `Some(status)`, where the status is known only for our
    /// own children (which are reaped here).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<ExitStatus>> {
        if !self.exited && !poll_in(&[self.pidfd.as_raw_fd()], timeout)[0] {
            return None;
        }
        self.exited = true;
        if let Some(mut child) = self.child.take() {
            self.status = Some(child.wait().expect("waitpid"));
        }
        Some(self.status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited {
            // ESRCH (already gone) is fine.
            let _ = self.signal(libc::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            // Reap it, but never hang a test in a destructor.
            if poll_in(&[self.pidfd.as_raw_fd()], Duration::from_secs(10))[0] {
                let _ = child.wait();
            } else {
                eprintln!("warning: pid {} did not die after SIGKILL", self.pid);
            }
        }
    }
}

/// A started workload or program and its files.
pub struct Workload {
    /// e.g. "counters" or "sleeper-pause"; names its files in the test dir.
    pub label: String,
    pub pid: i32,
    pub proc: Proc,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// The result file (our C workloads only).
    pub result: Option<PathBuf>,
    /// As seen when it was ready.
    pub identity: Identity,
}

impl Workload {
    pub fn result_path(&self) -> &Path {
        self.result.as_deref().expect("not a result-file workload")
    }

    /// A path next to the result file: `RESULT<suffix>` (e.g. ".log").
    pub fn result_sibling(&self, suffix: &str) -> PathBuf {
        let mut p = self.result_path().as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// Log, result and process state, for failure messages.
    pub fn diagnostics(&self) -> String {
        diagnostics(&self.label, self.pid, &self.log, self.result.as_deref())
    }
}

/// Log tail, result file and process state, for failure messages.
fn diagnostics(label: &str, pid: i32, log: &Path, result: Option<&Path>) -> String {
    let log_data = fs::read(log).unwrap_or_default();
    let tail = &log_data[log_data.len().saturating_sub(4000)..];
    let result = match result {
        Some(r) => fs::read_to_string(r).unwrap_or_else(|e| format!("<{e}>")),
        None => "<none>".into(),
    };
    format!(
        "\n--- {label} (pid {pid}) ---\nresult file: {result:?}\n{}\n--- log {} (tail) ---\n{}",
        describe_pid(pid),
        log.display(),
        String::from_utf8_lossy(tail)
    )
}

// ---------------------------------------------------------------------------
// Building workloads
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum Build {
    Ready(PathBuf),
    GccMissing,
    Failed(String),
}

/// Compiles `tests/workloads/NAME.c` once per process.
fn build_workload(name: &str) -> Build {
    static BUILDS: OnceLock<Mutex<HashMap<String, Build>>> = OnceLock::new();
    let mut builds = BUILDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = builds.get(name) {
        return b.clone();
    }
    let b = compile(name);
    builds.insert(name.to_owned(), b.clone());
    b
}

fn compile(name: &str) -> Build {
    let src = workload_sources().join(format!("{name}.c"));
    let out_dir = tmp_root().join("workloads");
    if let Err(e) = fs::create_dir_all(&out_dir) {
        return Build::Failed(format!("mkdir {}: {e}", out_dir.display()));
    }
    let out = out_dir.join(name);
    let tmp = out_dir.join(format!("{name}.{}.tmp", std::process::id()));
    let res = Command::new("gcc")
        .args(["-O1", "-g", "-Wall", "-Wextra", "-o"])
        .arg(&tmp)
        .arg(&src)
        .stdin(Stdio::null())
        .output();
    let output = match res {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Build::GccMissing,
        Err(e) => return Build::Failed(format!("running gcc: {e}")),
    };
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Build::Failed(format!(
            "gcc {} failed ({}):\n{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if !output.stderr.is_empty() {
        eprintln!(
            "gcc warnings for {name}.c:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Keep an identical existing binary: another test process may be using it
    // (a checkpoint image refers to the executable it was taken from).
    let same = matches!((fs::read(&out), fs::read(&tmp)), (Ok(a), Ok(b)) if a == b);
    let res = if same {
        fs::remove_file(&tmp)
    } else {
        fs::rename(&tmp, &out)
    };
    match res {
        Ok(()) => Build::Ready(out),
        Err(e) => Build::Failed(format!("installing {}: {e}", out.display())),
    }
}

// ---------------------------------------------------------------------------
// ckpt invocations
// ---------------------------------------------------------------------------

/// One finished `ckpt` command.
pub struct CkptRun {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CkptRun {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn describe(&self) -> String {
        format!(
            "`ckpt {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// A `ckpt` command still running (see [`TestEnv::spawn_ckpt`]). Dropping it
/// kills ckpt.
pub struct CkptChild {
    pub proc: Proc,
    args: Vec<String>,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl CkptChild {
    /// What it wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// Waits up to `timeout` for it to exit; `None` (it keeps running) on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Option<CkptRun> {
        let status = self.proc.wait_exit(timeout)?.expect("ckpt is our child");
        Some(CkptRun {
            args: self.args.clone(),
            status,
            stdout: fs::read_to_string(&self.out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err_path).unwrap_or_default(),
        })
    }
}

// ---------------------------------------------------------------------------
// The per-test environment
// ---------------------------------------------------------------------------

/// A test's directory plus bookkeeping; see the module docs.
pub struct TestEnv {
    pub name: String,
    pub dir: PathBuf,
    ckpt_runs: Cell<usize>,
    /// Sessions we created (every workload is a session leader).
    sessions: RefCell<Vec<i32>>,
}

impl TestEnv {
    /// For tests that checkpoint or restore: skips (returns `None`, with a
    /// loud message) unless running as root.
    pub fn new(name: &str) -> Option<TestEnv> {
        if !is_root() {
            skip(&format!(
                "{name}: needs root (checkpoint/restart), running as euid != 0"
            ));
            return None;
        }
        Some(Self::without_root(name))
    }

    /// For tests that need no privileges.
    pub fn without_root(name: &str) -> TestEnv {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = tmp_root()
            .join("ckpt-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("clearing {}: {e}", dir.display()));
        }
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestEnv {
            name: name.to_owned(),
            dir,
            ckpt_runs: Cell::new(0),
            sessions: RefCell::default(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The compiled workload, or `None` (after a loud SKIP) if gcc is missing.
    pub fn workload_binary(&self, name: &str) -> Option<PathBuf> {
        match build_workload(name) {
            Build::Ready(p) => Some(p),
            Build::GccMissing => {
                skip(&format!("{}: gcc missing", self.name));
                None
            }
            Build::Failed(msg) => panic!("building workload {name}: {msg}"),
        }
    }

    /// Spawns `argv` the way workloads are run: own session, cwd = the test
    /// dir, stdin /dev/null, stdout+stderr appended to `DIR/<label>.out`.
    pub fn spawn(&self, label: &str, program: &Path, args: &[&OsStr]) -> (Proc, PathBuf) {
        self.spawn_in(label, program, args, None)
    }

    /// [`Self::spawn`], but the process first joins `cgroup` (a cgroup v2 or
    /// v1 directory: "0" is written to its `cgroup.procs` between fork and
    /// exec), so that everything it forks is in that cgroup too.
    pub fn spawn_in(
        &self,
        label: &str,
        program: &Path,
        args: &[&OsStr],
        cgroup: Option<&Path>,
    ) -> (Proc, PathBuf) {
        self.spawn_full(label, program, args, cgroup, None)
    }

    /// [`Self::spawn_in`], optionally as `user` = (uid, gid): no
    /// supplementary groups, real, effective and saved ids all set before
    /// exec (so the process is that user's and dumpable); its log file is
    /// chowned to it.
    fn spawn_full(
        &self,
        label: &str,
        program: &Path,
        args: &[&OsStr],
        cgroup: Option<&Path>,
        user: Option<(u32, u32)>,
    ) -> (Proc, PathBuf) {
        let procs_file = cgroup.map(|c| {
            std::ffi::CString::new(c.join("cgroup.procs").as_os_str().as_bytes())
                .expect("NUL in cgroup path")
        });
        let log_path = self.path(&format!("{label}.out"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("dup log fd");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", log_path.display()));
        }
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: the closure only makes async-signal-safe syscalls (setsid,
        // open, write, close, close_range, fcntl, setgroups, setresgid,
        // setresuid) on memory prepared before
        // the fork, and allocates nothing, as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if let Some(procs) = &procs_file {
                    join_cgroup(procs)?;
                }
                if let Some((uid, gid)) = user {
                    // The forked child has one thread: glibc's broadcast
                    // of id changes to every thread has nothing to do.
                    if libc::setgroups(0, std::ptr::null()) < 0
                        || libc::setresgid(gid, gid, gid) < 0
                        || libc::setresuid(uid, uid, uid) < 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                close_inherited_fds_on_exec();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        let proc = Proc::from_child(child);
        self.sessions.borrow_mut().push(proc.pid);
        (proc, log_path)
    }

    /// Starts C workload `name` with `extra` arguments and waits (FIFO, with
    /// [`TIMEOUT`]) until it is ready. `None` if skipped (gcc missing).
    pub fn start_workload(&self, name: &str, extra: &[&str]) -> Option<Workload> {
        self.start_workload_in(name, extra, None)
    }

    /// [`Self::start_workload`], in `cgroup` from the start (see [`Self::spawn_in`]).
    pub fn start_workload_in(
        &self,
        name: &str,
        extra: &[&str],
        cgroup: Option<&Path>,
    ) -> Option<Workload> {
        self.start_workload_full(name, extra, cgroup, None)
    }

    /// [`Self::start_workload`] run as user `uid`/`gid` from its start (see
    /// [`Self::spawn_full`]); the test directory, its FIFO and log are
    /// chowned to that user so the workload can use them.
    pub fn start_workload_as(
        &self,
        name: &str,
        extra: &[&str],
        uid: u32,
        gid: u32,
    ) -> Option<Workload> {
        std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", self.dir.display()));
        self.start_workload_full(name, extra, None, Some((uid, gid)))
    }

    fn start_workload_full(
        &self,
        name: &str,
        extra: &[&str],
        cgroup: Option<&Path>,
        user: Option<(u32, u32)>,
    ) -> Option<Workload> {
        let bin = self.workload_binary(name)?;
        let label = std::iter::once(name)
            .chain(extra.iter().copied())
            .collect::<Vec<_>>()
            .join("-");
        let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        Some(self.start_protocol_full(&label, &bin, &[], &extra, cgroup, user))
    }

    /// Starts `program LEAD... FIFO RESULT` that follows the workloads'
    /// protocol (see workloads/wl.h) though it is no C workload: a node
    /// script, a Go program.
    pub fn start_protocol(&self, label: &str, program: &Path, lead: &[&OsStr]) -> Workload {
        self.start_protocol_full(label, program, lead, &[], None, None)
    }

    fn start_protocol_full(
        &self,
        label: &str,
        bin: &Path,
        lead: &[&OsStr],
        extra: &[&OsStr],
        cgroup: Option<&Path>,
        user: Option<(u32, u32)>,
    ) -> Workload {
        let label = label.to_owned();
        let fifo = self.path(&format!("{label}.ready"));
        let result = self.path(&format!("{label}.result"));
        let _ = fs::remove_file(&fifo);
        let _ = fs::remove_file(&result);
        mkfifo(&fifo).unwrap_or_else(|e| panic!("mkfifo {}: {e}", fifo.display()));
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&fifo, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", fifo.display()));
        }
        // Open our end first (non-blocking, so this does not wait for the
        // writer; close-on-exec, like every fd std opens).
        let mut ready = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap_or_else(|e| panic!("opening {}: {e}", fifo.display()));

        let mut args: Vec<&OsStr> = lead.to_vec();
        args.extend([fifo.as_os_str(), result.as_os_str()]);
        args.extend(extra.iter().copied());
        let (mut proc, log) = self.spawn_full(&label, bin, &args, cgroup, user);
        let pid = proc.pid;
        let fail = |why: String| -> ! {
            panic!(
                "{}: workload {label}: {why}{}",
                self.name,
                diagnostics(&label, pid, &log, Some(&result))
            );
        };

        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let got = String::from_utf8_lossy(&got);
                fail(format!(
                    "not ready within {TIMEOUT:?} (read {got:?} so far)"
                ));
            }
            let ready_fds = poll_in(&[ready.as_raw_fd(), proc.pidfd.as_raw_fd()], left);
            if ready_fds[0] {
                let mut buf = [0u8; 64];
                match ready.read(&mut buf) {
                    Ok(0) => fail(format!(
                        "closed the FIFO after writing {:?}",
                        String::from_utf8_lossy(&got)
                    )),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("reading {}: {e}", fifo.display()),
                }
                if got == b"ready\n" {
                    break;
                }
                if !b"ready\n".starts_with(&got) {
                    let got = String::from_utf8_lossy(&got);
                    fail(format!("wrote {got:?} to the FIFO instead of \"ready\\n\""));
                }
            } else if ready_fds[1] {
                let status = proc.wait_exit(Duration::ZERO).flatten();
                fail(format!("exited before it was ready ({status:?})"));
            }
        }
        drop(ready);
        let identity = identity(pid).unwrap_or_else(|e| panic!("reading /proc/{pid}: {e}"));
        Workload {
            label,
            pid,
            proc,
            log,
            result: Some(result),
            identity,
        }
    }

    /// Starts a program that cannot report readiness; `ready` is polled (see
    /// [`wait_until`]) for up to [`TIMEOUT`].
    pub fn start_program(
        &self,
        label: &str,
        program: &Path,
        args: &[&OsStr],
        mut ready: impl FnMut(i32) -> bool,
    ) -> Workload {
        let (mut proc, log) = self.spawn(label, program, args);
        let pid = proc.pid;
        let ok = wait_until(TIMEOUT, || ready(pid) || proc.has_exited());
        let identity = identity(pid).ok();
        let w = Workload {
            label: label.to_owned(),
            pid,
            proc,
            log,
            result: None,
            identity: identity.clone().unwrap_or_default(),
        };
        if !ok || identity.is_none() {
            panic!(
                "{}: {label} did not get ready within {TIMEOUT:?}{}",
                self.name,
                w.diagnostics()
            );
        }
        w
    }

    /// Runs `ckpt ARGS` (cwd = test dir, stdin /dev/null, output to files so
    /// no pipe can be inherited), killing it after [`CKPT_TIMEOUT`].
    pub fn ckpt<I, S>(&self, args: I) -> CkptRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ckpt_reaping(args, None)
    }

    /// Like [`Self::ckpt`], but while it runs, reaps `reap` (our child) as soon
    /// as it dies, the way a shell would on SIGCHLD: `ckpt checkpoint` kills
    /// its target and returns once the pid is free, which for a child of ours
    /// means once we have reaped it.
    pub fn ckpt_reaping<I, S>(&self, args: I, reap: Option<&mut Proc>) -> CkptRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ckpt_full(args, reap, &[])
    }

    /// `ckpt checkpoint PID -o IMG` of a workload, which must fail (`what`
    /// names the case in the assertion); the run is returned for checks on
    /// its message.
    pub fn checkpoint_must_fail(&self, w: &mut Workload, img: &Path, what: &str) -> CkptRun {
        let pid = w.pid.to_string();
        let args = [
            OsStr::new("checkpoint"),
            OsStr::new(&pid),
            OsStr::new("-o"),
            img.as_os_str(),
        ];
        let run = self.ckpt_reaping(args, Some(&mut w.proc));
        assert!(!run.success(), "{what} must fail\n{}", run.describe());
        run
    }

    /// Like [`Self::ckpt`], with extra environment variables for `ckpt`.
    pub fn ckpt_with_env<I, S>(&self, args: I, env: &[(&str, &str)]) -> CkptRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ckpt_full(args, None, env)
    }

    /// Starts `ckpt ARGS` (as [`Self::ckpt`] would) without waiting for it,
    /// e.g. a `ckpt restart` without --detach that stays the restored root's
    /// parent. Dropping the result kills ckpt.
    pub fn spawn_ckpt<I, S>(&self, args: I) -> CkptChild
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.start_ckpt(args, &[])
    }

    fn start_ckpt<I, S>(&self, args: I, env: &[(&str, &str)]) -> CkptChild
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.start_ckpt_as(args, env, None, Stdio::null())
    }

    /// Runs `ckpt ARGS` (as [`Self::ckpt`]) with `stdin` as its standard
    /// input (e.g. `restart -` reading a stream).
    pub fn ckpt_stdin<I, S>(&self, args: I, stdin: Stdio) -> CkptRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = self.start_ckpt_as(args, &[], None, stdin);
        self.finish_ckpt(child, None)
    }

    /// Runs `ckpt ARGS` (as [`Self::ckpt`]) as user `uid`/`gid`, with no
    /// supplementary groups: the way that user would run it.
    pub fn ckpt_as<I, S>(&self, uid: u32, gid: u32, args: I) -> CkptRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = self.start_ckpt_as(args, &[], Some((uid, gid)), Stdio::null());
        self.finish_ckpt(child, None)
    }

    fn start_ckpt_as<I, S>(
        &self,
        args: I,
        env: &[(&str, &str)],
        user: Option<(u32, u32)>,
        stdin: Stdio,
    ) -> CkptChild
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let n = self.ckpt_runs.get();
        self.ckpt_runs.set(n + 1);
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out_path = self.path(&format!("ckpt-{n}.stdout"));
        let err_path = self.path(&format!("ckpt-{n}.stderr"));
        let out = File::create(&out_path).expect("create ckpt stdout file");
        let err = File::create(&err_path).expect("create ckpt stderr file");
        let mut cmd = Command::new(ckpt_bin());
        if let Some((uid, gid)) = user {
            // std drops the supplementary groups too when root sets a uid.
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .args(&args)
            .envs(env.iter().copied())
            .current_dir(&self.dir)
            .stdin(stdin)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", ckpt_bin().display()));
        CkptChild {
            proc: Proc::from_child(child),
            args,
            out_path,
            err_path,
        }
    }

    fn ckpt_full<I, S>(&self, args: I, reap: Option<&mut Proc>, env: &[(&str, &str)]) -> CkptRun
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = self.start_ckpt(args, env);
        self.finish_ckpt(child, reap)
    }

    fn finish_ckpt(&self, child: CkptChild, mut reap: Option<&mut Proc>) -> CkptRun {
        let CkptChild {
            mut proc,
            args,
            out_path,
            err_path,
        } = child;
        let deadline = Instant::now() + CKPT_TIMEOUT;
        let status = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = vec![proc.pidfd.as_raw_fd()];
            if let Some(r) = reap.as_deref().filter(|r| !r.exited) {
                fds.push(r.pidfd.as_raw_fd());
            }
            let ready = poll_in(&fds, left);
            if ready.get(1) == Some(&true) {
                if let Some(r) = reap.as_deref_mut() {
                    r.wait_exit(Duration::ZERO);
                }
            }
            if ready[0] {
                break proc
                    .wait_exit(Duration::ZERO)
                    .flatten()
                    .expect("ckpt is our child");
            }
            if left.is_zero() {
                let state = describe_pid(proc.pid);
                drop(proc);
                panic!(
                    "{}: `ckpt {}` did not finish within {CKPT_TIMEOUT:?} ({state}); stderr:\n{}",
                    self.name,
                    args.join(" "),
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
        };
        CkptRun {
            args,
            status,
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// `ckpt checkpoint PID -o IMG` must succeed and kill the workload; the
    /// harness reaps it (it died of SIGKILL) and checks the pid is free.
    pub fn checkpoint_and_kill(&self, w: &mut Workload, img: &Path) {
        self.checkpoint_and_kill_with(w, img, &[]);
    }

    /// [`Self::checkpoint_and_kill`] with extra `ckpt checkpoint` arguments
    /// (e.g. `--freeze-cgroup DIR`).
    pub fn checkpoint_and_kill_with(&self, w: &mut Workload, img: &Path, extra: &[&OsStr]) {
        let pid = w.pid.to_string();
        let mut args = vec![
            OsStr::new("checkpoint"),
            OsStr::new(&pid),
            OsStr::new("-o"),
            img.as_os_str(),
        ];
        args.extend_from_slice(extra);
        let run = self.ckpt_reaping(args, Some(&mut w.proc));
        if !run.success() {
            panic!(
                "{}: checkpoint failed:\n{}{}",
                self.name,
                run.describe(),
                w.diagnostics()
            );
        }
        let Some(status) = w.proc.wait_exit(TIMEOUT) else {
            panic!(
                "{}: pid {} still alive {TIMEOUT:?} after `ckpt checkpoint` returned{}",
                self.name,
                w.pid,
                w.diagnostics()
            );
        };
        if let Some(status) = status {
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "{}: checkpointed workload should have been killed by SIGKILL, got {status}{}",
                self.name,
                w.diagnostics()
            );
        }
        // A restored process is not our child: its parent (pid 1 or a
        // subreaper) reaps it in its own time; checkpoint does not wait.
        let gone = || matches!(kill(w.pid, 0), Err(e) if errno_of(&e) == libc::ESRCH);
        wait_until(TIMEOUT, gone);
        let probe = kill(w.pid, 0);
        assert!(
            matches!(&probe, Err(e) if errno_of(e) == libc::ESRCH),
            "{}: pid {} still exists after checkpoint and reaping: {probe:?} ({})",
            self.name,
            w.pid,
            describe_pid(w.pid)
        );
    }

    /// `ckpt restart IMG --detach` must succeed, print the original pid, and
    /// leave the process running, untraced, looking as it did.
    pub fn restart_detached(&self, w: &mut Workload, img: &Path) {
        let run = self.ckpt([
            OsStr::new("restart"),
            img.as_os_str(),
            OsStr::new("--detach"),
        ]);
        self.adopt_restored(w, &run);
    }

    /// [`Self::restart_detached`] from `ckpt restart - --detach EXTRA`
    /// reading `stream`; returns the run.
    pub fn restart_streamed(&self, w: &mut Workload, stream: Stdio, extra: &[&OsStr]) -> CkptRun {
        let mut args = vec![
            OsStr::new("restart"),
            OsStr::new("-"),
            OsStr::new("--detach"),
        ];
        args.extend_from_slice(extra);
        let run = self.ckpt_stdin(args, stream);
        self.adopt_restored(w, &run);
        run
    }

    /// Checks a detaching restart `run` of `w` and takes the restored
    /// process as `w`'s.
    fn adopt_restored(&self, w: &mut Workload, run: &CkptRun) {
        if !run.success() {
            panic!(
                "{}: restart failed:\n{}{}",
                self.name,
                run.describe(),
                w.diagnostics()
            );
        }
        assert_eq!(
            run.stdout.trim(),
            w.pid.to_string(),
            "{}: `ckpt restart --detach` must print the restored root pid, the original pid\n{}",
            self.name,
            run.describe()
        );
        match Proc::adopt(w.pid) {
            // The old Proc is reaped and marked exited: dropping it kills nothing.
            Ok(p) => w.proc = p,
            Err(e) => panic!(
                "{}: restored pid {} is gone right after restart: {e}\n{}{}",
                self.name,
                w.pid,
                run.describe(),
                w.diagnostics()
            ),
        }
        self.sessions.borrow_mut().push(w.pid);
        self.assert_running_untraced(w, "after restart");
        let now = identity(w.pid).unwrap_or_else(|e| panic!("reading /proc/{}: {e}", w.pid));
        assert_eq!(
            now,
            w.identity,
            "{}: restored process looks different from the original (left: now, right: before){}",
            self.name,
            w.diagnostics()
        );
    }

    /// The process exists, is not stopped, traced or dead.
    pub fn assert_running_untraced(&self, w: &mut Workload, when: &str) {
        let exited = w.proc.has_exited();
        let state = proc_state(w.pid);
        let tracer = proc_status_field(w.pid, "TracerPid");
        let ok =
            !exited && matches!(state, Some('R' | 'S' | 'D')) && tracer.as_deref() == Some("0");
        assert!(
            ok,
            "{}: {when}: pid {} should be running and untraced (exited {exited}, state {state:?}, \
             TracerPid {tracer:?}){}",
            self.name,
            w.pid,
            w.diagnostics()
        );
    }

    /// Sends `sig`, waits for the exit ([`TIMEOUT`]), and requires the result
    /// file to say exactly "PASS\n" (and exit status 0 for our own children).
    pub fn signal_and_expect_pass(&self, w: &mut Workload, sig: i32) {
        if let Err(e) = w.proc.signal(sig) {
            panic!(
                "{}: sending signal {sig} to {}: {e}{}",
                self.name,
                w.pid,
                w.diagnostics()
            );
        }
        let Some(status) = w.proc.wait_exit(TIMEOUT) else {
            panic!(
                "{}: {} did not exit within {TIMEOUT:?} of signal {sig}{}",
                self.name,
                w.label,
                w.diagnostics()
            );
        };
        let result = fs::read_to_string(w.result_path())
            .unwrap_or_else(|e| format!("<no result file: {e}>"));
        if result != "PASS\n" {
            panic!(
                "{}: {} did not pass: {}{}",
                self.name,
                w.label,
                result.trim_end(),
                w.diagnostics()
            );
        }
        if let Some(status) = status {
            assert!(
                status.success(),
                "{}: {} wrote PASS but exited {status}{}",
                self.name,
                w.label,
                w.diagnostics()
            );
        }
    }

    /// Waits (bounded, [`TIMEOUT`]) until the process sleeps in one of
    /// `syscalls`. A signal sent before a process enters a single long
    /// nanosleep()/pause() would be handled before the syscall and never end
    /// it, so the sleepers must be seen asleep before they are signalled; after
    /// a restart this also proves the process went back to sleep rather than
    /// returning early or spinning.
    pub fn wait_blocked_in(&self, w: &mut Workload, syscalls: &[i64]) {
        let asleep = wait_until(TIMEOUT, || {
            w.proc.has_exited()
                || (proc_state(w.pid) == Some('S')
                    && current_syscall(w.pid).is_some_and(|n| syscalls.contains(&n)))
        });
        let exited = w.proc.has_exited();
        assert!(
            asleep && !exited,
            "{}: {} is not asleep in one of syscalls {syscalls:?} (exited: {exited}, now in \
             syscall {:?}){}",
            self.name,
            w.label,
            current_syscall(w.pid),
            w.diagnostics()
        );
    }

    /// Runs a workload without checkpointing it: ready, `settle` (e.g. wait
    /// until it sleeps), SIGTERM, PASS. Returns false if skipped (gcc missing).
    pub fn run_control(
        &self,
        name: &str,
        extra: &[&str],
        settle: impl FnOnce(&Self, &mut Workload),
    ) -> bool {
        let Some(mut w) = self.start_workload(name, extra) else {
            return false;
        };
        settle(self, &mut w);
        self.signal_and_expect_pass(&mut w, libc::SIGTERM);
        true
    }

    /// The standard round trip: start, `before` (bring the workload into the
    /// state the checkpoint should catch), checkpoint (killing it), restart,
    /// `after` (extra checks on the restored process), SIGTERM, PASS.
    pub fn roundtrip(
        &self,
        name: &str,
        extra: &[&str],
        before: impl FnOnce(&Self, &mut Workload),
        after: impl FnOnce(&Self, &mut Workload),
    ) {
        let Some(mut w) = self.start_workload(name, extra) else {
            return;
        };
        before(self, &mut w);
        let img = self.path("img");
        self.checkpoint_and_kill(&mut w, &img);
        self.restart_detached(&mut w, &img);
        after(self, &mut w);
        self.signal_and_expect_pass(&mut w, libc::SIGTERM);
    }

    /// Processes that belong to this test: in a session we created, or with
    /// the test directory in their command line. Zombies are ignored.
    pub fn own_processes(&self) -> Vec<i32> {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let sessions = self.sessions.borrow();
        let needle = self.dir.as_os_str().as_bytes();
        let mut found = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return found;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Some(fields) = stat_fields(pid) else {
                continue;
            };
            if matches!(fields.first().map(String::as_str), Some("Z" | "X" | "x")) {
                continue;
            }
            let sid: i32 = fields.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mentions_dir = cmdline.windows(needle.len()).any(|w| w == needle);
            if sessions.contains(&sid) || mentions_dir {
                found.push(pid);
            }
        }
        found
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Give processes that are on their way out (e.g. a helper reaping a
        // restored process that just exited) a moment, then kill the rest.
        let mut strays = self.own_processes();
        if !strays.is_empty() {
            wait_until(Duration::from_secs(2), || {
                strays = self.own_processes();
                strays.is_empty()
            });
        }
        let mut described = Vec::new();
        for pid in &strays {
            described.push(describe_pid(*pid));
            if let Ok(p) = Proc::adopt(*pid) {
                drop(p); // SIGKILL through the pidfd
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "{}: keeping {} for inspection",
                self.name,
                self.dir.display()
            );
            if !described.is_empty() {
                eprintln!("{}: killed stray processes: {described:#?}", self.name);
            }
            return;
        }
        if !described.is_empty() {
            panic!(
                "{}: processes left behind (killed now): {described:#?}; keeping {}",
                self.name,
                self.dir.display()
            );
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("{}: removing {}: {e}", self.name, self.dir.display());
        }
    }
}

/// Lines of a text file (0 if missing).
pub fn count_lines(path: &Path) -> usize {
    fs::read(path)
        .map(|d| d.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0)
}

/// Checks that `path` holds exactly the lines `step, 2*step, ..., n*step` and
/// returns n.
pub fn check_consecutive(path: &Path, step: u64) -> Result<usize, String> {
    let data = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !data.is_empty() && !data.ends_with('\n') {
        return Err(format!("{} ends with a partial line", path.display()));
    }
    for (i, line) in data.lines().enumerate() {
        let want = (i as u64 + 1) * step;
        if line.parse::<u64>().ok() != Some(want) {
            let from = i.saturating_sub(3);
            let context: Vec<&str> = data.lines().skip(from).take(7).collect();
            return Err(format!(
                "{}: line {} is {line:?}, expected {want} (gap or duplicate); lines {}..: {context:?}",
                path.display(),
                i + 1,
                from + 1
            ));
        }
    }
    Ok(data.lines().count())
}

/// Whether a JSON document contains `pid` as a number, or as a string, anywhere.
pub fn json_mentions(v: &serde_json::Value, pid: i32) -> bool {
    match v {
        serde_json::Value::Number(n) => n.as_i64() == Some(i64::from(pid)),
        serde_json::Value::String(s) => s == &pid.to_string(),
        serde_json::Value::Array(a) => a.iter().any(|x| json_mentions(x, pid)),
        serde_json::Value::Object(o) => o.values().any(|x| json_mentions(x, pid)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Process trees and threads
// ---------------------------------------------------------------------------

/// State, parent, process group and session of a process (or zombie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcIds {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
}

pub fn proc_ids(pid: i32) -> Option<ProcIds> {
    let f = stat_fields(pid)?;
    let num = |i: usize| f.get(i).and_then(|v| v.parse().ok());
    Some(ProcIds {
        pid,
        state: f.first()?.chars().next()?,
        ppid: num(1)?,
        pgid: num(2)?,
        sid: num(3)?,
    })
}

/// Whether task `pid` can never run user code again: a zombie (or dead),
/// exiting (PF_EXITING), or with SIGKILL pending.
pub fn dying(pid: i32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Some(f) = stat_fields(pid) else {
        return true; // gone
    };
    let flags: u64 = f.get(6).and_then(|v| v.parse().ok()).unwrap_or(0);
    let pending = |k: &str| {
        proc_status_field(pid, k)
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .unwrap_or(0)
    };
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    matches!(f.first().and_then(|s| s.chars().next()), Some('Z' | 'X'))
        || flags & PF_EXITING != 0
        || (pending("SigPnd") | pending("ShdPnd")) & sigkill != 0
}

/// Whether `/proc/N` exists: a process (zombies included) or a thread with id N.
pub fn pid_exists(n: i32) -> bool {
    Path::new(&format!("/proc/{n}")).exists()
}

/// Thread ids of `pid`, sorted (empty once it is gone).
pub fn thread_ids(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// Children of every thread of `pid`, zombies included.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    for tid in thread_ids(pid) {
        if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) {
            kids.extend(s.split_whitespace().filter_map(|t| t.parse::<i32>().ok()));
        }
    }
    kids
}

/// `root` and all its descendants (zombies included), parents before children.
pub fn process_tree(root: i32) -> Vec<i32> {
    let mut tree = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if tree.contains(&p) {
            continue;
        }
        tree.push(p);
        let mut kids = children_of(p);
        kids.reverse();
        stack.extend(kids);
    }
    tree
}

/// A field of /proc/PID/task/TID/status, e.g. "SigBlk".
pub fn task_status_field(pid: i32, tid: i32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim().to_owned())
    })
}

/// The one-letter state of thread `tid` of `pid`.
pub fn task_state(pid: i32, tid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The syscall thread `tid` of `pid` is blocked in, if any.
pub fn task_syscall(pid: i32, tid: i32) -> Option<i64> {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    s.split_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|&n: &i64| n >= 0)
}

/// The calling thread's id (what /proc shows as TracerPid for a tracer).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// One process record of an image, from `ckpt inspect --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub zombie: bool,
    /// The wait status of a zombie.
    pub exit_status: i64,
}

impl TestEnv {
    /// Fails if any of `pids` still runs. They may be dying (exiting, or
    /// SIGKILL pending: checkpoint returns once its tree is killed, not
    /// once it is torn down) or zombies waiting for their new parent to
    /// reap them; restart waits for those.
    pub fn assert_none_runs(&self, pids: &[i32], when: &str) {
        let live: Vec<String> = pids
            .iter()
            .filter(|&&p| pid_exists(p) && !dying(p))
            .map(|&p| describe_pid(p))
            .collect();
        assert!(
            live.is_empty(),
            "{}: {when}: these pids of the tree still run: {live:#?}",
            self.name
        );
    }

    /// [`Self::checkpoint_and_kill`] for a process tree: once ckpt returns,
    /// none of `tree` (pids and thread ids collected before) may still run.
    /// They may wait to be reaped by their new parent: checkpoint does not
    /// wait for that, restart does.
    pub fn checkpoint_tree_and_kill(&self, w: &mut Workload, img: &Path, tree: &[i32]) {
        self.checkpoint_and_kill(w, img);
        self.assert_none_runs(tree, "right after `ckpt checkpoint` returned");
    }

    /// After a restart: every process of `before` (taken before the
    /// checkpoint) exists again with the same state class (zombie or not),
    /// group, session and (except the root, whose parent is whoever restarted
    /// it) parent, and the tree has no other process.
    pub fn assert_tree_restored(&self, w: &Workload, before: &[ProcIds]) {
        let now: Vec<Option<ProcIds>> = before.iter().map(|b| proc_ids(b.pid)).collect();
        let mut bad = Vec::new();
        for (b, n) in before.iter().zip(&now) {
            let Some(n) = n else {
                bad.push(format!("pid {} is missing", b.pid));
                continue;
            };
            let zombie = |s: char| s == 'Z';
            if zombie(b.state) != zombie(n.state) || matches!(n.state, 't' | 'T' | 'X' | 'x') {
                bad.push(format!(
                    "pid {}: state {} (was {})",
                    b.pid, n.state, b.state
                ));
            }
            if n.pgid != b.pgid || n.sid != b.sid {
                bad.push(format!(
                    "pid {}: pgid {} sid {} (were {} {})",
                    b.pid, n.pgid, n.sid, b.pgid, b.sid
                ));
            }
            if b.pid != w.pid && n.ppid != b.ppid {
                bad.push(format!("pid {}: parent {} (was {})", b.pid, n.ppid, b.ppid));
            }
        }
        let mut tree = process_tree(w.pid);
        tree.sort_unstable();
        let mut want: Vec<i32> = before.iter().map(|b| b.pid).collect();
        want.sort_unstable();
        if tree != want {
            bad.push(format!("the tree is now {tree:?}, was {want:?}"));
        }
        assert!(
            bad.is_empty(),
            "{}: restored tree differs: {bad:#?}\nbefore: {before:#?}\nnow: {now:#?}{}",
            self.name,
            w.diagnostics()
        );
    }

    /// The process records of an image (`ckpt inspect --json`), in image order.
    pub fn image_processes(&self, img: &Path) -> Vec<ImageProc> {
        let run = self.ckpt([OsStr::new("inspect"), img.as_os_str(), OsStr::new("--json")]);
        assert!(run.success(), "inspect failed:\n{}", run.describe());
        let json: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}):\n{}", run.describe()));
        let records = json["records"]
            .as_array()
            .expect("inspect --json: no records");
        let num = |r: &serde_json::Value, k: &str| r[k].as_i64().unwrap_or(-1);
        records
            .iter()
            .filter(|r| r["name"] == "process")
            .map(|r| &r["record"])
            .map(|r| ImageProc {
                pid: i32::try_from(num(r, "pid")).unwrap_or(-1),
                ppid: i32::try_from(num(r, "ppid")).unwrap_or(-1),
                pgid: i32::try_from(num(r, "pgid")).unwrap_or(-1),
                sid: i32::try_from(num(r, "sid")).unwrap_or(-1),
                zombie: num(r, "state") == 1,
                exit_status: num(r, "exit_status"),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// ptrace from the harness (a debugger's view)
// ---------------------------------------------------------------------------

/// Offset of `u_debugreg` in `struct user` (x86_64), for PEEKUSER/POKEUSER.
pub const DEBUGREG_OFFSET: usize = std::mem::offset_of!(libc::user, u_debugreg);

/// `ptrace(req, pid, addr, data)`. errno is cleared first, so a PEEK
/// returning -1 as data is not mistaken for an error.
fn ptrace_req(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: callers only pass requests that take integers (SEIZE,
    // INTERRUPT, CONT, SYSCALL, DETACH, PEEKUSER, POKEUSER): no memory of
    // ours is read or written.
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    let err = io::Error::last_os_error();
    if r == -1 && err.raw_os_error() != Some(0) {
        return Err(err);
    }
    Ok(r)
}

/// A process the calling thread has PTRACE_SEIZEd. ptrace belongs to a
/// thread, so this is not `Send`; dropping it detaches.
pub struct Tracee {
    pub pid: i32,
    attached: bool,
    stopped: bool,
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Tracee {
    /// PTRACE_SEIZE: the process keeps running, now traced by this thread.
    pub fn seize(pid: i32) -> io::Result<Tracee> {
        Self::seize_with(pid, 0)
    }

    /// PTRACE_SEIZE with ptrace options (e.g. PTRACE_O_TRACESYSGOOD).
    pub fn seize_with(pid: i32, options: libc::c_int) -> io::Result<Tracee> {
        let options = usize::try_from(options).expect("ptrace options are non-negative");
        ptrace_req(libc::PTRACE_SEIZE, pid, 0, options)?;
        Ok(Tracee {
            pid,
            attached: true,
            stopped: false,
            _thread_bound: std::marker::PhantomData,
        })
    }

    /// PTRACE_INTERRUPT and wait for the stop; a signal reported first is
    /// delivered on (the interrupt stays pending).
    pub fn stop(&mut self) -> io::Result<()> {
        if self.stopped {
            return Ok(());
        }
        ptrace_req(libc::PTRACE_INTERRUPT, self.pid, 0, 0)?;
        loop {
            let st = wait_all(self.pid)?;
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                self.attached = false;
                return Err(io::Error::other(format!(
                    "pid {} exited while being stopped (status {st:#x})",
                    self.pid
                )));
            }
            if libc::WIFSTOPPED(st) {
                if st >> 16 == libc::PTRACE_EVENT_STOP {
                    self.stopped = true;
                    return Ok(());
                }
                let sig = usize::try_from(libc::WSTOPSIG(st)).unwrap_or(0);
                ptrace_req(libc::PTRACE_CONT, self.pid, 0, sig)?;
            }
        }
    }

    /// PTRACE_SYSCALL (delivering `sig`, 0 for none) and wait for the next
    /// stop or the exit; returns the wait status. The tracee must be stopped.
    pub fn syscall_step(&mut self, sig: i32) -> io::Result<i32> {
        let sig = usize::try_from(sig).expect("signal numbers are non-negative");
        ptrace_req(libc::PTRACE_SYSCALL, self.pid, 0, sig)?;
        self.stopped = false;
        let st = wait_all(self.pid)?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            self.attached = false;
        } else if libc::WIFSTOPPED(st) {
            self.stopped = true;
        }
        Ok(st)
    }

    /// PTRACE_PEEKUSER (stops the tracee first).
    pub fn peek_user(&mut self, offset: usize) -> io::Result<u64> {
        self.stop()?;
        ptrace_req(libc::PTRACE_PEEKUSER, self.pid, offset, 0).map(|v| v as u64)
    }

    /// PTRACE_POKEUSER (stops the tracee first).
    pub fn poke_user(&mut self, offset: usize, value: u64) -> io::Result<()> {
        self.stop()?;
        let data = usize::try_from(value).expect("64-bit usize");
        ptrace_req(libc::PTRACE_POKEUSER, self.pid, offset, data).map(drop)
    }

    /// Debug register `i` (dr0-dr7).
    pub fn debugreg(&mut self, i: usize) -> io::Result<u64> {
        self.peek_user(DEBUGREG_OFFSET + i * 8)
    }

    pub fn set_debugreg(&mut self, i: usize, value: u64) -> io::Result<()> {
        self.poke_user(DEBUGREG_OFFSET + i * 8, value)
    }

    /// PTRACE_DETACH (stopping the tracee first, as the kernel requires).
    pub fn detach(mut self) -> io::Result<()> {
        self.detach_now()
    }

    fn detach_now(&mut self) -> io::Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.stop()?;
        ptrace_req(libc::PTRACE_DETACH, self.pid, 0, 0)?;
        self.attached = false;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if let Err(e) = self.detach_now() {
            eprintln!("warning: detaching from pid {}: {e}", self.pid);
        }
    }
}

// ---------------------------------------------------------------------------
// cgroups
// ---------------------------------------------------------------------------

/// A fresh cgroup directory for one test. Dropping it thaws it, kills what is
/// left in it and removes it.
pub struct TestCgroup {
    pub path: PathBuf,
    pub v2: bool,
}

/// Mount points from /proc/self/mounts: (fstype, options, mount point).
fn mounts() -> Vec<(String, String, PathBuf)> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                (*f.get(2)?).to_owned(),
                (*f.get(3)?).to_owned(),
                PathBuf::from(f.get(1)?),
            ))
        })
        .collect()
}

impl TestCgroup {
    /// A new directory in the cgroup v2 hierarchy (where `cgroup.freeze`
    /// exists), or why there is none.
    pub fn new_v2(env: &TestEnv) -> Result<TestCgroup, String> {
        let Some((_, _, mnt)) = mounts().into_iter().find(|m| m.0 == "cgroup2") else {
            return Err("no cgroup2 file system mounted".into());
        };
        Self::create(env, &mnt, true, "cgroup.freeze")
    }

    /// A new directory in the cgroup v1 freezer hierarchy, or why there is none.
    pub fn new_v1_freezer(env: &TestEnv) -> Result<TestCgroup, String> {
        let Some((_, _, mnt)) = mounts()
            .into_iter()
            .find(|m| m.0 == "cgroup" && m.1.split(',').any(|o| o == "freezer"))
        else {
            return Err("no cgroup v1 freezer hierarchy mounted".into());
        };
        Self::create(env, &mnt, false, "freezer.state")
    }

    fn create(env: &TestEnv, mnt: &Path, v2: bool, needs: &str) -> Result<TestCgroup, String> {
        let leaf = env
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = mnt.join(format!("ckpt-test-{leaf}"));
        fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let cg = TestCgroup { path, v2 };
        if !cg.path.join(needs).exists() {
            return Err(format!("{} has no {needs}", cg.path.display()));
        }
        Ok(cg)
    }

    /// Processes in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect()
    }

    /// Whether the cgroup is frozen, or freezing.
    pub fn freeze_state(&self) -> String {
        if self.v2 {
            let want = fs::read_to_string(self.path.join("cgroup.freeze")).unwrap_or_default();
            let events = fs::read_to_string(self.path.join("cgroup.events")).unwrap_or_default();
            let frozen = events
                .lines()
                .find(|l| l.starts_with("frozen "))
                .unwrap_or("frozen ?");
            format!("cgroup.freeze {}, {frozen}", want.trim())
        } else {
            let state = fs::read_to_string(self.path.join("freezer.state")).unwrap_or_default();
            format!("freezer.state {}", state.trim())
        }
    }

    /// Whether the cgroup is completely thawed.
    pub fn is_thawed(&self) -> bool {
        if self.v2 {
            self.freeze_state() == "cgroup.freeze 0, frozen 0"
        } else {
            self.freeze_state() == "freezer.state THAWED"
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let (file, thaw) = if self.v2 {
            ("cgroup.freeze", "0")
        } else {
            ("freezer.state", "THAWED")
        };
        let _ = fs::write(self.path.join(file), thaw);
        let mut empty = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let procs = self.procs();
            if procs.is_empty() {
                empty = true;
                break;
            }
            for p in procs {
                let _ = kill(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // rmdir may fail briefly while the last exits are accounted.
        let ok = wait_until(Duration::from_secs(5), || {
            fs::remove_dir(&self.path).is_ok()
        });
        if !ok || !empty {
            eprintln!(
                "warning: cgroup {} not removed (empty: {empty}, procs {:?})",
                self.path.display(),
                self.procs()
            );
        }
    }
}

/// waitpid(pid, __WALL), retried on EINTR: the next status of a tracee.
fn wait_all(pid: i32) -> io::Result<i32> {
    loop {
        let mut st = 0;
        // SAFETY: st is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
        if r >= 0 {
            return Ok(st);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
