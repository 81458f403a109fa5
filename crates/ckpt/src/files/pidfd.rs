//! pidfds on processes of the tree: reopened with pidfd_open by the
//! process that holds one, once the process it refers to exists again (a
//! child or a sibling may still be being created at restart).
//! PIDFD_NONBLOCK is the description's O_NONBLOCK.
//!
//! A pidfd on a process that has exited and been reaped ("Pid: -1") is
//! recreated on a stand-in: the restorer forks a process that exits the
//! way the saved one did (its wait status, read with PIDFD_GET_INFO),
//! opens the pidfds on its zombie (one stand-in per saved pidfs inode, so
//! pidfds of one process still share an inode, those of two do not) and
//! reaps it. Like the original it then shows Pid -1, polls readable,
//! signals fail with ESRCH and PIDFD_GET_INFO gives the same exit status;
//! the cgroup id PIDFD_GET_INFO reports is the restorer's.
//!
//! Refused: a pidfd on a process outside the tree (after restart that pid
//! would be another process or none), on a single thread (PIDFD_THREAD),
//! on a reaped process whose exit status the kernel does not show (before
//! Linux 6.15), and a pidfd on a live process inherited by another process
//! (each process opens its own, so the sharing cannot come back).

use super::kind::{objects_of, Check, DumpCx, FdKind, OpenCx, Probe};
use crate::error::{Error, Result};
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::unix::fs::MetadataExt;

pub struct PidFd;

/// (holder pid, file id) of every pidfd saved.
type Holders = Vec<(Pid, u32)>;

/// PIDFD_THREAD (Linux 6.9): a pidfd on one thread; it is O_EXCL.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// The pid a pidfd's fdinfo gives ("Pid:\t%d"): -1 once the process is
/// reaped, 0 when it is not in the reader's pid namespace.
fn parse_pid(text: &str) -> Option<Pid> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

impl FdKind for PidFd {
    fn name(&self) -> &'static str {
        "pidfd"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_PIDFD]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.anon_inode() == Some(b"[pidfd]")
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        if p.info.flags & PIDFD_THREAD != 0 {
            return Err(p.unsupported(
                "it is a pidfd on a single thread (PIDFD_THREAD); such pidfds cannot be saved yet",
            ));
        }
        let (pid, exit_status) = match parse_pid(&p.info.text) {
            None => return Err(p.unsupported("its fdinfo has no readable Pid: line")),
            Some(-1) => {
                use std::os::fd::AsRawFd;
                let mine = cx
                    .fetch_fd(p.pid, p.fd)
                    .map_err(|e| p.sys("pidfd_getfd", e))?;
                match sys::pidfd_exit_status(mine.as_raw_fd()) {
                    // (A stand-in cannot be made to dump core the same way.)
                    Ok(Some(st)) if libc::WCOREDUMP(st) => return Err(p.unsupported("the process it refers to has exited, dumping core, and been reaped; a stand-in cannot exit that way again, so the pidfd cannot be recreated; close it before the checkpoint")),
                    Ok(Some(st)) => (-1, st),
                    _ => return Err(p.unsupported("the process it refers to has exited and been reaped, and the kernel does not show how it exited (PIDFD_GET_INFO, Linux 6.15), so the pidfd cannot be recreated; close it before the checkpoint")),
                }
            }
            Some(0) => return Err(p.unsupported("the process it refers to is outside the tree (in a pid namespace ckpt cannot see)")),
            Some(q) if !cx.tree.contains(&q) => {
                return Err(p.unsupported(&format!("the process it refers to is outside the tree (pid {q}); after restart that pid would be another process or none")))
            }
            Some(q) => (q, 0),
        };
        if pid != -1 {
            cx.scratch::<Holders>("pidfd").push((p.pid, f.id));
        }
        f.kind = FILE_PIDFD;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            Pidfd {
                file_id: f.id,
                pid,
                ino: p.meta.ino(),
                exit_status,
            }
            .into(),
        );
        Ok(())
    }
    fn shared(&self, cx: &mut DumpCx, p: &Probe, f: &File) -> Result<()> {
        if cx
            .scratch::<Holders>("pidfd")
            .iter()
            .any(|&(q, id)| id == f.id && q != p.pid)
        {
            return Err(p.unsupported("this pidfd is shared with another process (inherited across fork); each process reopens its own pidfds, so the sharing cannot come back"));
        }
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = objects_of::<Pidfd>(c.img).filter(|r| r.file_id == f.id);
        match (recs.next(), recs.next()) {
            (Some(r), None) if r.pid == -1 || c.img.process(r.pid).is_some() => Ok(()),
            (Some(r), None) => Err(format!(
                "refers to pid {}, which is not a process of the image",
                r.pid
            )),
            _ => Err("needs exactly one pidfd record".into()),
        }
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        let mut dead: Vec<(&File, &Pidfd)> = Vec::new();
        for f in files {
            let r = objects_of::<Pidfd>(cx.img)
                .find(|r| r.file_id == f.id)
                .ok_or_else(|| {
                    Error::Refused(format!("pidfd file {} has no pidfd record", f.id))
                })?;
            if r.pid == -1 {
                dead.push((f, r));
                continue;
            }
            // `open_in_process` sees only the `File`: the deferred copy
            // carries the pid in its path.
            let mut d = (*f).clone();
            d.path = Text(format!("pid {}", r.pid).into_bytes());
            cx.deferred.push(d);
        }
        dead.sort_by_key(|d| d.1.ino);
        for group in dead.chunk_by(|a, b| a.1.ino == b.1.ino) {
            open_dead(cx, group)?;
        }
        Ok(())
    }
    fn open_in_process(&self, f: &File, base: i32) -> std::result::Result<i32, String> {
        let pid: Pid = f
            .path
            .0
            .strip_prefix(b"pid ")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .ok_or_else(|| format!("pidfd file {} names no pid", f.id))?;
        let flags = f.flags & libc::O_NONBLOCK as u32;
        // The process may not be created yet (a sibling): wait for it, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let raw = loop {
            match sys::pidfd_open_raw(pid, flags) {
                Ok(fd) => break fd,
                Err(e)
                    if e.raw_os_error() == Some(libc::ESRCH)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(format!("pidfd_open({pid}): {e}")),
            }
        };
        let fd = sys::dup_above(raw, base);
        sys::close(raw);
        fd.map_err(|e| format!("dup pidfd of {pid}: {e}"))
    }
}

/// Opens the pidfds of `group` (one reaped process) on a stand-in that
/// exits like it, then reaps the stand-in.
fn open_dead(cx: &mut OpenCx, group: &[(&File, &Pidfd)]) -> Result<()> {
    let status = group[0].1.exit_status;
    let child =
        sys::fork().map_err(|e| cx.err("fork a stand-in for a reaped process".into(), e))?;
    if child == 0 {
        sys::exit_like(status);
    }
    let r: Result<()> = (|| {
        sys::wait_exited_noreap(child)
            .map_err(|e| cx.err(format!("wait for stand-in {child}"), e))?;
        for (f, _) in group {
            let raw = sys::pidfd_open_raw(child, f.flags & libc::O_NONBLOCK as u32)
                .map_err(|e| cx.err(format!("pidfd_open of stand-in {child}"), e))?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|e| cx.err("dup pidfd".into(), e))?;
            cx.opened(f, fd)?;
        }
        Ok(())
    })();
    let reaped = sys::wait(child, 0);
    r?;
    match reaped {
        Ok((_, st)) if st == status => Ok(()),
        Ok((_, st)) => Err(Error::Refused(format!(
            "the stand-in for a reaped process exited with status {st:#x}, not {status:#x}"
        ))),
        Err(e) => Err(cx.err(format!("reap stand-in {child}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pidfd_fdinfo() {
        let live =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t4\nino:\t411526\nPid:\t18543\nNSpid:\t18543\n";
        assert_eq!(parse_pid(live), Some(18543));
        assert_eq!(parse_pid("pos:\t0\nPid:\t-1\nNSpid:\t-1\n"), Some(-1));
        assert_eq!(parse_pid("pos:\t0\n"), None);
    }
}
