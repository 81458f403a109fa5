//! Pipes and FIFOs (also FIFOs whose path was removed), with the bytes in
//! flight. Each pipe is one `Pipe` object; its descriptions name it in
//! `File::obj`.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use super::{file_attr, reopen, reopen_fd, same_path};
use crate::error::{Error, Result};
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

pub struct PipeKind;

/// (pipe inode, pipe id) of the pipes saved so far.
type PipeIds = Vec<(u64, u32)>;

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

/// A pipe whose other end was held outside the checkpointed tree (say the
/// shell or harness that reads its output) still exists while that holder
/// lives: find it by inode and open both ends of that very pipe, so the
/// restored tree talks to the same reader or writer. Its buffer still holds
/// whatever was in flight, so nothing is refilled. Pipes that only the
/// tree held died with it and are created anew.
///
/// Returns, for each inode of `inos` some process still holds, the /proc
/// path of one such fd. One pass over /proc for all pipes (each pipe's own
/// pass read every fd of the host once per pipe), ckpt's own fds and its
/// ancestors' first: run from the shell or harness that held the tree's
/// pipes, ckpt usually holds them too. With `fs` (an unauthenticated image,
/// which reaches only its owner's pipes) ckpt's own fds are left out: a
/// process may always open its own fds through /proc, whatever its fs ids.
fn pipe_holders(inos: &[u64], fs: Option<&sys::FsIds>) -> Vec<(u64, Vec<u8>)> {
    let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
    if inos.is_empty() {
        return found;
    }
    let me = std::process::id() as Pid;
    let mut order: Vec<Pid> = Vec::new();
    let mut at = me;
    while at > 1 && order.len() < 64 {
        order.push(at);
        match crate::procfs::stat(at) {
            Ok(st) => at = st.ppid,
            Err(_) => break,
        }
    }
    let rest = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    let rest = rest.filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()));
    let mut seen = std::collections::HashSet::new();
    for pid in order.into_iter().chain(rest) {
        if !seen.insert(pid) || (pid == me && fs.is_some()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let path = fd.path();
            let Ok(link) = std::fs::read_link(&path) else {
                continue;
            };
            let ino = link
                .as_os_str()
                .as_bytes()
                .strip_prefix(b"pipe:[")
                .and_then(|l| l.strip_suffix(b"]"))
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok());
            let Some(ino) = ino.filter(|i| inos.contains(i)) else {
                continue;
            };
            if !found.iter().any(|f| f.0 == ino) {
                found.push((ino, path.as_os_str().as_bytes().to_vec()));
                if found.len() == inos.len() {
                    return found;
                }
            }
        }
    }
    found
}

/// Opens both ends of the pipe held at `path` (a /proc fd path), as `fs`.
fn reconnect_pipe(path: &[u8], base: i32, fs: Option<&sys::FsIds>) -> Option<(i32, i32)> {
    // Opening a pipe through /proc gives a new description of the same
    // pipe; O_RDWR never blocks, then each end is reopened with its own
    // mode from it.
    let both = sys::with_fs_ids(fs, || reopen(path, libc::O_RDWR | libc::O_NONBLOCK, base)).ok()?;
    let r = reopen_fd(both, libc::O_RDONLY | libc::O_NONBLOCK, base);
    let w = reopen_fd(both, libc::O_WRONLY | libc::O_NONBLOCK, base);
    sys::close(both);
    match (r, w) {
        (Ok(r), Ok(w)) => Some((r, w)),
        (r, w) => {
            for fd in [r, w].into_iter().flatten() {
                sys::close(fd);
            }
            None
        }
    }
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

impl FdKind for PipeKind {
    fn name(&self) -> &'static str {
        "pipe"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_PIPE, FILE_FIFO, FILE_FIFO_REMOVED]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.meta.file_type().is_fifo()
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let (size, data) = pipe_contents(p.pid, p.fd).map_err(|e| p.sys("read the buffer", e))?;
        let ino = p.meta.ino();
        let known = cx
            .scratch::<PipeIds>("pipe")
            .iter()
            .find(|x| x.0 == ino)
            .map(|x| x.1);
        f.obj = match known {
            Some(id) => id,
            None => {
                let id = cx.ids.next().0;
                cx.pipes.push(Pipe {
                    id,
                    size,
                    ino,
                    data: Bytes(data),
                });
                cx.scratch::<PipeIds>("pipe").push((ino, id));
                id
            }
        };
        f.kind = if p.link.starts_with(b"pipe:") {
            FILE_PIPE
        } else if !p.deleted {
            same_path(p)?;
            FILE_FIFO
        } else if p.path.starts_with(b"/") {
            cx.attrs.push(file_attr(f.id, p.meta));
            FILE_FIFO_REMOVED
        } else {
            return Err(p.unsupported("a FIFO whose path was removed cannot be reopened"));
        };
        Ok(())
    }
    fn has_attrs(&self, f: &File) -> bool {
        f.kind == FILE_FIFO_REMOVED
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        if !c.img.pipes.iter().any(|p| p.id == f.obj) {
            return Err("names a missing pipe".into());
        }
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&f.path.0));
        match f.kind {
            FILE_FIFO => {
                if let Err(e) = sys::with_fs_ids(c.fs, || std::fs::metadata(path)) {
                    return Err(format!("is missing: {e}"));
                }
            }
            FILE_FIFO_REMOVED => {
                if path.symlink_metadata().is_ok() || !path.parent().is_some_and(|d| d.is_dir()) {
                    return Err("was removed; restart makes it again for a moment, which needs the name free and its parent directory present".into());
                }
                let other = |g: &File| g.kind == FILE_FIFO_REMOVED && g.obj == f.obj;
                if c.img.files.iter().any(|g| other(g) && g.path.0 != f.path.0) {
                    return Err("has descriptions of two paths".into());
                }
            }
            _ => {}
        }
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        // Pipe id -> (read end, write end) in this process.
        let mut ends: Vec<(u32, i32, i32)> = Vec::new();
        let r = open_pipes(cx, files, &mut ends);
        // Pipe ends no description uses stay open until the processes are
        // rebuilt (or are closed with the rest on error).
        for (_, r, w) in ends {
            for e in [r, w] {
                if !cx.by_id.iter().any(|&(_, x)| x == e) {
                    cx.by_id.push((0, e));
                }
            }
        }
        r
    }
}

/// A pipe the tree held only one end of, and only as standard input,
/// output or error (fds 0-2), whose other end's holder is gone (the shell
/// or harness that captured a job's output has exited): the restored
/// process gets the restorer's own fd of that number there, as a job
/// started from it would, instead of a pipe nobody reads or writes
/// (where its next write would die of SIGPIPE). Only when the restorer
/// asks for it (`RestartOptions::inherit_stdio`: `ckpt restart` without
/// --detach, `ckpt_restart`). Documented in the README.
fn inherit_stdio(cx: &OpenCx, p: &Pipe) -> Option<i32> {
    if !cx.inherit_stdio {
        return None;
    }
    let descs: Vec<&File> = cx
        .img
        .files
        .iter()
        .filter(|f| f.kind == FILE_PIPE && f.obj == p.id)
        .collect();
    let mode = |f: &File| f.flags as i32 & libc::O_ACCMODE;
    let first = mode(descs.first()?);
    if descs.iter().any(|f| mode(f) != first) {
        return None; // both ends in the tree: its own pipe
    }
    let fds: Vec<u32> = cx
        .img
        .processes
        .iter()
        .flat_map(|q| q.fds.iter())
        .filter(|d| descs.iter().any(|f| f.id == d.file_id))
        .map(|d| d.fd)
        .collect();
    if fds.iter().any(|&fd| fd > 2) {
        return None;
    }
    let n = *fds.iter().min()? as i32;
    // Ours must be open in a mode that serves that end.
    let ours = sys::status_flags(n).ok()? & libc::O_ACCMODE;
    if ours != libc::O_RDWR && ours != first {
        return None;
    }
    let fd = sys::dup_above(n, cx.base).ok()?;
    tracing::info!(
        "pipe {} (fd {n} of the tree): its other end is gone; the restored tree uses ckpt's fd {n} instead",
        p.id
    );
    Some(fd)
}

fn open_pipes(cx: &mut OpenCx, files: &[&File], ends: &mut Vec<(u32, i32, i32)>) -> Result<()> {
    let inos: Vec<u64> = cx.img.pipes.iter().map(|p| p.ino).collect();
    let held = pipe_holders(&inos, cx.fs);
    for p in &cx.img.pipes {
        let holder = held.iter().find(|h| h.0 == p.ino);
        if let Some((r, w)) = holder.and_then(|h| reconnect_pipe(&h.1, cx.base, cx.fs)) {
            ends.push((p.id, r, w));
            continue;
        }
        if let Some(fd) = inherit_stdio(cx, p) {
            ends.push((p.id, fd, fd));
            continue;
        }
        let (r, w) = sys::pipe().map_err(|e| cx.err("pipe".into(), e))?;
        let high = (sys::dup_above(r, cx.base), sys::dup_above(w, cx.base));
        sys::close(r);
        sys::close(w);
        let (r2, w2) = match high {
            (Ok(r2), Ok(w2)) => (r2, w2),
            (a, b) => {
                for fd in [&a, &b].into_iter().flatten() {
                    sys::close(*fd);
                }
                let e = a.err().or(b.err()).expect("one failed");
                return Err(cx.err("dup".into(), e));
            }
        };
        ends.push((p.id, r2, w2));
        if p.size > 0 {
            let _ = sys::set_pipe_size(w2, p.size);
        }
        sys::fcntl_set(w2, libc::F_SETFL, libc::O_NONBLOCK)
            .map_err(|e| cx.err("fcntl".into(), e))?;
        sys::write_all(w2, &p.data.0).map_err(|e| {
            cx.err(
                format!("refill pipe {} with {} bytes", p.id, p.data.0.len()),
                e,
            )
        })?;
    }
    for f in files {
        let &(_, r, w) = ends.iter().find(|x| x.0 == f.obj).ok_or_else(|| {
            Error::Refused(format!("file {} names a missing pipe {}", f.id, f.obj))
        })?;
        if f.kind == FILE_PIPE {
            let end = if f.flags as i32 & libc::O_ACCMODE == libc::O_RDONLY {
                r
            } else {
                w
            };
            let fd = if cx.by_id.iter().any(|&(_, x)| x == end) {
                // A second description of the same end.
                reopen_fd(end, f.flags as i32, cx.base)
                    .map_err(|e| cx.err("reopen pipe end".into(), e))?
            } else {
                end
            };
            cx.opened(f, fd)?;
            continue;
        }
        if f.kind == FILE_FIFO_REMOVED {
            let (fs, attrs) = (cx.fs, &cx.img.file_attrs);
            sys::with_fs_ids(fs, || remake_fifo(f, attrs, &mut cx.made))
                .map_err(|e| cx.err(format!("make removed FIFO {} again", f.path), e))?;
        }
        // Reopening the path gives the FIFO itself; its buffer was saved
        // with the pipe object, refill it once.
        let mode = f.flags as i32 & libc::O_ACCMODE;
        let helper = sys::with_fs_ids(cx.fs, || {
            reopen(&f.path.0, libc::O_RDWR | libc::O_NONBLOCK, cx.base)
        })
        .map_err(|e| cx.open_err(f, "FIFO ", e))?;
        // Keep the helper open until the tree holds its own ends.
        cx.by_id.push((0, helper));
        let fd = reopen_fd(helper, mode | libc::O_NONBLOCK, cx.base)
            .map_err(|e| cx.err(format!("open FIFO {}", f.path), e))?;
        sys::fcntl_set(r, libc::F_SETFL, libc::O_NONBLOCK)
            .map_err(|e| cx.err("fcntl".into(), e))?;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sys::read(r, &mut buf) {
            if n == 0 {
                break;
            }
            let _ = sys::write_all(helper, &buf[..n]);
        }
        cx.opened(f, fd)?;
    }
    Ok(())
}
