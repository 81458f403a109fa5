//! Files and directories removed while open. An unlinked regular file is
//! saved once, holes and all, as a ghost shared memory object (shared with
//! the mappings of the same file) and each description reopens it; a
//! removed directory is made again for a moment at restart (with the
//! removed working directories, see `restart`) and opened.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use super::{file_attr, reopen_fd};
use crate::error::{Error, Result};
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

pub struct Ghost;

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

/// The removed directories open as fds, with their owners: restart makes
/// them again for a moment.
pub fn removed_dirs(img: &crate::model::Image) -> impl Iterator<Item = (&File, u32, u32)> + '_ {
    img.files
        .iter()
        .filter(|f| f.kind == FILE_DIR_REMOVED)
        .map(|f| {
            let a = img.file_attrs.iter().find(|a| a.file_id == f.id);
            let (uid, gid) = a.map_or((0, 0), |a| (a.uid, a.gid));
            (f, uid, gid)
        })
}

impl FdKind for Ghost {
    fn name(&self) -> &'static str {
        "removed file"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_UNLINKED, FILE_DIR_REMOVED]
    }
    fn matches(&self, p: &Probe) -> bool {
        (p.meta.is_file() || p.meta.is_dir()) && (p.deleted || p.meta.nlink() == 0)
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        if p.meta.is_dir() {
            cx.attrs.push(file_attr(f.id, p.meta));
            f.kind = FILE_DIR_REMOVED;
            return Ok(());
        }
        // Saved in `finish`, once every mapping of the file is known too.
        cx.scratch::<Vec<GhostFd>>("ghost").push(GhostFd {
            pid: p.pid,
            comm: p.comm.to_string(),
            fd: p.fd,
            link: p.link.to_vec(),
            dev: p.meta.dev(),
            ino: p.meta.ino(),
            file_id: f.id,
        });
        f.kind = FILE_UNLINKED;
        Ok(())
    }
    /// Gives every unlinked file open as an fd its ghost object in `shm`
    /// (one per file, whichever fds and mappings share it).
    fn finish(
        &self,
        cx: &mut DumpCx,
        files: &mut [File],
        shm: &mut crate::mm::ShmemTable,
    ) -> Result<()> {
        for g in std::mem::take(cx.scratch::<Vec<GhostFd>>("ghost")) {
            let unsupported = |reason: &str| Error::Unsupported {
                pid: g.pid,
                comm: g.comm.clone(),
                object: format!("fd {} ({})", g.fd, ckpt_image::escape(&g.link)),
                reason: reason.into(),
            };
            let path = g.link.strip_suffix(b" (deleted)").unwrap_or(&g.link);
            let source = format!("/proc/{}/fd/{}", g.pid, g.fd);
            let obj = shm.ghost(&unsupported, g.dev, g.ino, path, source)?;
            files
                .iter_mut()
                .find(|f| f.id == g.file_id)
                .expect("saved")
                .obj = obj;
        }
        Ok(())
    }
    fn has_attrs(&self, f: &File) -> bool {
        f.kind == FILE_DIR_REMOVED
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        if f.kind == FILE_DIR_REMOVED {
            let dir = std::path::Path::new(std::ffi::OsStr::from_bytes(&f.path.0));
            if dir.symlink_metadata().is_ok() || !dir.parent().is_some_and(|d| d.is_dir()) {
                return Err("was removed; restart recreates it for a moment, which needs the name free and its parent directory present".into());
            }
            return Ok(());
        }
        if !c.img.shmems.iter().any(|s| s.shmem.id == f.obj) {
            return Err("names a missing shared memory object".into());
        }
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            let fd = if f.kind == FILE_DIR_REMOVED {
                let &(_, dir) = cx
                    .removed_dirs
                    .iter()
                    .find(|d| d.0 == f.path.0)
                    .ok_or_else(|| {
                        Error::Refused(format!("removed directory {} was not recreated", f.path))
                    })?;
                let fd = reopen_fd(dir, f.flags as i32 | libc::O_DIRECTORY, cx.base)
                    .map_err(|e| cx.err(format!("reopen removed directory {}", f.path), e))?;
                cx.opened(f, fd)?;
                if f.pos != 0 {
                    let _ = sys::lseek(fd, f.pos); // a cookie; best effort
                }
                continue;
            } else {
                let m = (cx.shmem_fd)(f.obj).ok_or_else(|| {
                    Error::Refused(format!(
                        "unlinked file {} names a missing object {}",
                        f.id, f.obj
                    ))
                })?;
                // A file made with O_TMPFILE keeps O_DIRECTORY in its flags.
                reopen_fd(m, f.flags as i32 & !libc::O_DIRECTORY, cx.base)
                    .map_err(|e| cx.err(format!("reopen unlinked file {}", f.path), e))?
            };
            cx.opened(f, fd)?;
            sys::lseek(fd, f.pos)
                .map_err(|e| cx.err(format!("seek {} to {}", f.path, f.pos), e))?;
        }
        Ok(())
    }
}
