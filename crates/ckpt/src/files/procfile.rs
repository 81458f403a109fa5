//! Files under /proc/PID of a process of the tree: reopened by the process
//! that holds it, once PID exists again (a sibling or a child may still be
//! being created at restart).

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use super::path::proc_pid;
use super::reopen;
use crate::error::Result;
use crate::sys::{self, Pid};
use ckpt_image::*;

pub struct ProcFile;

/// (pid, file id) of every /proc file saved.
type Holders = Vec<(Pid, u32)>;

impl FdKind for ProcFile {
    fn name(&self) -> &'static str {
        "/proc file"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_PROC]
    }
    fn matches(&self, p: &Probe) -> bool {
        // /proc/1 is the pid namespace's init, the same process after a
        // restart here: reopened by path like any file.
        proc_pid(p.path).is_some_and(|t| !p.deleted && t != Ok(1))
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        match proc_pid(p.path) {
            Some(Ok(q)) if cx.tree.contains(&q) => {}
            Some(Ok(q)) => {
                return Err(p.unsupported(&format!("it is about pid {q}, which is outside the checkpointed tree; after restart that pid would be another process or none")))
            }
            _ => {
                return Err(p.unsupported(
                    "it is about a thread other than its process's main thread; such files cannot be reopened yet",
                ))
            }
        }
        cx.scratch::<Holders>("proc").push((p.pid, f.id));
        f.kind = FILE_PROC;
        Ok(())
    }
    fn shared(&self, cx: &mut DumpCx, p: &Probe, f: &File) -> Result<()> {
        if cx
            .scratch::<Holders>("proc")
            .iter()
            .any(|&(q, id)| id == f.id && q != p.pid)
        {
            return Err(p.unsupported("this /proc file is shared with another process (inherited across fork); each process reopens its own /proc files, so the sharing cannot come back"));
        }
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        match proc_pid(&f.path.0) {
            Some(Ok(pid)) if c.img.process(pid).is_some() => Ok(()),
            _ => Err("is not a /proc file of a process of the image".into()),
        }
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        cx.deferred.extend(files.iter().map(|f| (*f).clone()));
        Ok(())
    }
    fn open_in_process(&self, f: &File, base: i32) -> std::result::Result<i32, String> {
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
}
