//! File locks: POSIX record locks (fcntl F_SETLK), open file description
//! locks (F_OFD_SETLK) and flock() locks held by the processes of a tree.
//!
//! Checkpoint reads the `lock:` lines of each fd's fdinfo: the kernel shows
//! there the locks set through that description and owned by it (OFD,
//! flock) or by the process's fd table (POSIX), so each lock maps to the
//! description it is held through. /proc/locks cross-checks that no POSIX
//! lock of the process escaped. Waiters (a blocked F_SETLKW or flock) are
//! not locks: their syscall is restarted after restart and asks again.
//!
//! Restart takes every lock again in the restored process before it runs
//! (`restore_in_process`): POSIX ones with F_SETLK on an fd of the file,
//! OFD and flock ones once per description, by the process that took it
//! (or the first that holds it). The address space rebuild opens and closes
//! the mapped files in the process, which drops its POSIX locks on them,
//! so `restore` takes the POSIX locks once more from outside. A lock
//! someone else took meanwhile fails the restart, naming the file and,
//! when it can be found, the holder.
//!
//! Refused: leases and delegations, mandatory locks, locks on files restart
//! recreates rather than reopens (pipes, unlinked files, memfds...: an
//! outsider holding the original would no longer be kept out), and POSIX
//! locks of a process whose fd table is shared (CLONE_FILES): restart
//! closes its copies of the descriptions in that table only once every
//! process of it is rebuilt, which would drop them.

use crate::error::{Ctx, Error, Result};
use crate::model::{Image, ProcessImage};
use crate::process_kind::{records_of, ProcessCx, ProcessKind};
use crate::procfs;
use crate::remote::Remote;
use crate::sys::{self, Pid};
use crate::task::Scratch;
use ckpt_image::*;

pub struct FileLocks;

/// What a lock line says the lock is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Posix,
    Ofd,
    Flock,
    Lease,
    Deleg,
    /// ACCESS (share modes), UNKNOWN, or what a later kernel adds.
    Other,
}

/// One line of /proc/locks or one `lock:` line of an fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    pub class: Class,
    /// "ADVISORY", "MANDATORY" (kernels before 5.15), or for leases
    /// "ACTIVE", "BREAKING", "BREAKER".
    pub mode: String,
    /// "READ", "WRITE" or "UNLCK".
    pub kind: String,
    /// Who took it (-1 for OFD locks, 0 if it is gone or not visible).
    pub pid: Pid,
    /// (major, minor) of the superblock; None for "<none>".
    pub dev: Option<(u32, u32)>,
    pub ino: u64,
    pub start: u64,
    /// Last byte, inclusive; None: EOF.
    pub end: Option<u64>,
    /// A request waiting for this lock (`->`), not a lock.
    pub waiter: bool,
}

impl LockLine {
    pub fn write(&self) -> bool {
        self.kind == "WRITE"
    }

    /// Length in bytes as fcntl takes it (0: to the end of the file).
    pub fn fcntl_len(&self) -> u64 {
        self.end.map_or(0, |e| e.saturating_sub(self.start) + 1)
    }

    /// Whether it is on (major, minor, ino).
    fn on(&self, dev: (u32, u32), ino: u64) -> bool {
        self.dev == Some(dev) && self.ino == ino
    }
}

/// Parses "N: [-> ]CLASS MODE TYPE PID MAJ:MIN:INO START END|EOF".
pub fn parse_line(line: &str) -> Option<LockLine> {
    let (_, rest) = line.split_once(':')?;
    let mut rest = rest.trim_start();
    let waiter = match rest.strip_prefix("->") {
        Some(r) => {
            rest = r;
            true
        }
        None => false,
    };
    let mut t = rest.split_whitespace();
    let class = match t.next()? {
        "POSIX" => Class::Posix,
        "OFDLCK" => Class::Ofd,
        "FLOCK" => Class::Flock,
        "LEASE" => Class::Lease,
        "DELEG" => Class::Deleg,
        _ => Class::Other,
    };
    let mode = t.next()?.to_owned();
    let kind = t.next()?.to_owned();
    let pid = t.next()?.parse().ok()?;
    let node = t.next()?;
    let (dev, ino) = if node.starts_with("<none>") {
        (None, 0)
    } else {
        let mut f = node.split(':');
        let maj = u32::from_str_radix(f.next()?, 16).ok()?;
        let min = u32::from_str_radix(f.next()?, 16).ok()?;
        (Some((maj, min)), f.next()?.parse().ok()?)
    };
    let start = t.next()?.parse().ok()?;
    let end = match t.next()? {
        "EOF" => None,
        e => Some(e.parse().ok()?),
    };
    Some(LockLine {
        class,
        mode,
        kind,
        pid,
        dev,
        ino,
        start,
        end,
        waiter,
    })
}

/// The locks of /proc/locks (waiters left out).
pub fn parse_proc_locks(text: &str) -> Vec<LockLine> {
    text.lines()
        .filter_map(parse_line)
        .filter(|l| !l.waiter)
        .collect()
}

fn proc_locks() -> Vec<LockLine> {
    parse_proc_locks(&std::fs::read_to_string("/proc/locks").unwrap_or_default())
}

/// /proc/locks, read at most once per checkpoint, and only for a process
/// some fd of which shows a lock: a read waits for an RCU grace period
/// (the kernel takes a per-CPU rwsem for writing), 10-15 ms here, more
/// than the whole checkpoint of a small process. Only the frozen tree's
/// locks are looked at, and those cannot change meanwhile.
#[derive(Default)]
pub struct ProcLocks(std::sync::OnceLock<Vec<LockLine>>);

impl ProcLocks {
    pub fn get(&self) -> &[LockLine] {
        self.0.get_or_init(proc_locks)
    }
}

/// What a `FileLock` is, for messages ("POSIX write lock on bytes 0-99").
fn describe(class: u32, write: bool, start: u64, len: u64) -> String {
    let rw = if write { "write" } else { "read" };
    let range = match len {
        0 => format!("bytes {start}-EOF"),
        n => format!("bytes {start}-{}", start.saturating_add(n - 1)),
    };
    match class {
        LOCK_POSIX => format!("POSIX {rw} lock on {range}"),
        LOCK_OFD => format!("OFD {rw} lock on {range}"),
        LOCK_FLOCK => format!("flock {}", if write { "LOCK_EX" } else { "LOCK_SH" }),
        _ => format!("lock of class {class}"),
    }
}

/// Descriptions restart opens again by path (the very file, so its locks
/// mean the same to everyone after restart).
const REOPENED_KINDS: &[u32] = &[FILE_REGULAR, FILE_DIR, FILE_CHR, FILE_FIFO];

fn unsupported(cx: &ProcessCx, object: String, reason: String) -> Error {
    Error::Unsupported {
        pid: cx.pid,
        comm: cx.comm.into(),
        object,
        reason,
    }
}

impl ProcessKind for FileLocks {
    fn name(&self) -> &'static str {
        "file locks"
    }

    fn dump(&self, cx: &ProcessCx, _main: &mut Remote, _s: &Scratch) -> Result<Vec<AnyRecord>> {
        let pid = cx.pid;
        let mut found: Vec<(FileLock, LockLine)> = Vec::new();
        // Only fds whose fdinfo showed a lock when their table was saved
        // (the tree is frozen since).
        let fds: Vec<(i32, u32)> = cx
            .fds
            .all()
            .filter(|x| x.0 == pid && cx.fds.locked(pid, x.1))
            .map(|x| (x.1, x.2 .0))
            .collect();
        // A POSIX lock shows on every fd of the description it was taken
        // through, and the owner's closing any fd of the file drops it: a
        // process with no lock on any fd holds none (nor a lock of any
        // other class), and /proc/locks is not read.
        if fds.is_empty() {
            return Ok(Vec::new());
        }
        for (fd, id) in fds {
            let info = procfs::fdinfo(pid, fd).ctx(pid, || format!("read fdinfo of fd {fd}"))?;
            let f = cx.files.iter().find(|f| f.id == id);
            let object_as = |what: &str| {
                format!(
                    "the {what} held through fd {fd} ({})",
                    f.map(|f| f.path.to_string()).unwrap_or_default()
                )
            };
            let object = || object_as("lock");
            for text in info.text.lines().filter_map(|l| l.strip_prefix("lock:")) {
                let Some(l) = parse_line(text) else {
                    return Err(unsupported(
                        cx,
                        object(),
                        format!("its fdinfo line {:?} cannot be read", text.trim()),
                    ));
                };
                if l.waiter {
                    continue;
                }
                let class = match l.class {
                    Class::Posix => LOCK_POSIX,
                    Class::Ofd => LOCK_OFD,
                    Class::Flock => LOCK_FLOCK,
                    Class::Lease | Class::Deleg => {
                        let name = if l.class == Class::Deleg {
                            "delegation"
                        } else {
                            "lease"
                        };
                        let what = match l.mode.as_str() {
                            "ACTIVE" => format!("a {} {name}", l.kind.to_lowercase()),
                            _ => format!("a {name} being broken"),
                        };
                        return Err(unsupported(cx, object_as(name), format!(
                            "it is {what} (F_SETLEASE); leases cannot be saved yet: release it (F_SETLEASE F_UNLCK) or checkpoint when it is not held"
                        )));
                    }
                    Class::Other => {
                        return Err(unsupported(
                            cx,
                            object(),
                            format!("ckpt does not know this kind of lock ({})", text.trim()),
                        ))
                    }
                };
                if l.mode != "ADVISORY" {
                    return Err(unsupported(
                        cx,
                        object(),
                        format!(
                            "it is a {} lock; only advisory locks can be saved",
                            l.mode.to_lowercase()
                        ),
                    ));
                }
                if l.kind != "READ" && l.kind != "WRITE" {
                    return Err(unsupported(
                        cx,
                        object(),
                        format!("ckpt cannot read its type {:?}", l.kind),
                    ));
                }
                match f {
                    Some(f) if REOPENED_KINDS.contains(&f.kind) => {}
                    Some(f) => {
                        return Err(unsupported(cx, object(), format!(
                            "the lock is on a file restart makes anew rather than reopens ({}): it would no longer keep out whoever else holds the original; release it or checkpoint when it is not held",
                            file_kind_name(f.kind)
                        )))
                    }
                    None => {
                        return Err(unsupported(
                            cx,
                            object(),
                            "its description was not saved".into(),
                        ))
                    }
                }
                if class == LOCK_POSIX && l.pid != pid {
                    return Err(unsupported(cx, object(), format!(
                        "this POSIX lock was taken by pid {}, which shares the fd table of the process (clone CLONE_FILES); POSIX locks in a shared fd table cannot be restored yet",
                        l.pid
                    )));
                }
                let rec = FileLock {
                    class,
                    file_id: id,
                    write: l.write(),
                    start: l.start,
                    len: l.fcntl_len(),
                    pid: l.pid,
                };
                // One description's locks show on each of its fds; a POSIX
                // lock is the process's on the inode, whichever fd.
                let dup = found.iter().any(|(r, o)| {
                    (r.class, r.write, r.start, r.len) == (rec.class, rec.write, rec.start, rec.len)
                        && if class == LOCK_POSIX {
                            (o.dev, o.ino) == (l.dev, l.ino)
                        } else {
                            r.file_id == rec.file_id
                        }
                });
                if !dup {
                    found.push((rec, l));
                }
            }
        }
        if found.iter().any(|(r, _)| r.class == LOCK_POSIX) {
            check_table_unshared(cx)?;
        }
        // Every POSIX lock of the process must have come through an fd (one
        // no fd shows, in a table shared with a process outside the tree
        // say, would be lost).
        for l in cx.proc_locks.get() {
            if l.class != Class::Posix || l.pid != pid {
                continue;
            }
            let seen = found.iter().any(|(r, o)| {
                r.class == LOCK_POSIX
                    && (o.dev, o.ino, o.start, o.end, o.write())
                        == (l.dev, l.ino, l.start, l.end, l.write())
            });
            if !seen {
                return Err(unsupported(
                    cx,
                    format!("a POSIX lock on inode {}", l.ino),
                    format!(
                        "/proc/locks shows it ({} on {}-{}), but no fd of the process shows it; ckpt cannot tell which file it is on",
                        l.kind,
                        l.start,
                        l.end.map_or("EOF".to_string(), |e| e.to_string())
                    ),
                ));
            }
        }
        Ok(found.into_iter().map(|(r, _)| r.into()).collect())
    }

    fn validate(&self, img: &Image, p: &ProcessImage) -> std::result::Result<(), String> {
        for r in records_of::<FileLock>(p) {
            let what = describe(r.class, r.write, r.start, r.len);
            if !matches!(r.class, LOCK_POSIX | LOCK_OFD | LOCK_FLOCK) {
                return Err(format!("a lock has unknown class {}", r.class));
            }
            let Some(f) = img.files.iter().find(|f| f.id == r.file_id) else {
                return Err(format!("the {what} names unknown file {}", r.file_id));
            };
            if !p.fds.iter().any(|d| d.file_id == r.file_id) {
                return Err(format!(
                    "the {what} on {} is held through a file the process does not hold",
                    f.path
                ));
            }
            if !REOPENED_KINDS.contains(&f.kind) {
                return Err(format!(
                    "the {what} is on {}, a {} file restart does not reopen",
                    f.path,
                    file_kind_name(f.kind)
                ));
            }
            if r.class == LOCK_FLOCK && (r.start, r.len) != (0, 0) {
                return Err(format!("the flock on {} has a byte range", f.path));
            }
            let last = r.start.checked_add(r.len.saturating_sub(1));
            if r.start > i64::MAX as u64 || last.is_none_or(|e| e > i64::MAX as u64) {
                return Err(format!(
                    "the {what} on {} goes beyond the largest file offset",
                    f.path
                ));
            }
            if r.class == LOCK_POSIX {
                let shared = p.files_shared.is_some()
                    || img
                        .processes
                        .iter()
                        .any(|q| q.files_shared.as_ref().is_some_and(|s| s.parent == p.pid()));
                if shared {
                    return Err(format!(
                        "the {what} on {} is in an fd table shared with another process, which restart cannot keep",
                        f.path
                    ));
                }
            }
        }
        Ok(())
    }

    fn restore_in_process(&self, img: &Image, p: &ProcessImage) -> std::result::Result<(), String> {
        for r in records_of::<FileLock>(p) {
            if r.class != LOCK_POSIX && taker(img, r) != Some(p.pid()) {
                continue; // Another process of the description takes it.
            }
            let fd = fd_of(p, r.file_id)?;
            let res = match r.class {
                LOCK_POSIX => sys::set_lock(fd, libc::F_SETLK, r.write, r.start, r.len),
                LOCK_OFD => sys::set_lock(fd, libc::F_OFD_SETLK, r.write, r.start, r.len),
                _ => sys::flock(
                    fd,
                    libc::LOCK_NB
                        | if r.write {
                            libc::LOCK_EX
                        } else {
                            libc::LOCK_SH
                        },
                ),
            };
            res.map_err(|e| refusal(img, r, fd, e))?;
        }
        Ok(())
    }

    fn restore(&self, r: &mut Remote, s: &Scratch, p: &ProcessImage) -> Result<()> {
        // Rebuilding the address space opened and closed the mapped files
        // in the process, which dropped its POSIX locks on them: take them
        // again (a no-op for the others).
        for l in records_of::<FileLock>(p).filter(|l| l.class == LOCK_POSIX) {
            let fd = fd_of(p, l.file_id).map_err(Error::Refused)?;
            s.write(0, &sys::flock_bytes(l.write, l.start, l.len))?;
            let ret = r.syscall(libc::SYS_fcntl, &[fd as u64, libc::F_SETLK as u64, s.addr])?;
            if ret < 0 {
                let path = procfs::link(p.pid(), &format!("fd/{fd}"))
                    .map(|b| ckpt_image::escape(&b))
                    .unwrap_or_default();
                return Err(Error::Sys {
                    pid: p.pid(),
                    what: format!(
                        "take the {} of {path} again after its mappings were restored (someone else took it meanwhile{}); restart again once it is released",
                        describe(l.class, l.write, l.start, l.len),
                        holder_by_inode(p.pid(), fd, l).map(|h| format!(": {h}")).unwrap_or_default()
                    ),
                    source: std::io::Error::from_raw_os_error(-ret as i32),
                });
            }
        }
        Ok(())
    }
}

/// The fd through which process `p` holds description `file_id`.
fn fd_of(p: &ProcessImage, file_id: u32) -> std::result::Result<i32, String> {
    p.fds
        .iter()
        .find(|d| d.file_id == file_id)
        .map(|d| d.fd as i32)
        .ok_or_else(|| format!("no fd holds file {file_id}, which a lock is held through"))
}

/// The process that takes lock `r` of a description (OFD, flock) again:
/// the one that took it if it holds the description, else the first that
/// does. Processes on their parent's fd table leave it to the parent.
fn taker(img: &Image, r: &FileLock) -> Option<Pid> {
    let holders: Vec<Pid> = img
        .processes
        .iter()
        .filter(|q| !q.is_zombie() && q.files_shared.is_none())
        .filter(|q| q.fds.iter().any(|d| d.file_id == r.file_id))
        .map(|q| q.pid())
        .collect();
    holders
        .iter()
        .copied()
        .find(|&q| q == r.pid)
        .or(holders.first().copied())
}

/// Why lock `r` could not be taken on `fd` (in the restored process).
fn refusal(img: &Image, r: &FileLock, fd: i32, e: std::io::Error) -> String {
    let path = img
        .files
        .iter()
        .find(|f| f.id == r.file_id)
        .map(|f| f.path.to_string())
        .unwrap_or_default();
    let what = describe(r.class, r.write, r.start, r.len);
    let busy = matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES));
    if !busy {
        return format!("cannot take the {what} of {path} again: {e}");
    }
    let by_getlk = match r.class {
        LOCK_POSIX => sys::get_lock(fd, libc::F_GETLK, r.write, r.start, r.len),
        LOCK_OFD => sys::get_lock(fd, libc::F_OFD_GETLK, r.write, r.start, r.len),
        _ => Ok(None),
    };
    let holder = match by_getlk {
        Ok(Some(c)) if c.pid > 0 => Some(format!(
            "pid {} holds a {} lock on {}",
            c.pid,
            if c.write { "write" } else { "read" },
            match c.len {
                0 => format!("bytes {}-EOF", c.start),
                n => format!("bytes {}-{}", c.start, c.start.saturating_add(n - 1)),
            }
        )),
        Ok(Some(_)) => Some("an open file description lock (OFD) holds it".into()),
        _ => holder_by_inode(std::process::id() as Pid, fd, r),
    };
    format!(
        "cannot take the {what} of {path} again: {}; it was taken while the process was checkpointed: restart again once it is released",
        holder.unwrap_or_else(|| "someone else holds a conflicting lock".into())
    )
}

/// Who holds a lock conflicting with `r` on the file of `fd` of `pid`,
/// from /proc/locks, if it can be told.
fn holder_by_inode(pid: Pid, fd: i32, r: &FileLock) -> Option<String> {
    let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    use std::os::unix::fs::MetadataExt;
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let dev = (major as u32, minor as u32);
    let (first, last) = (
        r.start,
        r.len.checked_sub(1).map(|n| r.start.saturating_add(n)),
    );
    proc_locks()
        .into_iter()
        .filter(|l| l.on(dev, meta.ino()))
        .filter(|l| {
            let same_family = (l.class == Class::Flock) == (r.class == LOCK_FLOCK);
            let overlap = r.class == LOCK_FLOCK
                || (l.end.is_none_or(|e| e >= first) && last.is_none_or(|e| l.start <= e));
            same_family && overlap && (l.write() || r.write) && l.pid != pid
        })
        .map(|l| {
            let what = match l.class {
                Class::Flock if l.write() => "flock LOCK_EX".to_string(),
                Class::Flock => "flock LOCK_SH".to_string(),
                c => format!("{} {} lock", class_name(c), l.kind.to_lowercase()),
            };
            match l.pid {
                p if p > 0 => format!("pid {p} holds a {what}"),
                _ => format!("a {what} is held"),
            }
        })
        .next()
}

fn class_name(c: Class) -> &'static str {
    match c {
        Class::Posix => "POSIX",
        Class::Ofd => "OFD",
        Class::Flock => "flock",
        Class::Lease => "lease",
        Class::Deleg => "delegation",
        Class::Other => "other",
    }
}

/// POSIX locks belong to the fd table: refuses them when the process
/// shares it with its parent or a child (see the module docs).
fn check_table_unshared(cx: &ProcessCx) -> Result<()> {
    let pid = cx.pid;
    let ppid = procfs::stat(pid)
        .ctx(pid, || "read /proc stat".into())?
        .ppid;
    let kids = procfs::children(pid).ctx(pid, || "list children".into())?;
    for q in std::iter::once(ppid).chain(kids) {
        if q > 0 && sys::same_fd_table(pid, q).unwrap_or(false) {
            return Err(unsupported(cx, format!("its POSIX locks (fd table shared with pid {q})"), format!(
                "the process holds POSIX locks and shares its fd table with pid {q} (clone CLONE_FILES); restart cannot keep POSIX locks in a shared fd table yet: release them or checkpoint when they are not held"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_locks() {
        let text = "\
1: POSIX  ADVISORY  WRITE 1234 08:02:131 0 99
2: POSIX  ADVISORY  READ 1234 08:02:131 200 EOF
3: OFDLCK ADVISORY  WRITE -1 fd:01:77 10 19
4: FLOCK  ADVISORY  WRITE 42 00:1a:12 0 EOF
4: -> FLOCK  ADVISORY  WRITE 43 00:1a:12 0 EOF
5: LEASE  ACTIVE    READ 9 103:05:4242 0 EOF
6: DELEG  BREAKING  READ 9 103:05:4242 0 EOF
";
        let all: Vec<LockLine> = text.lines().filter_map(parse_line).collect();
        assert_eq!(all.len(), 7);
        let locks = parse_proc_locks(text);
        assert_eq!(locks.len(), 6, "the waiter is left out");
        let w = &locks[0];
        assert_eq!(
            (w.class, w.mode.as_str(), w.write(), w.pid, w.dev, w.ino),
            (Class::Posix, "ADVISORY", true, 1234, Some((8, 2)), 131)
        );
        assert_eq!((w.start, w.end, w.fcntl_len()), (0, Some(99), 100));
        let r = &locks[1];
        assert_eq!(
            (r.write(), r.start, r.end, r.fcntl_len()),
            (false, 200, None, 0)
        );
        let o = &locks[2];
        assert_eq!(
            (o.class, o.pid, o.dev, o.start, o.fcntl_len()),
            (Class::Ofd, -1, Some((0xfd, 1)), 10, 10)
        );
        assert_eq!(locks[3].class, Class::Flock);
        assert!(all[4].waiter && all[4].pid == 43);
        assert_eq!(
            (locks[4].class, locks[4].mode.as_str()),
            (Class::Lease, "ACTIVE")
        );
        assert_eq!(locks[4].dev, Some((0x103, 5)));
        assert_eq!(locks[5].class, Class::Deleg);
    }

    #[test]
    fn parses_fdinfo_lock_lines_and_odd_ones() {
        let fdinfo = "pos:\t0\nflags:\t0100002\nmnt_id:\t30\nino:\t131\nlock:\t1: POSIX  ADVISORY  WRITE 77 08:02:131 0 99\nlock:\t2: POSIX  ADVISORY  READ  77 08:02:131 200 EOF\n";
        let l: Vec<LockLine> = fdinfo
            .lines()
            .filter_map(|l| l.strip_prefix("lock:"))
            .filter_map(parse_line)
            .collect();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[1].kind.as_str(), l[1].pid, l[1].start),
            ("READ", 77, 200)
        );
        let m = parse_line("1: POSIX  MANDATORY WRITE 5 08:02:9 0 EOF").unwrap();
        assert_eq!(m.mode, "MANDATORY");
        let n = parse_line("1: POSIX  *NOINODE* WRITE 5 <none>:0 0 EOF").unwrap();
        assert_eq!((n.dev, n.ino), (None, 0));
        assert_eq!(
            parse_line("1: ACCESS ADVISORY READ 5 08:02:9 0 EOF")
                .unwrap()
                .class,
            Class::Other
        );
        assert_eq!(parse_line("garbage"), None);
        assert_eq!(parse_line("1: POSIX ADVISORY WRITE x 08:02:9 0 EOF"), None);
    }

    #[test]
    fn describes_locks() {
        assert_eq!(
            describe(LOCK_POSIX, true, 0, 100),
            "POSIX write lock on bytes 0-99"
        );
        assert_eq!(
            describe(LOCK_OFD, false, 200, 0),
            "OFD read lock on bytes 200-EOF"
        );
        assert_eq!(describe(LOCK_FLOCK, true, 0, 0), "flock LOCK_EX");
    }

    fn proc_with(pid: Pid, fds: &[(u32, u32)], locks: Vec<FileLock>) -> ProcessImage {
        let mut p = ProcessImage::default();
        p.process.pid = pid;
        p.fds = fds
            .iter()
            .map(|&(fd, file_id)| Fd {
                fd,
                file_id,
                cloexec: false,
            })
            .collect();
        p.extra = locks.into_iter().map(AnyRecord::from).collect();
        p
    }

    fn lock(class: u32, file_id: u32, pid: Pid) -> FileLock {
        FileLock {
            class,
            file_id,
            write: true,
            start: 0,
            len: 0,
            pid,
        }
    }

    fn image(files: &[(u32, u32)], procs: Vec<ProcessImage>) -> Image {
        Image {
            files: files
                .iter()
                .map(|&(id, kind)| File {
                    id,
                    kind,
                    path: Text(format!("/f{id}").into_bytes()),
                    ..Default::default()
                })
                .collect(),
            processes: procs,
            ..Default::default()
        }
    }

    #[test]
    fn validate_refuses_what_restart_cannot_take() {
        let ok = |img: &Image, i: usize| FileLocks.validate(img, &img.processes[i]);
        let img = image(
            &[(1, FILE_REGULAR), (2, FILE_PIPE)],
            vec![proc_with(
                10,
                &[(3, 1), (4, 2)],
                vec![lock(LOCK_POSIX, 1, 10)],
            )],
        );
        assert_eq!(ok(&img, 0), Ok(()));
        for (bad, why) in [
            (lock(LOCK_POSIX, 2, 10), "a pipe file"),
            (lock(LOCK_POSIX, 9, 10), "unknown file 9"),
            (lock(7, 1, 10), "unknown class 7"),
            (
                FileLock {
                    start: 5,
                    ..lock(LOCK_FLOCK, 1, 10)
                },
                "byte range",
            ),
            (
                FileLock {
                    start: i64::MAX as u64,
                    len: 2,
                    ..lock(LOCK_POSIX, 1, 10)
                },
                "largest file offset",
            ),
        ] {
            let img = image(
                &[(1, FILE_REGULAR), (2, FILE_PIPE)],
                vec![proc_with(10, &[(3, 1), (4, 2)], vec![bad])],
            );
            let e = ok(&img, 0).unwrap_err();
            assert!(e.contains(why), "{e:?} should say {why:?}");
        }
        // Not held by the process.
        let img = image(
            &[(1, FILE_REGULAR)],
            vec![proc_with(10, &[], vec![lock(LOCK_OFD, 1, -1)])],
        );
        assert!(ok(&img, 0).unwrap_err().contains("does not hold"));
        // A POSIX lock of a process whose child shares its fd table.
        let mut kid = proc_with(11, &[(3, 1)], vec![]);
        kid.files_shared = Some(FilesShared { parent: 10 });
        let img = image(
            &[(1, FILE_REGULAR)],
            vec![proc_with(10, &[(3, 1)], vec![lock(LOCK_POSIX, 1, 10)]), kid],
        );
        assert!(ok(&img, 0).unwrap_err().contains("shared"));
    }

    #[test]
    fn a_description_lock_is_taken_once_by_its_taker_or_first_holder() {
        let mut kid = proc_with(12, &[(3, 1)], vec![]);
        kid.files_shared = Some(FilesShared { parent: 10 });
        let img = image(
            &[(1, FILE_REGULAR)],
            vec![
                proc_with(10, &[(3, 1)], vec![]),
                proc_with(11, &[(5, 1)], vec![]),
                kid,
            ],
        );
        assert_eq!(taker(&img, &lock(LOCK_FLOCK, 1, 11)), Some(11));
        assert_eq!(taker(&img, &lock(LOCK_FLOCK, 1, 99)), Some(10));
        assert_eq!(taker(&img, &lock(LOCK_OFD, 1, -1)), Some(10));
        // One on its parent's fd table leaves it to the parent.
        assert_eq!(taker(&img, &lock(LOCK_FLOCK, 1, 12)), Some(10));
        assert_eq!(taker(&img, &lock(LOCK_FLOCK, 2, 10)), None);
    }
}
