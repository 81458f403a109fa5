//! Running syscalls inside a stopped task (rr's AutoRemoteSyscalls, CRIU's
//! compel): save its registers, point rip at a `syscall` instruction, set the
//! arguments, run to the syscall-exit stop, read rax, and put the registers
//! back when done. The task's own code never runs meanwhile.

use crate::error::{Ctx, Error, Result};
use crate::sys::{self, Pid, Regs};

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
        let mut r = self.saved;
        r.rip = self.syscall_ip;
        r.rax = nr as u64;
        // orig_rax = -1: the kernel must not apply syscall-restart rules to
        // the stop we resume from.
        r.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a(0), a(1), a(2), a(3), a(4), a(5));
        let t = self.tid;
        sys::set_regs(t, &r).ctx(t, || "set registers for an injected syscall".into())?;
        self.step_to_syscall_stop()?; // entry
        self.step_to_syscall_stop()?; // exit
        let out = sys::get_regs(t).ctx(t, || "read syscall result".into())?;
        Ok(out.rax as i64)
    }

    /// Maps `len` bytes of private read-write scratch memory in the task.
    pub fn mmap_scratch(&mut self, len: u64) -> Result<u64> {
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        self.call("mmap", libc::SYS_mmap, &[0, len, prot, flags, u64::MAX, 0])
    }

    /// Like `syscall`, but a negative result becomes an error naming `name`.
    pub fn call(&mut self, name: &str, nr: i64, args: &[u64]) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if r < 0 && r > -4096 {
            return Err(Error::Sys {
                pid: self.tid,
                what: format!("injected {name}"),
                source: std::io::Error::from_raw_os_error(-r as i32),
            });
        }
        Ok(r as u64)
    }

    fn step_to_syscall_stop(&mut self) -> Result<()> {
        let t = self.tid;
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
            return Err(Error::Sys {
                pid: t,
                what: format!(
                    "injected syscall at {:#x} raised signal {sig} instead of completing",
                    self.syscall_ip
                ),
                source: std::io::Error::from_raw_os_error(libc::EFAULT),
            });
        }
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
        let mut r = self.saved;
        crate::arch::restart_fixup(&mut r, true);
        sys::set_regs(self.tid, &r).ctx(self.tid, || "restore registers".into())
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

impl Remote {
    /// Leaves the registers as the last injected syscall left them: the
    /// caller sets the task's final state itself (restore).
    pub fn disarm(mut self) {
        self.restored = true;
    }
}
