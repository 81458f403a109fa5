//! POSIX timers (timer_create): one `PosixTimer` record per timer, read
//! from /proc/PID/timers (id, signal and sigev_value, notify kind and
//! target, clock) and, by calls injected into the frozen process,
//! timer_gettime, timer_getoverrun and clock_gettime on the timer's clock.
//! Restart recreates each timer in the seized process once its threads
//! exist (so a SIGEV_THREAD_ID target is there), with the same id, and
//! arms it again.
//!
//! Ids: with `PR_TIMER_CREATE_RESTORE_IDS` (Linux 6.15+) timer_create
//! takes the wanted id from `*timerid`. Without it, ids are handed out in
//! increasing order in a fresh process, so the timers are created in id
//! order and placeholders below each wanted id are deleted again; an id
//! the kernel cannot give fails the restart, naming the timer. Either way
//! the kernel's next free id is not saved (it is not visible): a timer the
//! program creates after restart may get the id of one deleted before the
//! checkpoint, which POSIX allows.
//!
//! Time: each timer is armed relative, with the time it had left, so it
//! fires as long after the restart as it would have after the checkpoint
//! (time stopped while the image sat, like the rest of the process). That
//! is what CLOCK_MONOTONIC and CLOCK_BOOTTIME timers mean on any host (their
//! clocks' values differ across boots and hosts anyway). A CLOCK_REALTIME
//! or CLOCK_TAI timer's deadline moves by the time between checkpoint and
//! restart (and by the clocks' difference on another host): one due at
//! 11:00 when checkpointed at 10:00 and restarted at 10:30 fires at 11:30.
//! The kernel does not say whether a timer was armed with TIMER_ABSTIME, so
//! such a timer comes back relative: it no longer follows clock_settime
//! jumps. The clock's value at checkpoint is saved (`now_sec`) to show how
//! far it moved. Timers on CPU-time clocks (the process's or a thread's
//! CPU time, or another process's) are refused: the restored process's CPU
//! time starts again from zero, and the clock of a process elsewhere is not
//! ours to restore.
//!
//! Overrun: the kernel has no setter. After restart timer_getoverrun()
//! returns 0 until the timer's next signal is delivered (restart says so in
//! a warning when the saved count was not 0).
//!
//! A pending timer signal: the kernel queues one preallocated signal per
//! timer, fills in si_overrun when it is delivered, re-arms a periodic
//! timer only then, and drops the signal if the timer was set again or
//! deleted meanwhile. Queued again as an ordinary siginfo it would have
//! none of that (a periodic timer would queue a second signal). So restart
//! leaves that signal out of the queues it refills (`own_pending`) and
//! arms the timer to expire at once instead: the kernel queues its own
//! signal, as at checkpoint, and a periodic one is armed on delivery on the
//! grid of the time it had left, si_overrun counting the expiries since the
//! restart (those missed before the checkpoint are lost: the kernel does
//! not show them). Among saved signals of the same number in its queue it
//! may change places: it is queued when the timer is armed, before the
//! shared and main-thread queues are refilled and after the other
//! threads' (only real-time signals can have several). A one-shot timer
//! that is armed although its signal is pending was set again, so that
//! signal is dropped, as the kernel would. Not told apart: a timer
//! disarmed, or re-armed periodic, after its signal was queued; restart
//! delivers that signal, where the kernel would have dropped it.

use crate::error::{Ctx, Error, Result};
use crate::model::{Image, ProcessImage};
use crate::process_kind::{records_of, ProcessCx, ProcessKind};
use crate::procfs;
use crate::remote::Remote;
use crate::sys::Pid;
use crate::task::Scratch;
use ckpt_image::*;

/// prctl(PR_TIMER_CREATE_RESTORE_IDS, ...), Linux 6.15+.
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;
const RESTORE_IDS_GET: u64 = 2;

/// Clocks whose timers come back as they were (see the module doc).
const CLOCKS: [(i32, &str); 6] = [
    (libc::CLOCK_REALTIME, "CLOCK_REALTIME"),
    (libc::CLOCK_MONOTONIC, "CLOCK_MONOTONIC"),
    (libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME"),
    (libc::CLOCK_REALTIME_ALARM, "CLOCK_REALTIME_ALARM"),
    (libc::CLOCK_BOOTTIME_ALARM, "CLOCK_BOOTTIME_ALARM"),
    (libc::CLOCK_TAI, "CLOCK_TAI"),
];

/// Placeholder timers the fallback creates at most to reach an id.
const MAX_PLACEHOLDERS: u32 = 1 << 20;

const NSEC: u32 = 1_000_000_000;

/// The capability timers on the _ALARM clocks need.
const CAP_WAKE_ALARM: u32 = 35;

pub struct PosixTimers;

/// One entry of /proc/PID/timers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    id: i32,
    signo: i32,
    value: u64,
    /// sigev_notify (`SIGEV_*`).
    notify: u32,
    /// The pid ("pid.N") or thread ("tid.N") it notifies.
    target: Pid,
    clock: i32,
}

/// Parses /proc/PID/timers (fs/proc/base.c `show_timer`), sorted by id:
/// ```text
/// ID: 3
/// signal: 34/0000000000001234
/// notify: signal/tid.42
/// ClockID: 1
/// ```
/// "signal/tid" is SIGEV_THREAD_ID, "thread" the kernel's SIGEV_THREAD.
fn parse(text: &str) -> std::result::Result<Vec<Listed>, String> {
    /// An entry being read: id, then (signo, value), then (notify, target).
    type Partial = (i32, Option<(i32, u64)>, Option<(u32, Pid)>);
    let mut out: Vec<Listed> = Vec::new();
    let mut cur: Option<Partial> = None;
    let bad = |l: &str| format!("unexpected line {l:?}");
    for line in text.lines() {
        let (key, v) = line.split_once(':').ok_or_else(|| bad(line))?;
        let v = v.trim();
        match key {
            "ID" => {
                if cur.is_some() {
                    return Err(format!("timer entry before {line:?} is incomplete"));
                }
                cur = Some((v.parse().map_err(|_| bad(line))?, None, None));
            }
            "signal" => {
                let c = cur.as_mut().ok_or_else(|| bad(line))?;
                let (sig, val) = v.split_once('/').ok_or_else(|| bad(line))?;
                let sig = sig.parse().map_err(|_| bad(line))?;
                let val = u64::from_str_radix(val, 16).map_err(|_| bad(line))?;
                c.1 = Some((sig, val));
            }
            "notify" => {
                let c = cur.as_mut().ok_or_else(|| bad(line))?;
                let (kind, who) = v.split_once('/').ok_or_else(|| bad(line))?;
                let (scope, n) = who.split_once('.').ok_or_else(|| bad(line))?;
                let n: Pid = n.parse().map_err(|_| bad(line))?;
                let notify = match (kind, scope) {
                    ("signal", "pid") => SIGEV_SIGNAL,
                    ("signal", "tid") => SIGEV_THREAD_ID,
                    ("none", "pid") => SIGEV_NONE,
                    ("thread", "pid") => SIGEV_THREAD,
                    _ => return Err(format!("unknown notification {v:?}")),
                };
                c.2 = Some((notify, n));
            }
            "ClockID" => {
                let Some((id, Some((signo, value)), Some((notify, target)))) = cur.take() else {
                    return Err(format!("timer entry ending in {line:?} is incomplete"));
                };
                out.push(Listed {
                    id,
                    signo,
                    value,
                    notify,
                    target,
                    clock: v.parse().map_err(|_| bad(line))?,
                });
            }
            _ => return Err(bad(line)),
        }
    }
    if cur.is_some() {
        return Err("the last timer entry is incomplete".into());
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

fn clock_name(clock: i32) -> Option<&'static str> {
    CLOCKS.iter().find(|c| c.0 == clock).map(|c| c.1)
}

/// Why a timer on `clock` cannot be saved, or None if it can.
fn clock_refusal(clock: i32) -> Option<String> {
    if clock_name(clock).is_some() {
        return None;
    }
    Some(match clock {
        libc::CLOCK_PROCESS_CPUTIME_ID => "it counts the process's CPU time (CLOCK_PROCESS_CPUTIME_ID), which starts again from zero in the restored process".into(),
        libc::CLOCK_THREAD_CPUTIME_ID => "it counts a thread's CPU time (CLOCK_THREAD_CPUTIME_ID), which starts again from zero in the restored process".into(),
        // clock_getcpuclockid() and friends: ~pid << 3 | kind, or a
        // dynamic (PTP) clock's fd when the low bits are 3.
        c if c < 0 && c & 7 == 3 => format!("its clock {c} is a dynamic POSIX clock (a PTP device fd)"),
        c if c < 0 => format!(
            "it counts the CPU time of {} {} (clock {c}), which restart cannot give back",
            if c & 4 != 0 { "thread" } else { "process" },
            !(c >> 3)
        ),
        c => format!("its clock {c} is not one ckpt knows how to restore"),
    })
}

impl ProcessKind for PosixTimers {
    fn name(&self) -> &'static str {
        "POSIX timers"
    }

    fn dump(&self, cx: &ProcessCx, main: &mut Remote, s: &Scratch) -> Result<Vec<AnyRecord>> {
        let pid = cx.pid;
        let refuse = |object: String, reason: String| Error::Unsupported {
            pid,
            comm: cx.comm.to_owned(),
            object,
            reason,
        };
        // A process in restore-ids mode would come back out of it.
        let mode = main.syscall(
            libc::SYS_prctl,
            &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_GET, 0, 0, 0],
        )?;
        if mode > 0 {
            return Err(refuse(
                "its timer_create id mode (PR_TIMER_CREATE_RESTORE_IDS on)".into(),
                "it cannot be saved yet; switch it off (prctl PR_TIMER_CREATE_RESTORE_IDS_OFF) and retry".into(),
            ));
        }
        let text = match procfs::read(pid, "timers") {
            Ok(t) => t,
            // Without CONFIG_CHECKPOINT_RESTORE there is no list to look at.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx(pid, || format!("read /proc/{pid}/timers")),
        };
        let listed = parse(&text).map_err(|e| Error::Sys {
            pid,
            what: format!("parse /proc/{pid}/timers"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let tids = procfs::tids(pid).ctx(pid, || "list threads".into())?;
        let mut out = Vec::new();
        for t in listed {
            let object = || format!("POSIX timer {}", t.id);
            if let Some(why) = clock_refusal(t.clock) {
                return Err(refuse(
                    object(),
                    format!(
                        "{why}; delete the timer (timer_delete) or use CLOCK_MONOTONIC, then retry"
                    ),
                ));
            }
            let tid = match t.notify {
                SIGEV_THREAD_ID if !tids.contains(&t.target) => {
                    return Err(refuse(
                        object(),
                        format!("it signals thread {}, which has exited, so its signals go nowhere; delete the timer or re-arm it for a live thread, then retry", t.target),
                    ))
                }
                SIGEV_THREAD_ID => t.target,
                _ if t.target != pid => {
                    return Err(refuse(
                        object(),
                        format!("it notifies pid {}, not the process itself", t.target),
                    ))
                }
                _ => 0,
            };
            main.call(
                "timer_gettime",
                libc::SYS_timer_gettime,
                &[t.id as u64, s.addr],
            )?;
            let v = s.u64s(0, 4)?; // it_interval, it_value
            let overrun = main.call(
                "timer_getoverrun",
                libc::SYS_timer_getoverrun,
                &[t.id as u64],
            )? as i32;
            main.call(
                "clock_gettime",
                libc::SYS_clock_gettime,
                &[t.clock as u64, s.addr],
            )?;
            let now = s.u64s(0, 2)?;
            out.push(
                PosixTimer {
                    id: t.id,
                    clock: t.clock,
                    notify: t.notify,
                    signo: t.signo,
                    value: t.value,
                    tid,
                    value_sec: v[2],
                    value_nsec: v[3] as u32,
                    interval_sec: v[0],
                    interval_nsec: v[1] as u32,
                    overrun,
                    now_sec: now[0] as i64,
                    now_nsec: now[1] as u32,
                }
                .into(),
            );
        }
        Ok(out)
    }

    fn validate(&self, _img: &Image, p: &ProcessImage) -> std::result::Result<(), String> {
        let mut ids = std::collections::BTreeSet::new();
        for t in records_of::<PosixTimer>(p) {
            let id = t.id;
            if id < 0 {
                return Err(format!("timer id {id} is negative"));
            }
            if !ids.insert(id) {
                return Err(format!("timer id {id} appears twice"));
            }
            if let Some(why) = clock_refusal(t.clock) {
                return Err(format!("timer {id}: {why}"));
            }
            // Restart recreates it with the process's own credentials.
            let alarm = [libc::CLOCK_REALTIME_ALARM, libc::CLOCK_BOOTTIME_ALARM];
            if alarm.contains(&t.clock) && p.creds.cap_eff & (1 << CAP_WAKE_ALARM) == 0 {
                return Err(format!(
                    "timer {id} is on {}, and the process lacks CAP_WAKE_ALARM, which creating it again needs",
                    clock_name(t.clock).unwrap_or("an alarm clock")
                ));
            }
            match t.notify {
                SIGEV_THREAD_ID => {
                    if !p.threads.iter().any(|th| th.thread.tid == t.tid) {
                        return Err(format!(
                            "timer {id} signals thread {}, which is not a thread of the process",
                            t.tid
                        ));
                    }
                }
                SIGEV_SIGNAL | SIGEV_NONE | SIGEV_THREAD if t.tid == 0 => {}
                SIGEV_SIGNAL | SIGEV_NONE | SIGEV_THREAD => {
                    return Err(format!(
                        "timer {id} names thread {} but does not signal a thread",
                        t.tid
                    ))
                }
                n => return Err(format!("timer {id} has unknown notification kind {n}")),
            }
            if t.notify != SIGEV_NONE && !(1..=64).contains(&t.signo) {
                return Err(format!("timer {id} sends signal {}, not 1..64", t.signo));
            }
            for (what, sec, nsec) in [
                ("time left", t.value_sec, t.value_nsec),
                ("interval", t.interval_sec, t.interval_nsec),
                ("clock value", t.now_sec.unsigned_abs(), t.now_nsec),
            ] {
                if nsec >= NSEC || sec > i64::MAX as u64 {
                    return Err(format!(
                        "timer {id}: its {what} {sec} s {nsec} ns is not a valid time"
                    ));
                }
            }
            if t.value_sec == 0 && t.value_nsec == 0 && (t.interval_sec, t.interval_nsec) != (0, 0)
            {
                return Err(format!(
                    "timer {id} is disarmed but has an interval, which no timer can have"
                ));
            }
        }
        Ok(())
    }

    fn restore(&self, r: &mut Remote, s: &Scratch, p: &ProcessImage) -> Result<()> {
        let mut timers: Vec<&PosixTimer> = records_of::<PosixTimer>(p).collect();
        if timers.is_empty() {
            return Ok(());
        }
        timers.sort_by_key(|t| t.id);
        let pid = p.pid();
        let rc = r.syscall(
            libc::SYS_prctl,
            &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0],
        )?;
        let by_id = match rc {
            0 => true,
            rc if rc == -(libc::EINVAL as i64) => false, // older than 6.15
            rc => {
                return Err(Error::Sys {
                    pid,
                    what: "prctl(PR_TIMER_CREATE_RESTORE_IDS) to recreate POSIX timers".into(),
                    source: std::io::Error::from_raw_os_error(-rc as i32),
                })
            }
        };
        let res = timers.iter().try_for_each(|t| {
            create(r, s, pid, t, by_id)?;
            match own_signal(p, t) {
                Some(_) if stale(t) => arm(r, s, pid, t),
                Some(_) => arm_expired(r, s, pid, t),
                None => arm(r, s, pid, t),
            }
        });
        if by_id {
            r.call(
                "prctl(PR_TIMER_CREATE_RESTORE_IDS_OFF)",
                libc::SYS_prctl,
                &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0],
            )?;
        }
        res?;
        for t in timers.iter().filter(|t| t.overrun != 0) {
            tracing::warn!(
                "pid {pid}: POSIX timer {}: its overrun count {} cannot be set again; timer_getoverrun() returns 0 until its next signal is delivered",
                t.id,
                t.overrun
            );
        }
        Ok(())
    }

    fn own_pending(&self, p: &ProcessImage) -> Vec<(Option<Pid>, usize)> {
        records_of::<PosixTimer>(p)
            .filter_map(|t| own_signal(p, t))
            .collect()
    }
}

/// Where the timer's own signal waits among the saved pending signals, if
/// it does: the first SI_TIMER entry with its signal and id (si_timerid at
/// offset 16 of the siginfo) in the queue it goes to, the target thread's
/// for SIGEV_THREAD_ID, else the shared one. Restart does not queue it
/// again: `restore` makes the timer queue it itself (`arm_expired`), or
/// drops it when the kernel would have (`stale`).
fn own_signal(p: &ProcessImage, t: &PosixTimer) -> Option<(Option<Pid>, usize)> {
    const SI_TIMER: i32 = -2;
    let (queue, sigs) = match t.notify {
        SIGEV_NONE => return None,
        SIGEV_THREAD_ID => {
            let th = p.threads.iter().find(|th| th.thread.tid == t.tid)?;
            (Some(t.tid), &th.thread.pending)
        }
        _ => (None, &p.shared_pending.signals),
    };
    sigs.iter()
        .position(|si| {
            si.code == SI_TIMER
                && si.signo as i32 == t.signo
                && si.raw.0.get(16..20) == Some(&t.id.to_le_bytes()[..])
        })
        .map(|i| (queue, i))
}

/// Whether the pending signal of timer `t` is one the kernel drops on
/// delivery because the timer was set again after it was queued: a
/// one-shot timer whose signal is pending has expired, so if it is armed
/// it was re-armed since. (A timer disarmed, or re-armed periodic, after
/// its signal was queued cannot be told apart; see the module doc.)
fn stale(t: &PosixTimer) -> bool {
    (t.interval_sec, t.interval_nsec) == (0, 0) && (t.value_sec, t.value_nsec) != (0, 0)
}

/// Arms timer `t`, whose signal was pending, so that it expires at once
/// and the kernel queues its own signal again, as at checkpoint: on
/// delivery a periodic timer is re-armed from its expiry, on the grid of
/// the time it had left, and si_overrun counts the expiries since.
fn arm_expired(r: &mut Remote, s: &Scratch, pid: Pid, t: &PosixTimer) -> Result<()> {
    let ns = |sec: u64, nsec: u32| sec as i128 * NSEC as i128 + nsec as i128;
    let interval = ns(t.interval_sec, t.interval_nsec);
    let (flags, value) = if interval == 0 {
        (0, 1) // one-shot: 1 ns from now
    } else {
        r.call(
            "clock_gettime",
            libc::SYS_clock_gettime,
            &[t.clock as u64, s.addr + SPEC],
        )?;
        let now = s.u64s(SPEC, 2)?;
        let now = ns(now[0], now[1] as u32);
        // The last expiry of the grid, at most now; 0 would disarm it.
        let due = now + ns(t.value_sec, t.value_nsec) - interval;
        (libc::TIMER_ABSTIME as u64, due.max(1))
    };
    let spec = [
        t.interval_sec,
        t.interval_nsec as u64,
        (value / NSEC as i128) as u64,
        (value % NSEC as i128) as u64,
    ];
    settime(r, s, pid, t, flags, spec)
}

/// Arms timer `t` relative, with the time it had left.
fn arm(r: &mut Remote, s: &Scratch, pid: Pid, t: &PosixTimer) -> Result<()> {
    if t.value_sec == 0 && t.value_nsec == 0 {
        return Ok(());
    }
    let spec = [
        t.interval_sec,
        t.interval_nsec as u64,
        t.value_sec,
        t.value_nsec as u64,
    ];
    settime(r, s, pid, t, 0, spec)
}

/// timer_settime(t.id, flags, {interval sec, nsec, value sec, nsec}).
fn settime(
    r: &mut Remote,
    s: &Scratch,
    pid: Pid,
    t: &PosixTimer,
    flags: u64,
    spec: [u64; 4],
) -> Result<()> {
    let b: Vec<u8> = spec.iter().flat_map(|v| v.to_le_bytes()).collect();
    s.write(SPEC, &b)?;
    let rc = r.syscall(
        libc::SYS_timer_settime,
        &[t.id as u64, flags, s.addr + SPEC, 0],
    )?;
    if rc < 0 {
        return Err(sys_err(
            pid,
            format!(
                "arm POSIX timer {} for {}.{:09} s every {}.{:09} s",
                t.id, t.value_sec, t.value_nsec, t.interval_sec, t.interval_nsec
            ),
            rc,
        ));
    }
    Ok(())
}

/// The kernel's struct sigevent (64 bytes) for timer `t`.
fn sigevent(t: &PosixTimer) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&t.value.to_le_bytes());
    b[8..12].copy_from_slice(&t.signo.to_le_bytes());
    b[12..16].copy_from_slice(&(t.notify as i32).to_le_bytes());
    b[16..20].copy_from_slice(&t.tid.to_le_bytes()); // sigev_notify_thread_id
    b
}

/// Scratch offsets: sigevent, the timer id, the itimerspec.
const EV: u64 = 0;
const ID: u64 = 64;
const SPEC: u64 = 128;

fn sys_err(pid: Pid, what: String, rc: i64) -> Error {
    Error::Sys {
        pid,
        what,
        source: std::io::Error::from_raw_os_error(-rc as i32),
    }
}

/// timer_create in the task: the id it got (or the error).
fn timer_create(
    r: &mut Remote,
    s: &Scratch,
    t: &PosixTimer,
) -> Result<std::result::Result<i32, i64>> {
    s.write(EV, &sigevent(t))?;
    s.write(ID, &t.id.to_le_bytes())?;
    let rc = r.syscall(
        libc::SYS_timer_create,
        &[t.clock as u64, s.addr + EV, s.addr + ID],
    )?;
    if rc < 0 {
        return Ok(Err(rc));
    }
    let b = s.read(ID, 4)?;
    Ok(Ok(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
}

/// Creates timer `t` with its id: asked for (`by_id`), or reached by
/// creating and deleting placeholders in id order.
fn create(r: &mut Remote, s: &Scratch, pid: Pid, t: &PosixTimer, by_id: bool) -> Result<()> {
    let clock = clock_name(t.clock).unwrap_or("?");
    let what = || format!("recreate POSIX timer {} on {clock}", t.id);
    let hint = |rc: i64| {
        if rc == -(libc::EPERM as i64) && clock.ends_with("_ALARM") {
            " (alarm clocks need CAP_WAKE_ALARM)"
        } else if rc == -(libc::EAGAIN as i64) {
            " (RLIMIT_SIGPENDING reached?)"
        } else {
            ""
        }
    };
    let mut last = -1;
    for _ in 0..MAX_PLACEHOLDERS {
        let got = match timer_create(r, s, t)? {
            Ok(got) => got,
            Err(rc) => return Err(sys_err(pid, format!("{}{}", what(), hint(rc)), rc)),
        };
        if got == t.id {
            return Ok(());
        }
        // Asked for an id and given another, or gone past it, or handed
        // out ids that do not grow: it cannot be matched.
        let can_reach = !by_id && got < t.id && got > last;
        r.call("timer_delete", libc::SYS_timer_delete, &[got as u64])?;
        if !can_reach {
            return Err(Error::Refused(format!(
                "pid {pid}: cannot {}: the kernel gave id {got}{}; a kernel with PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15+) restores any id",
                what(),
                if by_id { " instead" } else { " next" }
            )));
        }
        last = got;
    }
    Err(Error::Refused(format!(
        "pid {pid}: cannot {}: {MAX_PLACEHOLDERS} placeholder timers did not reach its id; a kernel with PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15+) restores any id",
        what()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers_are_parsed() {
        // As 6.18 prints them: newest first.
        let text = "ID: 4\nsignal: 32/000055579744c460\nnotify: signal/tid.21501\nClockID: 1\n\
                    ID: 2\nsignal: 0/0000000000001234\nnotify: none/pid.21500\nClockID: 7\n\
                    ID: 0\nsignal: 34/0000000000001234\nnotify: signal/pid.21500\nClockID: 0\n\
                    ID: 7\nsignal: 10/ffffffffffffffff\nnotify: thread/pid.21500\nClockID: 11\n";
        let t = parse(text).unwrap();
        let ids: Vec<i32> = t.iter().map(|t| t.id).collect();
        assert_eq!(ids, [0, 2, 4, 7]);
        assert_eq!(
            t[0],
            Listed {
                id: 0,
                signo: 34,
                value: 0x1234,
                notify: SIGEV_SIGNAL,
                target: 21500,
                clock: 0
            }
        );
        assert_eq!((t[1].notify, t[1].signo, t[1].clock), (SIGEV_NONE, 0, 7));
        assert_eq!((t[2].notify, t[2].target), (SIGEV_THREAD_ID, 21501));
        assert_eq!(t[2].value, 0x0000_5557_9744_c460);
        assert_eq!((t[3].notify, t[3].value), (SIGEV_THREAD, u64::MAX));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_proc_timers_are_errors() {
        for bad in [
            "ID: 1\nsignal: 14/0\nClockID: 0\n",           // no notify
            "ID: 1\nsignal: 14/0\nnotify: signal/pid.1\n", // cut short
            "ID: x\n",
            "ID: 1\nsignal: 14/zz\nnotify: signal/pid.1\nClockID: 0\n",
            "ID: 1\nsignal: 14/0\nnotify: none/tid.1\nClockID: 0\n",
            "ID: 1\nsignal: 14/0\nnotify: signal/pid.1\nColour: 0\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpu_clocks_are_refused() {
        assert!(clock_refusal(libc::CLOCK_MONOTONIC).is_none());
        assert!(clock_refusal(libc::CLOCK_REALTIME).is_none());
        let r = clock_refusal(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap();
        assert!(r.contains("CPU time"), "{r}");
        // clock_getcpuclockid(42): (~42 << 3) | CPUCLOCK_SCHED (2).
        let r = clock_refusal((!42 << 3) | 2).unwrap();
        assert!(r.contains("process 42"), "{r}");
        let r = clock_refusal((!42 << 3) | 4 | 2).unwrap();
        assert!(r.contains("thread 42"), "{r}");
        assert!(clock_refusal(libc::CLOCK_MONOTONIC_RAW).is_some());
    }

    #[test]
    fn sigevent_layout() {
        let t = PosixTimer {
            value: 0x1234,
            signo: 34,
            notify: SIGEV_THREAD_ID,
            tid: 77,
            ..Default::default()
        };
        let b = sigevent(&t);
        assert_eq!(&b[0..8], &0x1234u64.to_le_bytes());
        assert_eq!(&b[8..12], &34i32.to_le_bytes());
        assert_eq!(&b[12..16], &4i32.to_le_bytes());
        assert_eq!(&b[16..20], &77i32.to_le_bytes());
    }

    fn process(timers: &[PosixTimer]) -> ProcessImage {
        let mut p = ProcessImage::default();
        p.process.pid = 100;
        for tid in [100, 101] {
            let mut t = crate::model::ThreadImage::default();
            t.thread.tid = tid;
            p.threads.push(t);
        }
        p.extra = timers.iter().cloned().map(AnyRecord::from).collect();
        p
    }

    fn timer(id: i32) -> PosixTimer {
        PosixTimer {
            id,
            clock: libc::CLOCK_MONOTONIC,
            notify: SIGEV_SIGNAL,
            signo: 34,
            value_sec: 1,
            interval_sec: 1,
            ..Default::default()
        }
    }

    #[test]
    fn validate_refuses_what_cannot_be_restored() {
        let check = |ts: &[PosixTimer]| PosixTimers.validate(&Image::default(), &process(ts));
        let none = PosixTimer {
            notify: SIGEV_NONE,
            signo: 0, // never sent: any value
            ..timer(3)
        };
        let thread = PosixTimer {
            notify: SIGEV_THREAD_ID,
            tid: 101,
            ..timer(5)
        };
        assert_eq!(check(&[timer(0), none.clone(), thread.clone()]), Ok(()));
        let bad: [(&[PosixTimer], &str); 10] = [
            (&[timer(-1)], "negative"),
            (&[timer(2), timer(2)], "twice"),
            (
                &[PosixTimer {
                    clock: 2,
                    ..timer(1)
                }],
                "CPU time",
            ),
            (
                &[PosixTimer {
                    notify: 3,
                    ..timer(1)
                }],
                "unknown notification",
            ),
            (
                &[PosixTimer {
                    tid: 102,
                    ..thread.clone()
                }],
                "not a thread",
            ),
            (
                &[PosixTimer {
                    tid: 101,
                    ..timer(1)
                }],
                "does not signal a thread",
            ),
            (
                &[PosixTimer {
                    signo: 65,
                    ..timer(1)
                }],
                "not 1..64",
            ),
            (
                &[PosixTimer {
                    value_nsec: NSEC,
                    ..timer(1)
                }],
                "not a valid time",
            ),
            (
                &[PosixTimer {
                    value_sec: 0,
                    ..timer(1)
                }],
                "disarmed but has an interval",
            ),
            (
                &[PosixTimer {
                    clock: 8,
                    ..timer(1)
                }],
                "CAP_WAKE_ALARM",
            ),
        ];
        for (ts, why) in bad {
            let e = check(ts).unwrap_err();
            assert!(e.contains(why), "{ts:?}: {e}");
        }
    }

    #[test]
    fn own_signal_is_found_in_its_queue() {
        let si = |signo: u32, id: i32| {
            let mut raw = vec![0u8; 128];
            raw[0..4].copy_from_slice(&signo.to_le_bytes());
            raw[8..12].copy_from_slice(&(-2i32).to_le_bytes());
            raw[16..20].copy_from_slice(&id.to_le_bytes());
            SigInfo {
                signo,
                code: -2,
                raw: Bytes(raw),
            }
        };
        let thread = PosixTimer {
            notify: SIGEV_THREAD_ID,
            tid: 101,
            ..timer(5)
        };
        let mut p = process(&[timer(0), thread.clone()]);
        // Another timer's, then timer 0's; a look-alike with another signal.
        p.shared_pending.signals = vec![si(34, 9), si(35, 0), si(34, 0)];
        p.threads[1].thread.pending = vec![si(34, 5)];
        assert_eq!(own_signal(&p, &timer(0)), Some((None, 2)));
        assert_eq!(own_signal(&p, &thread), Some((Some(101), 0)));
        assert_eq!(own_signal(&p, &timer(7)), None);
        let left = crate::process_kind::pending_left(&p, None, &p.shared_pending.signals);
        assert_eq!(left.len(), 2);
        assert!(stale(&PosixTimer {
            interval_sec: 0,
            ..timer(0)
        }));
        assert!(!stale(&timer(0)));
    }
}
