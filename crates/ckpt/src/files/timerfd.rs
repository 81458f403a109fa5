//! timerfds: the clock, the settime flags (`TFD_TIMER_ABSTIME`,
//! `TFD_TIMER_CANCEL_ON_SET`), the time left and the interval, and the
//! expirations not read yet (O_NONBLOCK is a status flag of the `File`).
//!
//! Checkpoint reads the timer through a copy of its description in ckpt:
//! `timerfd_gettime` first (the kernel counts the missed periods of a
//! periodic timer that fired only when it is read, and till then fdinfo
//! shows it disarmed), then its fdinfo, then the timer's clock. The image
//! holds the time left and the clock's reading, so an absolute expiry is
//! `clock + value`.
//!
//! Restart creates the timer in the restorer, and arms it there and again
//! once every process is rebuilt, just before the tree runs
//! (`FdKind::resume`), so the restore's own time does not count:
//! - a relative timer gets the time it had left: the time the process
//!   spent checkpointed does not count, as for its sleeps (a one-shot
//!   timer of 1 hour checkpointed after 10 minutes fires 50 minutes after
//!   the restart);
//! - an absolute (`TFD_TIMER_ABSTIME`) timer on CLOCK_REALTIME(_ALARM)
//!   expires at the same wall-clock time; the expirations it missed while
//!   the process was not running are counted as unread ticks, and a
//!   periodic one is armed for its next period after the restart, exactly
//!   as if the process had kept running;
//! - an absolute timer on CLOCK_MONOTONIC, CLOCK_BOOTTIME(_ALARM): these
//!   clocks start at 0 at boot. Restarted in the boot it was saved in
//!   (same `boot_id`) it keeps its absolute expiry like a wall-clock one.
//!   In another boot (another host, or after a reboot) that number means
//!   nothing any more (the process's own clock readings jump as well:
//!   ckpt does not offset clocks), so the timer is armed at the new
//!   clock's now + the time it had left, i.e. like a relative one.
//!
//! Unread expirations come back with `TFD_IOC_SET_TICKS` (a kernel with
//! CONFIG_CHECKPOINT_RESTORE); where it is missing, a timerfd with unread
//! ticks is refused at checkpoint and at restart. A tick of a timer due
//! in the microseconds between arming it and setting its ticks is lost
//! (the kernel has no call doing both). A `TFD_TIMER_CANCEL_ON_SET` timer
//! whose clock was set but which was not read since (a read would fail
//! with ECANCELED) is not seen as cancelled: it reads its ticks after
//! restart. The alarm clocks need CAP_WAKE_ALARM: an image not owned by
//! root (see docs/trust.md) with one is refused.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe, ResumeCx};
use crate::error::{Error, Result};
use crate::procfs;
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::time::Duration;

pub struct TimerFd;

/// The clocks a timerfd may use, and their names.
const CLOCKS: &[(u32, &str)] = &[
    (libc::CLOCK_REALTIME as u32, "CLOCK_REALTIME"),
    (libc::CLOCK_MONOTONIC as u32, "CLOCK_MONOTONIC"),
    (libc::CLOCK_BOOTTIME as u32, "CLOCK_BOOTTIME"),
    (libc::CLOCK_REALTIME_ALARM as u32, "CLOCK_REALTIME_ALARM"),
    (libc::CLOCK_BOOTTIME_ALARM as u32, "CLOCK_BOOTTIME_ALARM"),
];

fn clock_name(c: u32) -> Option<&'static str> {
    CLOCKS.iter().find(|x| x.0 == c).map(|x| x.1)
}

fn is_alarm(c: u32) -> bool {
    c == libc::CLOCK_REALTIME_ALARM as u32 || c == libc::CLOCK_BOOTTIME_ALARM as u32
}

/// The clock an alarm clock counts (clock_gettime of an alarm clock needs
/// an RTC; its time is the base clock's).
fn base_clock(c: u32) -> i32 {
    match c as i32 {
        libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        c => c,
    }
}

/// Whether clock `c` is wall-clock time, the same on every host and boot.
fn is_wall(c: u32) -> bool {
    base_clock(c) == libc::CLOCK_REALTIME
}

/// What the fdinfo of a timerfd says.
#[derive(Debug, PartialEq, Eq)]
struct Info {
    clockid: u32,
    ticks: u64,
    flags: u32,
    /// Time left (0: disarmed, or a one-shot that fired).
    value: Duration,
    interval: Duration,
}

/// Parses the timerfd lines of an fdinfo (fs/timerfd.c, timerfd_show):
/// "clockid: %d", "ticks: %llu", "settime flags: 0%o",
/// "it_value: (%llu, %llu)", "it_interval: (%llu, %llu)".
fn parse(text: &str) -> Option<Info> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let time = |key: &str| -> Option<Duration> {
        let v = field(key)?.strip_prefix('(')?.strip_suffix(')')?;
        let (s, ns) = v.split_once(',')?;
        let ns: u32 = ns.trim().parse().ok()?;
        (ns < 1_000_000_000).then_some(())?;
        Some(Duration::new(s.trim().parse().ok()?, ns))
    };
    Some(Info {
        clockid: field("clockid:")?.parse().ok()?,
        ticks: field("ticks:")?.parse().ok()?,
        flags: u32::from_str_radix(field("settime flags:")?, 8).ok()?,
        value: time("it_value:")?,
        interval: time("it_interval:")?,
    })
}

/// Whether TFD_IOC_SET_TICKS works here (probed once on a scratch timer).
fn ticks_settable() -> std::result::Result<(), String> {
    static PROBE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let fd = sys::timerfd_create(libc::CLOCK_MONOTONIC)
                .map_err(|e| format!("timerfd_create: {e}"))?;
            let r = sys::timerfd_set_ticks(fd, 1);
            sys::close(fd);
            r.map_err(|e| {
                format!("this kernel cannot set the expirations of a timerfd (TFD_IOC_SET_TICKS: {e}; it needs CONFIG_CHECKPOINT_RESTORE)")
            })
        })
        .clone()
}

fn dur(sec: u64, nsec: u32) -> Duration {
    Duration::new(sec, nsec)
}

/// How a saved timer is armed again.
#[derive(Debug, PartialEq, Eq)]
struct Arm {
    /// timerfd_settime's value (absolute when the flags say so; 0 disarms).
    value: Duration,
    interval: Duration,
    flags: u32,
    /// Expirations to add to the saved ticks (missed while checkpointed).
    missed: u64,
}

/// Arms timer `r` at restart, when its clock reads `now`; `same_boot`:
/// restarted in the boot it was saved in. See the module doc.
fn arm(r: &Timerfd, now: Duration, same_boot: bool) -> Arm {
    let value = dur(r.value_sec, r.value_nsec);
    let interval = dur(r.interval_sec, r.interval_nsec);
    let plain = |value| Arm {
        value,
        interval,
        flags: r.settime_flags,
        missed: 0,
    };
    if value.is_zero() || r.settime_flags & TIMERFD_ABSTIME == 0 {
        // Disarmed (its interval kept, as timerfd_gettime shows it), or
        // relative: the time it had left.
        return plain(value);
    }
    let at = if is_wall(r.clockid) || same_boot {
        dur(r.clock_sec, r.clock_nsec).saturating_add(value)
    } else {
        now.saturating_add(value)
    };
    if at > now {
        return plain(at);
    }
    // Due while the process was not running: count what it missed, arm the
    // next period (arming in the past would make the kernel fire at once,
    // racing with setting the ticks).
    if interval.is_zero() {
        return Arm {
            missed: 1,
            ..plain(Duration::ZERO)
        };
    }
    let (late, step) = ((now - at).as_nanos(), interval.as_nanos());
    let n = late / step + 1;
    let next = at.as_nanos() + n * step;
    Arm {
        missed: u64::try_from(n).unwrap_or(u64::MAX),
        ..plain(Duration::new(
            u64::try_from(next / 1_000_000_000).unwrap_or(u64::MAX),
            (next % 1_000_000_000) as u32,
        ))
    }
}

impl TimerFd {
    /// The timer's state through ckpt's copy `fd` of the description, and
    /// its clock right after.
    fn read(p: &Probe, fd: i32) -> Result<(Info, Duration)> {
        let me = std::process::id() as Pid;
        let mut tries = 0;
        loop {
            // Counts the periods a periodic timer missed since it fired
            // and re-arms it, as a read would; without it, fdinfo shows
            // a fired periodic timer as disarmed.
            let (left, interval) =
                sys::timerfd_gettime(fd).map_err(|e| p.sys("timerfd_gettime", e))?;
            let info = procfs::fdinfo(me, fd).map_err(|e| p.sys("read fdinfo of the copy", e))?;
            let Some(mut t) = parse(&info.text) else {
                return Err(p.unsupported(&format!(
                    "its fdinfo cannot be read as a timerfd's: {:?}",
                    info.text
                )));
            };
            let clock = sys::clock_gettime(base_clock(t.clockid))
                .map_err(|e| p.sys(&format!("clock_gettime({})", t.clockid), e))?;
            tries += 1;
            // Settled: disarmed (or a one-shot that fired), or armed with
            // fdinfo's time left read together with `clock`.
            let disarmed = left.is_zero() && interval.is_zero();
            if disarmed || !t.value.is_zero() {
                return Ok((t, clock));
            }
            // Else the timer came due between gettime and fdinfo, or it is
            // disarmed with an interval kept (gettime says 0 every time),
            // or so fast it is due again before fdinfo is read: look again,
            // a few times, then take gettime's time left.
            if tries == 5 {
                t.value = left;
                return Ok((t, clock));
            }
        }
    }
}

impl FdKind for TimerFd {
    fn name(&self) -> &'static str {
        "timerfd"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_TIMERFD]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.anon_inode() == Some(b"[timerfd]")
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mine = cx
            .fetch_fd(p.pid, p.fd)
            .map_err(|e| p.sys("pidfd_getfd", e))?;
        let (t, clock) = Self::read(p, mine.as_raw_fd())?;
        if clock_name(t.clockid).is_none() {
            return Err(p.unsupported(&format!(
                "its clock {} is not one ckpt knows (CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME and their _ALARM variants)",
                t.clockid
            )));
        }
        if t.flags & !(TIMERFD_ABSTIME | TIMERFD_CANCEL_ON_SET) != 0 {
            return Err(p.unsupported(&format!(
                "its settime flags {:#o} hold flags ckpt does not know",
                t.flags
            )));
        }
        if t.ticks > 0 {
            ticks_settable().map_err(|e| {
                p.unsupported(&format!(
                    "it has {} expirations not read yet and {e}; read the timerfd before the checkpoint",
                    t.ticks
                ))
            })?;
        }
        let boot_id = procfs::boot_id().map_err(|e| p.sys("read boot_id", e))?;
        f.kind = FILE_TIMERFD;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            Timerfd {
                file_id: f.id,
                clockid: t.clockid,
                settime_flags: t.flags,
                ticks: t.ticks,
                value_sec: t.value.as_secs(),
                value_nsec: t.value.subsec_nanos(),
                interval_sec: t.interval.as_secs(),
                interval_nsec: t.interval.subsec_nanos(),
                clock_sec: clock.as_secs(),
                clock_nsec: clock.subsec_nanos(),
                boot_id: Text(boot_id.into_bytes()),
            }
            .into(),
        );
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = kind_records(c.img, f.id);
        let r = match (recs.next(), recs.next()) {
            (Some(r), None) => r,
            _ => return Err("needs exactly one timerfd record".into()),
        };
        let Some(clock) = clock_name(r.clockid) else {
            return Err(format!("has unknown clock {}", r.clockid));
        };
        if r.settime_flags & !(TIMERFD_ABSTIME | TIMERFD_CANCEL_ON_SET) != 0 {
            return Err(format!("has unknown settime flags {:#o}", r.settime_flags));
        }
        for (what, sec, nsec) in [
            ("value", r.value_sec, r.value_nsec),
            ("interval", r.interval_sec, r.interval_nsec),
            ("clock reading", r.clock_sec, r.clock_nsec),
        ] {
            if nsec >= 1_000_000_000 || sec > i64::MAX as u64 {
                return Err(format!("has an invalid {what} ({sec} s, {nsec} ns)"));
            }
        }
        if is_alarm(r.clockid) && c.fs.is_some() {
            return Err(format!(
                "uses {clock}, which needs CAP_WAKE_ALARM; only an image owned by root may ask for it (see docs/trust.md)"
            ));
        }
        if r.ticks > 0 {
            ticks_settable().map_err(|e| {
                format!(
                    "has {} expirations not read and {e}; restart on a kernel with it",
                    r.ticks
                )
            })?;
        }
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        let boot_id = procfs::boot_id().map_err(|e| cx.err("read boot_id".into(), e))?;
        for f in files {
            let r = record(cx.img, f)?;
            let pid = (cx.user_of)(f.id);
            let raw = sys::timerfd_create(r.clockid as i32).map_err(|source| Error::Sys {
                pid,
                what: format!("create a {} timerfd", clock_name(r.clockid).unwrap_or("?")),
                source,
            })?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|e| cx.err("dup timerfd".into(), e))?;
            cx.by_id.push((0, fd)); // closed with the rest if what follows fails
                                    // Armed now, and again by `resume` just before the tree runs
                                    // (here in case no fd of a live process names it).
            start(r, fd, pid, &boot_id)?;
            cx.by_id.pop();
            cx.opened(f, fd)?;
        }
        Ok(())
    }
    fn resume(&self, cx: &ResumeCx, f: &File) -> Result<()> {
        use std::os::fd::AsRawFd;
        let r = record(cx.img, f)?;
        let Some((pid, fd)) = cx.fetch(f.id)? else {
            return Ok(());
        };
        let boot_id = procfs::boot_id().map_err(|source| Error::Sys {
            pid: std::process::id() as Pid,
            what: "read boot_id".into(),
            source,
        })?;
        start(r, fd.as_raw_fd(), pid, &boot_id)
    }
}

/// The timerfd record of `f`.
fn record<'a>(img: &'a crate::model::Image, f: &File) -> Result<&'a Timerfd> {
    kind_records(img, f.id)
        .next()
        .ok_or_else(|| Error::Refused(format!("timerfd file {} has no timerfd record", f.id)))
}

/// Arms timerfd `fd` as record `r` says, from now, with its ticks (errors
/// name `pid`, a process holding it).
fn start(r: &Timerfd, fd: i32, pid: Pid, boot_id: &str) -> Result<()> {
    let what = clock_name(r.clockid).unwrap_or("?");
    let failed = |what: String, source| Error::Sys { pid, what, source };
    let now = sys::clock_gettime(base_clock(r.clockid))
        .map_err(|e| failed(format!("clock_gettime({what})"), e))?;
    let a = arm(r, now, r.boot_id.0 == boot_id.as_bytes());
    sys::timerfd_settime(fd, a.flags as i32, a.value, a.interval)
        .map_err(|e| failed(format!("arm the {what} timerfd ({a:?})"), e))?;
    let ticks = r.ticks.saturating_add(a.missed);
    if ticks > 0 {
        sys::timerfd_set_ticks(fd, ticks).map_err(|e| {
            failed(
                format!("set the {ticks} expirations of a {what} timerfd"),
                e,
            )
        })?;
    }
    Ok(())
}

/// The timerfd records of file `id`.
fn kind_records(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &Timerfd> + '_ {
    super::kind::objects_of::<Timerfd>(img).filter(move |e| e.file_id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDINFO: &str = "pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t1044\nclockid: 1\nticks: 3\nsettime flags: 03\nit_value: (3599, 999996973)\nit_interval: (0, 50000000)\n";

    #[test]
    fn parses_fdinfo() {
        assert_eq!(
            parse(FDINFO),
            Some(Info {
                clockid: 1,
                ticks: 3,
                flags: TIMERFD_ABSTIME | TIMERFD_CANCEL_ON_SET,
                value: Duration::new(3599, 999_996_973),
                interval: Duration::from_millis(50),
            })
        );
        let disarmed =
            "clockid: 0\nticks: 0\nsettime flags: 00\nit_value: (0, 0)\nit_interval: (0, 0)\n";
        let t = parse(disarmed).expect("parses");
        assert!(t.value.is_zero() && t.interval.is_zero() && t.flags == 0);
    }

    #[test]
    fn refuses_broken_fdinfo() {
        assert_eq!(parse("pos:\t0\nflags:\t02\n"), None);
        let bad_ns = FDINFO.replace("(0, 50000000)", "(0, 1000000000)");
        assert_eq!(parse(&bad_ns), None);
        let bad_flags = FDINFO.replace("settime flags: 03", "settime flags: 09");
        assert_eq!(parse(&bad_flags), None);
        let no_paren = FDINFO.replace("(3599, 999996973)", "3599, 999996973");
        assert_eq!(parse(&no_paren), None);
    }

    fn rec(
        clockid: i32,
        flags: u32,
        value: Duration,
        interval: Duration,
        clock: Duration,
    ) -> Timerfd {
        Timerfd {
            file_id: 1,
            clockid: clockid as u32,
            settime_flags: flags,
            ticks: 0,
            value_sec: value.as_secs(),
            value_nsec: value.subsec_nanos(),
            interval_sec: interval.as_secs(),
            interval_nsec: interval.subsec_nanos(),
            clock_sec: clock.as_secs(),
            clock_nsec: clock.subsec_nanos(),
            boot_id: Text(b"x".to_vec()),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn relative_timers_keep_their_time_left() {
        let r = rec(libc::CLOCK_MONOTONIC, 0, S(3000), S(0), S(100));
        let a = arm(&r, S(1_000_000), false);
        assert_eq!((a.value, a.flags, a.missed), (S(3000), 0, 0));
        let off = rec(libc::CLOCK_MONOTONIC, 0, S(0), S(5), S(100));
        assert_eq!(arm(&off, S(7), true).value, S(0));
    }

    #[test]
    fn absolute_timers_keep_their_expiry() {
        let r = rec(libc::CLOCK_REALTIME, TIMERFD_ABSTIME, S(50), S(0), S(1000));
        let a = arm(&r, S(1020), false);
        assert_eq!((a.value, a.flags, a.missed), (S(1050), TIMERFD_ABSTIME, 0));
        // Monotonic: the same in this boot, now + time left in another.
        let m = rec(libc::CLOCK_MONOTONIC, TIMERFD_ABSTIME, S(50), S(0), S(1000));
        assert_eq!(arm(&m, S(1020), true).value, S(1050));
        assert_eq!(arm(&m, S(20), false).value, S(70));
    }

    #[test]
    fn absolute_timers_due_count_what_they_missed() {
        // Due at 1050, every 10 s; restarted at 1085: 1050..1080 missed.
        let r = rec(libc::CLOCK_REALTIME, TIMERFD_ABSTIME, S(50), S(10), S(1000));
        let a = arm(&r, S(1085), false);
        assert_eq!((a.value, a.interval, a.missed), (S(1090), S(10), 4));
        let once = rec(libc::CLOCK_REALTIME, TIMERFD_ABSTIME, S(50), S(0), S(1000));
        let a = arm(&once, S(1085), false);
        assert_eq!((a.value, a.missed, a.flags), (S(0), 1, TIMERFD_ABSTIME));
    }

    fn validate_one(r: Timerfd, untrusted: bool) -> std::result::Result<(), String> {
        let img = crate::model::Image {
            objects: vec![r.into()],
            ..Default::default()
        };
        let ids = sys::FsIds {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
        };
        let c = Check::new(&img, untrusted.then_some(&ids));
        let f = File {
            id: 1,
            kind: FILE_TIMERFD,
            ..Default::default()
        };
        TimerFd.validate(&c, &f)
    }

    #[test]
    fn validation_refuses_what_cannot_be_armed() {
        let ok = || rec(libc::CLOCK_MONOTONIC, 0, S(5), S(1), S(100));
        assert_eq!(validate_one(ok(), true), Ok(()));
        let e = validate_one(Timerfd { clockid: 3, ..ok() }, false).unwrap_err();
        assert!(e.contains("unknown clock 3"), "{e}");
        let e = validate_one(
            Timerfd {
                value_nsec: 1_000_000_000,
                ..ok()
            },
            false,
        )
        .unwrap_err();
        assert!(e.contains("invalid value"), "{e}");
        let e = validate_one(
            Timerfd {
                settime_flags: 4,
                ..ok()
            },
            false,
        )
        .unwrap_err();
        assert!(e.contains("settime flags"), "{e}");
        let alarm = || Timerfd {
            clockid: libc::CLOCK_BOOTTIME_ALARM as u32,
            ..ok()
        };
        assert_eq!(validate_one(alarm(), false), Ok(()));
        let e = validate_one(alarm(), true).unwrap_err();
        assert!(e.contains("CAP_WAKE_ALARM"), "{e}");
    }
}
