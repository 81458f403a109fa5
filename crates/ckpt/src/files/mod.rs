//! File descriptors: the fd tables of a tree and the open file descriptions
//! they name, each saved and restored by the module of its kind (`kind`,
//! `KINDS`). This module only walks fds and kinds: offsets, status flags,
//! FD_CLOEXEC, signal owners, and the sharing of one open file description
//! by several fds and processes (found with kcmp, see `ids`).
//!
//! Restore opens every description once in ckpt itself; the restored
//! processes inherit them through fork and `dup2` them into place, so
//! sharing comes back for free. Each description is held at the fd number
//! of its first holder where it can be (`slots`), else above every fd
//! number the image uses: so the restorer needs about as many fd numbers
//! as the image, not twice as many, and a single process's fds are
//! already in place. A process whose numbers hold other descriptions moves
//! those out of the way first (`install`).

pub mod kind;

mod epoll;
mod eventfd;
pub mod ghost;
mod inotify;
mod memfd;
mod netlink;
mod path;
mod pidfd;
mod pipe;
mod procfile;
mod signalfd;
pub mod sockopt;
mod tcp;
pub(crate) mod tcp_fin;
mod tcp_guard;
mod timerfd;
mod udp;
mod unix;

use crate::error::{Ctx, Error, Result};
use crate::ids::{IdSpace, ObjId};
use crate::model::{Image, ProcessImage};
use crate::procfs;
use crate::sys::{self, Pid};
use ckpt_image::*;
use kind::{Check, DumpCx, FdKind, InstallCx, OpenCx, Probe, ResumeCx, Stage};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

pub use ghost::removed_dirs;
pub use path::{chr_verdict, proc_pid};

/// Every kind of open file ckpt saves, in the order they are asked whether
/// they take an fd (the most specific first).
pub static KINDS: &[&dyn FdKind] = &[
    &procfile::ProcFile,
    &path::OPath,
    &pipe::PipeKind,
    &memfd::Memfd,
    &ghost::Ghost,
    &eventfd::EventFd,
    &epoll::EpollKind,
    &timerfd::TimerFd,
    &signalfd::SignalFd,
    &inotify::Inotify,
    &pidfd::PidFd,
    &udp::Udp,
    &netlink::Netlink,
    &unix::UnixKind,
    &tcp::Tcp,
    &path::ByPath,
];

/// The module that restores `File` kind `k`.
pub fn kind_of(k: u32) -> Option<&'static dyn FdKind> {
    KINDS.iter().copied().find(|x| x.kinds().contains(&k))
}

/// The module that takes the fd `p` describes, if any does.
fn kind_for(p: &Probe) -> Option<&'static dyn FdKind> {
    KINDS.iter().copied().find(|x| x.matches(p))
}

/// The open file descriptions of a whole tree, filled process by process.
pub struct FileTable {
    pub files: Vec<File>,
    pub cx: DumpCx,
    /// Owners and signals of descriptions that have them.
    pub owners: Vec<FileOwner>,
    /// Processes saved so far, and those that share their parent's fd table.
    dumped: Vec<Pid>,
    shares_parent: Vec<Pid>,
}

impl FileTable {
    /// A table for the tree of these pids, drawing ids from `ids`.
    pub fn new(tree: Vec<Pid>, ids: IdSpace) -> FileTable {
        FileTable {
            files: Vec::new(),
            cx: DumpCx::new(tree, ids),
            owners: Vec::new(),
            dumped: Vec::new(),
            shares_parent: Vec::new(),
        }
    }

    /// The saved description `id`.
    pub fn file_mut(&mut self, id: u32) -> Option<&mut File> {
        self.files.iter_mut().find(|f| f.id == id)
    }

    /// Reads every fd of `pid` into the table; returns its fd records.
    /// Errors name the fd and why it cannot be saved.
    pub fn dump(&mut self, pid: Pid, comm: &str) -> Result<Vec<Fd>> {
        self.check_table(pid, comm)?;
        self.dumped.push(pid);
        let mut fds = Vec::new();
        for fd in procfs::fds(pid).ctx(pid, || "list fds".into())? {
            let Ok(mut link) = procfs::link(pid, &format!("fd/{fd}")) else {
                continue; // closed meanwhile
            };
            let mut meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                .ctx(pid, || format!("stat fd {fd}"))?;
            let mut info =
                procfs::fdinfo(pid, fd).ctx(pid, || format!("read fdinfo of fd {fd}"))?;
            if self.cx.opts.internal.stand_ins.contains(&(pid, fd)) {
                // The stream a self-checkpoint writes to (see `self_checkpoint`).
                link = b"/dev/null".to_vec();
                meta = std::fs::metadata("/dev/null").ctx(pid, || "stat /dev/null".into())?;
                info.flags = (info.flags & libc::O_CLOEXEC as u32) | libc::O_WRONLY as u32;
                info.pos = 0;
                info.lock = None;
                info.text.clear();
            }
            let p = Probe::new(pid, comm, fd, &link, &meta, &info);
            // Its locks (`lock:` lines) are saved by `locks`.
            let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
            let found = self
                .cx
                .fds
                .find(pid, fd, meta.dev(), meta.ino())
                .ctx(pid, || format!("kcmp fd {fd}"))?;
            let id = match found.shared() {
                Some(id) => {
                    // (A process on its parent's fd table holds the very same fds.)
                    if !self.shares_parent.contains(&pid) {
                        let f = self.files.iter().find(|f| f.id == id.0).expect("saved");
                        if let Some(k) = kind_of(f.kind) {
                            k.shared(&mut self.cx, &p, f)?;
                        }
                    }
                    id
                }
                None => self.add(&p)?,
            };
            self.cx.fds.note(found, id);
            if info.lock.is_some() {
                self.cx.fds.note_locked(pid, fd);
            }
            fds.push(Fd {
                fd: fd as u32,
                file_id: id.0,
                cloexec,
            });
        }
        Ok(fds)
    }

    /// Saves a description met for the first time, through its kind.
    fn add(&mut self, p: &Probe) -> Result<ObjId> {
        let Some(k) = kind_for(p) else {
            return Err(p.unsupported(&unsupported_reason(p)));
        };
        let id = self.cx.ids.next();
        let mut f = File {
            id: id.0,
            flags: p.info.flags & !(libc::O_CLOEXEC as u32),
            pos: p.info.pos,
            mode: p.meta.mode(),
            rdev: p.meta.rdev(),
            size: p.meta.len(),
            path: crate::task::text(p.path),
            ..Default::default()
        };
        k.dump(&mut self.cx, p, &mut f)?;
        if !p.opath() {
            self.dump_owner(p, id)?;
        }
        self.files.push(f);
        Ok(id)
    }

    /// Saves the F_SETOWN owner and F_SETSIG signal of a description, if
    /// it has either; an owner outside the tree is refused (after restart
    /// that pid would be another process or none).
    fn dump_owner(&mut self, p: &Probe, id: ObjId) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mine = self
            .cx
            .fetch_fd(p.pid, p.fd)
            .map_err(|e| p.sys("pidfd_getfd", e))?;
        let (kind, owner, sig) =
            sys::file_owner(mine.as_raw_fd()).map_err(|e| p.sys("F_GETOWN_EX", e))?;
        if owner == 0 && sig == 0 {
            return Ok(());
        }
        if owner != 0 {
            let tree = &self.cx.tree;
            let known = match kind {
                // F_OWNER_TID, F_OWNER_PID: a process (main thread) of the tree.
                0 | 1 => tree.contains(&owner),
                // F_OWNER_PGRP: a group some process of the tree is in.
                2 => tree
                    .iter()
                    .any(|&q| procfs::stat(q).is_ok_and(|s| s.pgrp == owner)),
                _ => false,
            };
            if !known {
                return Err(p.unsupported(&format!("its signal owner (F_SETOWN) {owner} is not a process or group of the checkpointed tree (or is a thread other than a main one)")));
            }
        }
        self.owners.push(FileOwner {
            file_id: id.0,
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

    /// Lets every kind finish once the whole tree is saved (memfds and
    /// unlinked files get their shared memory objects in `shm`, references
    /// between descriptions are resolved).
    pub fn finish(&mut self, shm: &mut crate::mm::ShmemTable) -> Result<()> {
        for k in KINDS {
            k.finish(&mut self.cx, &mut self.files, shm)?;
        }
        Ok(())
    }
}

/// Why an fd no kind takes is refused.
fn unsupported_reason(p: &Probe) -> String {
    use std::os::unix::fs::FileTypeExt;
    let what = if p.anon_inode() == Some(b"[fanotify]") {
        // (Its marks and queued permission events cannot be read back.)
        return "a fanotify instance: fanotify is not supported yet; close it before the checkpoint".into();
    } else if let Some(name) = p.anon_inode() {
        format!(
            "an anonymous inode ({})",
            ckpt_image::escape(name.strip_prefix(b"[").unwrap_or(name)).trim_end_matches(']')
        )
    } else if p.meta.file_type().is_socket() {
        sockopt::describe(p)
    } else if p.meta.file_type().is_block_device() {
        "a block device".into()
    } else {
        "this kind of file".into()
    };
    // The list comes from the kinds themselves, so it stays true.
    let kinds: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
    format!(
        "{what} cannot be saved yet; ckpt saves these kinds of open files: {}",
        kinds.join(", ")
    )
}

/// Lets every kind see the end of a checkpoint whose image was written
/// (`FdKind::after_checkpoint`): the tree was killed, or keeps running.
pub fn after_checkpoint(cx: &mut DumpCx, killed: bool) {
    for k in KINDS {
        k.after_checkpoint(cx, killed);
    }
}

/// Checks every description of the image through its kind.
pub fn validate(img: &Image, fs: Option<&sys::FsIds>) -> std::result::Result<(), String> {
    let c = Check::new(img, fs);
    for f in &img.files {
        let k =
            kind_of(f.kind).ok_or_else(|| format!("file {} has unknown kind {}", f.id, f.kind))?;
        k.validate(&c, f)
            .map_err(|e| format!("{} {} {e}", k.name(), f.path))?;
    }
    Ok(())
}

/// Open descriptions created by the restorer, by file id, as fd numbers in
/// the restorer (all above every fd number of the image).
pub struct Opened {
    pub by_id: Vec<(u32, i32)>,
    /// The first fd of each id of `by_id` (10,000 descriptions are looked
    /// up by each process that installs them).
    index: std::collections::HashMap<u32, i32>,
    /// Descriptions each process opens itself in `install` (a /proc file
    /// is about a pid that does not exist yet when `open_all` runs).
    pub deferred: Vec<File>,
    /// Every fd of `by_id` is at least this.
    pub base: i32,
}

impl Opened {
    pub fn new(by_id: Vec<(u32, i32)>, deferred: Vec<File>, base: i32) -> Opened {
        let mut index = std::collections::HashMap::with_capacity(by_id.len());
        for &(id, fd) in &by_id {
            index.entry(id).or_insert(fd);
        }
        Opened {
            by_id,
            index,
            deferred,
            base,
        }
    }

    pub fn fd_of(&self, id: u32) -> Option<i32> {
        self.index.get(&id).copied()
    }
    pub fn all(&self) -> impl Iterator<Item = i32> + '_ {
        self.by_id.iter().map(|x| x.1)
    }
}

/// What `open_all` opens, and how.
pub struct OpenArgs<'a> {
    pub img: &'a Image,
    /// (path, fd) of the removed directories restart recreated.
    pub removed_dirs: &'a [(Vec<u8>, i32)],
    /// The memfd restored for a shared memory object.
    pub shmem_fd: &'a dyn Fn(u32) -> Option<i32>,
    /// Every fd opened is at or above it.
    pub base: i32,
    /// Paths of the image are opened as these (see `trust`).
    pub fs: Option<&'a sys::FsIds>,
    /// A process holding a file, named in errors.
    pub user_of: &'a dyn Fn(u32) -> Pid,
    /// See `RestartOptions::inherit_stdio`.
    pub inherit_stdio: bool,
}

/// Opens every saved description in the calling process, at fd numbers
/// >= `a.base`, kind by kind and stage by stage.
pub fn open_all(a: &OpenArgs) -> Result<Opened> {
    let mut cx = OpenCx {
        img: a.img,
        base: a.base,
        fs: a.fs,
        shmem_fd: a.shmem_fd,
        user_of: a.user_of,
        removed_dirs: a.removed_dirs,
        by_id: Vec::new(),
        deferred: Vec::new(),
        made: Vec::new(),
        slots: slots(a.img, a.base),
        inherit_stdio: a.inherit_stdio,
    };
    let r = open_stages(&mut cx);
    // Paths made for the opening (removed FIFOs) go again, whatever happens.
    for path in std::mem::take(&mut cx.made) {
        let _ = sys::unlink(&path);
    }
    if r.is_err() {
        for &(_, fd) in &cx.by_id {
            sys::close(fd);
        }
    }
    r?;
    Ok(Opened::new(cx.by_id, cx.deferred, a.base))
}

/// The fd number each description gets in the restorer: the one it has in
/// the first process holding it (image order), from 3 (the restorer's own
/// stdio stays) up to below `base`, each number given once. None when fd
/// tables are shared (CLONE_FILES): a process sharing one may fork after
/// another has installed its fds over those numbers.
pub fn slots(img: &Image, base: i32) -> std::collections::HashMap<u32, i32> {
    let mut slots = std::collections::HashMap::new();
    if img.processes.iter().any(|p| p.files_shared.is_some()) {
        return slots;
    }
    let mut taken = std::collections::HashSet::new();
    for d in img.processes.iter().flat_map(|p| p.fds.iter()) {
        let n = d.fd as i32;
        if (3..base).contains(&n) && !slots.contains_key(&d.file_id) && taken.insert(n) {
            slots.insert(d.file_id, n);
        }
    }
    slots
}

fn open_stages(cx: &mut OpenCx) -> Result<()> {
    let img = cx.img;
    for stage in [Stage::Plain, Stage::AfterTargets] {
        for k in KINDS.iter().filter(|k| k.stage() == stage) {
            let mine: Vec<&File> = img
                .files
                .iter()
                .filter(|f| k.kinds().contains(&f.kind))
                .collect();
            k.open(cx, &mine)?;
            to_slots(cx);
        }
    }
    Ok(())
}

/// Moves the descriptions a kind opened above the base to their slots.
/// Not an fd a kind also keeps as a temporary (id 0) or under two ids.
fn to_slots(cx: &mut OpenCx) {
    let mut uses: std::collections::HashMap<i32, (usize, bool)> = Default::default();
    for &(id, fd) in &cx.by_id {
        let u = uses.entry(fd).or_default();
        u.0 += 1;
        u.1 |= id == 0;
    }
    for i in 0..cx.by_id.len() {
        let (id, fd) = cx.by_id[i];
        if id != 0 && fd >= cx.base && uses.get(&fd) == Some(&(1, false)) {
            cx.by_id[i].1 = cx.place(id, fd);
        }
    }
}

/// Installs a process's fds from the inherited descriptions (in a restore
/// child), then lets each kind do its per-process step. Closes every other
/// fd but `keep`.
/// `shared`: other processes use this fd table too (CLONE_FILES) and may
/// still fork children that need the descriptions: they stay open, and
/// the restorer closes them once every process of the table is rebuilt.
pub fn install(
    img: &Image,
    p: &ProcessImage,
    opened: &Opened,
    keep: &[i32],
    shared: bool,
) -> std::result::Result<(), String> {
    let fds = &p.fds;
    let sources: Vec<i32> = opened.all().collect();
    let held: std::collections::HashSet<i32> = sources.iter().chain(keep).copied().collect();
    sys::close_all_but(&held);
    let mut own: Vec<(u32, i32)> = Vec::new();
    for d in fds {
        if let Some(f) = opened.deferred.iter().find(|f| f.id == d.file_id) {
            if !own.iter().any(|x| x.0 == f.id) {
                let k = kind_of(f.kind).ok_or_else(|| format!("file {} has no kind", f.id))?;
                own.push((f.id, k.open_in_process(f, opened.base)?));
            }
        }
    }
    // A description held at a number this process needs for another one
    // moves out of the way first (`slots`: the restorer holds descriptions
    // at their first holder's numbers).
    let want: std::collections::HashMap<i32, u32> =
        fds.iter().map(|d| (d.fd as i32, d.file_id)).collect();
    let high = fds
        .iter()
        .map(|d| d.fd as i32)
        .chain(sources.iter().copied())
        .chain(keep.iter().copied())
        .max()
        .unwrap_or(2)
        + 1;
    let files: std::collections::HashMap<u32, &File> =
        img.files.iter().map(|f| (f.id, f)).collect();
    let mut needed: std::collections::HashSet<u32> = want.values().copied().collect();
    for id in want.values() {
        if let Some(k) = files.get(id).and_then(|f| kind_of(f.kind)) {
            needed.extend(k.needs(img, files[id]));
        }
    }
    // (A description this process does not need is simply overwritten:
    // its children are forked already.)
    let mut moved: std::collections::HashMap<i32, i32> = Default::default();
    for &(id, fd) in &opened.by_id {
        let clash = matches!(want.get(&fd), Some(&w) if w != id);
        if clash && needed.contains(&id) && !moved.contains_key(&fd) {
            let to = sys::dup_above(fd, high)
                .map_err(|e| format!("move description {id} off fd {fd}: {e}"))?;
            moved.insert(fd, to);
        }
    }
    let at = |fd: i32| moved.get(&fd).copied().unwrap_or(fd);
    let source = |id: u32| {
        own.iter()
            .find(|x| x.0 == id)
            .map(|x| x.1)
            .or_else(|| opened.fd_of(id).map(at))
    };
    for d in fds {
        let src = source(d.file_id)
            .ok_or_else(|| format!("fd {} names unknown file {}", d.fd, d.file_id))?;
        sys::dup2(src, d.fd as i32).map_err(|e| format!("dup2 to fd {}: {e}", d.fd))?;
        sys::fcntl_set(
            d.fd as i32,
            libc::F_SETFD,
            if d.cloexec { libc::FD_CLOEXEC } else { 0 },
        )
        .map_err(|e| format!("set FD_CLOEXEC on fd {}: {e}", d.fd))?;
    }
    let cx = InstallCx {
        img,
        p,
        source: &source,
    };
    let mut done = std::collections::HashSet::new();
    for d in fds {
        if !done.insert(d.file_id) {
            continue;
        }
        let f = *files
            .get(&d.file_id)
            .ok_or_else(|| format!("fd {} names unknown file {}", d.fd, d.file_id))?;
        if let Some(k) = kind_of(f.kind) {
            k.install(&cx, f, ObjId(f.id))?;
        }
    }
    for (i, s) in sources.iter().chain(own.iter().map(|x| &x.1)).enumerate() {
        if shared && i < sources.len() {
            continue;
        }
        let s = if i < sources.len() { at(*s) } else { *s };
        if !keep.contains(&s) && !want.contains_key(&s) {
            sys::close(s);
        }
    }
    Ok(())
}

/// Lets every kind touch its descriptions once the whole tree is rebuilt,
/// just before it runs (`FdKind::resume`).
pub fn resume(img: &Image) -> Result<()> {
    let cx = ResumeCx { img };
    for f in &img.files {
        if let Some(k) = kind_of(f.kind) {
            k.resume(&cx, f)?;
        }
    }
    Ok(())
}

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

/// Opens one description (close-on-exec) at the lowest free fd of the
/// calling process, with the status flags of `flags` it can be opened with.
pub(crate) fn open_desc(path: &[u8], flags: i32) -> std::io::Result<i32> {
    sys::open_raw(path, (flags & REOPEN_FLAGS) | libc::O_CLOEXEC, 0)
}

/// Opens one description at an fd >= `base` in the calling process.
pub(crate) fn reopen(path: &[u8], flags: i32, base: i32) -> std::io::Result<i32> {
    let fd = open_desc(path, flags)?;
    let high = sys::dup_above(fd, base);
    sys::close(fd);
    high
}

/// Reopens the description behind fd `fd` of this process (a new
/// description of the same file) at an fd >= `base`.
pub(crate) fn reopen_fd(fd: i32, flags: i32, base: i32) -> std::io::Result<i32> {
    reopen(format!("/proc/self/fd/{fd}").as_bytes(), flags, base)
}

/// Owner and times of file `id`, for what restart recreates.
pub(crate) fn file_attr(id: u32, meta: &std::fs::Metadata) -> FileAttr {
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

/// The path of `f` names the very file saved: refuses a file renamed or
/// replaced over since it was opened (reopening the path would give
/// another file).
pub(crate) fn same_path(p: &Probe) -> Result<()> {
    match std::fs::metadata(std::ffi::OsStr::from_bytes(p.path)) {
        Ok(m) if m.dev() == p.meta.dev() && m.ino() == p.meta.ino() => Ok(()),
        _ => Err(p.unsupported(
            "its path now names another file (renamed or replaced over); cannot reopen it",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The kind that would take `fd` of this process.
    fn kind_name(fd: i32) -> Option<&'static str> {
        let me = std::process::id() as Pid;
        let link = procfs::link(me, &format!("fd/{fd}")).unwrap();
        let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap();
        let info = procfs::fdinfo(me, fd).unwrap();
        kind_for(&Probe::new(me, "test", fd, &link, &meta, &info)).map(|k| k.name())
    }

    #[test]
    fn fds_are_dispatched_to_their_kind() {
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(kind_name(file.as_raw_fd()), Some("open file"));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(kind_name(null.as_raw_fd()), Some("open file"));
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(kind_name(r.as_raw_fd()), Some("pipe"));
        let ev = sys::eventfd(0).unwrap();
        assert_eq!(kind_name(ev), Some("eventfd"));
        sys::close(ev);
        let stat = std::fs::File::open(format!("/proc/{}/stat", std::process::id())).unwrap();
        assert_eq!(kind_name(stat.as_raw_fd()), Some("/proc file"));
        let opath = sys::open_raw(b"/proc/self/exe", libc::O_PATH | libc::O_CLOEXEC, 0).unwrap();
        assert_eq!(kind_name(opath), Some("O_PATH fd"));
        sys::close(opath);
        let dir = std::env::temp_dir().join(format!("ckpt-kinds-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        let gone = std::fs::File::open(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(kind_name(gone.as_raw_fd()), Some("removed file"));
        let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert_eq!(kind_name(sock.as_raw_fd()), Some("unix socket"));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(kind_name(udp.as_raw_fd()), Some("UDP socket"));
        // (An ICMP "ping" socket: no kind takes it.)
        let ping = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
        if let Ok(ping) = ping {
            assert_eq!(kind_name(ping), None);
            sys::close(ping);
        }
    }

    #[test]
    fn every_saved_kind_has_one_module() {
        for k in 0..=FILE_NETLINK {
            let owners = KINDS.iter().filter(|x| x.kinds().contains(&k)).count();
            assert!(owners <= 1, "file kind {k} has {owners} modules");
        }
        for k in KINDS {
            for &fk in k.kinds() {
                assert_eq!(kind_of(fk).map(|x| x.name()), Some(k.name()));
            }
        }
    }
}
