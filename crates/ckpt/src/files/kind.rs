//! The seam every kind of open file plugs into: one module per kind, with
//! its checkpoint, validation and restart side by side, behind `FdKind`.
//! The orchestrators (`files::FileTable`, `files::open_all`,
//! `files::install`) only walk `KINDS`; they name no kind.
//!
//! Adding a kind: write `files/<kind>.rs` implementing `FdKind`, declare
//! its records in `ckpt-image/src/records/objects.rs` (a `FILE_*` number
//! and record types in the object or per-process range), add it to `KINDS`,
//! and test it end to end. See docs/adding-a-kind.md.

use crate::error::{Error, Result};
use crate::ids::{FdIds, IdSpace, ObjId};
use crate::model::{Image, ProcessImage};
use crate::procfs;
use crate::sys::{self, Pid};
use ckpt_image::*;

/// What /proc says about one fd being saved.
pub struct Probe<'a> {
    pub pid: Pid,
    pub comm: &'a str,
    pub fd: i32,
    /// The fd's link as /proc shows it ("pipe:[12]", "anon_inode:[eventfd]", a path).
    pub link: &'a [u8],
    /// The link without " (deleted)".
    pub path: &'a [u8],
    pub deleted: bool,
    pub meta: &'a std::fs::Metadata,
    pub info: &'a procfs::FdInfo,
    /// (SO_DOMAIN, SO_TYPE, SO_PROTOCOL) when the fd is a socket: read once
    /// here, for every socket kind's `matches`.
    pub socket: Option<(i32, i32, i32)>,
}

impl<'a> Probe<'a> {
    /// The probe of fd `fd` of `pid` from its /proc link, stat and fdinfo.
    pub fn new(
        pid: Pid,
        comm: &'a str,
        fd: i32,
        link: &'a [u8],
        meta: &'a std::fs::Metadata,
        info: &'a procfs::FdInfo,
    ) -> Probe<'a> {
        let (path, deleted) = match link.strip_suffix(b" (deleted)") {
            Some(p) => (p, true),
            None => (link, false),
        };
        use std::os::unix::fs::FileTypeExt;
        let socket = if meta.file_type().is_socket() {
            super::sockopt::identity(pid, fd)
        } else {
            None
        };
        Probe {
            pid,
            comm,
            fd,
            link,
            path,
            deleted,
            meta,
            info,
            socket,
        }
    }

    /// The name of an anonymous inode ("eventfd", "[eventfd]"...), if it is one.
    pub fn anon_inode(&self) -> Option<&[u8]> {
        self.link.strip_prefix(b"anon_inode:")
    }

    pub fn opath(&self) -> bool {
        self.info.flags & libc::O_PATH as u32 != 0
    }

    /// The error refusing this fd, naming it and `reason`.
    pub fn unsupported(&self, reason: &str) -> Error {
        Error::Unsupported {
            pid: self.pid,
            comm: self.comm.into(),
            object: format!("fd {} ({})", self.fd, ckpt_image::escape(self.link)),
            reason: reason.into(),
        }
    }

    /// A system call about this fd failed.
    pub fn sys(&self, what: &str, e: std::io::Error) -> Error {
        Error::Sys {
            pid: self.pid,
            what: format!("{what} of fd {}", self.fd),
            source: e,
        }
    }

    /// The value of field `key` ("eventfd-count:") in the fdinfo.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.info
            .text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    }
}

/// What kinds share while the descriptions of a tree are saved.
pub struct DumpCx {
    /// The pids of the tree.
    pub tree: Vec<Pid>,
    pub ids: IdSpace,
    /// Every fd saved so far and its description's id.
    pub fds: FdIds,
    pub pipes: Vec<Pipe>,
    /// Owner and times of removed directories and FIFOs.
    pub attrs: Vec<FileAttr>,
    /// Records of kinds about shared objects (`Image::objects`).
    pub objects: Vec<AnyRecord>,
    /// Per-kind scratch that lives until `FdKind::finish`, keyed by kind name.
    pub scratch: Vec<(&'static str, Box<dyn std::any::Any>)>,
    /// What the caller of the checkpoint asked for.
    pub opts: crate::checkpoint::CheckpointOptions,
    /// A pidfd of the process being saved, to fetch its fds.
    pidfd: Option<(Pid, std::os::fd::OwnedFd)>,
    /// /proc/locks (see `locks::ProcLocks`).
    pub proc_locks: crate::locks::ProcLocks,
}

impl DumpCx {
    pub fn new(tree: Vec<Pid>, ids: IdSpace) -> DumpCx {
        DumpCx {
            tree,
            ids,
            fds: FdIds::default(),
            pipes: Vec::new(),
            attrs: Vec::new(),
            objects: Vec::new(),
            scratch: Vec::new(),
            opts: Default::default(),
            pidfd: None,
            proc_locks: Default::default(),
        }
    }

    /// A copy of fd `fd` of `pid` in ckpt (the same open file description).
    pub fn fetch_fd(&mut self, pid: Pid, fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsRawFd;
        if self.pidfd.as_ref().is_none_or(|p| p.0 != pid) {
            self.pidfd = Some((pid, sys::pidfd_open(pid)?));
        }
        let pidfd = self.pidfd.as_ref().map_or(-1, |p| p.1.as_raw_fd());
        sys::pidfd_getfd(pidfd, fd)
    }

    /// The scratch of kind `name`, made with `T::default()` on first use.
    pub fn scratch<T: Default + 'static>(&mut self, name: &'static str) -> &mut T {
        let i = match self.scratch.iter().position(|s| s.0 == name) {
            Some(i) => i,
            None => {
                self.scratch.push((name, Box::new(T::default())));
                self.scratch.len() - 1
            }
        };
        self.scratch[i]
            .1
            .downcast_mut()
            .expect("one scratch type per kind")
    }
}

/// The order descriptions are opened in at restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Needs nothing but the image (and shared memory objects).
    Plain,
    /// Refers to other descriptions (an epoll's targets), opened first.
    AfterTargets,
}

/// What restart's checks of a kind see.
pub struct Check<'a> {
    pub img: &'a Image,
    /// Paths of the image are looked at as these (see `trust`).
    pub fs: Option<&'a sys::FsIds>,
    /// Paths found as their files need them (kind, path, the device
    /// checked if any), not looked at again for the next description
    /// opened through them.
    #[allow(clippy::type_complexity)]
    pub paths_ok: std::cell::RefCell<std::collections::HashSet<(u32, Vec<u8>, Option<u64>)>>,
}

impl<'a> Check<'a> {
    pub fn new(img: &'a Image, fs: Option<&'a sys::FsIds>) -> Self {
        Check {
            img,
            fs,
            paths_ok: Default::default(),
        }
    }
}

/// What `open` works with in the restorer, before any process exists.
pub struct OpenCx<'a> {
    pub img: &'a Image,
    /// Every fd opened is at or above it.
    pub base: i32,
    /// Paths of the image are opened as these (see `trust`).
    pub fs: Option<&'a sys::FsIds>,
    /// The memfd restored for a shared memory object.
    pub shmem_fd: &'a dyn Fn(u32) -> Option<i32>,
    /// A process holding a file, named in errors.
    pub user_of: &'a dyn Fn(u32) -> Pid,
    /// (path, fd) of the removed directories restart recreated.
    pub removed_dirs: &'a [(Vec<u8>, i32)],
    /// Opened descriptions by file id; id 0: fds kept open only until the
    /// processes are rebuilt.
    pub by_id: Vec<(u32, i32)>,
    /// Descriptions each process opens itself (`FdKind::open_in_process`).
    pub deferred: Vec<File>,
    /// Paths made for the opening, removed once every kind is done.
    pub made: Vec<Vec<u8>>,
    /// The fd number each description should have in the restorer (see
    /// `files::slots`).
    pub slots: std::collections::HashMap<u32, i32>,
    /// Standard fds whose pipe's other end is gone may be the restorer's
    /// own (`RestartOptions::inherit_stdio`).
    pub inherit_stdio: bool,
}

/// Status flags F_SETFL can change on an open description.
pub const SETFL_FLAGS: i32 =
    libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME | libc::O_ASYNC;

impl OpenCx<'_> {
    /// An error of ckpt's own (pipe, dup...) while opening.
    pub fn err(&self, what: String, e: std::io::Error) -> Error {
        Error::Sys {
            pid: std::process::id() as Pid,
            what,
            source: e,
        }
    }

    /// Opening `f` failed; names the process holding it and the uid.
    pub fn open_err(&self, f: &File, what: &str, e: std::io::Error) -> Error {
        Error::Sys {
            pid: (self.user_of)(f.id),
            what: format!("cannot open {what}{}{}", f.path, self.who()),
            source: e,
        }
    }

    /// " as uid N" when paths are opened with a user's ids.
    pub fn who(&self) -> String {
        self.fs
            .map(|f| format!(" as uid {}", f.uid))
            .unwrap_or_default()
    }

    /// Records `fd` as description `f`, giving it the saved status flags.
    pub fn opened(&mut self, f: &File, fd: i32) -> Result<()> {
        self.opened_as(f, fd, true)
    }

    /// `opened` for a description opened with its saved flags: only
    /// O_ASYNC, which open ignores, is left to set.
    pub fn opened_with_flags(&mut self, f: &File, fd: i32) -> Result<()> {
        self.opened_as(f, fd, f.flags & libc::O_ASYNC as u32 != 0)
    }

    fn opened_as(&mut self, f: &File, fd: i32, set_flags: bool) -> Result<()> {
        if set_flags && f.flags & libc::O_PATH as u32 == 0 {
            // (F_SETFL fails with EBADF on an O_PATH fd.)
            sys::fcntl_set(fd, libc::F_SETFL, f.flags as i32 & SETFL_FLAGS)
                .map_err(|e| self.err(format!("set flags of {}", f.path), e))?;
        }
        self.by_id.push((f.id, fd));
        Ok(())
    }

    /// Moves `low`, just opened at the lowest free fd for file `id`, to its
    /// slot (`files::slots`) if that is free, else above `base`; returns
    /// where it is now. An open that landed on the slot stays: with slots
    /// given in fd order, most do (one syscall per description instead of
    /// five).
    pub fn settle(&self, id: u32, low: i32) -> std::io::Result<i32> {
        let fd = self.place(id, low);
        if fd >= self.base || self.slots.get(&id) == Some(&fd) {
            return Ok(fd);
        }
        let high = sys::dup_above(fd, self.base);
        sys::close(fd);
        high
    }

    /// Moves `fd`, just opened for file `id`, to its slot (`files::slots`)
    /// if that is free; returns where it is now.
    pub fn place(&self, id: u32, fd: i32) -> i32 {
        match self.slots.get(&id) {
            Some(&slot) if slot != fd && sys::fd_is_free(slot) => {
                match sys::dup3_cloexec(fd, slot) {
                    Ok(()) => {
                        sys::close(fd);
                        slot
                    }
                    Err(_) => fd,
                }
            }
            _ => fd,
        }
    }

    /// The fd opened for file `id` so far.
    pub fn fd_of(&self, id: u32) -> Option<i32> {
        self.by_id.iter().find(|x| x.0 == id).map(|x| x.1)
    }

    /// The records of kind objects of type `R` in the image.
    pub fn objects<R: 'static>(&self) -> impl Iterator<Item = &R> + '_ {
        objects_of::<R>(self.img)
    }
}

/// The object records of type `R` in `img` (kinds read their own records
/// out of `Image::objects`).
pub fn objects_of<R: 'static>(img: &Image) -> impl Iterator<Item = &R> + '_ {
    img.objects.iter().filter_map(|r| any_as::<R>(r))
}

/// `r` as a record of type `R`, if it is one.
pub fn any_as<R: 'static>(r: &AnyRecord) -> Option<&R> {
    r.as_any().downcast_ref()
}

/// What a kind's per-process step sees, in a restored process once its fds
/// are in place (and the restorer's descriptions still open above them).
pub struct InstallCx<'a> {
    pub img: &'a Image,
    pub p: &'a ProcessImage,
    /// The restorer's fd for each description (file id).
    pub source: &'a dyn Fn(u32) -> Option<i32>,
}

impl InstallCx<'_> {
    /// Whether this process is the one that sets up the shared state of
    /// description `file_id`: the first in the image whose fd table holds it.
    pub fn first_holder(&self, file_id: u32) -> bool {
        self.img
            .processes
            .iter()
            .filter(|q| !q.is_zombie() && q.files_shared.is_none())
            .find(|q| q.fds.iter().any(|d| d.file_id == file_id))
            .is_some_and(|q| q.pid() == self.p.pid())
    }
}

/// What `FdKind::resume` sees: the restored tree, every process rebuilt
/// and still stopped, about to run.
pub struct ResumeCx<'a> {
    pub img: &'a Image,
}

impl ResumeCx<'_> {
    /// A copy in ckpt of description `file_id`, taken from the first live
    /// process holding it, and that process (`None` when no fd names it).
    pub fn fetch(&self, file_id: u32) -> Result<Option<(Pid, std::os::fd::OwnedFd)>> {
        let holder = self
            .img
            .processes
            .iter()
            .filter(|p| !p.is_zombie())
            .find_map(|p| {
                let d = p.fds.iter().find(|d| d.file_id == file_id)?;
                Some((p.pid(), d.fd as i32))
            });
        let Some((pid, fd)) = holder else {
            return Ok(None);
        };
        let sys_err = |what: &str, source| Error::Sys {
            pid,
            what: format!("{what} of fd {fd}"),
            source,
        };
        let pidfd = sys::pidfd_open(pid).map_err(|e| sys_err("pidfd_open", e))?;
        use std::os::fd::AsRawFd;
        let copy =
            sys::pidfd_getfd(pidfd.as_raw_fd(), fd).map_err(|e| sys_err("pidfd_getfd", e))?;
        Ok(Some((pid, copy)))
    }
}

/// One kind of open file: how it is recognised, saved, checked and restored.
pub trait FdKind: Sync {
    /// What it is, for messages ("eventfd").
    fn name(&self) -> &'static str;
    /// The `File` kinds (`FILE_*`) this module saves and restores.
    fn kinds(&self) -> &'static [u32];
    /// Whether this module saves the fd `p` describes. Kinds are asked in
    /// `KINDS` order; the first that matches takes the fd.
    fn matches(&self, p: &Probe) -> bool;
    /// Saves a description met for the first time: sets `f.kind` and what
    /// else of `f` it uses, and adds its records to `cx`.
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()>;
    /// An fd of `p` names description `f`, saved before from another
    /// process (inherited across fork): `Err` if that sharing cannot
    /// come back.
    fn shared(&self, _cx: &mut DumpCx, _p: &Probe, _f: &File) -> Result<()> {
        Ok(())
    }
    /// Runs once every process of the tree is saved (to resolve references
    /// between descriptions, say an epoll's targets, or give contents to
    /// the shared memory objects of `shm`).
    fn finish(
        &self,
        _cx: &mut DumpCx,
        _files: &mut [File],
        _shm: &mut crate::mm::ShmemTable,
    ) -> Result<()> {
        Ok(())
    }
    /// Runs once the image is written and the tree killed (`killed`) or
    /// left running (`--leave-running`, or the kill failed). A kind that
    /// changed live objects at checkpoint (TCP repair mode) undoes it
    /// here when the tree keeps running. A failed or cancelled checkpoint
    /// does not call it: it drops `DumpCx`, and with it the scratch, while
    /// the tree is still frozen, so such undoing belongs in the Drop of
    /// the kind's scratch as well.
    fn after_checkpoint(&self, _cx: &mut DumpCx, _killed: bool) {}
    /// Whether `f` has a `FileAttr` (owner and times of what restart
    /// makes again).
    fn has_attrs(&self, _f: &File) -> bool {
        false
    }
    /// Checks a saved description before restart creates anything. An
    /// `Err` is the reason the image is refused.
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String>;
    fn stage(&self) -> Stage {
        Stage::Plain
    }
    /// Opens every description `files` of this kind in the restorer.
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()>;
    /// Opens a deferred description (`OpenCx::deferred`) inside the restored
    /// process, at an fd >= `base`.
    fn open_in_process(&self, f: &File, _base: i32) -> std::result::Result<i32, String> {
        Err(format!(
            "{} file {} cannot be opened in the process",
            self.name(),
            f.id
        ))
    }
    /// Runs once every process is rebuilt, just before the tree runs, for
    /// each description `f` of this kind: state that should start when the
    /// processes do (a timer re-armed, so the restore's own time does not
    /// count). Reaches the description through `ResumeCx::fetch`.
    fn resume(&self, _cx: &ResumeCx, _f: &File) -> Result<()> {
        Ok(())
    }
    /// Per-process step once the process's fds are in place, for each of
    /// its descriptions of this kind.
    fn install(&self, _cx: &InstallCx, _f: &File, _id: ObjId) -> std::result::Result<(), String> {
        Ok(())
    }

    /// Other descriptions whose restorer copies `install` of description
    /// `f` asks for (`InstallCx::source`), beyond the process's own fds:
    /// they are kept usable while the fds are put in place.
    fn needs(&self, _img: &Image, _f: &File) -> Vec<u32> {
        Vec::new()
    }
}
