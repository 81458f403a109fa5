//! File descriptors: regular files (also unlinked ones), directories,
//! character devices, pipes and FIFOs (with the bytes in flight), memfds;
//! offsets, status flags, FD_CLOEXEC, and the sharing of one open file
//! description by several fds and processes.
//!
//! Checkpoint reads /proc fd + fdinfo and finds shared descriptions with
//! kcmp. Restore opens every description once in ckpt itself, above every
//! fd number the image uses; the restored processes inherit them through
//! fork and `dup2` them into place, so sharing comes back for free.

use crate::error::{Ctx, Error, Result};
use crate::procfs;
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Status flags a reopened file gets back (never O_CREAT/O_TRUNC/O_EXCL).
const REOPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_PATH;

/// Flags F_SETFL can change on an open description.
const SETFL_FLAGS: i32 =
    libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME | libc::O_ASYNC;

/// The open file descriptions of a whole tree, filled process by process.
#[derive(Default)]
pub struct FileTable {
    pub files: Vec<File>,
    pub pipes: Vec<Pipe>,
    /// (pid, fd, dev, ino, file id) of every fd seen, to find shared descriptions.
    seen: Vec<(Pid, i32, u64, u64, u32)>,
    /// (pipe inode, pipe id).
    pipe_ids: Vec<(u64, u32)>,
    /// (dev, ino) of memfds met as fds, with their file ids: their content is
    /// saved as a shared memory object.
    pub memfds: Vec<(u64, u64, u32, String)>,
    /// Unlinked regular files met as fds: their content is saved as a
    /// ghost object.
    ghosts: Vec<GhostFd>,
    /// Owner and times of each removed directory saved.
    pub attrs: Vec<FileAttr>,
    /// Pids of the tree: /proc files of other pids are refused.
    tree: Vec<Pid>,
    /// (pid, file id) of every /proc file saved, to refuse sharing one
    /// description between processes (each reopens its own).
    procs: Vec<(Pid, u32)>,
    /// Owners and signals of descriptions that have them.
    pub owners: Vec<FileOwner>,
    /// A pidfd of the process being dumped, to look at its descriptions.
    pidfd: Option<(Pid, std::os::fd::OwnedFd)>,
    /// Processes dumped so far, and those that share their parent's fd table.
    dumped: Vec<Pid>,
    shares_parent: Vec<Pid>,
}

/// The pid a path under /proc is about, if it is under /proc/PID (`Err`
/// if it is about another thread than the process's main one).
pub fn proc_pid(path: &[u8]) -> Option<std::result::Result<Pid, ()>> {
    let rest = path.strip_prefix(b"/proc/")?;
    let mut parts = rest.split(|&c| c == b'/');
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<Pid>().ok();
    let pid = num(parts.next()?)?;
    if parts.next() == Some(b"task") {
        if let Some(tid) = parts.next().and_then(num) {
            if tid != pid {
                return Some(Err(()));
            }
        }
    }
    Some(Ok(pid))
}

/// Owner and times of file `id`, for what restart recreates.
fn file_attr(id: u32, meta: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        file_id: id,
        uid: meta.uid(),
        gid: meta.gid(),
        atime_sec: meta.atime(),
        atime_nsec: meta.atime_nsec() as u32,
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec() as u32,
    }
}

/// An fd of an unlinked regular file, waiting for its ghost object.
struct GhostFd {
    pid: Pid,
    comm: String,
    fd: i32,
    link: Vec<u8>,
    dev: u64,
    ino: u64,
    file_id: u32,
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(b)
}

/// Reads the bytes in a pipe without consuming them: `tee` them into a
/// private pipe and read that.
fn pipe_contents(pid: Pid, fd: i32) -> std::io::Result<(u32, Vec<u8>)> {
    use std::io::Read as _;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))?;
    let size = sys::pipe_size(src.as_raw_fd())?;
    let (mut r, w) = std::io::pipe()?;
    let _ = sys::set_pipe_size(w.as_raw_fd(), size);
    let n = match sys::tee(src.as_raw_fd(), w.as_raw_fd(), size as usize) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
        Err(e) => return Err(e),
    };
    let mut data = vec![0u8; n];
    r.read_exact(&mut data)?;
    Ok((size, data))
}

/// Whether a character device can be reopened by path at restart: only the
/// stateless memory devices can (`Err` gives what it is and why not).
/// Terminals carry state (the line discipline, the session that owns them,
/// the other end of a pty) that a reopened path would not bring back.
pub fn chr_verdict(
    major: u32,
    minor: u32,
) -> std::result::Result<(), (&'static str, &'static str)> {
    const TERMINAL: &str = "terminals are not supported yet; run it with stdin/stdout redirected (e.g. setsid, nohup, </dev/null >log)";
    match (major, minor) {
        // null, zero, full, random, urandom
        (1, 3 | 5 | 7 | 8 | 9) => Ok(()),
        (136..=143, _) => Err(("a pseudo-terminal", TERMINAL)),
        (5, 2) => Err(("the pseudo-terminal master multiplexer", TERMINAL)),
        (5, 0) => Err(("the controlling terminal", TERMINAL)),
        (5, 1) => Err(("the console", TERMINAL)),
        (4, _) => Err(("a virtual console or serial terminal", TERMINAL)),
        (128..=135, _) => Err(("a pseudo-terminal master", TERMINAL)),
        _ => Err((
            "a character device",
            "among character devices only /dev/null, /dev/zero, /dev/full, /dev/random and /dev/urandom can be saved yet",
        )),
    }
}

impl FileTable {
    /// A table for the tree of these pids.
    pub fn new(tree: Vec<Pid>) -> FileTable {
        FileTable {
            tree,
            ..Default::default()
        }
    }

    /// Reads every fd of `pid` into the table; returns its fd records.
    /// Errors name the fd and why it cannot be saved.
    pub fn dump(&mut self, pid: Pid, comm: &str) -> Result<Vec<Fd>> {
        self.check_table(pid, comm)?;
        self.dumped.push(pid);
        let mut fds = Vec::new();
        let unsupported = |fd: i32, link: &[u8], reason: &str| Error::Unsupported {
            pid,
            comm: comm.into(),
            object: format!("fd {fd} ({})", ckpt_image::escape(link)),
            reason: reason.into(),
        };
        for fd in procfs::fds(pid).ctx(pid, || "list fds".into())? {
            let Ok(link) = procfs::link(pid, &format!("fd/{fd}")) else {
                continue; // closed meanwhile
            };
            let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                .ctx(pid, || format!("stat fd {fd}"))?;
            let info = procfs::fdinfo(pid, fd).ctx(pid, || format!("read fdinfo of fd {fd}"))?;
            if let Some(lock) = &info.lock {
                return Err(unsupported(
                    fd,
                    &link,
                    &format!("it holds a file lock ({lock}); file locks cannot be saved yet; release the lock or checkpoint when it is not held"),
                ));
            }
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let (dev, ino) = (meta.dev(), meta.ino());
            let mut shared = None;
            for &(opid, ofd, d, i, id) in &self.seen {
                if d == dev
                    && i == ino
                    && sys::same_file(opid, ofd, pid, fd).ctx(pid, || format!("kcmp fd {fd}"))?
                {
                    shared = Some(id);
                    break;
                }
            }
            // (A process on its parent's fd table holds the very same fds.)
            if let Some(id) = shared.filter(|_| !self.shares_parent.contains(&pid)) {
                if self.procs.iter().any(|&(p, f)| f == id && p != pid) {
                    return Err(unsupported(
                        fd,
                        &link,
                        "this /proc file is shared with another process (inherited across fork); each process reopens its own /proc files, so the sharing cannot come back",
                    ));
                }
            }
            let id = match shared {
                Some(id) => id,
                None => self.add(pid, comm, fd, &link, &meta, &info, &unsupported)?,
            };
            self.seen.push((pid, fd, dev, ino, id));
            fds.push(Fd {
                fd: fd as u32,
                file_id: id,
                cloexec,
            });
        }
        Ok(fds)
    }

    /// Saves the F_SETOWN owner and F_SETSIG signal of a description, if
    /// it has either; an owner outside the tree is refused (after restart
    /// that pid would be another process or none).
    fn dump_owner(
        &mut self,
        pid: Pid,
        fd: i32,
        link: &[u8],
        id: u32,
        unsupported: &dyn Fn(i32, &[u8], &str) -> Error,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        if self.pidfd.as_ref().is_none_or(|p| p.0 != pid) {
            let p = sys::pidfd_open(pid).ctx(pid, || "pidfd_open".into())?;
            self.pidfd = Some((pid, p));
        }
        let pidfd = self.pidfd.as_ref().map_or(-1, |p| p.1.as_raw_fd());
        let mine = sys::pidfd_getfd(pidfd, fd).ctx(pid, || format!("pidfd_getfd of fd {fd}"))?;
        let (kind, owner, sig) =
            sys::file_owner(mine.as_raw_fd()).ctx(pid, || format!("F_GETOWN_EX of fd {fd}"))?;
        if owner == 0 && sig == 0 {
            return Ok(());
        }
        if owner != 0 {
            let known = match kind {
                // F_OWNER_TID, F_OWNER_PID: a process (main thread) of the tree.
                0 | 1 => self.tree.contains(&owner),
                // F_OWNER_PGRP: a group some process of the tree is in.
                2 => self
                    .tree
                    .iter()
                    .any(|&p| procfs::stat(p).is_ok_and(|s| s.pgrp == owner)),
                _ => false,
            };
            if !known {
                return Err(unsupported(
                    fd,
                    link,
                    &format!("its signal owner (F_SETOWN) {owner} is not a process or group of the checkpointed tree (or is a thread other than a main one)"),
                ));
            }
        }
        self.owners.push(FileOwner {
            file_id: id,
            owner_type: kind as u32,
            owner,
            signum: sig as u32,
        });
        Ok(())
    }

    /// Whether `pid` shares its fd table with its parent (restorable: it is
    /// forked with CLONE_FILES) or with another process (refused).
    fn check_table(&mut self, pid: Pid, comm: &str) -> Result<()> {
        let ppid = procfs::stat(pid)
            .ctx(pid, || "read /proc stat".into())?
            .ppid;
        // The parent first: sharing with it implies sharing with whoever
        // else shares it.
        let mut others: Vec<Pid> = self.dumped.iter().copied().filter(|&q| q != ppid).collect();
        if self.dumped.contains(&ppid) {
            others.insert(0, ppid);
        }
        for q in others {
            if !sys::same_fd_table(q, pid)
                .ctx(pid, || format!("kcmp the fd tables of {q} and {pid}"))?
            {
                continue;
            }
            if q == ppid {
                self.shares_parent.push(pid);
                return Ok(());
            }
            return Err(Error::Unsupported {
                pid,
                comm: comm.into(),
                object: format!("its fd table, shared with pid {q}"),
                reason: "an fd table shared (clone CLONE_FILES) with a process other than the parent cannot be recreated".into(),
            });
        }
        Ok(())
    }

    /// The record saying `pid` shares its parent's fd table, if it does.
    pub fn files_shared(&self, pid: Pid) -> Option<FilesShared> {
        self.shares_parent.contains(&pid).then(|| FilesShared {
            parent: procfs::stat(pid).map(|s| s.ppid).unwrap_or(0),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        pid: Pid,
        comm: &str,
        fd: i32,
        link: &[u8],
        meta: &std::fs::Metadata,
        info: &procfs::FdInfo,
        unsupported: &dyn Fn(i32, &[u8], &str) -> Error,
    ) -> Result<u32> {
        let ft = meta.file_type();
        let (path, deleted) = match link.strip_suffix(b" (deleted)") {
            Some(p) => (p.to_vec(), true),
            None => (link.to_vec(), false),
        };
        let id = self.files.len() as u32 + 1;
        let content = Vec::new();
        let mut obj = 0;
        let opath = info.flags & libc::O_PATH as u32 != 0;
        // /proc/1 is the pid namespace's init, the same process after a
        // restart here: reopened by path like any file.
        let kind = if let Some(target) = proc_pid(&path).filter(|t| !deleted && *t != Ok(1)) {
            match target {
                Ok(p) if self.tree.contains(&p) => {}
                Ok(p) => {
                    return Err(unsupported(
                        fd,
                        link,
                        &format!("it is about pid {p}, which is outside the checkpointed tree; after restart that pid would be another process or none"),
                    ))
                }
                Err(()) => {
                    return Err(unsupported(
                        fd,
                        link,
                        "it is about a thread other than its process's main thread; such files cannot be reopened yet",
                    ))
                }
            }
            self.procs.push((pid, id));
            FILE_PROC
        } else if opath {
            // An O_PATH fd only names a file (the file itself is never
            // opened): whatever its type, reopening the path with O_PATH
            // gives it back.
            if deleted || !path.starts_with(b"/") {
                return Err(unsupported(
                    fd,
                    link,
                    "an O_PATH fd whose file was removed cannot be reopened",
                ));
            }
            if ft.is_dir() {
                FILE_DIR
            } else {
                FILE_REGULAR
            }
        } else if ft.is_fifo() {
            let (size, data) =
                pipe_contents(pid, fd).ctx(pid, || format!("read the buffer of pipe fd {fd}"))?;
            obj = match self.pipe_ids.iter().find(|p| p.0 == meta.ino()) {
                Some(p) => p.1,
                None => {
                    let pid_ = self.pipes.len() as u32 + 1;
                    self.pipes.push(Pipe {
                        id: pid_,
                        size,
                        ino: meta.ino(),
                        data: Bytes(data),
                    });
                    self.pipe_ids.push((meta.ino(), pid_));
                    pid_
                }
            };
            if link.starts_with(b"pipe:") {
                FILE_PIPE
            } else if !deleted {
                FILE_FIFO
            } else if path.starts_with(b"/") {
                self.attrs.push(file_attr(id, meta));
                FILE_FIFO_REMOVED
            } else {
                return Err(unsupported(
                    fd,
                    link,
                    "a FIFO whose path was removed cannot be reopened",
                ));
            }
        } else if ft.is_file() && path.starts_with(b"/memfd:") {
            self.memfds
                .push((meta.dev(), meta.ino(), id, format!("/proc/{pid}/fd/{fd}")));
            FILE_MEMFD
        } else if ft.is_file() {
            if deleted || meta.nlink() == 0 {
                // Saved once, holes and all, as a ghost object (shared with
                // the mappings of the same file); see `link_ghosts`.
                self.ghosts.push(GhostFd {
                    pid,
                    comm: comm.to_string(),
                    fd,
                    link: link.to_vec(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                    file_id: id,
                });
                FILE_UNLINKED
            } else {
                FILE_REGULAR
            }
        } else if ft.is_dir() && (deleted || meta.nlink() == 0) {
            self.attrs.push(file_attr(id, meta));
            FILE_DIR_REMOVED
        } else if ft.is_dir() {
            FILE_DIR
        } else if ft.is_char_device() {
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            if let Err((what, reason)) = chr_verdict(major, minor) {
                let named = format!("{}, {what}", ckpt_image::escape(link));
                return Err(unsupported(fd, named.as_bytes(), reason));
            }
            if deleted || !path.starts_with(b"/") {
                return Err(unsupported(
                    fd,
                    link,
                    "the device node it was opened through is gone; cannot reopen it",
                ));
            }
            FILE_CHR
        } else {
            return Err(unsupported(
                fd,
                link,
                "only regular files, directories, character devices, pipes, FIFOs and memfds are supported yet (no sockets, eventfds...)",
            ));
        };
        if matches!(kind, FILE_REGULAR | FILE_DIR | FILE_FIFO | FILE_CHR) || opath {
            // The path must still name this very file.
            match std::fs::metadata(os(&path)) {
                Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {}
                _ => return Err(unsupported(
                    fd,
                    link,
                    "its path now names another file (renamed or replaced over); cannot reopen it",
                )),
            }
        }
        if !opath {
            self.dump_owner(pid, fd, link, id, unsupported)?;
        }
        self.files.push(File {
            id,
            kind,
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            pos: info.pos,
            mode: meta.mode(),
            rdev: meta.rdev(),
            size: meta.len(),
            path: crate::task::text(&path),
            content: Bytes(content),
            obj,
        });
        Ok(id)
    }
}

impl FileTable {
    /// Gives every unlinked file open as an fd its ghost object in `shm`
    /// (one per file, whichever fds and mappings share it).
    pub fn link_ghosts(&mut self, shm: &mut crate::mm::ShmemTable) -> Result<()> {
        for g in std::mem::take(&mut self.ghosts) {
            let unsupported = |reason: &str| Error::Unsupported {
                pid: g.pid,
                comm: g.comm.clone(),
                object: format!("fd {} ({})", g.fd, ckpt_image::escape(&g.link)),
                reason: reason.into(),
            };
            let path = g.link.strip_suffix(b" (deleted)").unwrap_or(&g.link);
            let source = format!("/proc/{}/fd/{}", g.pid, g.fd);
            let obj = shm.ghost(&unsupported, g.dev, g.ino, path, source)?;
            self.files[g.file_id as usize - 1].obj = obj;
        }
        Ok(())
    }
}

/// Open descriptions created by the restorer, by file id, as fd numbers in
/// the restorer (all above every fd number of the image).
pub struct Opened {
    pub by_id: Vec<(u32, i32)>,
    /// /proc files, opened by each process in `install` (the pid they are
    /// about does not exist yet when `open_all` runs).
    pub deferred: Vec<File>,
    /// Every fd of `by_id` is at least this.
    pub base: i32,
}

impl Opened {
    pub fn fd_of(&self, id: u32) -> Option<i32> {
        self.by_id.iter().find(|x| x.0 == id).map(|x| x.1)
    }
    pub fn all(&self) -> impl Iterator<Item = i32> + '_ {
        self.by_id.iter().map(|x| x.1)
    }
}

/// Opens one description at an fd >= `base` in the calling process.
fn reopen(path: &[u8], flags: i32, base: i32) -> std::io::Result<i32> {
    let fd = sys::open_raw(path, (flags & REOPEN_FLAGS) | libc::O_CLOEXEC, 0)?;
    let high = sys::dup_above(fd, base);
    sys::close(fd);
    high
}

/// A pipe whose other end was held outside the checkpointed tree (say the
/// shell or harness that reads its output) still exists while that holder
/// lives: find it by inode and open both ends of that very pipe, so the
/// restored tree talks to the same reader or writer. Its buffer still holds
/// whatever was in flight, so nothing is refilled. Pipes that only the
/// tree held died with it and are created anew. The holder's fd is opened
/// as `fs` (an unauthenticated image reaches only its owner's pipes).
fn reconnect_pipe(p: &Pipe, base: i32, fs: Option<&sys::FsIds>) -> Option<(i32, i32)> {
    let want = format!("pipe:[{}]", p.ino);
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let path = fd.path();
            if std::fs::read_link(&path)
                .ok()
                .is_some_and(|l| l.as_os_str().as_bytes() == want.as_bytes())
            {
                let path = path.as_os_str().as_bytes();
                // Opening a pipe through /proc gives a new description of
                // the same pipe; O_RDWR never blocks, then each end is
                // reopened with its own mode from it.
                let both =
                    sys::with_fs_ids(fs, || reopen(path, libc::O_RDWR | libc::O_NONBLOCK, base))
                        .ok()?;
                let link = format!("/proc/self/fd/{both}");
                let r = reopen(link.as_bytes(), libc::O_RDONLY | libc::O_NONBLOCK, base);
                let w = reopen(link.as_bytes(), libc::O_WRONLY | libc::O_NONBLOCK, base);
                sys::close(both);
                return match (r, w) {
                    (Ok(r), Ok(w)) => Some((r, w)),
                    (r, w) => {
                        for fd in [r, w].into_iter().flatten() {
                            sys::close(fd);
                        }
                        None
                    }
                };
            }
        }
    }
    None
}

/// What `open_all` opens, and how.
pub struct OpenArgs<'a> {
    pub files: &'a [File],
    /// Owner and times of removed directories and FIFOs.
    pub attrs: &'a [FileAttr],
    /// (path, fd) of the removed directories restart recreated.
    pub removed_dirs: &'a [(Vec<u8>, i32)],
    pub pipes: &'a [Pipe],
    /// The memfd restored for a shared memory object.
    pub shmem_fd: &'a dyn Fn(u32) -> Option<i32>,
    /// Every fd opened is at or above it.
    pub base: i32,
    /// Paths of the image are opened as these (see `trust`).
    pub fs: Option<&'a sys::FsIds>,
    /// A process holding a file, named in errors.
    pub user_of: &'a dyn Fn(u32) -> Pid,
}

/// Opens every saved description (and creates every pipe) in the calling
/// process, at fd numbers >= `a.base`.
pub fn open_all(a: &OpenArgs) -> Result<Opened> {
    // Removed FIFOs are made again for as long as their descriptions take
    // to open (by path), then removed again, whatever happens.
    let mut made = Vec::new();
    let r = open_all_inner(a, &mut made);
    for path in made {
        let _ = sys::unlink(&path);
    }
    r
}

/// Makes the removed FIFO of `f` again (once per path), with its mode
/// and owner.
fn remake_fifo(f: &File, attrs: &[FileAttr], made: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    if made.contains(&f.path.0) {
        return Ok(());
    }
    sys::mkfifo(&f.path.0, 0o600)?;
    made.push(f.path.0.clone());
    let fd = sys::open_raw(&f.path.0, libc::O_PATH | libc::O_CLOEXEC, 0)?;
    let via = format!("/proc/self/fd/{fd}");
    // fchown/fchmod need a real open; a FIFO opened O_RDWR never blocks.
    let set = sys::open_raw(
        via.as_bytes(),
        libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        0,
    )
    .and_then(|rw| {
        let owner = attrs
            .iter()
            .find(|a| a.file_id == f.id)
            .map_or(Ok(()), |a| sys::fchown(rw, a.uid, a.gid));
        let r = owner.and_then(|_| sys::fchmod(rw, f.mode & 0o7777));
        sys::close(rw);
        r
    });
    sys::close(fd);
    set
}

fn open_all_inner(a: &OpenArgs, made: &mut Vec<Vec<u8>>) -> Result<Opened> {
    let OpenArgs {
        files,
        attrs,
        removed_dirs,
        pipes,
        shmem_fd,
        base,
        fs,
        user_of,
    } = *a;
    let err = |what: String, e: std::io::Error| Error::Sys {
        pid: std::process::id() as Pid,
        what,
        source: e,
    };
    let who = fs.map(|f| format!(" as uid {}", f.uid)).unwrap_or_default();
    let open_err = |f: &File, what: &str, e: std::io::Error| Error::Sys {
        pid: user_of(f.id),
        what: format!("cannot open {what}{}{who}", f.path),
        source: e,
    };
    let mut by_id = Vec::new();
    // Memfd objects whose own description a file took.
    let mut memfd_taken: Vec<u32> = Vec::new();
    // Unlinked file id -> the recreated inode, open until every
    // description of it is.
    let mut inodes: Vec<(u32, i32)> = Vec::new();
    let mut deferred = Vec::new();
    // Pipe id -> (read end, write end) in this process.
    let mut pipe_ends: Vec<(u32, i32, i32)> = Vec::new();
    for p in pipes {
        if let Some((r, w)) = reconnect_pipe(p, base, fs) {
            pipe_ends.push((p.id, r, w));
            continue;
        }
        let (r, w) = sys::pipe().map_err(|e| err("pipe".into(), e))?;
        let (r2, w2) = (
            sys::dup_above(r, base).map_err(|e| err("dup".into(), e))?,
            sys::dup_above(w, base).map_err(|e| err("dup".into(), e))?,
        );
        sys::close(r);
        sys::close(w);
        if p.size > 0 {
            let _ = sys::set_pipe_size(w2, p.size);
        }
        sys::fcntl_set(w2, libc::F_SETFL, libc::O_NONBLOCK).map_err(|e| err("fcntl".into(), e))?;
        sys::write_all(w2, &p.data.0).map_err(|e| {
            err(
                format!("refill pipe {} with {} bytes", p.id, p.data.0.len()),
                e,
            )
        })?;
        pipe_ends.push((p.id, r2, w2));
    }
    for f in files {
        let mut f = f.clone();
        if f.kind != FILE_DIR && f.kind != FILE_DIR_REMOVED {
            // An O_TMPFILE file reports O_DIRECTORY among its flags.
            f.flags &= !(libc::O_DIRECTORY as u32);
        }
        let f = &f;
        let opath = f.flags & libc::O_PATH as u32 != 0;
        if f.kind == FILE_PROC {
            deferred.push(f.clone());
            continue;
        }
        let fd = match f.kind {
            FILE_PIPE | FILE_FIFO | FILE_FIFO_REMOVED => {
                let &(_, r, w) = pipe_ends.iter().find(|x| x.0 == f.obj).ok_or_else(|| {
                    Error::Refused(format!("file {} names a missing pipe {}", f.id, f.obj))
                })?;
                if f.kind == FILE_FIFO_REMOVED {
                    sys::with_fs_ids(fs, || remake_fifo(f, attrs, made))
                        .map_err(|e| err(format!("make removed FIFO {} again", f.path), e))?;
                }
                if f.kind != FILE_PIPE {
                    // Reopening the path gives the FIFO itself; its buffer
                    // was saved with the pipe object, refill it once.
                    let mode = f.flags as i32 & libc::O_ACCMODE;
                    let helper = sys::with_fs_ids(fs, || {
                        reopen(&f.path.0, libc::O_RDWR | libc::O_NONBLOCK, base)
                    })
                    .map_err(|e| open_err(f, "FIFO ", e))?;
                    let fd = reopen(
                        format!("/proc/self/fd/{helper}").as_bytes(),
                        mode | libc::O_NONBLOCK,
                        base,
                    )
                    .map_err(|e| err(format!("open FIFO {}", f.path), e))?;
                    let data_pipe = r;
                    sys::fcntl_set(data_pipe, libc::F_SETFL, libc::O_NONBLOCK)
                        .map_err(|e| err("fcntl".into(), e))?;
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = sys::read(data_pipe, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        let _ = sys::write_all(helper, &buf[..n]);
                    }
                    // Keep the helper open until the tree holds its own ends.
                    by_id.push((0, helper));
                    fd
                } else {
                    let end = if f.flags as i32 & libc::O_ACCMODE == libc::O_RDONLY {
                        r
                    } else {
                        w
                    };
                    if by_id.iter().any(|&(_, x)| x == end) {
                        // A second description of the same end.
                        reopen(
                            format!("/proc/self/fd/{end}").as_bytes(),
                            f.flags as i32,
                            base,
                        )
                        .map_err(|e| err("reopen pipe end".into(), e))?
                    } else {
                        end
                    }
                }
            }
            FILE_MEMFD => {
                let m = shmem_fd(f.obj).ok_or_else(|| {
                    Error::Refused(format!(
                        "memfd file {} names a missing object {}",
                        f.id, f.obj
                    ))
                })?;
                // The file memfd_create made is no writer that stops an
                // execveat of it (ETXTBSY) but a read-write reopen is: the
                // first read-write description gets that very file.
                if f.flags as i32 & libc::O_ACCMODE == libc::O_RDWR && !memfd_taken.contains(&f.obj)
                {
                    memfd_taken.push(f.obj);
                    sys::dup_above(m, base).map_err(|e| err("dup memfd".into(), e))?
                } else {
                    reopen(
                        format!("/proc/self/fd/{m}").as_bytes(),
                        f.flags as i32,
                        base,
                    )
                    .map_err(|e| err(format!("reopen memfd {}", f.path), e))?
                }
            }
            FILE_UNLINKED if f.obj != 0 => {
                let m = shmem_fd(f.obj).ok_or_else(|| {
                    Error::Refused(format!(
                        "unlinked file {} names a missing object {}",
                        f.id, f.obj
                    ))
                })?;
                // A file made with O_TMPFILE keeps O_DIRECTORY in its flags.
                reopen(
                    format!("/proc/self/fd/{m}").as_bytes(),
                    f.flags as i32 & !libc::O_DIRECTORY,
                    base,
                )
                .map_err(|e| err(format!("reopen unlinked file {}", f.path), e))?
            }
            // Images before ghost objects carried the content in the record.
            FILE_DIR_REMOVED => {
                let &(_, dir) = removed_dirs
                    .iter()
                    .find(|d| d.0 == f.path.0)
                    .ok_or_else(|| {
                        Error::Refused(format!("removed directory {} was not recreated", f.path))
                    })?;
                reopen(
                    format!("/proc/self/fd/{dir}").as_bytes(),
                    f.flags as i32 | libc::O_DIRECTORY,
                    base,
                )
                .map_err(|e| err(format!("reopen removed directory {}", f.path), e))?
            }
            FILE_UNLINKED => {
                let dir = match f.path.0.iter().rposition(|&c| c == b'/') {
                    Some(0) | None => b"/".to_vec(),
                    Some(i) => f.path.0[..i].to_vec(),
                };
                let tmp = sys::with_fs_ids(fs, || {
                    sys::open_raw(
                        &dir,
                        libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                        f.mode & 0o7777,
                    )
                })
                .map_err(|e| Error::Sys {
                    pid: user_of(f.id),
                    what: format!(
                        "cannot create an unlinked file in {}{who}",
                        ckpt_image::escape(&dir)
                    ),
                    source: e,
                })?;
                inodes.push((f.id, tmp));
                sys::write_all(tmp, &f.content.0)
                    .map_err(|e| err("write unlinked file".into(), e))?;
                // Owner before mode (chown clears set-id bits), times last
                // (writing sets them).
                if let Some(a) = attrs.iter().find(|a| a.file_id == f.id) {
                    sys::fchown(tmp, a.uid, a.gid)
                        .map_err(|e| err("set the owner of an unlinked file".into(), e))?;
                }
                sys::fchmod(tmp, f.mode & 0o7777)
                    .map_err(|e| err("set the mode of an unlinked file".into(), e))?;
                if let Some(a) = attrs.iter().find(|a| a.file_id == f.id) {
                    sys::futimens(
                        tmp,
                        (a.atime_sec, a.atime_nsec),
                        (a.mtime_sec, a.mtime_nsec),
                    )
                    .map_err(|e| err("set the times of an unlinked file".into(), e))?;
                }
                reopen(
                    format!("/proc/self/fd/{tmp}").as_bytes(),
                    f.flags as i32,
                    base,
                )
                .map_err(|e| err("reopen unlinked file".into(), e))?
            }
            _ => sys::with_fs_ids(fs, || reopen(&f.path.0, f.flags as i32, base))
                .map_err(|e| open_err(f, "", e))?,
        };
        if opath {
            // Nothing else applies to an O_PATH fd (fcntl F_SETFL and
            // lseek fail with EBADF).
            by_id.push((f.id, fd));
            continue;
        }
        let want = f.flags as i32 & SETFL_FLAGS;
        sys::fcntl_set(fd, libc::F_SETFL, want)
            .map_err(|e| err(format!("set flags of {}", f.path), e))?;
        if matches!(f.kind, FILE_REGULAR | FILE_UNLINKED | FILE_MEMFD) {
            sys::lseek(fd, f.pos).map_err(|e| err(format!("seek {} to {}", f.path, f.pos), e))?;
        } else if matches!(f.kind, FILE_DIR | FILE_DIR_REMOVED) && f.pos != 0 {
            // A directory position is a cookie; best effort.
            let _ = sys::lseek(fd, f.pos);
        }
        by_id.push((f.id, fd));
    }
    for (_, tmp) in inodes {
        sys::close(tmp);
    }
    // Pipe ends no description uses.
    for (_, r, w) in pipe_ends {
        for e in [r, w] {
            if !by_id.iter().any(|&(_, x)| x == e) {
                by_id.push((0, e));
            }
        }
    }
    Ok(Opened {
        by_id,
        deferred,
        base,
    })
}

/// Opens a /proc file of the image in a restored process, once the pid it
/// is about exists (a sibling or a child may still be being created; every
/// process of the tree is created without waiting for any other's setup).
fn open_proc(f: &File, base: i32) -> std::result::Result<i32, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match reopen(&f.path.0, f.flags as i32, base) {
            Ok(fd) => {
                if f.pos != 0 {
                    sys::lseek(fd, f.pos)
                        .map_err(|e| format!("seek {} to {}: {e}", f.path, f.pos))?;
                }
                return Ok(fd);
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(format!("open {}: {e}", f.path)),
        }
    }
}

/// Installs a process's fds from the inherited descriptions (in a restore
/// child). Closes every other fd but `keep`.
/// `shared`: other processes use this fd table too (CLONE_FILES) and may
/// still fork children that need the descriptions: they stay open, and
/// the restorer closes them once every process of the table is rebuilt.
pub fn install(
    fds: &[Fd],
    opened: &Opened,
    keep: &[i32],
    shared: bool,
) -> std::result::Result<(), String> {
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("list own fds: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let sources: Vec<i32> = opened.all().collect();
    for fd in open {
        if !keep.contains(&fd) && !sources.contains(&fd) {
            sys::close(fd);
        }
    }
    let mut own: Vec<(u32, i32)> = Vec::new();
    for d in fds {
        if let Some(f) = opened.deferred.iter().find(|f| f.id == d.file_id) {
            if !own.iter().any(|x| x.0 == f.id) {
                own.push((f.id, open_proc(f, opened.base)?));
            }
        }
    }
    for d in fds {
        let src = own
            .iter()
            .find(|x| x.0 == d.file_id)
            .map(|x| x.1)
            .or_else(|| opened.fd_of(d.file_id))
            .ok_or_else(|| format!("fd {} names unknown file {}", d.fd, d.file_id))?;
        sys::dup2(src, d.fd as i32).map_err(|e| format!("dup2 to fd {}: {e}", d.fd))?;
        sys::fcntl_set(
            d.fd as i32,
            libc::F_SETFD,
            if d.cloexec { libc::FD_CLOEXEC } else { 0 },
        )
        .map_err(|e| format!("set FD_CLOEXEC on fd {}: {e}", d.fd))?;
    }
    for (i, s) in sources.iter().chain(own.iter().map(|x| &x.1)).enumerate() {
        if shared && i < sources.len() {
            continue;
        }
        let s = *s;
        if !keep.contains(&s) && !fds.iter().any(|d| d.fd as i32 == s) {
            sys::close(s);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_memory_devices_are_reopened() {
        for minor in [3, 5, 7, 8, 9] {
            assert!(chr_verdict(1, minor).is_ok(), "1:{minor}");
        }
        // /dev/mem, /dev/kmsg and /dev/port are memory-major too, but not stateless.
        for minor in [1, 2, 4, 11] {
            assert!(chr_verdict(1, minor).is_err(), "1:{minor}");
        }
        let term = |maj, min| {
            let (what, reason) = chr_verdict(maj, min).unwrap_err();
            assert!(
                reason.contains("terminals are not supported"),
                "{maj}:{min}"
            );
            what
        };
        assert_eq!(term(136, 3), "a pseudo-terminal");
        assert_eq!(term(143, 1000), "a pseudo-terminal");
        assert_eq!(term(5, 0), "the controlling terminal");
        assert_eq!(term(5, 1), "the console");
        assert_eq!(term(5, 2), "the pseudo-terminal master multiplexer");
        assert_eq!(term(4, 1), "a virtual console or serial terminal");
        let (what, reason) = chr_verdict(10, 200).unwrap_err(); // /dev/net/tun
        assert_eq!(what, "a character device");
        assert!(reason.contains("/dev/null"));
    }
}
