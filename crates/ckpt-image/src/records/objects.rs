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

/// `FileLock::class`: a POSIX record lock (fcntl F_SETLK), owned by the
/// process.
pub const LOCK_POSIX: u32 = 1;
/// An open file description lock (F_OFD_SETLK), owned by the description.
pub const LOCK_OFD: u32 = 2;
/// A flock() lock, owned by the description (`start`, `len` are 0).
pub const LOCK_FLOCK: u32 = 3;

record!(
    /// One lock the process holds through description `file_id` (for a
    /// POSIX lock: on that description's file). A lock of a description
    /// several processes hold is in each of their records; restart takes
    /// it once.
    FileLock = T_FILE_LOCK, "file-lock" {
        /// `LOCK_POSIX`, `LOCK_OFD` or `LOCK_FLOCK`.
        class: u32,
        file_id: u32,
        /// Write (exclusive) rather than read (shared).
        write: bool,
        /// First byte locked.
        start: u64,
        /// Bytes locked; 0: up to the end of the file, however it grows.
        len: u64,
        /// The pid /proc/locks showed (who took it; -1 for OFD locks).
        pid: i32,
    }
);
