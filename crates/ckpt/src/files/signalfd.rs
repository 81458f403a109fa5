//! signalfds: the set of signals they read (O_NONBLOCK is a status flag of
//! the `File`). The signals themselves are in the pending queues of the
//! threads and processes, which ckpt saves and restores anyway; a
//! signalfd reads those of whoever reads it.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use crate::error::{Error, Result};
use crate::sys;
use ckpt_image::*;

pub struct SignalFd;

/// SIGKILL and SIGSTOP, which the kernel takes out of every signalfd mask.
const UNBLOCKABLE: u64 = (1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1));

/// The mask of a signalfd's fdinfo line "sigmask:\t%016llx"
/// (fs/signalfd.c, signalfd_show_fdinfo: bit n-1 for signal n, in hex).
fn parse_mask(v: &str) -> Option<u64> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= 16)
        .then(|| u64::from_str_radix(v, 16).ok())
        .flatten()
}

impl FdKind for SignalFd {
    fn name(&self) -> &'static str {
        "signalfd"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_SIGNALFD]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.anon_inode() == Some(b"[signalfd]")
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let Some(mask) = p.field("sigmask:").and_then(parse_mask) else {
            return Err(p.unsupported("its fdinfo lacks a readable sigmask line"));
        };
        f.kind = FILE_SIGNALFD;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            Signalfd {
                file_id: f.id,
                mask,
            }
            .into(),
        );
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = kind_records(c.img, f.id);
        match (recs.next(), recs.next()) {
            (Some(r), None) if r.mask & UNBLOCKABLE == 0 => Ok(()),
            (Some(r), None) => Err(format!(
                "has mask {:#x} with SIGKILL or SIGSTOP, which no signalfd reads",
                r.mask
            )),
            _ => Err("needs exactly one signalfd record".into()),
        }
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            let r = kind_records(cx.img, f.id).next().ok_or_else(|| {
                Error::Refused(format!("signalfd file {} has no signalfd record", f.id))
            })?;
            let raw = sys::signalfd(r.mask)
                .map_err(|e| cx.err(format!("signalfd of mask {:#x}", r.mask), e))?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|e| cx.err("dup signalfd".into(), e))?;
            cx.opened(f, fd)?;
        }
        Ok(())
    }
}

/// The signalfd records of file `id`.
fn kind_records(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &Signalfd> + '_ {
    super::kind::objects_of::<Signalfd>(img).filter(move |e| e.file_id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sigmask() {
        // SIGUSR1 (10) and SIGUSR2 (12), as this kernel prints them.
        let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1044\nsigmask:\t0000000000000a00\n";
        let v = text.lines().find_map(|l| l.strip_prefix("sigmask:"));
        assert_eq!(v.and_then(parse_mask), Some(0xa00));
        assert_eq!(parse_mask("\tffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_mask(""), None);
        assert_eq!(parse_mask("00000000000000000a00"), None);
        assert_eq!(parse_mask("zz"), None);
    }

    #[test]
    fn validation_refuses_unblockable_signals() {
        let check = |mask| {
            let img = crate::model::Image {
                objects: vec![Signalfd { file_id: 1, mask }.into()],
                ..Default::default()
            };
            let f = File {
                id: 1,
                kind: FILE_SIGNALFD,
                ..Default::default()
            };
            SignalFd.validate(&Check::new(&img, None), &f)
        };
        assert_eq!(check(0xa00), Ok(()));
        assert_eq!(check(0), Ok(()));
        assert!(check(1 << (libc::SIGKILL - 1)).is_err());
        assert!(check(1 << (libc::SIGSTOP - 1)).is_err());
    }
}
