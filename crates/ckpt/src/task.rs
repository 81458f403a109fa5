//! Per-process and per-thread state other than memory and files: ids,
//! names, credentials, limits, signal dispositions and queues, timers,
//! alternate signal stacks, rseq. Both directions live here.

use crate::error::{Ctx, Error, Result};
use crate::procfs::{self, Stat, Status};
use crate::remote::{Call, Remote};
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Number of resource limits (RLIM_NLIMITS).
const NLIMITS: u32 = 16;

/// Scratch memory in a stopped task for syscalls that take pointers.
pub struct Scratch<'a> {
    pub addr: u64,
    pub mem: &'a std::fs::File,
    pub pid: Pid,
}

impl Scratch<'_> {
    pub fn read(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.mem
            .read_exact_at(&mut b, self.addr + off)
            .ctx(self.pid, || "read scratch memory".into())?;
        Ok(b)
    }
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_all_at(data, self.addr + off)
            .ctx(self.pid, || "write scratch memory".into())
    }
    pub fn u64s(&self, off: u64, n: usize) -> Result<Vec<u64>> {
        Ok(self
            .read(off, n * 8)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }
}

pub fn text(b: &[u8]) -> Text {
    Text(
        b.iter()
            .copied()
            .filter(|&c| c != 0)
            .take(MAX_TEXT)
            .collect(),
    )
}

/// Process record from /proc and a few injected prctls.
pub fn dump_process(
    pid: Pid,
    st: &Stat,
    status: &Status,
    r: &mut Remote,
    s: &Scratch,
) -> Result<(Process, Option<CwdRemoved>)> {
    let int_at = |r: &mut Remote, opt: i32| -> Result<u32> {
        r.call("prctl", libc::SYS_prctl, &[opt as u64, s.addr])?;
        let b = s.read(0, 4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let personality = procfs::read(pid, "personality")
        .ok()
        .and_then(|p| u32::from_str_radix(p.trim(), 16).ok())
        .unwrap_or(0);
    // Both are read from outside, so they are paths in our root, also for
    // a chrooted process (restart does chdir, then chroot).
    let mut dirs = Vec::new();
    let mut cwd_removed = None;
    for (what, name) in [("working directory", "cwd"), ("root directory", "root")] {
        let link = procfs::link(pid, name).ctx(pid, || format!("read {name}"))?;
        let m =
            std::fs::metadata(format!("/proc/{pid}/{name}")).ctx(pid, || format!("stat {name}"))?;
        let gone = dir_removed(&m, &link);
        if gone && name == "cwd" {
            // Restart recreates it, enters it and removes it again, so the
            // process sees a removed directory of that name, mode and owner.
            let path = link.strip_suffix(b" (deleted)").unwrap_or(&link);
            dirs.push(text(path));
            cwd_removed = Some(CwdRemoved {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
            });
            continue;
        }
        if gone {
            return Err(crate::error::Error::Unsupported {
                pid,
                comm: ckpt_image::escape(&st.comm),
                object: format!("its {what} {}", ckpt_image::escape(&link)),
                reason: "the directory was removed, so restart could not enter it; have it chroot into an existing directory".into(),
            });
        }
        dirs.push(text(&link));
    }
    let root = dirs.pop().unwrap_or_default();
    let cwd = dirs.pop().unwrap_or_default();
    let process = Process {
        pid,
        ppid: st.ppid,
        pgid: st.pgrp,
        sid: st.session,
        nr_threads: 1,
        comm: text(&st.comm),
        exe: text(&procfs::link(pid, "exe").unwrap_or_default()),
        cwd,
        root,
        umask: status.octal("Umask").unwrap_or(0o022),
        personality,
        dumpable: r.call(
            "prctl(PR_GET_DUMPABLE)",
            libc::SYS_prctl,
            &[libc::PR_GET_DUMPABLE as u64],
        )? as u32,
        child_subreaper: int_at(r, libc::PR_GET_CHILD_SUBREAPER)?,
        pdeathsig: int_at(r, libc::PR_GET_PDEATHSIG)?,
        state: PROC_ALIVE,
        exit_status: 0,
        oom_score_adj: procfs::read(pid, "oom_score_adj")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    };
    Ok((process, cwd_removed))
}

/// Whether a cwd or root directory `m`, whose /proc link reads `link`, was
/// removed: no links left, or (on file systems that keep a directory's
/// count) a "(deleted)" name that no longer leads to it.
fn dir_removed(m: &std::fs::Metadata, link: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    if m.nlink() == 0 {
        return true;
    }
    let same = |p: &[u8]| {
        std::fs::metadata(std::ffi::OsStr::from_bytes(p))
            .is_ok_and(|o| o.dev() == m.dev() && o.ino() == m.ino())
    };
    link.strip_suffix(b" (deleted)")
        .is_some_and(|p| !same(p) && !same(link))
}

pub fn dump_creds(status: &Status) -> Creds {
    let u = status.ids("Uid");
    let g = status.ids("Gid");
    let at = |v: &Vec<u32>, i: usize| v.get(i).copied().unwrap_or(0);
    Creds {
        uid: at(&u, 0),
        euid: at(&u, 1),
        suid: at(&u, 2),
        fsuid: at(&u, 3),
        gid: at(&g, 0),
        egid: at(&g, 1),
        sgid: at(&g, 2),
        fsgid: at(&g, 3),
        groups: status.ids("Groups"),
        cap_inh: status.hex("CapInh"),
        cap_prm: status.hex("CapPrm"),
        cap_eff: status.hex("CapEff"),
        cap_bnd: status.hex("CapBnd"),
        cap_amb: status.hex("CapAmb"),
        no_new_privs: status.num("NoNewPrivs").unwrap_or(0) as u32,
    }
}

pub fn dump_rlimits(pid: Pid) -> Result<Rlimits> {
    let limits = procfs::limits(pid)
        .ctx(pid, || "read /proc limits".into())?
        .into_iter()
        .enumerate()
        .take(NLIMITS as usize)
        .map(|(i, (cur, max))| Rlimit {
            resource: i as u32,
            cur,
            max,
        })
        .collect();
    Ok(Rlimits { limits })
}

/// Sets the limits inside the task (injected prlimit64 on itself, before
/// its credentials change). A hard limit above the restorer's own cannot be
/// raised without CAP_SYS_RESOURCE: such a limit is lowered to what the
/// restorer has, and said so.
pub fn restore_rlimits(r: &mut Remote, s: &Scratch, l: &Rlimits) -> Result<()> {
    // The task has the restorer's limits, mostly the image's already: only
    // those that differ are set (an injected call each).
    let now = crate::procfs::limits(r.tid()).unwrap_or_default();
    for lim in &l.limits {
        if now.get(lim.resource as usize) == Some(&(lim.cur, lim.max)) {
            continue;
        }
        let put = |s: &Scratch, cur: u64, max: u64| -> Result<()> {
            let b: Vec<u8> = [cur, max].iter().flat_map(|v| v.to_le_bytes()).collect();
            s.write(0, &b)
        };
        put(s, lim.cur, lim.max)?;
        let res = lim.resource as u64;
        let rc = r.syscall(libc::SYS_prlimit64, &[0, res, s.addr, 0])?;
        if rc == -(libc::EPERM as i64) {
            r.call("prlimit64", libc::SYS_prlimit64, &[0, res, 0, s.addr + 16])?;
            let have = s.u64s(16, 2)?[1];
            tracing::warn!(
                "resource limit {} hard {} lowered to {have}: raising it needs CAP_SYS_RESOURCE",
                lim.resource,
                lim.max
            );
            put(s, lim.cur.min(have), have)?;
            r.call("prlimit64", libc::SYS_prlimit64, &[0, res, s.addr, 0])?;
        } else if rc < 0 {
            return Err(crate::Error::Sys {
                pid: r.tid(),
                what: format!(
                    "set resource limit {} to {}/{}",
                    lim.resource, lim.cur, lim.max
                ),
                source: std::io::Error::from_raw_os_error(-rc as i32),
            });
        }
    }
    Ok(())
}

/// Signal dispositions, read with injected rt_sigaction (they are not in /proc).
pub fn dump_sigactions(r: &mut Remote, s: &Scratch, status: &Status) -> Result<SigActions> {
    // Only the signals caught or ignored (from /proc, one injected call
    // each instead of 62), and SIGCHLD, whose SA_NOCLDSTOP/SA_NOCLDWAIT act
    // even under SIG_DFL. The flags and mask of any other SIG_DFL
    // disposition change nothing the kernel does; they come back as 0.
    let mask = |key: &str| status.hex_opt(key).unwrap_or(u64::MAX);
    let wanted = mask("SigCgt") | mask("SigIgn") | 1 << (libc::SIGCHLD - 1);
    let mut actions = Vec::new();
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32
            || sig == libc::SIGSTOP as u32
            || wanted & (1 << (sig - 1)) == 0
        {
            continue;
        }
        r.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            &[sig as u64, 0, s.addr, 8],
        )?;
        let v = s.u64s(0, 4)?;
        if v.iter().any(|&x| x != 0) {
            actions.push(SigAction {
                signo: sig,
                handler: v[0],
                flags: v[1],
                restorer: v[2],
                mask: v[3],
            });
        }
    }
    Ok(SigActions { actions })
}

/// Installs dispositions in the calling process (a restore child with every
/// signal blocked; the handlers are addresses in the restored memory).
/// Every signal not in the image gets SIG_DFL: the restore child inherited
/// the restorer's own handlers (Rust's SIGSEGV/SIGBUS guard), whose code is
/// not in the restored address space.
pub fn restore_sigactions(a: &SigActions) -> std::io::Result<()> {
    for sig in 1..=64u32 {
        if sig == libc::SIGKILL as u32 || sig == libc::SIGSTOP as u32 {
            continue;
        }
        match a.actions.iter().find(|s| s.signo == sig) {
            Some(s) => sys::set_sigaction(sig, s.handler, s.flags, s.restorer, s.mask)?,
            None => sys::set_sigaction(sig, libc::SIG_DFL as u64, 0, 0, 0)?,
        }
    }
    Ok(())
}

fn usecs(sec: u64, usec: u64) -> u64 {
    sec.saturating_mul(1_000_000).saturating_add(usec)
}

pub fn dump_itimers(r: &mut Remote, s: &Scratch) -> Result<Itimers> {
    let mut timers = Vec::new();
    for which in 0..3u32 {
        r.call("getitimer", libc::SYS_getitimer, &[which as u64, s.addr])?;
        let v = s.u64s(0, 4)?;
        timers.push(Itimer {
            which,
            interval_us: usecs(v[0], v[1]),
            value_us: usecs(v[2], v[3]),
        });
    }
    Ok(Itimers { timers })
}

pub fn restore_itimers(r: &mut Remote, s: &Scratch, t: &Itimers) -> Result<()> {
    for it in &t.timers {
        if it.value_us == 0 && it.interval_us == 0 {
            continue;
        }
        // An interval timer whose signal is still pending reads as value 0;
        // the kernel would re-arm it when that signal is taken, but a value
        // of 0 here would disarm it: arm it for one interval instead.
        let value_us = if it.value_us == 0 {
            it.interval_us
        } else {
            it.value_us
        };
        let v = [
            it.interval_us / 1_000_000,
            it.interval_us % 1_000_000,
            value_us / 1_000_000,
            value_us % 1_000_000,
        ];
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.write(0, &b)?;
        r.call(
            "setitimer",
            libc::SYS_setitimer,
            &[it.which as u64, s.addr, 0],
        )?;
    }
    Ok(())
}

fn siginfo(raw: &[u8; 128]) -> SigInfo {
    SigInfo {
        signo: u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes")),
        code: i32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")),
        raw: Bytes(raw.to_vec()),
    }
}

pub fn dump_pending(tid: Pid, shared: bool) -> Result<Vec<SigInfo>> {
    Ok(sys::peek_siginfo(tid, shared)
        .ctx(tid, || "PTRACE_PEEKSIGINFO".into())?
        .iter()
        .map(siginfo)
        .collect())
}

/// Queues saved signals again, oldest first, while the task blocks them all.
/// A task may send itself signals with any si_code, so the siginfo comes
/// back exactly as it was.
pub fn restore_pending(
    r: &mut Remote,
    s: &Scratch,
    pid: Pid,
    tid: Option<Pid>,
    sigs: &[SigInfo],
) -> Result<()> {
    for si in sigs {
        if si.raw.0.len() != 128 || si.signo == 0 || si.signo > 64 {
            continue;
        }
        s.write(0, &si.raw.0)?;
        match tid {
            Some(t) => r.call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                &[pid as u64, t as u64, si.signo as u64, s.addr],
            )?,
            None => r.call(
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                &[pid as u64, si.signo as u64, s.addr],
            )?,
        };
    }
    Ok(())
}

/// Per-thread state: mask, queues, altstack, rseq, clear_child_tid.
pub fn dump_thread(tid: Pid, sigmask: u64, r: &mut Remote, s: &Scratch) -> Result<Thread> {
    r.call("sigaltstack", libc::SYS_sigaltstack, &[0, s.addr])?;
    let ss = s.read(0, 24)?;
    let ss_sp = u64::from_le_bytes(ss[0..8].try_into().expect("8"));
    let ss_flags = u32::from_le_bytes(ss[8..12].try_into().expect("4"));
    let ss_size = u64::from_le_bytes(ss[16..24].try_into().expect("8"));
    r.call(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, s.addr],
    )?;
    let ctid = s.u64s(0, 1)?[0];
    // A registration that cannot be read would be silently dropped.
    let (rseq_addr, rseq_len, rseq_sig) =
        sys::rseq_config(tid).ctx(tid, || "PTRACE_GET_RSEQ_CONFIGURATION".into())?;
    let (sched_policy, sched_priority) =
        sys::sched_policy(tid).ctx(tid, || "sched_getscheduler".into())?;
    check_sched_policy(r.tid(), tid, sched_policy)?;
    let (robust_list, robust_len) = sys::robust_list(tid).ctx(tid, || "get_robust_list".into())?;
    Ok(Thread {
        tid,
        sigmask,
        clear_child_tid: ctid,
        altstack_sp: ss_sp,
        altstack_size: ss_size,
        altstack_flags: ss_flags,
        rseq_addr,
        rseq_len,
        rseq_sig,
        pending: dump_pending(tid, false)?,
        robust_list,
        robust_len,
        nice: procfs::thread_stat(r.tid(), tid)
            .map(|s| s.nice)
            .ctx(tid, || "read the nice value from /proc stat".into())?,
        affinity: Bytes(sys::affinity(tid).ctx(tid, || "sched_getaffinity".into())?),
        sched_policy,
        sched_priority,
    })
}

/// Policies restored with sched_setscheduler; SCHED_DEADLINE needs
/// sched_attr (runtime, deadline, period) and is refused until supported.
fn check_sched_policy(pid: Pid, tid: Pid, policy: u32) -> Result<()> {
    let base = policy & !(libc::SCHED_RESET_ON_FORK as u32);
    let known = [
        libc::SCHED_OTHER,
        libc::SCHED_BATCH,
        libc::SCHED_IDLE,
        libc::SCHED_FIFO,
        libc::SCHED_RR,
    ];
    if known.iter().any(|&k| k as u32 == base) {
        return Ok(());
    }
    Err(Error::Unsupported {
        pid,
        comm: crate::procfs::comm(pid),
        object: format!("thread {tid}"),
        reason: format!(
            "its scheduling policy {base} (SCHED_DEADLINE?) cannot be saved yet; switch it to another policy first"
        ),
    })
}

/// Restores a thread's altstack, rseq and clear_child_tid by injection.
/// `code`: the batch loop (`mm::batch_code`); the four calls go in one
/// batch, their table in the first page of `s` and the alternate stack's
/// description in the second.
pub fn restore_thread(r: &mut Remote, s: &Scratch, t: &Thread, code: u64) -> Result<()> {
    let calls = thread_setup(s, t)?;
    r.call_many(code, s, THREAD_STACK_T_AT, &calls)
}

/// Where `thread_setup` puts the stack_t in the scratch memory: the calls'
/// table goes before it (a few hundred bytes).
pub const THREAD_STACK_T_AT: u64 = 4096;

/// The calls of `restore_thread`, their stack_t written into `s` (at
/// `THREAD_STACK_T_AT`), for a caller that runs them in several threads
/// at once (each with its own scratch).
pub fn thread_setup(s: &Scratch, t: &Thread) -> Result<Vec<Call>> {
    // SS_ONSTACK is a state, not a flag one can set; SS_DISABLE is.
    const SS_DISABLE: u32 = 2;
    const STACK_T_AT: u64 = THREAD_STACK_T_AT;
    // Always set: a restored main thread would otherwise keep the
    // restorer's alternate stack, which is not mapped any more.
    let (sp, flags, size) = if t.altstack_flags & SS_DISABLE == 0 && t.altstack_size != 0 {
        (
            t.altstack_sp,
            t.altstack_flags & !SS_DISABLE & !1,
            t.altstack_size,
        )
    } else {
        (0, SS_DISABLE, 0)
    };
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&sp.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    s.write(STACK_T_AT, &b)?;
    let call = Call::new;
    let mut calls = vec![
        call(
            "sigaltstack",
            libc::SYS_sigaltstack,
            &[s.addr + STACK_T_AT, 0],
        ),
        // Likewise the robust futex list: the restorer's head points into
        // its own (gone) TLS, and the kernel walks that list when the
        // thread exits.
        call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[
                t.robust_list,
                if t.robust_list == 0 { 24 } else { t.robust_len },
            ],
        ),
        call(
            "set_tid_address",
            libc::SYS_set_tid_address,
            &[t.clear_child_tid],
        ),
    ];
    if t.rseq_addr != 0 {
        calls.push(call(
            "rseq",
            libc::SYS_rseq,
            &[t.rseq_addr, t.rseq_len as u64, 0, t.rseq_sig as u64],
        ));
    }
    Ok(calls)
}

/// Scheduling state set from outside, once the process exists: each
/// thread's policy, real-time priority, nice value and CPU affinity, and
/// the process's OOM score adjustment. Only an affinity naming CPUs this
/// machine lacks is skipped with a warning (the image may come from a
/// bigger machine); anything else that cannot be set fails the restart.
pub fn restore_scheduling(p: &crate::model::ProcessImage) -> Result<()> {
    let pid = p.process.pid;
    std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        p.process.oom_score_adj.to_string(),
    )
    .ctx(pid, || {
        format!(
            "restore oom_score_adj {} (lowering it needs CAP_SYS_RESOURCE)",
            p.process.oom_score_adj
        )
    })?;
    for t in &p.threads {
        let tid = t.thread.tid;
        let th = &t.thread;
        sys::set_sched_policy(tid, th.sched_policy, th.sched_priority).ctx(tid, || {
            format!(
                "restore scheduling policy {} priority {} (real-time policies need root and real-time runtime in the cgroup)",
                th.sched_policy, th.sched_priority
            )
        })?;
        sys::set_nice(tid, th.nice).ctx(tid, || format!("restore nice value {}", th.nice))?;
        if !t.thread.affinity.0.is_empty() {
            if let Err(e) = sys::set_affinity(tid, &t.thread.affinity.0) {
                tracing::warn!("thread {tid}: CPU affinity not restored: {e}");
            }
        }
    }
    Ok(())
}
