//! File descriptors: regular files (also unlinked ones), directories and
//! character devices, with offsets, status flags, FD_CLOEXEC and the sharing
//! of open file descriptions between fds. Checkpoint reads /proc fd +
//! fdinfo and compares descriptions with kcmp; restore reopens them inside
//! the restore child before its memory is replaced.

use crate::error::{Ctx, Error, Result};
use crate::procfs;
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

/// Largest unlinked file whose content is copied into the image.
const MAX_UNLINKED: u64 = 64 << 20;

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

pub struct Files {
    pub files: Vec<File>,
    pub fds: Vec<Fd>,
}

/// Reads every fd of `pid`. Errors name the fd and why it cannot be saved.
pub fn dump(pid: Pid, comm: &str) -> Result<Files> {
    let mut files: Vec<File> = Vec::new();
    let mut fds = Vec::new();
    // (fd, dev, ino, file id) of fds seen so far, to find shared descriptions.
    let mut seen: Vec<(i32, u64, u64, u32)> = Vec::new();
    let unsupported = |fd: i32, link: &[u8], reason: &str| Error::Unsupported {
        pid,
        comm: comm.into(),
        object: format!("fd {fd} ({})", String::from_utf8_lossy(link)),
        reason: reason.into(),
    };
    for fd in procfs::fds(pid).ctx(pid, || "list fds".into())? {
        let Ok(link) = procfs::link(pid, &format!("fd/{fd}")) else {
            continue; // closed meanwhile
        };
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .ctx(pid, || format!("stat fd {fd}"))?;
        let info = procfs::fdinfo(pid, fd).ctx(pid, || format!("read fdinfo of fd {fd}"))?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let (dev, ino) = (meta.dev(), meta.ino());
        let mut shared = None;
        for &(ofd, d, i, id) in &seen {
            if d == dev
                && i == ino
                && sys::same_file(pid, ofd, pid, fd).ctx(pid, || "kcmp".into())?
            {
                shared = Some(id);
                break;
            }
        }
        let id = match shared {
            Some(id) => id,
            None => {
                let ft = meta.file_type();
                let (path, deleted) = match link.strip_suffix(b" (deleted)") {
                    Some(p) => (p.to_vec(), true),
                    None => (link.clone(), false),
                };
                let mut content = Vec::new();
                let kind = if ft.is_file() {
                    if deleted || meta.nlink() == 0 {
                        if meta.len() > MAX_UNLINKED {
                            return Err(unsupported(fd, &link, &format!(
                                "unlinked file of {} bytes is larger than the {} MiB ckpt copies into an image",
                                meta.len(),
                                MAX_UNLINKED >> 20
                            )));
                        }
                        std::fs::File::open(format!("/proc/{pid}/fd/{fd}"))
                            .and_then(|mut f| f.read_to_end(&mut content))
                            .ctx(pid, || format!("read unlinked file of fd {fd}"))?;
                        FILE_UNLINKED
                    } else {
                        FILE_REGULAR
                    }
                } else if ft.is_dir() {
                    FILE_DIR
                } else if std::os::unix::fs::FileTypeExt::is_char_device(&ft)
                    && path.starts_with(b"/dev/")
                    && !deleted
                {
                    FILE_CHR
                } else {
                    return Err(unsupported(
                        fd,
                        &link,
                        "only regular files, directories and character devices are supported yet (no pipes, sockets, eventfds...)",
                    ));
                };
                if kind == FILE_REGULAR || kind == FILE_DIR {
                    // The path must still name this very file.
                    match std::fs::metadata(std::ffi::OsStr::from_bytes(&path)) {
                        Ok(m) if m.dev() == dev && m.ino() == ino => {}
                        _ => {
                            return Err(unsupported(
                                fd,
                                &link,
                                "its path now names another file (renamed or replaced over); cannot reopen it",
                            ))
                        }
                    }
                }
                let id = files.len() as u32 + 1;
                files.push(File {
                    id,
                    kind,
                    flags: info.flags & !(libc::O_CLOEXEC as u32),
                    pos: info.pos,
                    mode: meta.mode(),
                    rdev: meta.rdev(),
                    size: meta.len(),
                    path: crate::task::text(&path),
                    content: Bytes(content),
                });
                id
            }
        };
        seen.push((fd, dev, ino, id));
        fds.push(Fd {
            fd: fd as u32,
            file_id: id,
            cloexec,
        });
    }
    Ok(Files { files, fds })
}

/// Opens one saved file description in the calling process; returns the fd.
fn open_file(f: &File) -> std::io::Result<i32> {
    let flags = (f.flags as i32 & REOPEN_FLAGS) | libc::O_CLOEXEC;
    match f.kind {
        FILE_UNLINKED => {
            // An anonymous, already-unlinked file in the same directory.
            let dir = f.path.0.rsplit_once_byte(b'/').unwrap_or(b"/".as_slice());
            let dir = if dir.is_empty() { b"/".as_slice() } else { dir };
            let tmp = sys::open_raw(
                dir,
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                f.mode & 0o7777,
            )?;
            sys::write_all(tmp, &f.content.0)?;
            // Reopen through /proc to get the saved access mode and flags.
            let fd = sys::open_raw(format!("/proc/self/fd/{tmp}").as_bytes(), flags, 0)?;
            sys::close(tmp);
            Ok(fd)
        }
        _ => sys::open_raw(&f.path.0, flags, 0),
    }
}

trait RsplitByte {
    fn rsplit_once_byte(&self, b: u8) -> Option<&[u8]>;
}
impl RsplitByte for Vec<u8> {
    fn rsplit_once_byte(&self, b: u8) -> Option<&[u8]> {
        self.iter().rposition(|&c| c == b).map(|i| &self[..i])
    }
}

/// Rebuilds the fd table in the calling process (a restore child). Every fd
/// it still needs for itself (`keep`) must already be above every saved fd.
pub fn restore(files: &[File], fds: &[Fd]) -> std::result::Result<(), String> {
    let mut opened: Vec<(u32, i32)> = Vec::new();
    let max_fd = fds.iter().map(|f| f.fd as i32).max().unwrap_or(-1);
    for f in files {
        let fd = open_file(f).map_err(|e| format!("cannot reopen {}: {e}", f.path))?;
        // Park it above the saved numbers so it never collides with a target.
        let parked = sys::dup_above(fd, max_fd + 1).map_err(|e| format!("dup: {e}"))?;
        sys::close(fd);
        if f.kind == FILE_REGULAR || f.kind == FILE_UNLINKED {
            sys::lseek(parked, f.pos)
                .map_err(|e| format!("cannot seek {} to {}: {e}", f.path, f.pos))?;
        } else if f.kind == FILE_DIR && f.pos != 0 {
            // A directory's position is a cookie; best effort.
            let _ = sys::lseek(parked, f.pos);
        }
        opened.push((f.id, parked));
    }
    for d in fds {
        let src = opened
            .iter()
            .find(|(id, _)| *id == d.file_id)
            .map(|x| x.1)
            .ok_or_else(|| format!("fd {} names unknown file {}", d.fd, d.file_id))?;
        sys::dup2(src, d.fd as i32).map_err(|e| format!("dup2 to fd {}: {e}", d.fd))?;
        sys::fcntl_set(
            d.fd as i32,
            libc::F_SETFD,
            if d.cloexec { libc::FD_CLOEXEC } else { 0 },
        )
        .map_err(|e| format!("set FD_CLOEXEC on fd {}: {e}", d.fd))?;
    }
    for (_, p) in opened {
        sys::close(p);
    }
    Ok(())
}
