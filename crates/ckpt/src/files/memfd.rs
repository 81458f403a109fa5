//! memfds: the content is the shared memory object the file is (the same
//! object its mappings name), restored by `mm::create_shmem`; each
//! description reopens that object.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use super::reopen_fd;
use crate::error::{Error, Result};
use crate::sys;
use ckpt_image::*;
use std::os::unix::fs::MetadataExt;

pub struct Memfd;

/// (dev, ino, file id, /proc source) of the memfds met as fds.
type Met = Vec<(u64, u64, u32, String)>;

impl FdKind for Memfd {
    fn name(&self) -> &'static str {
        "memfd"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_MEMFD]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.meta.is_file() && p.path.starts_with(b"/memfd:")
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let source = format!("/proc/{}/fd/{}", p.pid, p.fd);
        cx.scratch::<Met>("memfd")
            .push((p.meta.dev(), p.meta.ino(), f.id, source));
        f.kind = FILE_MEMFD;
        Ok(())
    }
    fn finish(
        &self,
        cx: &mut DumpCx,
        files: &mut [File],
        shm: &mut crate::mm::ShmemTable,
    ) -> Result<()> {
        // A memfd open as an fd is the same object as its mappings.
        for (dev, ino, id, source) in std::mem::take(cx.scratch::<Met>("memfd")) {
            let f = files.iter_mut().find(|f| f.id == id).expect("saved");
            let name = f
                .path
                .0
                .strip_prefix(b"/memfd:")
                .unwrap_or(&f.path.0)
                .to_vec();
            f.obj = shm.id(dev, ino, SHMEM_MEMFD, &name, source)?;
        }
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        if !c.img.shmems.iter().any(|s| s.shmem.id == f.obj) {
            return Err("names a missing shared memory object".into());
        }
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        // Objects whose own description a file took.
        let mut taken: Vec<u32> = Vec::new();
        for f in files {
            let m = (cx.shmem_fd)(f.obj).ok_or_else(|| {
                Error::Refused(format!(
                    "memfd file {} names a missing object {}",
                    f.id, f.obj
                ))
            })?;
            let flags = f.flags as i32 & !libc::O_DIRECTORY;
            // The file memfd_create made is no writer that stops an
            // execveat of it (ETXTBSY) but a read-write reopen is: the
            // first read-write description gets that very file.
            let fd = if flags & libc::O_ACCMODE == libc::O_RDWR && !taken.contains(&f.obj) {
                taken.push(f.obj);
                sys::dup_above(m, cx.base).map_err(|e| cx.err("dup memfd".into(), e))?
            } else {
                reopen_fd(m, flags, cx.base)
                    .map_err(|e| cx.err(format!("reopen memfd {}", f.path), e))?
            };
            cx.opened(f, fd)?;
            sys::lseek(fd, f.pos)
                .map_err(|e| cx.err(format!("seek {} to {}", f.path, f.pos), e))?;
        }
        Ok(())
    }
}
