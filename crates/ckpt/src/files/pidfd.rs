//! pidfds on processes of the tree: reopened with pidfd_open by the
//! process that holds one, once the process it refers to exists again (a
//! child or a sibling may still be being created at restart).
//! PIDFD_NONBLOCK is the description's O_NONBLOCK. Refused: a pidfd on a
//! process outside the tree (after restart that pid would be another
//! process or none), on a single thread (PIDFD_THREAD), on a process that
//! has exited and been reaped, and a pidfd inherited by another process
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
        let pid = match parse_pid(&p.info.text) {
            None => return Err(p.unsupported("its fdinfo has no readable Pid: line")),
            Some(-1) => return Err(p.unsupported("the process it refers to has exited and been reaped; a pidfd of a reaped process cannot be recreated yet; close it before the checkpoint")),
            Some(0) => return Err(p.unsupported("the process it refers to is outside the tree (in a pid namespace ckpt cannot see)")),
            Some(q) if !cx.tree.contains(&q) => {
                return Err(p.unsupported(&format!("the process it refers to is outside the tree (pid {q}); after restart that pid would be another process or none")))
            }
            Some(q) => q,
        };
        cx.scratch::<Holders>("pidfd").push((p.pid, f.id));
        f.kind = FILE_PIDFD;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            Pidfd {
                file_id: f.id,
                pid,
                ino: p.meta.ino(),
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
            (Some(r), None) if c.img.process(r.pid).is_some() => Ok(()),
            (Some(r), None) => Err(format!(
                "refers to pid {}, which is not a process of the image",
                r.pid
            )),
            _ => Err("needs exactly one pidfd record".into()),
        }
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            let r = objects_of::<Pidfd>(cx.img)
                .find(|r| r.file_id == f.id)
                .ok_or_else(|| {
                    Error::Refused(format!("pidfd file {} has no pidfd record", f.id))
                })?;
            // `open_in_process` sees only the `File`: the deferred copy
            // carries the pid in its path.
            let mut d = (*f).clone();
            d.path = Text(format!("pid {}", r.pid).into_bytes());
            cx.deferred.push(d);
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
