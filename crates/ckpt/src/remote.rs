//! Running syscalls inside a stopped task (rr's AutoRemoteSyscalls, CRIU's
//! compel): point rip at a `syscall` instruction, set the arguments, run to
//! the syscall-exit stop, read rax, and put the registers back when done.
//! The task's own code never runs meanwhile.
//!
//! `Remote` is the bare mechanism (restart uses it on tasks it created).
//! `Session` is what checkpoint uses on a live process, under one invariant:
//!
//! **Whenever ckpt could vanish (SIGKILL, crash), every thread of the
//! process, resumed by the kernel as it is at that instant, returns to
//! exactly the state it had before ckpt touched it**: registers (after the
//! syscall-restart fixup), signal mask, FPU/AVX state, alternate stack, and
//! no fd of ckpt's left open in it. The scratch region goes too, except
//! when ckpt dies right around its mmap or the gadgets below are missing
//! (it is then named `[anon:ckpt-scratch]` where the kernel supports it).
//!
//! How (docs/injection.md has the full story):
//! - Before a thread's registers change, a healing `rt_sigframe` holding
//!   its original registers, mask, xsave area and altstack is written
//!   below its red zone, with libc's signal restorer as pretcode, and rsp
//!   points at it during injections (a handler that runs in a gap pushes
//!   below it). Threads other than the main one run their injections from
//!   a `syscall; xor...; ret` in the vDSO: after any syscall, `ret` lands
//!   in the restorer, i.e. rt_sigreturn.
//! - The main thread runs its injections from the `syscall` of its slot
//!   in the scratch region. The code after it closes each fd ckpt has open
//!   in the task, then jumps to the vDSO gadget to munmap the region and
//!   return through the stack frame. The close steps are written before an
//!   fd is opened (the fd an open returns is predictable: all threads are
//!   frozen).
//! - Without the gadgets or room on the stack, a slot's code ends with
//!   `lea frame(%rip),%rsp; rt_sigreturn` through a frame in the slot
//!   (rsp stays the thread's own), and the second slot serves the other
//!   thread (the main thread's tail then stops unmapping meanwhile).
//! - Registers move before the mask becomes "all blocked", and the mask
//!   comes back before the registers: in between, the thread heals itself.
//!   Only the threads being injected into have signals blocked: the main
//!   thread for the whole session, one other thread at a time.
//! - The first `mmap` and final `munmap` run from the vDSO gadget with rsp
//!   at the stack frame, so they heal too; without gadgets they run from
//!   the vDSO's plain `syscall` and the slot, and are the two windows left.
//! - The session owns all it borrows (saved registers and masks of every
//!   thread it touched, the scratch region, the fds it opened) and gives
//!   everything back on every path, `?` and panics included (Drop),
//!   restoring every thread even when one fails.
//!
//! A healed thread that was inside a syscall returning
//! ERESTART_RESTARTBLOCK (nanosleep, clock_nanosleep, poll with timeout)
//! sees that call fail with EINTR: rt_sigreturn resets the restart block.
//! That happens only when ckpt died; the normal path restores registers
//! with ptrace and the call continues.

use crate::error::{Ctx, Error, Result};
use crate::heal;
use crate::procfs::{self, MapEntry};
use crate::sys::{self, Pid, Regs};
use crate::task::Scratch;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// WSTOPSIG of a syscall stop with PTRACE_O_TRACESYSGOOD.
const SYSCALL_TRAP: i32 = libc::SIGTRAP | 0x80;

/// A stopped task we inject syscalls into. Dropping it without `finish`
/// still puts the saved registers back (best effort).
pub struct Remote {
    tid: Pid,
    syscall_ip: u64,
    saved: Regs,
    restored: bool,
}

impl Remote {
    /// `tid` must be in a ptrace stop and traced with PTRACE_O_TRACESYSGOOD;
    /// `syscall_ip` is the address of a `syscall` instruction (0f 05) in it.
    pub fn new(tid: Pid, syscall_ip: u64) -> Result<Self> {
        let saved = sys::get_regs(tid).ctx(tid, || "read registers".into())?;
        Ok(Remote {
            tid,
            syscall_ip,
            saved,
            restored: false,
        })
    }

    /// A Remote whose owner (a `Session`) restores the task itself.
    fn owned_by_session(tid: Pid, syscall_ip: u64, saved: Regs) -> Self {
        Remote {
            tid,
            syscall_ip,
            saved,
            restored: true,
        }
    }

    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// The registers the task had when we took it.
    pub fn saved_regs(&self) -> &Regs {
        &self.saved
    }

    /// Moves the syscall instruction used for later calls.
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    /// Runs syscall `nr` with `args` in the task; returns the raw result
    /// (negative errno on failure).
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let r = call_regs(&self.saved, self.syscall_ip, nr, args);
        let t = self.tid;
        sys::set_regs(t, &r).ctx(t, || "set registers for an injected syscall".into())?;
        complete(t, r.rip)
    }

    /// Maps `len` bytes of private read-write scratch memory in the task.
    pub fn mmap_scratch(&mut self, len: u64) -> Result<u64> {
        let (nr, args) = mmap_args(len, libc::PROT_READ | libc::PROT_WRITE);
        self.call("mmap", nr, &args)
    }

    /// Like `syscall`, but a negative result becomes an error naming `name`.
    pub fn call(&mut self, name: &str, nr: i64, args: &[u64]) -> Result<u64> {
        tracing::trace!(tid = self.tid, "injected {name}");
        let r = self.syscall(nr, args)?;
        check(self.tid, name, r)
    }

    /// Runs `calls` one after another in the task, by the loop
    /// `BATCH_CODE` (which must be at `code`, in executable memory of the
    /// task) reading them from a table in scratch memory `s` of `room`
    /// bytes: one stop per table full instead of two per call. Stops at the
    /// first call that fails, and says which. With `code` 0, one injected
    /// call each.
    ///
    /// The loop ends in `int3`, whose SIGTRAP we take and drop. The kernel
    /// resets a forced signal's disposition to SIG_DFL when it is blocked
    /// or ignored: SIGTRAP is unblocked meanwhile, and a caller must pass
    /// `code` 0 for a task that ignores SIGTRAP.
    pub fn call_many(&mut self, code: u64, s: &Scratch, room: u64, calls: &[Call]) -> Result<()> {
        if code == 0 {
            for c in calls {
                self.call(&c.name, c.nr, &c.args)?;
            }
            return Ok(());
        }
        let mask = unblock_trap(self.tid)?;
        let r = self.run_batches(code, s, room, calls);
        restore_mask(self.tid, mask)?;
        r
    }

    fn run_batches(&mut self, code: u64, s: &Scratch, room: u64, calls: &[Call]) -> Result<()> {
        for chunk in calls.chunks(batch_capacity(room).max(1)) {
            self.launch(code, s, chunk)?;
            self.collect(code, s, chunk)?;
        }
        Ok(())
    }

    /// Writes the table of `chunk` into `s` and lets the task run it.
    fn launch(&mut self, code: u64, s: &Scratch, chunk: &[Call]) -> Result<()> {
        let t = self.tid;
        let mut table = Vec::with_capacity((chunk.len() + 1) * BATCH_ENTRY as usize);
        for c in chunk {
            table.extend_from_slice(&(c.nr as u64).to_le_bytes());
            for a in c.args {
                table.extend_from_slice(&a.to_le_bytes());
            }
            table.extend_from_slice(&0u64.to_le_bytes());
        }
        table.extend_from_slice(&u64::MAX.to_le_bytes());
        table.resize((chunk.len() + 1) * BATCH_ENTRY as usize, 0);
        s.write(0, &table)?;
        let mut r = self.saved;
        r.rip = code;
        r.rbx = s.addr;
        r.orig_rax = u64::MAX; // not in a syscall: nothing to restart
        sys::set_regs(t, &r).ctx(t, || "set registers for injected calls".into())?;
        sys::cont(t, 0).ctx(t, || "PTRACE_CONT".into())
    }

    /// Waits for the end of the table `launch` started, and checks each result.
    fn collect(&mut self, code: u64, s: &Scratch, chunk: &[Call]) -> Result<()> {
        let t = self.tid;
        wait_for_trap(t)?;
        // Our int3, not some other SIGTRAP: the loop's end is right after it.
        let end = code + BATCH_CODE.len() as u64;
        let at = sys::get_regs(t).ctx(t, || "read registers".into())?.rip;
        if at != end {
            return Err(Error::Refused(format!(
                "pid {t}: a SIGTRAP at {at:#x} stopped the injected calls (their loop ends at {end:#x})"
            )));
        }
        let done = s.u64s(0, chunk.len() * (BATCH_ENTRY / 8) as usize)?;
        for (i, c) in chunk.iter().enumerate() {
            let res = done[i * (BATCH_ENTRY / 8) as usize + 7] as i64;
            tracing::trace!(tid = t, "injected {} (batched)", c.name);
            check(t, &c.name, res)?;
        }
        Ok(())
    }

    /// Like `call_many` with calls that fit one table (`batch_capacity`),
    /// but returns as soon as the task runs them: several tasks then work
    /// at once (on other cores) while the tracer goes on with another.
    /// `Started::finish` waits for the end and gives the task back.
    pub fn start_many(mut self, code: u64, s: &Scratch, calls: Vec<Call>) -> Result<Started> {
        assert!(code != 0, "start_many needs the batch loop");
        let mask = unblock_trap(self.tid)?;
        self.launch(code, s, &calls)?;
        Ok(Started {
            remote: self,
            code,
            calls,
            mask,
        })
    }

    /// Puts the saved registers back, rewritten so the task re-runs the
    /// syscall it was interrupted in (see `arch::restart_fixup`).
    pub fn finish(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        sys::set_regs(self.tid, &resumable(&self.saved))
            .ctx(self.tid, || "restore registers".into())?;
        settle(self.tid, &self.saved, true)
    }

    /// Leaves the registers as the last injected syscall left them: the
    /// caller sets the task's final state itself (restore).
    pub fn disarm(mut self) {
        self.restored = true;
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

fn check(tid: Pid, name: &str, r: i64) -> Result<u64> {
    if r < 0 && r > -4096 {
        return Err(Error::Sys {
            pid: tid,
            what: format!("injected {name}"),
            source: std::io::Error::from_raw_os_error(-r as i32),
        });
    }
    Ok(r as u64)
}

fn mmap_args(len: u64, prot: i32) -> (i64, [u64; 6]) {
    let prot = prot as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    (libc::SYS_mmap, [0, len, prot, flags, u64::MAX, 0])
}

/// `base` set up to run syscall `nr(args)` from the instruction at `ip`.
fn call_regs(base: &Regs, ip: u64, nr: i64, args: &[u64]) -> Regs {
    let mut r = *base;
    r.rip = ip;
    r.rax = nr as u64;
    // orig_rax = -1: the kernel must not apply syscall-restart rules to
    // the stop we resume from.
    r.orig_rax = u64::MAX;
    let a = |i: usize| args.get(i).copied().unwrap_or(0);
    (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a(0), a(1), a(2), a(3), a(4), a(5));
    r
}

/// Brings a thread whose registers were just put back in their resumable
/// form (at the syscall-exit stop of the last injected call) to the
/// interrupt stop it was found in, with its registers exactly as found.
/// When it resumes, the kernel itself then applies the syscall-restart
/// rules: a syscall interrupted by the checkpoint is re-run, unless a
/// handled signal comes first, which makes it fail with EINTR (pause(),
/// sigsuspend(), epoll_wait()... return to a loop that checks the flag
/// the handler set). With the resumable form alone, that signal's handler
/// would run and the syscall would be re-run after it: a `while (!flag)
/// pause();` would never end. If ckpt dies meanwhile, the thread resumes
/// either in the resumable form or (once stopped) as found: both heal.
/// `same_task`: as in `arch::as_interrupted`.
pub fn settle(tid: Pid, saved: &Regs, same_task: bool) -> Result<()> {
    match start_settling(tid, saved, same_task)? {
        Some(regs) => finish_settling(tid, &regs),
        None => Ok(()),
    }
}

/// The first half of `settle`: lets the thread go through the kernel's
/// syscall restart up to its next stop, and returns the registers to set
/// once it is there (`finish_settling`), or `None` if there is nothing to
/// settle. Several threads can be on their way at once.
pub fn start_settling(tid: Pid, saved: &Regs, same_task: bool) -> Result<Option<Regs>> {
    let Some(regs) = crate::arch::as_interrupted(saved, same_task) else {
        return Ok(None); // nothing the kernel would decide differently
    };
    sys::interrupt(tid).ctx(tid, || "PTRACE_INTERRUPT".into())?;
    sys::cont(tid, 0).ctx(tid, || "PTRACE_CONT".into())?;
    Ok(Some(regs))
}

/// The second half of `settle`: waits for the thread's stop and sets
/// `regs` (from `start_settling`).
pub fn finish_settling(tid: Pid, regs: &Regs) -> Result<()> {
    crate::freeze::wait_for_stop(tid)?;
    sys::set_regs(tid, regs).ctx(tid, || "restore registers as found".into())
}

/// The registers a thread stopped with `saved` must resume with: an
/// interrupted syscall is re-run (see `arch::restart_fixup`).
fn resumable(saved: &Regs) -> Regs {
    let mut r = *saved;
    crate::arch::restart_fixup(&mut r, true);
    r
}

/// Test hook: `CKPT_TEST_KILL_AT_INJECTION=N[:before|:entry|:exit]` makes
/// ckpt SIGKILL itself at that moment of its Nth injected syscall (counted
/// from 1 over the whole run), so tests can hit exact moments; N = `unmap`
/// names the final munmap of the first session's scratch region.
fn test_hook(moment: &str, tag: Option<&str>) {
    static AT: OnceLock<Option<(String, String)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = crate::test_hooks::get().kill_at_injection.clone()?;
        let (n, m) = v.split_once(':').unwrap_or((&v, "entry"));
        Some((n.to_string(), m.to_string()))
    });
    let c = if moment == "before" {
        COUNT.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        COUNT.load(Ordering::SeqCst)
    };
    let Some((n, m)) = at else { return };
    let hit = match n.parse::<u64>() {
        Ok(n) => c == n,
        Err(_) => tag == Some(n.as_str()),
    };
    if hit && m == moment {
        let _ = sys::kill(std::process::id() as Pid, libc::SIGKILL);
    }
}

/// One call of `Remote::call_many`.
pub struct Call {
    pub name: String,
    pub nr: i64,
    pub args: [u64; 6],
}

impl Call {
    /// Syscall `nr` with `args` (up to six; the rest 0), named `name` in
    /// errors and traces.
    pub fn new(name: impl Into<String>, nr: i64, args: &[u64]) -> Call {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        Call {
            name: name.into(),
            nr,
            args: a,
        }
    }
}

/// Bytes per call in `call_many`'s table: nr, six arguments, the result.
const BATCH_ENTRY: u64 = 64;

/// x86-64 code that runs the calls of a table at rbx (`BATCH_ENTRY` bytes
/// each: nr, six arguments, room for the result; nr -1 ends it), storing
/// each result, until one fails; then `int3`.
pub const BATCH_CODE: [u8; 54] = [
    0x48, 0x8b, 0x03, // 0: mov rax, [rbx]
    0x48, 0x83, 0xf8, 0xff, // 3: cmp rax, -1
    0x74, 0x2c, // 7: je done (53)
    0x48, 0x8b, 0x7b, 0x08, // 9: mov rdi, [rbx+8]
    0x48, 0x8b, 0x73, 0x10, // 13: mov rsi, [rbx+16]
    0x48, 0x8b, 0x53, 0x18, // 17: mov rdx, [rbx+24]
    0x4c, 0x8b, 0x53, 0x20, // 21: mov r10, [rbx+32]
    0x4c, 0x8b, 0x43, 0x28, // 25: mov r8, [rbx+40]
    0x4c, 0x8b, 0x4b, 0x30, // 29: mov r9, [rbx+48]
    0x0f, 0x05, // 33: syscall
    0x48, 0x89, 0x43, 0x38, // 35: mov [rbx+56], rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // 39: cmp rax, -4095
    0x73, 0x06, // 45: jae done (53): failed
    0x48, 0x83, 0xc3, 0x40, // 47: add rbx, 64
    0xeb, 0xcb, // 51: jmp 0
    0xcc, // 53: done: int3
];

/// The calls a task runs since `Remote::start_many`.
pub struct Started {
    remote: Remote,
    code: u64,
    calls: Vec<Call>,
    /// The task's signal mask before (SIGTRAP unblocked meanwhile).
    mask: u64,
}

impl Started {
    /// Waits for the calls' end (`s`: the scratch they were started with)
    /// and checks their results; the task is then stopped for more.
    pub fn finish(mut self, s: &Scratch) -> Result<Remote> {
        let done = self.remote.collect(self.code, s, &self.calls);
        restore_mask(self.remote.tid, self.mask)?;
        done.map(|()| self.remote)
    }
}

/// Unblocks SIGTRAP in `t` for the batch loop's `int3` (see `call_many`);
/// returns the mask to put back with `restore_mask`.
fn unblock_trap(t: Pid) -> Result<u64> {
    let mask = sys::get_sigmask(t).ctx(t, || "PTRACE_GETSIGMASK".into())?;
    let trap = 1u64 << (libc::SIGTRAP - 1);
    if mask & trap != 0 {
        sys::set_sigmask(t, mask & !trap).ctx(t, || "PTRACE_SETSIGMASK".into())?;
    }
    Ok(mask)
}

fn restore_mask(t: Pid, mask: u64) -> Result<()> {
    if mask & 1u64 << (libc::SIGTRAP - 1) != 0 {
        sys::set_sigmask(t, mask).ctx(t, || "PTRACE_SETSIGMASK".into())?;
    }
    Ok(())
}

/// How many calls one table of `call_many` holds in `room` bytes.
pub fn batch_capacity(room: u64) -> usize {
    (room / BATCH_ENTRY) as usize - 1
}

/// Waits until the task, let run by the caller, stops at its `int3` (a
/// SIGTRAP stop, which is then not delivered).
fn wait_for_trap(t: Pid) -> Result<()> {
    loop {
        let (_, st) = sys::wait(t, 0).ctx(t, || "wait for injected calls".into())?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            return Err(Error::TaskGone(t));
        }
        if !libc::WIFSTOPPED(st) {
            continue;
        }
        let sig = libc::WSTOPSIG(st);
        if sig == libc::SIGTRAP && st >> 16 == 0 {
            return Ok(());
        }
        if st >> 16 != 0 || sig == SYSCALL_TRAP {
            sys::cont(t, 0).ctx(t, || "PTRACE_CONT".into())?;
            continue;
        }
        return Err(Error::Refused(format!(
            "pid {t}: signal {sig} while running injected calls"
        )));
    }
}

fn complete(t: Pid, ip: u64) -> Result<i64> {
    complete_tagged(t, ip, None)
}

fn complete_tagged(t: Pid, ip: u64, tag: Option<&str>) -> Result<i64> {
    test_hook("before", tag);
    step_to_syscall_stop(t, ip)?; // entry
    test_hook("entry", tag);
    step_to_syscall_stop(t, ip)?; // exit
    test_hook("exit", tag);
    let out = sys::get_regs(t).ctx(t, || "read syscall result".into())?;
    Ok(out.rax as i64)
}

fn step_to_syscall_stop(t: Pid, ip: u64) -> Result<()> {
    loop {
        sys::cont_syscall(t).ctx(t, || "PTRACE_SYSCALL".into())?;
        let (_, st) = sys::wait(t, 0).ctx(t, || "wait for an injected syscall".into())?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            return Err(Error::TaskGone(t));
        }
        if !libc::WIFSTOPPED(st) {
            continue;
        }
        let sig = libc::WSTOPSIG(st);
        if sig == SYSCALL_TRAP {
            return Ok(());
        }
        if st >> 16 != 0 {
            // A ptrace event stop (e.g. a late PTRACE_INTERRUPT): go on.
            continue;
        }
        return Err(Error::Unsupported {
            pid: t,
            comm: crate::procfs::comm(t),
            object: format!("an injected syscall at {ip:#x}"),
            reason: format!(
                "signal {sig} arrived instead of its completion (SIGSTOP and SIGKILL cannot be blocked); retry the checkpoint"
            ),
        });
    }
}

/// Bytes of the scratch region's data page (arguments of injected calls).
const DATA_LEN: u64 = 4096;
/// Room below a slot's frame: a signal handler that runs in the one
/// instruction between `lea` and `rt_sigreturn` of a heal uses it as stack.
const GUARD: u64 = 16384;
/// Bytes of a slot's code: close steps growing down from the tail.
const CODE_LEN: u64 = 256;
/// How many fds a session may have open in the task at once.
const MAX_FDS: usize = ((CODE_LEN - heal::TAIL_LEN - 2) / heal::CLOSE_LEN) as usize;
/// prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ...).
const PR_SET_VMA: u64 = 0x5356_4d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;
pub const SCRATCH_NAME: &str = "ckpt-scratch";

/// The scratch region: a data page, then per slot the room a handler may
/// use and the frame, all read-write; then one read-execute page with the
/// slots' code (never writable and executable at once, which
/// memory-deny-write-execute would refuse). ckpt writes it all through
/// /proc/PID/mem.
/// One thread's part of the scratch region: frame and code.
#[derive(Clone, Copy)]
struct Slot {
    frame: u64,
    code: u64,
}

impl Slot {
    fn tail(&self) -> u64 {
        self.code + CODE_LEN - heal::TAIL_LEN
    }
    /// The `syscall` injections run from while `k` fds are open: the close
    /// steps lie between it and the tail, newest first.
    fn stub(&self, k: usize) -> u64 {
        self.tail() - heal::CLOSE_LEN * k as u64 - 2
    }
}

/// Code in the task that lets a syscall return into rt_sigreturn.
#[derive(Clone, Copy)]
struct Gadgets {
    /// `syscall` followed by register-only instructions and `ret`.
    syscall_ret: u64,
    /// `mov $15,%(e|r)ax; syscall`.
    restorer: u64,
}

/// A thread the session took: what it had, and what was changed.
struct Thread {
    tid: Pid,
    regs: Regs,
    mask: u64,
    /// Its xsave area in signal-frame form (see `heal::sigframe_xstate`).
    xsave: Vec<u8>,
    /// Its mask was set to "all blocked".
    blocked: bool,
    /// Its registers were changed.
    moved: bool,
    /// Fds ckpt opened in the task through this thread, oldest first.
    fds: Vec<u32>,
    slot: Option<Slot>,
    /// A healing frame below its red zone (pretcode: the restorer); rsp
    /// points there during injections, so a handler runs below it.
    stack: Option<u64>,
    remote: Remote,
}

impl Thread {
    fn take(tid: Pid) -> Result<Thread> {
        if let Ok(st) = procfs::read(tid, "status") {
            let shstk = st
                .lines()
                .find(|l| l.starts_with("x86_Thread_features:"))
                .is_some_and(|l| l.contains("shstk"));
            if shstk {
                return Err(Error::Unsupported {
                    pid: tid,
                    comm: procfs::read(tid, "comm")
                        .map(|c| c.trim_end().to_string())
                        .unwrap_or_default(),
                    object: format!("thread {tid}"),
                    reason:
                        "it uses a shadow stack, which ckpt cannot inject syscalls around yet; \
                             run the program with shadow stacks off \
                             (GLIBC_TUNABLES=glibc.cpu.x86_shstk=off)"
                            .into(),
                });
            }
        }
        let regs = sys::get_regs(tid).ctx(tid, || "PTRACE_GETREGS".into())?;
        let mask = sys::get_sigmask(tid).ctx(tid, || "PTRACE_GETSIGMASK".into())?;
        let area = sys::get_xstate(tid).ctx(tid, || "PTRACE_GETREGSET NT_X86_XSTATE".into())?;
        let xsave =
            heal::sigframe_xstate(&area, heal::cpu_component_end).ok_or_else(|| Error::Sys {
                pid: tid,
                what: format!(
                    "thread {tid}: its xsave area ({} bytes) is shorter than the components \
                     it says it holds, so no signal frame can restore it (a kernel or CPU \
                     ckpt does not know)",
                    area.len()
                ),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })?;
        Ok(Thread {
            tid,
            regs,
            mask,
            xsave,
            blocked: false,
            moved: false,
            fds: Vec::new(),
            slot: None,
            stack: None,
            remote: Remote::owned_by_session(tid, 0, regs),
        })
    }

    fn set_regs(&mut self, r: &Regs) -> Result<()> {
        self.moved = true;
        sys::set_regs(self.tid, r).ctx(self.tid, || "set registers for an injection".into())
    }

    fn block(&mut self) -> Result<()> {
        self.blocked = true;
        sys::set_sigmask(self.tid, !0).ctx(self.tid, || "PTRACE_SETSIGMASK".into())
    }

    /// Mask first, then registers: in between, the thread heals by itself.
    fn restore(&mut self) -> Result<()> {
        let mut res = Ok(());
        if self.blocked {
            res = sys::set_sigmask(self.tid, self.mask).ctx(self.tid, || {
                "restore the signal mask (PTRACE_SETSIGMASK)".into()
            });
            self.blocked = res.is_err();
        }
        if self.moved {
            let r = sys::set_regs(self.tid, &resumable(&self.regs))
                .ctx(self.tid, || "restore registers".into())
                .and_then(|_| settle(self.tid, &self.regs, true));
            self.moved = r.is_err();
            res = res.and(r);
        }
        res
    }

    fn slot(&self) -> Slot {
        self.slot.expect("thread has a slot")
    }

    /// Its registers for injections: rsp at the stack frame if it has one.
    fn base(&self) -> Regs {
        let mut r = self.regs;
        if let Some(f) = self.stack {
            r.rsp = f;
        }
        r
    }

    /// Points the thread at the `syscall` at `ip` (its slot's stub or the
    /// vDSO gadget) with a harmless call pending.
    fn park_at(&mut self, ip: u64) -> Result<()> {
        self.remote.set_syscall_ip(ip);
        self.remote.saved = self.base();
        let r = call_regs(&self.base(), ip, libc::SYS_getpid, &[]);
        self.set_regs(&r)
    }

    fn park(&mut self) -> Result<()> {
        let ip = self.slot().stub(self.fds.len());
        self.park_at(ip)
    }
}

/// The injection guard of one frozen process during a checkpoint: the
/// scratch region, the main thread (injected into for the whole session),
/// and one other thread at a time. See the module docs for the invariant.
pub struct Session {
    pid: Pid,
    mem: std::fs::File,
    vdso_syscall: u64,
    gadgets: Option<Gadgets>,
    /// (address, length) of the scratch region while mapped.
    scratch: Option<(u64, u64)>,
    slot_len: u64,
    /// The process's mappings when the session began (for stack room).
    maps: Vec<MapEntry>,
    main: Option<Thread>,
    other: Option<Thread>,
    /// The other thread uses the second slot: the main thread's heal must
    /// then not unmap the region under it.
    other_in_slot: bool,
}

impl Session {
    /// Takes the main thread of `pid` (all its threads must be in ptrace
    /// stops) and maps the scratch region in the process.
    /// `maps`: the process's mappings, read while it is frozen.
    pub fn open(pid: Pid, maps: &[MapEntry]) -> Result<Session> {
        let vdso_syscall = crate::checkpoint::find_syscall_insn(pid, maps)?;
        let mem = procfs::mem(pid).ctx(pid, || "open /proc mem".into())?;
        let gadgets = find_gadgets(maps, &mem);
        if gadgets.is_none() {
            tracing::debug!(
                "pid {pid}: no syscall/ret and restorer gadgets: the scratch mmap and munmap cannot heal"
            );
        }
        let main = Thread::take(pid)?;
        let frame_room = heal::frame_len(sys::XSTATE_MAX + 4) as u64;
        let slot_len = crate::align_up(GUARD + frame_room);
        let mut s = Session {
            pid,
            mem,
            vdso_syscall,
            gadgets,
            scratch: None,
            slot_len,
            maps: Vec::new(),
            main: Some(main),
            other: None,
            other_in_slot: false,
        };
        s.map_scratch(maps)?;
        s.maps = maps.to_vec();
        Ok(s)
    }

    fn rw_len(&self) -> u64 {
        DATA_LEN + 2 * self.slot_len
    }

    fn slot_at(&self, i: u64) -> Slot {
        let (addr, _) = self.scratch.expect("scratch mapped");
        Slot {
            frame: addr + DATA_LEN + i * self.slot_len + GUARD,
            code: addr + self.rw_len() + i * CODE_LEN,
        }
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem.write_all_at(data, addr).ctx(self.pid, || {
            format!("write {} bytes at {addr:#x}", data.len())
        })
    }

    /// A healing frame for `t` below its red zone, if its stack has room.
    fn stack_frame(&self, t: &Thread, maps: &[MapEntry], g: &Gadgets) -> Option<(u64, Vec<u8>)> {
        let rsp = t.regs.rsp;
        let len = heal::frame_len(t.xsave.len()) as u64;
        let at = rsp.checked_sub(128 + len)? & !63;
        // Like a signal frame the kernel pushes, it goes below the red
        // zone of the stack rsp is in; a page of slack must remain in the
        // same writable private mapping, or the slot serves instead.
        let m = maps.iter().find(|m| m.start < rsp && rsp <= m.end)?;
        if at < m.start.checked_add(4096)? || !m.write || m.shared {
            return None;
        }
        let img = heal::frame_image(at, &resumable(&t.regs), t.mask, &t.xsave, g.restorer);
        Some((at, img))
    }

    /// Registers that run `nr(args)` in `t` from a `syscall; ret` gadget
    /// with rsp at a healing frame on its stack, or else from the vDSO.
    fn outer_call(&self, t: &Thread, maps: &[MapEntry], nr: i64, args: &[u64]) -> Result<Regs> {
        if let Some(g) = self.gadgets {
            if let Some((at, img)) = self.stack_frame(t, maps, &g) {
                self.write(at, &img)?;
                let mut r = call_regs(&t.regs, g.syscall_ret, nr, args);
                r.rsp = at;
                return Ok(r);
            }
        }
        Ok(call_regs(&t.regs, self.vdso_syscall, nr, args))
    }

    fn map_scratch(&mut self, maps: &[MapEntry]) -> Result<()> {
        let len = self.rw_len() + 4096;
        let mut t = self.main.take().expect("main thread");
        let res = (|| -> Result<()> {
            let (nr, args) = mmap_args(len, libc::PROT_READ | libc::PROT_EXEC);
            let r = self.outer_call(&t, maps, nr, &args)?;
            t.set_regs(&r)?;
            t.block()?;
            let addr = check(
                self.pid,
                "mmap of the scratch region",
                complete(t.tid, r.rip)?,
            )?;
            self.scratch = Some((addr, len));
            let slot = self.slot_at(0);
            self.arm(&mut t, slot, maps)?;
            t.remote.call(
                "mprotect of the scratch region",
                libc::SYS_mprotect,
                &[
                    addr,
                    self.rw_len(),
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                ],
            )?;
            self.write(addr, format!("{SCRATCH_NAME}\0").as_bytes())?;
            // Best effort: a leftover region is then recognisable in maps.
            let _ = t.remote.syscall(
                libc::SYS_prctl,
                &[PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, len, addr],
            );
            read_altstack(&mut t)
        })();
        self.main = Some(t);
        res
    }

    /// Writes a healing frame below `t`'s red zone if there is room and the
    /// gadgets exist.
    fn stack_heal(&self, t: &mut Thread, maps: &[MapEntry]) -> Result<()> {
        if let Some(g) = self.gadgets {
            if let Some((at, img)) = self.stack_frame(t, maps, &g) {
                self.write(at, &img)?;
                t.stack = Some(at);
            }
        }
        Ok(())
    }

    /// The heal tail of `t`'s slot: unmap the region and return through
    /// the stack frame when possible, else return through the slot frame.
    fn tail_code(&self, t: &Thread, slot: Slot) -> [u8; heal::TAIL_LEN as usize] {
        match (t.stack, self.gadgets, self.scratch) {
            (Some(f), Some(g), Some((addr, len))) if !self.other_in_slot => {
                heal::unmap_tail(addr, len, f, g.syscall_ret)
            }
            _ => heal::tail(slot.tail(), slot.frame),
        }
    }

    /// Writes `slot` for `t` (frames, then code), parks `t` at its stub,
    /// and blocks its signals.
    fn arm(&self, t: &mut Thread, slot: Slot, maps: &[MapEntry]) -> Result<()> {
        self.stack_heal(t, maps)?;
        let frame = heal::frame_image(slot.frame, &resumable(&t.regs), t.mask, &t.xsave, 0);
        assert!(frame.len() as u64 <= self.slot_len - GUARD, "frame fits");
        self.write(slot.frame, &frame)?;
        let mut code = vec![0xcc; CODE_LEN as usize];
        let tail = (slot.tail() - slot.code) as usize;
        code[tail..].copy_from_slice(&self.tail_code(t, slot));
        code[tail - 2..tail].copy_from_slice(&heal::SYSCALL);
        self.write(slot.code, &code)?;
        t.slot = Some(slot);
        t.park()?;
        if !t.blocked {
            t.block()?;
        }
        Ok(())
    }

    /// Rewrites the main thread's heal tail (same length, so no stub moves).
    fn rewrite_main_tail(&self) -> Result<()> {
        let t = self.main.as_ref().expect("main thread");
        let slot = t.slot();
        self.write(slot.tail(), &self.tail_code(t, slot))
    }

    /// Takes another thread for injections: from the vDSO gadget with rsp
    /// at a frame on its stack (it then never runs scratch code), else from
    /// the second slot.
    fn arm_other(&mut self, t: &mut Thread) -> Result<()> {
        // Test hook: exercise the second slot.
        if !crate::test_hooks::get().other_in_slot {
            let maps = std::mem::take(&mut self.maps);
            let res = self.stack_heal(t, &maps);
            self.maps = maps;
            res?;
        }
        if let (Some(_), Some(g)) = (t.stack, self.gadgets) {
            t.park_at(g.syscall_ret)?;
            return t.block();
        }
        self.other_in_slot = true;
        self.rewrite_main_tail()?;
        let slot = self.slot_at(1);
        self.arm(t, slot, &[])
    }

    /// Scratch memory for arguments (one page).
    pub fn scratch(&self) -> Scratch<'_> {
        Scratch {
            addr: self.scratch.expect("scratch mapped").0,
            mem: &self.mem,
            pid: self.pid,
        }
    }

    /// The main thread, to inject process-wide calls into, and the scratch.
    pub fn main(&mut self) -> (&mut Remote, Scratch<'_>) {
        let addr = self.scratch.expect("scratch mapped").0;
        let Session { mem, main, pid, .. } = self;
        let s = Scratch {
            addr,
            mem,
            pid: *pid,
        };
        (&mut main.as_mut().expect("main thread").remote, s)
    }

    /// Runs `f` with thread `tid` (not the main thread) taken for
    /// injections; it is given back whatever `f` returns.
    pub fn with_thread<T>(
        &mut self,
        tid: Pid,
        f: impl FnOnce(&mut Remote, &Scratch) -> Result<T>,
    ) -> Result<T> {
        assert!(self.other.is_none(), "one other thread at a time");
        self.other = Some(Thread::take(tid)?);
        let mut t = self.other.take().expect("just set");
        let armed = self.arm_other(&mut t).and_then(|_| read_altstack(&mut t));
        self.other = Some(t);
        let res = armed.and_then(|_| {
            let addr = self.scratch.expect("scratch mapped").0;
            let Session {
                mem, other, pid, ..
            } = self;
            let s = Scratch {
                addr,
                mem,
                pid: *pid,
            };
            f(&mut other.as_mut().expect("other thread").remote, &s)
        });
        let mut t = self.other.take().expect("other thread");
        let mut restored = t.restore();
        if restored.is_err() {
            // Not given back: `release` tries once more before unmapping.
            self.other = Some(t);
        } else if self.other_in_slot {
            self.other_in_slot = false;
            restored = self.rewrite_main_tail();
        }
        let v = res?;
        restored?;
        Ok(v)
    }

    /// Opens `path` in the task (through the main thread) with `flags`
    /// (O_CLOEXEC added). The heal code closes it from before the open
    /// until `close_fd`. None when the task cannot open it.
    pub fn open_fd(&mut self, path: &[u8], flags: i32) -> Result<Option<u32>> {
        let pid = self.pid;
        let predicted = lowest_free_fd(pid)?;
        let data = self.scratch.expect("scratch mapped").0;
        let mut p = path.to_vec();
        p.push(0);
        if p.len() as u64 > DATA_LEN {
            return Ok(None);
        }
        self.write(data, &p)?;
        let t = self.main.as_ref().expect("main thread");
        let k = t.fds.len();
        if k >= MAX_FDS {
            return Err(Error::Refused(format!(
                "pid {pid}: ckpt would have more than {MAX_FDS} fds open in the task"
            )));
        }
        // The close step first, then the open from the stub before it.
        let slot = t.slot();
        let mut code = heal::SYSCALL.to_vec();
        code.extend_from_slice(&heal::close_step(predicted));
        self.write(slot.stub(k + 1), &code)?;
        let t = self.main.as_mut().expect("main thread");
        t.remote.set_syscall_ip(slot.stub(k + 1));
        let opened = t.remote.syscall(
            libc::SYS_openat,
            &[
                libc::AT_FDCWD as i64 as u64,
                data,
                (flags | libc::O_CLOEXEC) as u64,
                0,
            ],
        );
        match opened {
            Ok(fd) if fd == predicted as i64 => {
                t.fds.push(predicted);
                Ok(Some(predicted))
            }
            Ok(fd) => {
                // Not the fd the close step names (a failed open, or an fd
                // table shared with a process outside the freeze): skip the
                // step by running its syscall as close(fd) or getpid.
                t.remote.set_syscall_ip(slot.stub(k));
                if fd >= 0 {
                    tracing::debug!("pid {pid}: open returned fd {fd}, not {predicted}");
                    t.remote.call("close", libc::SYS_close, &[fd as u64])?;
                } else {
                    t.remote.syscall(libc::SYS_getpid, &[])?;
                }
                Ok(None)
            }
            Err(e) => {
                // Whether the open ran is unknown: keep the step, so that
                // `release` (or the heal) closes the fd in any case.
                t.fds.push(predicted);
                Err(e)
            }
        }
    }

    /// Closes `fd`, the newest fd `open_fd` returned.
    pub fn close_fd(&mut self, fd: u32) -> Result<()> {
        let t = self.main.as_mut().expect("main thread");
        assert_eq!(t.fds.last(), Some(&fd), "fds are closed newest first");
        let k = t.fds.len();
        // The newest close step's own syscall: afterwards the thread is
        // past it, and the stub for k-1 fds is that same instruction.
        t.remote.set_syscall_ip(t.slot().stub(k - 1));
        let r = t.remote.syscall(libc::SYS_close, &[fd as u64])?;
        t.fds.pop();
        check(t.tid, "close", r).map(drop)
    }

    /// Gives everything back: the other thread, the fds, the scratch
    /// region, the main thread. Every step is tried; the first error is
    /// returned.
    pub fn release(&mut self) -> Result<()> {
        let mut res = Ok(());
        if let Some(mut t) = self.other.take() {
            res = res.and(t.restore());
        }
        if let Some(mut t) = self.main.take() {
            if self.scratch.is_some() && t.slot.is_some() {
                while let Some(&fd) = t.fds.last() {
                    t.remote.set_syscall_ip(t.slot().stub(t.fds.len() - 1));
                    match t.remote.syscall(libc::SYS_close, &[fd as u64]) {
                        Ok(_) => {
                            t.fds.pop();
                        }
                        Err(e) => {
                            res = res.and(Err(e));
                            break;
                        }
                    }
                }
                if t.fds.is_empty() {
                    res = res.and(self.unmap(&mut t));
                }
            } else if let Some((addr, len)) = self.scratch {
                // Mapped but never armed: unmap from where the mmap ran.
                let r = call_regs(&t.regs, self.vdso_syscall, libc::SYS_munmap, &[addr, len]);
                let un = t
                    .set_regs(&r)
                    .and_then(|_| complete(t.tid, r.rip))
                    .and_then(|rc| check(t.tid, "munmap of the scratch region", rc));
                if un.is_ok() {
                    self.scratch = None;
                }
                res = res.and(un.map(drop));
            }
            res = res.and(t.restore());
        }
        res
    }

    fn unmap(&mut self, t: &mut Thread) -> Result<()> {
        let Some((addr, len)) = self.scratch else {
            return Ok(());
        };
        // The maps read at `open`: the injected calls leave the stacks the
        // healing frame goes on as they were.
        let mut r = self.outer_call(t, &self.maps, libc::SYS_munmap, &[addr, len])?;
        if r.rip == self.vdso_syscall {
            // No healing frame: from here until the registers are back,
            // a killed ckpt leaves the thread to fault after the munmap.
            r.rip = t.slot().stub(0);
        }
        t.set_regs(&r)?;
        let rc = complete_tagged(t.tid, r.rip, Some("unmap"))?;
        check(t.tid, "munmap of the scratch region", rc)?;
        self.scratch = None;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("pid {}: giving the process back: {e}", self.pid);
        }
    }
}

/// Reads the thread's alternate stack straight into its frame's uc_stack
/// (until then it holds a value rt_sigreturn ignores).
fn read_altstack(t: &mut Thread) -> Result<()> {
    for frame in [t.stack, t.slot.map(|s| s.frame)].into_iter().flatten() {
        t.remote.call(
            "sigaltstack",
            libc::SYS_sigaltstack,
            &[0, frame + heal::UC_STACK_OFF],
        )?;
    }
    Ok(())
}

/// The fd number the next open in `pid` returns (its lowest free one).
fn lowest_free_fd(pid: Pid) -> Result<u32> {
    let mut used: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ctx(pid, || "list /proc fd".into())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    used.sort_unstable();
    let mut n = 0;
    for u in used {
        if u == n {
            n += 1;
        } else if u > n {
            break;
        }
    }
    Ok(n)
}

/// Reads `m` from the task, at most `cap` bytes.
fn read_mapping(mem: &std::fs::File, m: &MapEntry, cap: u64) -> Option<Vec<u8>> {
    let len = (m.end - m.start).min(cap);
    let mut b = vec![0u8; len as usize];
    mem.read_exact_at(&mut b, m.start).ok()?;
    Some(b)
}

/// The gadgets of `Gadgets` in the task's vDSO and executable mappings.
fn find_gadgets(maps: &[MapEntry], mem: &std::fs::File) -> Option<Gadgets> {
    // Test hook: exercise the fallback (the vDSO's plain syscall).
    if crate::test_hooks::get().no_heal_gadgets {
        return None;
    }
    // The processes of a tree mostly share their vDSO and libc at the same
    // addresses: the last process's gadgets are checked first, a few bytes
    // read instead of a search through megabytes of code.
    let last = *LAST_GADGETS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = last.filter(|g| gadgets_hold(maps, mem, g)) {
        return Some(g);
    }
    // A task mapping ckpt's own libc has its restorer where ckpt's is.
    let ours = restorer_like_ours(maps).and_then(|restorer| {
        let g = Gadgets {
            syscall_ret: vdso_syscall_ret(maps, mem)?,
            restorer,
        };
        gadgets_hold(maps, mem, &g).then_some(g)
    });
    let found = ours.or_else(|| search_gadgets(maps, mem));
    if found.is_some() {
        *LAST_GADGETS.lock().unwrap_or_else(|e| e.into_inner()) = found;
    }
    found
}

/// The gadgets found last (see `find_gadgets`).
static LAST_GADGETS: std::sync::Mutex<Option<Gadgets>> = std::sync::Mutex::new(None);

/// Whether `g` is where `search_gadgets` could have found it in this task:
/// the same kinds of mapping, and the same code there.
fn gadgets_hold(maps: &[MapEntry], mem: &std::fs::File, g: &Gadgets) -> bool {
    let code_at = |a: u64, vdso: bool, len: u64| -> Option<Vec<u8>> {
        let m = maps.iter().find(|m| m.start <= a && a < m.end)?;
        let kind = if vdso {
            m.path == b"[vdso]"
        } else {
            m.exec && m.read && m.path.starts_with(b"/")
        };
        if !kind {
            return None;
        }
        let mut b = vec![0u8; len.min(m.end - a) as usize];
        mem.read_exact_at(&mut b, a).ok()?;
        Some(b)
    };
    // Enough bytes for any gadget `find_syscall_ret` accepts short of a
    // long run of padding (which the search then finds).
    code_at(g.syscall_ret, true, 64).is_some_and(|c| heal::find_syscall_ret(&c) == Some(0))
        && code_at(g.restorer, false, 9).is_some_and(|c| heal::find_restorer(&c) == Some(0))
}

/// Where the task maps the restorer of ckpt's own libc (`own_restorer`):
/// the same file (device and inode) mapped executable over the same
/// offset. Found once per run in ckpt's maps.
fn restorer_like_ours(maps: &[MapEntry]) -> Option<u64> {
    static OURS: std::sync::OnceLock<Option<(u64, u64, u64)>> = std::sync::OnceLock::new();
    let &(dev, ino, off) = OURS
        .get_or_init(|| {
            let a = crate::sys::own_restorer()?;
            let me = crate::procfs::map_ranges(std::process::id() as Pid).ok()?;
            let m = me
                .iter()
                .find(|m| m.start <= a && a < m.end && m.ino != 0)?;
            Some((m.dev, m.ino, m.offset + (a - m.start)))
        })
        .as_ref()?;
    maps.iter()
        .find(|m| {
            m.exec && m.dev == dev && m.ino == ino && m.offset <= off && off < m.offset + m.size()
        })
        .map(|m| m.start + (off - m.offset))
}

/// The `syscall; ret` gadget in the task's vDSO.
fn vdso_syscall_ret(maps: &[MapEntry], mem: &std::fs::File) -> Option<u64> {
    let vdso = maps.iter().find(|m| m.path == b"[vdso]")?;
    let code = read_mapping(mem, vdso, 1 << 20)?;
    Some(vdso.start + heal::find_syscall_ret(&code)? as u64)
}

fn search_gadgets(maps: &[MapEntry], mem: &std::fs::File) -> Option<Gadgets> {
    let syscall_ret = vdso_syscall_ret(maps, mem)?;
    // libc first: its restorer is the usual hit; then anything executable.
    let mut exec: Vec<&MapEntry> = maps
        .iter()
        .filter(|m| m.exec && m.read && m.path.starts_with(b"/"))
        .collect();
    exec.sort_by_key(|m| !m.path.windows(4).any(|w| w == b"libc"));
    let mut budget: u64 = 64 << 20;
    for m in exec {
        if budget == 0 {
            break;
        }
        let Some(code) = read_mapping(mem, m, budget) else {
            continue;
        };
        budget = budget.saturating_sub(code.len() as u64);
        if let Some(off) = heal::find_restorer(&code) {
            return Some(Gadgets {
                syscall_ret,
                restorer: m.start + off as u64,
            });
        }
    }
    None
}
