//! eventfds: the counter and EFD_SEMAPHORE (O_NONBLOCK is a status flag
//! of the `File`). Shared descriptions are shared again like any other.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use crate::error::{Error, Result};
use crate::sys;
use ckpt_image::*;

pub struct EventFd;

impl FdKind for EventFd {
    fn name(&self) -> &'static str {
        "eventfd"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_EVENTFD]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.anon_inode() == Some(b"[eventfd]")
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        // "eventfd-count: %16llx" (hex), "eventfd-semaphore: %d" (5.2+).
        let count = p
            .field("eventfd-count:")
            .and_then(|v| u64::from_str_radix(v, 16).ok());
        let semaphore = p.field("eventfd-semaphore:").map(|v| v == "1");
        let (Some(count), Some(semaphore)) = (count, semaphore) else {
            return Err(p.unsupported(
                "its fdinfo lacks eventfd-count or eventfd-semaphore (kernel older than 5.2?)",
            ));
        };
        f.kind = FILE_EVENTFD;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            Eventfd {
                file_id: f.id,
                count,
                semaphore,
            }
            .into(),
        );
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = kind_records(c.img, f.id);
        match (recs.next(), recs.next()) {
            (Some(e), None) if e.count < u64::MAX => Ok(()),
            (Some(_), None) => Err("has a counter of 2^64-1, which no eventfd can hold".into()),
            _ => Err("needs exactly one eventfd record".into()),
        }
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            let e = kind_records(cx.img, f.id).next().ok_or_else(|| {
                Error::Refused(format!("eventfd file {} has no eventfd record", f.id))
            })?;
            let flags = if e.semaphore { libc::EFD_SEMAPHORE } else { 0 };
            let raw = sys::eventfd(flags).map_err(|err| cx.err("eventfd".into(), err))?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|err| cx.err("dup eventfd".into(), err))?;
            cx.by_id.push((0, fd)); // closed with the rest if what follows fails
            if e.count > 0 {
                sys::write_all(fd, &e.count.to_ne_bytes())
                    .map_err(|err| cx.err(format!("set eventfd counter to {}", e.count), err))?;
            }
            cx.by_id.pop();
            cx.opened(f, fd)?;
        }
        Ok(())
    }
}

/// The eventfd records of file `id`.
fn kind_records(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &Eventfd> + '_ {
    super::kind::objects_of::<Eventfd>(img).filter(move |e| e.file_id == id)
}
