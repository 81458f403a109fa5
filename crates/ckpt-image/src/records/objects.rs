//! Records of the fd kinds that plug into the object seam (`ckpt::files`)
//! and of per-process kinds. Each kind owns its records here; the model
//! keeps them generically (`Image::objects`, `ProcessImage::extra`) by type
//! range, so adding a kind touches no orchestrator.

use super::*;

/// Type numbers of records about shared objects (written with the files,
/// before the first process): `T_OBJECT_FIRST..=T_OBJECT_LAST`.
pub const T_OBJECT_FIRST: u32 = 130;
pub const T_OBJECT_LAST: u32 = 159;
/// Type numbers of per-process records of a kind (written after the
/// process's fds): `T_PROCESS_KIND_FIRST..=T_PROCESS_KIND_LAST`.
pub const T_PROCESS_KIND_FIRST: u32 = 160;
pub const T_PROCESS_KIND_LAST: u32 = 179;

pub const T_EVENTFD: u32 = 130;
pub const T_EPOLL: u32 = 131;
pub const T_EPOLL_WATCH: u32 = 132;
pub const T_TIMERFD: u32 = 133;
pub const T_SIGNALFD: u32 = 134;
pub const T_INOTIFY: u32 = 135;
pub const T_INOTIFY_WATCH: u32 = 136;
pub const T_PIDFD: u32 = 137;
pub const T_POSIX_TIMER: u32 = 160;
pub const T_FILE_LOCK: u32 = 161;

/// Whether records of type `t` belong to `Image::objects`.
pub fn is_object_record(t: u32) -> bool {
    (T_OBJECT_FIRST..=T_OBJECT_LAST).contains(&t)
}

/// Whether records of type `t` belong to `ProcessImage::extra`.
pub fn is_process_kind_record(t: u32) -> bool {
    (T_PROCESS_KIND_FIRST..=T_PROCESS_KIND_LAST).contains(&t)
}

/// An eventfd (`File` kind `FILE_EVENTFD`).
pub const FILE_EVENTFD: u32 = 10;
/// An epoll instance (`FILE_EPOLL`), its watches in `EpollWatch` records.
pub const FILE_EPOLL: u32 = 11;
/// A timerfd (`FILE_TIMERFD`).
pub const FILE_TIMERFD: u32 = 12;
/// A signalfd (`FILE_SIGNALFD`).
pub const FILE_SIGNALFD: u32 = 13;
/// An inotify instance (`FILE_INOTIFY`), its watches in `InotifyWatch`.
pub const FILE_INOTIFY: u32 = 14;
/// A pidfd on a process of the tree (`FILE_PIDFD`).
pub const FILE_PIDFD: u32 = 15;

/// Names of the kinds above, for `inspect`.
pub(super) fn file_kind_name(k: u32) -> Option<&'static str> {
    Some(match k {
        FILE_EVENTFD => "eventfd",
        FILE_EPOLL => "epoll",
        FILE_TIMERFD => "timerfd",
        FILE_SIGNALFD => "signalfd",
        FILE_INOTIFY => "inotify",
        FILE_PIDFD => "pidfd",
        _ => return None,
    })
}

record!(
    /// The state of eventfd `file_id`: its counter and EFD_SEMAPHORE (the
    /// other flags are the `File`'s).
    Eventfd = T_EVENTFD, "eventfd" { file_id: u32, count: u64, semaphore: bool }
);

/// `PosixTimer::notify`: how the timer tells of an expiry (sigev_notify).
pub const SIGEV_SIGNAL: u32 = 0;
pub const SIGEV_NONE: u32 = 1;
/// The kernel treats it as `SIGEV_SIGNAL` (glibc never passes it).
pub const SIGEV_THREAD: u32 = 2;
/// `SIGEV_SIGNAL | SIGEV_THREAD_ID`: the signal goes to thread `tid`.
pub const SIGEV_THREAD_ID: u32 = 4;

record!(
    /// One POSIX timer (timer_create) of the process, per-process record.
    PosixTimer = T_POSIX_TIMER, "posix-timer" {
        /// Its timer id, which timer_create must give back.
        id: i32,
        /// The clockid it counts on (CLOCK_REALTIME, MONOTONIC, BOOTTIME,
        /// TAI, or an _ALARM one).
        clock: i32,
        /// sigev_notify (`SIGEV_*` above).
        notify: u32,
        /// sigev_signo (any value for SIGEV_NONE, which never sends it).
        signo: i32,
        /// sigev_value, delivered as si_value.
        value: u64,
        /// Target thread of SIGEV_THREAD_ID, else 0.
        tid: i32,
        /// timer_gettime(): the time left until it fires (0: disarmed) and
        /// its interval (0: one-shot).
        value_sec: u64,
        value_nsec: u32,
        interval_sec: u64,
        interval_nsec: u32,
        /// timer_getoverrun() at checkpoint (not restorable, see ckpt's
        /// `timers` module).
        overrun: i32,
        /// The timer's clock at checkpoint (clock_gettime in the process).
        now_sec: i64,
        now_nsec: u32,
    }
);
