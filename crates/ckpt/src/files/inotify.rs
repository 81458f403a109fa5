//! inotify instances: each watch with its watch descriptor (wd), its mask
//! and the path of the watched inode.
//!
//! Checkpoint reads the watches from the fdinfo ("inotify wd:.. ino:..
//! sdev:.. mask:.. f_handle:.."), opens each watched inode through its file
//! handle (open_by_handle_at on a mount of its device) and keeps the path
//! the kernel gives that fd. An inode without a path any more (deleted, or
//! on a mount ckpt cannot reach) is refused: there is nothing to watch
//! again at restart.
//!
//! The mask is saved as the kernel keeps it: the events, IN_ONESHOT and
//! IN_EXCL_UNLINK. IN_MASK_ADD, IN_MASK_CREATE, IN_ONLYDIR and
//! IN_DONT_FOLLOW only act on the call that sets a watch, so there is
//! nothing of them to save (restart adds by the inode's own path, never
//! following a last symlink).
//!
//! Restart creates the instance and adds the watches in wd order. The
//! kernel numbers watches cyclically (the next wd follows the last one
//! given), so a gap in the saved wds is recreated by adding and removing
//! placeholder watches (on "/" or another directory the instance does not
//! watch) until the next wd is the saved one; every wd is checked. New
//! watches after restart are numbered after the highest saved wd (the
//! kernel does not show where its numbering was).
//!
//! Once the tree is rebuilt, before it runs, the events queued during the
//! restart are read away (`restored`): the placeholders' IN_IGNORED, and
//! the IN_OPEN/IN_CLOSE... the restart itself causes by reopening the
//! process's files and mapping its libraries. So the watches are in force
//! from the end of the restart; like every event between checkpoint and
//! restart, one from someone else during the restart is not seen.
//!
//! Queued events: the kernel offers no way to read an inotify queue
//! without consuming it, and no way to queue an event by hand. A
//! checkpoint of an instance with unread events is therefore refused
//! (rather than dropping them silently, which a program waiting for an
//! event would never notice); checkpoint once the process has read them.

use super::kind::{objects_of, Check, DumpCx, FdKind, OpenCx, Probe, ResumeCx};
use crate::error::{Error, Result};
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

pub struct Inotify;

/// The mask bits a watch keeps besides its events (fdinfo shows them).
const KEPT_FLAGS: u32 = libc::IN_ONESHOT | libc::IN_EXCL_UNLINK;
/// IN_MASK_CREATE (Linux 4.18): fail with EEXIST instead of merging into a
/// watch of the same inode (libc does not name it).
const IN_MASK_CREATE: u32 = 0x1000_0000;
/// Directories a placeholder watch may be put on, first not yet watched.
const PLACEHOLDERS: &[&[u8]] = &[b"/", b"/proc", b"/dev", b"/sys", b"/tmp", b"/etc"];
/// The most placeholders one gap in the wds may need (beyond it, refused).
const MAX_GAP: i32 = 1 << 16;

/// One "inotify wd:..." line of an inotify fdinfo.
#[derive(Debug, PartialEq, Eq)]
struct WatchInfo {
    wd: i32,
    ino: u64,
    /// The kernel's dev_t of the watched inode's filesystem (major << 20 | minor).
    sdev: u32,
    mask: u32,
    /// (fhandle-type, f_handle), when the kernel could encode one.
    handle: Option<(i32, Vec<u8>)>,
}

impl WatchInfo {
    fn major_minor(&self) -> (u32, u32) {
        (self.sdev >> 20, self.sdev & 0xf_ffff)
    }
    fn dev(&self) -> u64 {
        let (ma, mi) = self.major_minor();
        libc::makedev(ma, mi)
    }
}

/// The watches of an inotify fdinfo (`text`); `Err` names a line that
/// cannot be read.
fn parse_watches(text: &str) -> std::result::Result<Vec<WatchInfo>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("inotify ") else {
            continue;
        };
        let get = |k: &str| {
            rest.split_whitespace()
                .find_map(|t| t.strip_prefix(k)?.strip_prefix(':'))
        };
        let hex = |v: Option<&str>| v.and_then(|v| u64::from_str_radix(v, 16).ok());
        // The kernel prints wd, ino, sdev and mask in hex ("wd:%x").
        let (Some(wd), Some(ino), Some(sdev), Some(mask)) = (
            hex(get("wd")),
            hex(get("ino")),
            hex(get("sdev")),
            hex(get("mask")),
        ) else {
            return Err(format!("unreadable fdinfo line {line:?}"));
        };
        let handle = match (get("fhandle-bytes"), get("fhandle-type"), get("f_handle")) {
            (Some(n), Some(t), Some(h)) => {
                let n = usize::from_str_radix(n, 16).ok();
                let t = i32::from_str_radix(t, 16).ok();
                let h = decode_hex(h);
                match (n, t, h) {
                    (Some(n), Some(t), Some(h)) if h.len() == n => Some((t, h)),
                    _ => return Err(format!("unreadable file handle in fdinfo line {line:?}")),
                }
            }
            _ => None,
        };
        out.push(WatchInfo {
            wd: i32::try_from(wd).map_err(|_| format!("wd out of range in {line:?}"))?,
            ino,
            sdev: sdev as u32,
            mask: mask as u32,
            handle,
        });
    }
    Ok(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The mount points (in the process's root) of device major:minor in a
/// mountinfo text, the mounts of the filesystem's root first.
fn mounts_of(mountinfo: &str, major: u32, minor: u32) -> Vec<Vec<u8>> {
    let want = format!("{major}:{minor}");
    let mut found: Vec<(bool, Vec<u8>)> = mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, _, dev, root, point) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            (dev == want).then(|| (root != "/", unescape_octal(point)))
        })
        .collect();
    found.sort_by_key(|m| m.0);
    found.into_iter().map(|m| m.1).collect()
}

/// Undoes mountinfo's "\040"-style escapes.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The paths of the inodes `watches` (of process `pid`) watch, each or
/// why it has none.
fn watched_paths(
    pid: Pid,
    watches: &[WatchInfo],
) -> std::result::Result<Vec<std::result::Result<Vec<u8>, String>>, String> {
    // open_by_handle_at finds the filesystem through a directory fd it
    // cannot take as O_PATH, and opening a mount point for real would be
    // an IN_OPEN event to whoever watches it (this very instance, say). So
    // a thread with a cwd of its own enters each mount by fchdir of an
    // O_PATH fd and decodes the handle against AT_FDCWD.
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::unshare_fs().map_err(|e| format!("unshare(CLONE_FS): {e}"))?;
            Ok(watches.iter().map(|w| watched_path(pid, w)).collect())
        })
        .join()
        .unwrap_or_else(|_| Err("the thread looking up watched paths panicked".into()))
    })
}

/// The path (in ckpt's root) of the inode watch `w` of process `pid`
/// watches; `Err` is why it has none. Runs in a thread of its own cwd.
fn watched_path(pid: Pid, w: &WatchInfo) -> std::result::Result<Vec<u8>, String> {
    let (ma, mi) = w.major_minor();
    let what = format!("inode {} on device {ma}:{mi}", w.ino);
    let Some((htype, handle)) = &w.handle else {
        return Err(format!("the kernel shows no file handle for the watched {what} (filesystem without file handles?), so its path cannot be found"));
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("cannot read /proc/{pid}/mountinfo: {e}"))?;
    let mut points = mounts_of(&mountinfo, ma, mi);
    // The process's root as a last resort (a device not in its mountinfo).
    points.push(b"/".to_vec());
    let mut last = format!("no mount of device {ma}:{mi} is visible");
    for point in points {
        let mut at = format!("/proc/{pid}/root").into_bytes();
        at.extend_from_slice(&point);
        let Ok(mnt) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(std::ffi::OsStr::from_bytes(&at))
        else {
            continue;
        };
        if sys::fchdir(mnt.as_raw_fd()).is_err() {
            continue;
        }
        let fd = match sys::open_by_handle(libc::AT_FDCWD, *htype, handle) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                return Err(format!(
                "the watched {what} no longer exists (deleted), so it has no path to watch again"
            ))
            }
            Err(e) => {
                last = format!("open_by_handle_at of the watched {what}: {e}");
                continue;
            }
        };
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let path = std::fs::read_link(&link)
            .map_err(|e| format!("readlink of the watched {what}: {e}"))?
            .into_os_string()
            .into_vec();
        if path.ends_with(b" (deleted)") {
            return Err(format!(
                "the watched {what} was deleted ({}); it has no path to watch again",
                escape(&path)
            ));
        }
        // The path must name this very inode from ckpt's root (not another
        // mount namespace's view, not a file renamed over).
        let same = |m: std::fs::Metadata| m.dev() == w.dev() && m.ino() == w.ino;
        let here = std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(&path));
        if path.first() == Some(&b'/') && here.is_ok_and(same) {
            return Ok(path);
        }
        last = format!(
            "the watched {what} is at {}, which does not name it from ckpt's root",
            escape(&path)
        );
    }
    Err(last)
}

impl FdKind for Inotify {
    fn name(&self) -> &'static str {
        "inotify"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_INOTIFY]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.anon_inode() == Some(b"inotify")
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let watches = parse_watches(&p.info.text).map_err(|e| p.unsupported(&e))?;
        let paths = watched_paths(p.pid, &watches).map_err(|e| p.unsupported(&e))?;
        let mut recs = Vec::new();
        for (w, path) in watches.iter().zip(paths) {
            let path = path.map_err(|e| {
                p.unsupported(&format!(
                    "its watch {}: {e}; remove the watch (inotify_rm_watch) before the checkpoint",
                    w.wd
                ))
            })?;
            recs.push(InotifyWatch {
                file_id: f.id,
                wd: w.wd,
                mask: w.mask,
                dev: w.dev(),
                ino: w.ino,
                path: Text(path),
            });
        }
        // After the watches were looked up, so that events our own look-ups
        // would have caused are seen too.
        let mine = cx
            .fetch_fd(p.pid, p.fd)
            .map_err(|e| p.sys("pidfd_getfd", e))?;
        let queued = sys::fionread(mine.as_raw_fd()).map_err(|e| p.sys("FIONREAD", e))?;
        if queued > 0 {
            return Err(p.unsupported(&format!("{queued} bytes of inotify events are queued and unread; the kernel cannot show them without consuming them, so they cannot be saved; checkpoint once the process has read its events")));
        }
        f.kind = FILE_INOTIFY;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            ckpt_image::Inotify {
                file_id: f.id,
                watches: recs.len() as u32,
            }
            .into(),
        );
        cx.objects.extend(recs.into_iter().map(AnyRecord::from));
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut inst = objects_of::<ckpt_image::Inotify>(c.img).filter(|r| r.file_id == f.id);
        let (Some(inst), None) = (inst.next(), inst.next()) else {
            return Err("needs exactly one inotify record".into());
        };
        let ws = watches_of(c.img, f.id);
        if ws.len() != inst.watches as usize {
            return Err(format!(
                "has {} watch records, its inotify record says {}",
                ws.len(),
                inst.watches
            ));
        }
        let mut prev = 0;
        for w in ws {
            if w.wd <= prev {
                return Err(format!(
                    "has watch descriptors out of order or below 1 ({})",
                    w.wd
                ));
            }
            if w.wd - prev > MAX_GAP {
                return Err(format!("has a gap of {} between watch descriptors {prev} and {}, more than ckpt recreates", w.wd - prev - 1, w.wd));
            }
            if w.path.0.first() != Some(&b'/') {
                return Err(format!("watch {} has a relative path {}", w.wd, w.path));
            }
            if w.mask & !(libc::IN_ALL_EVENTS | KEPT_FLAGS) != 0
                || w.mask & libc::IN_ALL_EVENTS == 0
            {
                return Err(format!("watch {} has an invalid mask {:#x}", w.wd, w.mask));
            }
            prev = w.wd;
        }
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            // (`opened` gives it the saved status flags.)
            let raw = sys::inotify_init1(0).map_err(|e| cx.err("inotify_init1".into(), e))?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|e| cx.err("dup inotify".into(), e))?;
            cx.by_id.push((0, fd)); // closed with the rest if what follows fails
            add_watches(cx, f, fd)?;
            cx.by_id.pop();
            cx.opened(f, fd)?;
        }
        Ok(())
    }
    fn resume(&self, cx: &ResumeCx, f: &File) -> Result<()> {
        let Some((pid, mine)) = cx.fetch(f.id)? else {
            return Ok(());
        };
        let sys_err = |what: &str, e| Error::Sys {
            pid,
            what: format!("{what} of inotify file {}", f.id),
            source: e,
        };
        // Only while something is queued: the description may be blocking.
        // (4096 bytes hold any one event: 16 + NAME_MAX + 1, padded.)
        let mut buf = [0u8; 4096];
        while sys::fionread(mine.as_raw_fd()).map_err(|e| sys_err("FIONREAD", e))? > 0 {
            sys::read(mine.as_raw_fd(), &mut buf)
                .map_err(|e| sys_err("read the restart's events", e))?;
        }
        Ok(())
    }
}

/// The watch records of inotify `id`, in wd order.
fn watches_of(img: &crate::model::Image, id: u32) -> Vec<&InotifyWatch> {
    let mut ws: Vec<&InotifyWatch> = objects_of::<InotifyWatch>(img)
        .filter(|w| w.file_id == id)
        .collect();
    ws.sort_by_key(|w| w.wd);
    ws
}

/// Adds the saved watches of `f` to the new instance `fd`, each getting
/// its saved wd.
fn add_watches(cx: &OpenCx, f: &File, fd: i32) -> Result<()> {
    let pid = (cx.user_of)(f.id);
    let fail = |what: String| Error::Refused(format!("pid {pid}: inotify file {}: {what}", f.id));
    // The wd the kernel gives next: it starts at 1 and follows the last one.
    let mut next = 1;
    for w in watches_of(cx.img, f.id) {
        while next < w.wd {
            let got = placeholder(fd).map_err(|e| {
                fail(format!(
                    "cannot add a placeholder watch to reach wd {}: {e}",
                    w.wd
                ))
            })?;
            if got != next {
                return Err(fail(format!(
                    "the kernel gave placeholder wd {got}, expected {next}; cannot recreate wd {}",
                    w.wd
                )));
            }
            let _ = sys::inotify_rm_watch(fd, got);
            next = got + 1;
        }
        let mask = w.mask | libc::IN_DONT_FOLLOW | IN_MASK_CREATE;
        let got = sys::with_fs_ids(cx.fs, || sys::inotify_add_watch(fd, &w.path.0, mask)).map_err(
            |e| {
                fail(format!(
                    "cannot watch {}{} again (wd {}): {e}",
                    w.path,
                    cx.who(),
                    w.wd
                ))
            },
        )?;
        if got != w.wd {
            return Err(fail(format!("watching {} gave wd {got}, the image has wd {}; the restored process would see other watch descriptors", w.path, w.wd)));
        }
        next = got + 1;
    }
    Ok(())
}

/// Adds a watch to some directory `fd` does not watch yet: its wd.
fn placeholder(fd: i32) -> std::io::Result<i32> {
    let mut last = std::io::Error::from_raw_os_error(libc::ENOENT);
    for p in PLACEHOLDERS {
        match sys::inotify_add_watch(fd, p, libc::IN_DELETE_SELF | IN_MASK_CREATE) {
            Ok(wd) => return Ok(wd),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_inotify_fdinfo() {
        let text = "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1044\n\
            inotify wd:2 ino:2e1 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:e102000000000000\n\
            inotify wd:1a ino:99867d sdev:fe00001 mask:80000300 ignored_mask:0\n";
        let ws = parse_watches(text).unwrap();
        assert_eq!(
            ws[0],
            WatchInfo {
                wd: 2,
                ino: 0x2e1,
                sdev: 0xfe00000,
                mask: 2,
                handle: Some((1, vec![0xe1, 2, 0, 0, 0, 0, 0, 0])),
            }
        );
        assert_eq!(ws[0].major_minor(), (254, 0));
        assert_eq!(ws[1].wd, 26);
        assert_eq!(ws[1].major_minor(), (254, 1));
        assert_eq!(
            ws[1].mask,
            libc::IN_ONESHOT | libc::IN_CREATE | libc::IN_DELETE
        );
        assert_eq!(ws[1].handle, None);
        assert!(parse_watches("inotify wd:zz ino:1 sdev:0 mask:1\n").is_err());
        assert!(parse_watches(
            "inotify wd:1 ino:1 sdev:0 mask:1 fhandle-bytes:8 fhandle-type:1 f_handle:e1\n"
        )
        .is_err());
        assert_eq!(parse_watches("pos:\t0\n").unwrap(), vec![]);
    }

    #[test]
    fn finds_mounts_of_a_device() {
        let mi = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
            30 22 254:0 /srv /mnt/with\\040space rw - ext4 /dev/vda rw\n\
            31 22 0:5 / /dev rw - devtmpfs udev rw\n";
        assert_eq!(
            mounts_of(mi, 254, 0),
            vec![b"/".to_vec(), b"/mnt/with space".to_vec()]
        );
        assert_eq!(mounts_of(mi, 0, 5), vec![b"/dev".to_vec()]);
        assert!(mounts_of(mi, 8, 1).is_empty());
    }
}
