//! Freezing a process with ptrace: seize and interrupt every thread, and put
//! them back exactly as they were if the checkpoint does not complete.

use crate::error::{Ctx, Error, Result};
use crate::procfs;
use crate::sys::{self, Pid};
use std::path::{Path, PathBuf};

/// Options every tracee of ours gets: syscall stops are marked (SIGTRAP|0x80).
pub const TRACE_OPTIONS: i32 = libc::PTRACE_O_TRACESYSGOOD;

/// The threads of a frozen process. Dropping it detaches them (they resume
/// as if nothing happened) unless they were killed.
pub struct Frozen {
    pub pid: Pid,
    pub tids: Vec<Pid>,
    /// The signal that had stopped the process (group stop, state T) when
    /// it was seized, or 0 if it was running.
    pub stop_sig: i32,
    /// State T when seized: its stop signal is read from the first stop.
    was_stopped: bool,
    killed: bool,
}

/// Seizes and stops every thread of `pid`, re-listing threads until the set
/// is stable (a thread may be created while we attach).
pub fn freeze(pid: Pid) -> Result<Frozen> {
    freeze_with(pid, true)
}

/// `freeze`; without `wait` the interrupts are only requested (the tasks
/// are frozen by a cgroup and stop once it thaws).
fn freeze_with(pid: Pid, wait: bool) -> Result<Frozen> {
    if !procfs::exists(pid) {
        return Err(Error::Refused(format!(
            "no process with pid {pid}; check the pid with `ps -p {pid}`"
        )));
    }
    let st = procfs::status(pid).ctx(pid, || "read /proc status".into())?;
    if let Some(tracer) = st.num("TracerPid").filter(|&t| t != 0) {
        return Err(Error::Unsupported {
            pid,
            comm: procfs::comm(pid),
            object: "the process".into(),
            reason: format!("it is already traced by pid {tracer} (a debugger?); detach it first"),
        });
    }
    let mut f = Frozen {
        pid,
        tids: Vec::new(),
        stop_sig: 0,
        was_stopped: st.get("State").is_some_and(|s| s.starts_with('T')),
        killed: false,
    };
    // Threads (not the main one) that exited while we attached: they are
    // no part of the process any more.
    let mut gone: Vec<Pid> = Vec::new();
    let exited = |t: Pid| t != pid && !procfs::thread_alive(pid, t);
    loop {
        let tids = procfs::tids(pid).ctx(pid, || "list threads".into())?;
        let new: Vec<Pid> = tids
            .iter()
            .copied()
            .filter(|t| !f.tids.contains(t) && !gone.contains(t))
            .collect();
        if new.is_empty() {
            break;
        }
        for t in new {
            if let Err(e) = sys::seize(t, TRACE_OPTIONS) {
                if exited(t) {
                    gone.push(t);
                    continue;
                }
                return Err(seize_error(pid, t, e));
            }
            f.tids.push(t);
            let stopped = sys::interrupt(t)
                .ctx(t, || "PTRACE_INTERRUPT".into())
                .and_then(|_| {
                    if wait {
                        wait_for_stop(t).map(Some)
                    } else {
                        Ok(None)
                    }
                });
            match stopped {
                Ok(Some(sig)) => f.note_stop(t, sig),
                Ok(None) => {}
                // It exited before it stopped (we reaped it as its tracer).
                Err(Error::TaskGone(_)) if t != pid => {
                    let _ = sys::wait(t, libc::WNOHANG);
                    f.tids.retain(|&x| x != t);
                    gone.push(t);
                }
                Err(e) => return Err(e),
            }
        }
        if !wait {
            // Frozen by a cgroup: no thread can appear.
            break;
        }
    }
    Ok(f)
}

/// Why PTRACE_SEIZE of thread `t` of `pid` failed, for the user.
fn seize_error(pid: Pid, t: Pid, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EPERM) => Error::Unsupported {
            pid,
            comm: procfs::comm(pid),
            object: format!("thread {t}"),
            reason: match thread_tracer(pid, t) {
                Some(tracer) => format!(
                    "it is already traced by pid {tracer} ({}); detach that tracer first",
                    procfs::comm(tracer)
                ),
                None => {
                    "ptrace is not permitted (missing CAP_SYS_PTRACE?); run ckpt as root".into()
                }
            },
        },
        Some(libc::ESRCH) => Error::TaskGone(t),
        _ => Error::Sys {
            pid: t,
            what: "PTRACE_SEIZE".into(),
            source: e,
        },
    }
}

/// The tracer of one thread, if any.
fn thread_tracer(pid: Pid, tid: Pid) -> Option<Pid> {
    let st = procfs::read(pid, &format!("task/{tid}/status")).ok()?;
    procfs::Status(st)
        .num("TracerPid")
        .filter(|&t| t != 0)
        .map(|t| t as Pid)
}

/// Waits until `tid` reports the PTRACE_INTERRUPT stop, passing on any
/// signal that reaches it first so that nothing is lost. Returns the stop's
/// signal: SIGTRAP for our interrupt, or the signal of a group stop the
/// task was already in (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
pub fn wait_for_stop(tid: Pid) -> Result<i32> {
    loop {
        let (_, st) = sys::wait(tid, 0).ctx(tid, || "wait for the task to stop".into())?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            return Err(Error::TaskGone(tid));
        }
        if !libc::WIFSTOPPED(st) {
            continue;
        }
        if st >> 16 == libc::PTRACE_EVENT_STOP {
            return Ok(libc::WSTOPSIG(st));
        }
        // A signal-delivery stop came first: let the task take the signal;
        // the interrupt stays pending and stops it right after.
        sys::cont(tid, libc::WSTOPSIG(st)).ctx(tid, || "PTRACE_CONT".into())?;
    }
}

impl Frozen {
    /// Records the group-stop signal reported by the main thread's first stop.
    fn note_stop(&mut self, tid: Pid, sig: i32) {
        if tid == self.pid && self.was_stopped && sig != libc::SIGTRAP {
            self.stop_sig = sig;
        }
    }

    /// Kills the process; returns its threads, in the order their exits
    /// are to be collected (see `reap`): the leader's exit is reported
    /// only once the other threads are reaped, so they go first.
    fn kill_only(mut self) -> Result<Vec<Pid>> {
        self.killed = true;
        let pid = self.pid;
        sys::kill(pid, libc::SIGKILL).ctx(pid, || "kill after checkpoint".into())?;
        let mut order = self.tids.clone();
        order.sort_by_key(|&t| t == pid);
        Ok(order)
    }
}

/// Collects the exits of killed tasks we trace, in order: as the tracer we
/// see each exit first, and only then does the parent get its SIGCHLD.
fn reap(order: &[Pid]) {
    for &t in order {
        loop {
            match sys::wait(t, 0) {
                Ok((_, st)) if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) => break,
                Ok(_) => {
                    let _ = sys::cont(t, 0);
                }
                Err(_) => break,
            }
        }
    }
}

/// `reap` in a thread of its own, so that a checkpoint returns as soon as
/// its tree is killed, not once the tree's memory is torn down (45 ms for
/// 1 GiB). Any thread of the tracer's may collect the exits; a process
/// that ends first (the CLI) detaches them, and their parents reap them.
pub fn reap_in_background(order: Vec<Pid>) {
    let reaper = std::thread::Builder::new().name("ckpt-reaper".into());
    let theirs = order.clone();
    if reaper.spawn(move || reap(&theirs)).is_err() {
        reap(&order);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.killed {
            for &t in &self.tids {
                let _ = sys::detach(t, 0);
            }
        }
    }
}

/// A frozen process tree, parents before children (pre-order). Zombies
/// have no threads to stop and carry `None`.
pub struct FrozenTree {
    pub procs: Vec<(Pid, Option<Frozen>)>,
}

fn is_zombie(pid: Pid) -> bool {
    procfs::stat(pid).map(|s| s.state == b'Z').unwrap_or(false)
}

/// Which processes a tree is: `root` and (with `descendants`) all its
/// descendants but the `exclude`d ones (a self-checkpoint's helper) and
/// theirs. Without `descendants`, a root with children is refused: they
/// would be missing after restart.
#[derive(Debug, Clone, Copy)]
pub struct TreeSpec<'a> {
    pub descendants: bool,
    pub exclude: &'a [Pid],
}

/// Freezes `root` and all its descendants. Each process's children are
/// listed only once it is frozen, so none can fork behind our back: a
/// frozen process has a fixed set of children, and every child is frozen
/// (and its own children listed) in turn. Threads are handled by `freeze`,
/// which re-lists them until the set is stable.
pub fn freeze_tree(root: Pid, cgroup: Option<&Path>, spec: TreeSpec) -> Result<FrozenTree> {
    let cg = cgroup.map(CgroupFreezer::freeze).transpose()?;
    let wait = cg.is_none();
    let mut procs = Vec::new();
    let mut stack = vec![root];
    let me = std::process::id() as Pid;
    while let Some(p) = stack.pop() {
        if p == me {
            return Err(Error::Refused(format!(
                "the tree of pid {root} contains this ckpt process itself; run ckpt from outside the tree (e.g. not from the shell being checkpointed)"
            )));
        }
        if is_zombie(p) {
            if p == root {
                return Err(Error::Refused(format!(
                    "pid {root} is a zombie (it has exited; only its parent's wait is missing): there is nothing to checkpoint"
                )));
            }
            procs.push((p, None));
            continue;
        }
        let f = match freeze_with(p, wait) {
            Ok(f) => f,
            // It exited meanwhile; its frozen parent cannot reap it.
            Err(_) if p != root && is_zombie(p) => {
                procs.push((p, None));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut kids = procfs::children(p).ctx(p, || "list children".into())?;
        kids.retain(|k| !spec.exclude.contains(k));
        if !spec.descendants && !kids.is_empty() {
            return Err(Error::Unsupported {
                pid: p,
                comm: procfs::comm(p),
                object: format!("its child processes ({kids:?})"),
                reason: "only the process itself was asked for; checkpoint its tree (CKPT_TREE) to include them".into(),
            });
        }
        procs.push((p, Some(f)));
        stack.extend(kids.iter().rev());
    }
    let mut tree = FrozenTree { procs };
    if let Some(cg) = cg {
        // Everything is seized with an interrupt pending: once thawed, each
        // task stops before it returns to user space.
        cg.thaw()?;
        for f in tree.procs.iter_mut().filter_map(|(_, f)| f.as_mut()) {
            for t in f.tids.clone() {
                let sig = wait_for_stop(t)?;
                f.note_stop(t, sig);
            }
        }
    }
    Ok(tree)
}

/// A cgroup frozen with the v1 freezer (`freezer.state`) or cgroup v2
/// (`cgroup.freeze`), for trees that fork too fast to catch with ptrace
/// alone. Thawed on drop.
struct CgroupFreezer {
    path: PathBuf,
    v2: bool,
    thawed: bool,
}

impl CgroupFreezer {
    fn freeze(path: &Path) -> Result<Self> {
        let v2 = path.join("cgroup.freeze").exists();
        if !v2 && !path.join("freezer.state").exists() {
            return Err(Error::Refused(format!(
                "{} is neither a cgroup v2 directory (cgroup.freeze) nor a v1 freezer cgroup (freezer.state)",
                path.display()
            )));
        }
        let mut cg = CgroupFreezer {
            path: path.to_path_buf(),
            v2,
            thawed: false,
        };
        cg.set(true)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cg.is_frozen() {
            if std::time::Instant::now() > deadline {
                cg.thawed = true;
                let _ = cg.set(false);
                return Err(Error::Refused(format!(
                    "cgroup {} did not freeze within 10 s",
                    path.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(cg)
    }

    fn set(&mut self, frozen: bool) -> Result<()> {
        let (file, val) = match (self.v2, frozen) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        std::fs::write(self.path.join(file), val).map_err(|e| Error::Sys {
            pid: 0,
            what: format!("write {val} to {}", self.path.join(file).display()),
            source: e,
        })
    }

    fn is_frozen(&self) -> bool {
        if self.v2 {
            std::fs::read_to_string(self.path.join("cgroup.events"))
                .map(|s| s.lines().any(|l| l == "frozen 1"))
                .unwrap_or(false)
        } else {
            std::fs::read_to_string(self.path.join("freezer.state"))
                .map(|s| s.trim() == "FROZEN")
                .unwrap_or(false)
        }
    }

    fn thaw(mut self) -> Result<()> {
        self.thawed = true;
        self.set(false)
    }
}

impl Drop for CgroupFreezer {
    fn drop(&mut self) {
        if !self.thawed {
            let _ = self.set(false);
        }
    }
}

impl FrozenTree {
    /// Kills every process and returns once each has exited. It does not
    /// wait for them to be reaped: that is their parent's business (often
    /// pid 1's, and slow), and `restart` waits for it, bounded, if it must.
    /// Kills every process, all before any is waited for (their memory is
    /// then torn down at once); returns the tasks whose exits are still to
    /// be collected, in order (see `reap`).
    pub fn kill(self) -> Result<Vec<Pid>> {
        let mut order = Vec::new();
        for (_, f) in self.procs {
            if let Some(f) = f {
                order.extend(f.kill_only()?);
            }
        }
        Ok(order)
    }
}
