//! Files reopened by their path at restart: regular files, directories,
//! the stateless character devices, and O_PATH fds of any of them.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use super::{open_desc, same_path};
use crate::error::Result;
use crate::sys;
use ckpt_image::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The pid a path under /proc is about, if it is under /proc/PID (`Err`
/// if it is about another thread than the process's main one).
pub fn proc_pid(path: &[u8]) -> Option<std::result::Result<crate::sys::Pid, ()>> {
    let rest = path.strip_prefix(b"/proc/")?;
    let mut parts = rest.split(|&c| c == b'/');
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<crate::sys::Pid>().ok();
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

/// O_PATH fds: they only name a file (the file itself is never opened), so
/// whatever its type, reopening the path with O_PATH gives it back. Saved
/// as `FILE_REGULAR` or `FILE_DIR` and restored by `ByPath`.
pub struct OPath;

impl FdKind for OPath {
    fn name(&self) -> &'static str {
        "O_PATH fd"
    }
    fn kinds(&self) -> &'static [u32] {
        &[]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.opath()
    }
    fn dump(&self, _cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        if p.deleted || !p.path.starts_with(b"/") {
            return Err(p.unsupported("an O_PATH fd whose file was removed cannot be reopened"));
        }
        f.kind = if p.meta.is_dir() {
            FILE_DIR
        } else {
            FILE_REGULAR
        };
        same_path(p)
    }
    fn validate(&self, _c: &Check, _f: &File) -> std::result::Result<(), String> {
        unreachable!("O_PATH fds are restored as FILE_REGULAR or FILE_DIR")
    }
    fn open(&self, _cx: &mut OpenCx, _files: &[&File]) -> Result<()> {
        Ok(())
    }
}

/// Regular files, directories and memory devices, reopened by path.
pub struct ByPath;

impl FdKind for ByPath {
    fn name(&self) -> &'static str {
        "open file"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_REGULAR, FILE_DIR, FILE_CHR]
    }
    fn matches(&self, p: &Probe) -> bool {
        let t = p.meta.file_type();
        t.is_file() || t.is_dir() || t.is_char_device()
    }
    fn dump(&self, _cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let t = p.meta.file_type();
        f.kind = if t.is_file() {
            FILE_REGULAR
        } else if t.is_dir() {
            FILE_DIR
        } else {
            let rdev = p.meta.rdev();
            if let Err((what, reason)) = chr_verdict(libc::major(rdev), libc::minor(rdev)) {
                return Err(crate::error::Error::Unsupported {
                    pid: p.pid,
                    comm: p.comm.into(),
                    object: format!("fd {} ({}, {what})", p.fd, ckpt_image::escape(p.link)),
                    reason: reason.into(),
                });
            }
            if p.deleted || !p.path.starts_with(b"/") {
                return Err(p.unsupported(
                    "the device node it was opened through is gone; cannot reopen it",
                ));
            }
            FILE_CHR
        };
        same_path(p)
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let device = f.kind == FILE_CHR && f.flags & libc::O_PATH as u32 == 0;
        let key = (f.kind, f.path.0.clone(), device.then_some(f.rdev));
        if c.paths_ok.borrow().contains(&key) {
            return Ok(());
        }
        self.validate_path(c, f)?;
        c.paths_ok.borrow_mut().insert(key);
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            let mut flags = f.flags as i32;
            if f.kind != FILE_DIR {
                // An O_TMPFILE file reports O_DIRECTORY among its flags.
                flags &= !libc::O_DIRECTORY;
            }
            let low = sys::with_fs_ids(cx.fs, || open_desc(&f.path.0, flags))
                .map_err(|e| cx.open_err(f, "", e))?;
            // At once: a table of 10,000 files must not need 20,000 fds.
            let fd = cx.settle(f.id, low).map_err(|e| cx.err("dup".into(), e))?;
            cx.opened_with_flags(f, fd)?;
            if f.flags & libc::O_PATH as u32 != 0 {
                continue; // lseek fails with EBADF
            }
            if f.kind == FILE_REGULAR {
                sys::lseek(fd, f.pos)
                    .map_err(|e| cx.err(format!("seek {} to {}", f.path, f.pos), e))?;
            } else if f.kind == FILE_DIR && f.pos != 0 {
                // A directory position is a cookie; best effort.
                let _ = sys::lseek(fd, f.pos);
            }
        }
        Ok(())
    }
}

impl ByPath {
    /// The file `f` was opened through is there, and the very device saved.
    fn validate_path(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let path = std::ffi::OsStr::from_bytes(&f.path.0);
        match sys::with_fs_ids(c.fs, || std::fs::metadata(path)) {
            Err(e) => Err(format!("is missing: {e}")),
            // Only the devices a checkpoint accepts, and the very one saved.
            Ok(m) if f.kind == FILE_CHR && f.flags & libc::O_PATH as u32 == 0 => {
                let rdev = m.rdev();
                if !m.file_type().is_char_device()
                    || rdev != f.rdev
                    || chr_verdict(libc::major(rdev), libc::minor(rdev)).is_err()
                {
                    return Err(format!(
                        "is not the character device the image saved ({}:{})",
                        libc::major(f.rdev),
                        libc::minor(f.rdev)
                    ));
                }
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }
}
