//! epoll instances: the instance (status flags are the `File`'s, the
//! busy-poll parameters an `Epoll` record) and every watch (`EpollWatch`):
//! the target description by id, the fd number it was added under, the
//! event mask with its EPOLLET / EPOLLONESHOT / EPOLLEXCLUSIVE /
//! EPOLLWAKEUP bits, and the 64-bit cookie.
//!
//! The kernel keys a watch by (description, fd number), and the fd number
//! need not hold the description any more (a watch lives as long as its
//! description does, whatever happens to the fd). Checkpoint reads the
//! watches from the epoll's fdinfo and finds each target with
//! kcmp(KCMP_EPOLL_TFD) among every fd of the tree, once the whole tree is
//! saved (`finish`): first the fd of that number in the process holding
//! the epoll, then every other fd. A target no fd of the tree holds is
//! refused, and so is a /proc file of another process than the one adding
//! the watches at restart (each process reopens its own /proc files).
//!
//! Restart creates the epoll in the restorer (so it is shared like any
//! description) and adds the watches inside the first restored process
//! holding it (`install`), under their own fd numbers, so EPOLL_CTL_MOD and
//! EPOLL_CTL_DEL of the restored program find them: when that fd does not
//! hold the target, the target is put there for the moment of the ADD.
//!
//! What differs after restart:
//! - an edge-triggered watch whose target is ready reports it once more
//!   (EPOLL_CTL_ADD polls the target; the edge the program had already
//!   seen is not known);
//! - an EPOLLONESHOT watch that already fired (no event bits left in its
//!   mask) stays disarmed: it is added armed and fired once at restart
//!   when its target is ready for anything. When the target is ready for
//!   nothing at restart, it is armed for EPOLLERR and EPOLLHUP only (which
//!   the kernel adds to every ADD), so it may report one of those once.
//! - EPOLLWAKEUP is kept by the kernel only for a process with
//!   CAP_BLOCK_SUSPEND; a restart without it fails instead of dropping it.

use super::kind::{objects_of, Check, DumpCx, FdKind, InstallCx, OpenCx, Probe, Stage};
use crate::error::{Error, Result};
use crate::ids::ObjId;
use crate::sys::{self, Pid};
use ckpt_image::*;

pub struct EpollKind;

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
const EPOLLET: u32 = libc::EPOLLET as u32;
const EPOLLONESHOT: u32 = libc::EPOLLONESHOT as u32;
const EPOLLEXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;
const EPOLLWAKEUP: u32 = libc::EPOLLWAKEUP as u32;
/// The mode bits of a mask (the kernel's EP_PRIVATE_BITS): what is left of
/// the mask of an EPOLLONESHOT watch once it fired.
const MODE_BITS: u32 = EPOLLET | EPOLLONESHOT | EPOLLEXCLUSIVE | EPOLLWAKEUP;
/// Every event a target can report (EPOLLERR and EPOLLHUP included).
const EVENT_BITS: u32 = EPOLLIN
    | libc::EPOLLPRI as u32
    | EPOLLOUT
    | libc::EPOLLERR as u32
    | libc::EPOLLHUP as u32
    | 0x20 // EPOLLNVAL
    | libc::EPOLLRDNORM as u32
    | libc::EPOLLRDBAND as u32
    | libc::EPOLLWRNORM as u32
    | libc::EPOLLWRBAND as u32
    | libc::EPOLLMSG as u32
    | libc::EPOLLRDHUP as u32;
const KNOWN_BITS: u32 = EVENT_BITS | MODE_BITS;

/// One `tfd:` line of an epoll's fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WatchLine {
    tfd: i32,
    events: u32,
    data: u64,
}

/// The watches of an epoll's fdinfo, in its order (the kernel's tree
/// order, which kcmp's `toff` counts in too). Lines are
/// "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x".
fn parse_watches(text: &str) -> std::result::Result<Vec<WatchLine>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        // "key: value" and "key:value" both occur.
        let mut fields: Vec<(&str, &str)> = Vec::new();
        let mut toks = line.split_whitespace();
        while let Some(t) = toks.next() {
            let Some((k, v)) = t.split_once(':') else {
                return Err(format!("unexpected {t:?} in {line:?}"));
            };
            let v = if v.is_empty() {
                toks.next().unwrap_or("")
            } else {
                v
            };
            fields.push((k, v));
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|f| f.0 == k)
                .map(|f| f.1)
                .ok_or_else(|| format!("no {k} in {line:?}"))
        };
        let bad = |k: &str| format!("bad {k} in {line:?}");
        out.push(WatchLine {
            tfd: get("tfd")?.parse().map_err(|_| bad("tfd"))?,
            events: u32::from_str_radix(get("events")?, 16).map_err(|_| bad("events"))?,
            data: u64::from_str_radix(get("data")?, 16).map_err(|_| bad("data"))?,
        });
    }
    Ok(out)
}

/// An epoll saved in `dump`, its watches resolved in `finish`.
struct Pending {
    file_id: u32,
    pid: Pid,
    comm: String,
    epfd: i32,
    watches: Vec<WatchLine>,
}

const SCRATCH: &str = "epoll";

impl FdKind for EpollKind {
    fn name(&self) -> &'static str {
        "epoll"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_EPOLL]
    }
    fn matches(&self, p: &Probe) -> bool {
        p.anon_inode() == Some(b"[eventpoll]")
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let watches = parse_watches(&p.info.text).map_err(|e| {
            p.unsupported(&format!("its fdinfo does not read as epoll watches: {e}"))
        })?;
        for w in &watches {
            if w.events & !KNOWN_BITS != 0 {
                return Err(p.unsupported(&format!(
                    "its watch of fd number {} has event bits {:#x} ckpt does not know",
                    w.tfd,
                    w.events & !KNOWN_BITS
                )));
            }
        }
        let params = {
            use std::os::fd::AsRawFd;
            let mine = cx
                .fetch_fd(p.pid, p.fd)
                .map_err(|e| p.sys("pidfd_getfd", e))?;
            sys::epoll_params(mine.as_raw_fd()).map_err(|e| p.sys("EPIOCGPARAMS", e))?
        };
        f.kind = FILE_EPOLL;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            Epoll {
                file_id: f.id,
                busy_poll_usecs: params.busy_poll_usecs,
                busy_poll_budget: params.busy_poll_budget,
                prefer_busy_poll: params.prefer_busy_poll,
            }
            .into(),
        );
        cx.scratch::<Vec<Pending>>(SCRATCH).push(Pending {
            file_id: f.id,
            pid: p.pid,
            comm: p.comm.into(),
            epfd: p.fd,
            watches,
        });
        Ok(())
    }
    fn finish(
        &self,
        cx: &mut DumpCx,
        _files: &mut [File],
        _shm: &mut crate::mm::ShmemTable,
    ) -> Result<()> {
        let pending = std::mem::take(cx.scratch::<Vec<Pending>>(SCRATCH));
        let all: Vec<(Pid, i32, ObjId)> = cx.fds.all().collect();
        for e in pending {
            // kcmp counts watches in the order the fdinfo was read in: the
            // same watches still (only a process outside the frozen tree
            // could change them).
            let now = crate::procfs::fdinfo(e.pid, e.epfd)
                .ok()
                .and_then(|i| parse_watches(&i.text).ok());
            if now.as_ref() != Some(&e.watches) {
                return Err(Error::Unsupported {
                    pid: e.pid,
                    comm: e.comm.clone(),
                    object: format!("fd {} (epoll)", e.epfd),
                    reason: "its watches changed during the checkpoint (is it shared with a process outside the tree?); checkpoint that process too".into(),
                });
            }
            for (i, w) in e.watches.iter().enumerate() {
                // Watches of one fd number are told apart by their rank.
                let toff = e.watches[..i].iter().filter(|x| x.tfd == w.tfd).count() as u32;
                let target = find_target(cx, &all, &e, w.tfd, toff)?;
                cx.objects.push(
                    EpollWatch {
                        epoll_id: e.file_id,
                        target_id: target.0,
                        tfd: w.tfd as u32,
                        events: w.events,
                        data: w.data,
                    }
                    .into(),
                );
            }
        }
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = objects_of::<Epoll>(c.img).filter(|e| e.file_id == f.id);
        let e = match (recs.next(), recs.next()) {
            (Some(e), None) => e,
            _ => return Err("needs exactly one epoll record".into()),
        };
        if e.prefer_busy_poll > 1 {
            return Err(format!("has prefer_busy_poll {}", e.prefer_busy_poll));
        }
        let kind_of = |id: u32| c.img.files.iter().find(|x| x.id == id).map(|x| x.kind);
        if let Some(w) =
            objects_of::<EpollWatch>(c.img).find(|w| kind_of(w.epoll_id) != Some(FILE_EPOLL))
        {
            return Err(format!(
                "is not alone: a watch names {}, no epoll",
                w.epoll_id
            ));
        }
        if let Some(e) = objects_of::<Epoll>(c.img).find(|e| kind_of(e.file_id) != Some(FILE_EPOLL))
        {
            return Err(format!(
                "is not alone: an epoll record names {}, no epoll",
                e.file_id
            ));
        }
        let watches: Vec<&EpollWatch> = watches_of(c.img, f.id).collect();
        // The process that adds the watches at restart (`install`).
        let setter = c
            .img
            .processes
            .iter()
            .filter(|q| !q.is_zombie() && q.files_shared.is_none())
            .find(|q| q.fds.iter().any(|d| d.file_id == f.id));
        for (i, w) in watches.iter().enumerate() {
            let what = format!("its watch of fd number {}", w.tfd);
            let Some(k) = kind_of(w.target_id) else {
                return Err(format!("{what} names no file ({})", w.target_id));
            };
            // Each process reopens its own /proc files: no other has them.
            if k == FILE_PROC
                && !setter.is_some_and(|q| q.fds.iter().any(|d| d.file_id == w.target_id))
            {
                return Err(format!("{what} is on a /proc file that the first process holding the epoll{} does not hold; each process reopens its own /proc files, so only that process could add the watch", setter.map(|q| format!(" (pid {})", q.pid())).unwrap_or_default()));
            }
            if w.target_id == f.id {
                return Err(format!("{what} watches the epoll itself"));
            }
            if w.tfd > i32::MAX as u32 {
                return Err(format!("{what} is no fd number"));
            }
            if w.events & !KNOWN_BITS != 0 {
                return Err(format!(
                    "{what} has unknown event bits {:#x}",
                    w.events & !KNOWN_BITS
                ));
            }
            if w.events & EPOLLEXCLUSIVE != 0 && (w.events & EPOLLONESHOT != 0 || k == FILE_EPOLL) {
                return Err(format!(
                    "{what} has EPOLLEXCLUSIVE with EPOLLONESHOT or on an epoll"
                ));
            }
            if watches[..i]
                .iter()
                .any(|x| x.tfd == w.tfd && x.target_id == w.target_id)
            {
                return Err(format!("{what} is there twice for file {}", w.target_id));
            }
        }
        Ok(())
    }
    fn stage(&self) -> Stage {
        Stage::AfterTargets
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            let img = cx.img;
            let e = objects_of::<Epoll>(img)
                .find(|e| e.file_id == f.id)
                .ok_or_else(|| {
                    Error::Refused(format!("epoll file {} has no epoll record", f.id))
                })?;
            let params =
                sys::EpollParams::new(e.busy_poll_usecs, e.busy_poll_budget, e.prefer_busy_poll);
            let raw = sys::epoll_create().map_err(|err| cx.err("epoll_create1".into(), err))?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|err| cx.err("dup epoll".into(), err))?;
            cx.by_id.push((0, fd)); // closed with the rest if what follows fails
            if params != sys::EpollParams::default() {
                sys::set_epoll_params(fd, &params).map_err(|err| {
                    cx.err(
                        format!(
                            "set busy poll of epoll file {} ({} us, budget {}; a budget over 64 needs CAP_NET_ADMIN)",
                            f.id, e.busy_poll_usecs, e.busy_poll_budget
                        ),
                        err,
                    )
                })?;
            }
            cx.by_id.pop();
            cx.opened(f, fd)?;
        }
        Ok(())
    }
    fn needs(&self, img: &crate::model::Image, f: &File) -> Vec<u32> {
        watches_of(img, f.id).map(|w| w.target_id).collect()
    }
    fn install(&self, cx: &InstallCx, f: &File, _id: ObjId) -> std::result::Result<(), String> {
        if !cx.first_holder(f.id) {
            return Ok(());
        }
        let Some(epfd) =
            cx.p.fds
                .iter()
                .find(|d| d.file_id == f.id)
                .map(|d| d.fd as i32)
        else {
            return Ok(());
        };
        let mut watches: Vec<&EpollWatch> = watches_of(cx.img, f.id).collect();
        // The fired one-shot watches first, while the epoll holds nothing
        // else an epoll_wait could report.
        watches.sort_by_key(|w| !disarmed(w));
        for w in &watches {
            add_watch(cx, epfd, w).map_err(|e| {
                format!("epoll fd {epfd}: add the watch of fd number {}: {e}", w.tfd)
            })?;
        }
        check_wakeup(epfd, &watches)
    }
}

/// The watch records of epoll `id`.
fn watches_of(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &EpollWatch> + '_ {
    objects_of::<EpollWatch>(img).filter(move |w| w.epoll_id == id)
}

/// An EPOLLONESHOT watch that fired: no event bits left.
fn disarmed(w: &EpollWatch) -> bool {
    w.events & EPOLLONESHOT != 0 && w.events & !MODE_BITS == 0
}

/// The description the `toff`-th watch under `tfd` of epoll `e` watches:
/// fd `tfd` of its process if that is it, else any fd of the tree.
fn find_target(
    cx: &DumpCx,
    all: &[(Pid, i32, ObjId)],
    e: &Pending,
    tfd: i32,
    toff: u32,
) -> Result<ObjId> {
    let is = |q: Pid, fd: i32| match sys::same_epoll_target(q, fd, e.pid, e.epfd, tfd, toff) {
        Ok(same) => Ok(same),
        // (An fd of the table closed meanwhile: not it.)
        Err(err) if err.raw_os_error() == Some(libc::EBADF) => Ok(false),
        Err(err) => Err(Error::Sys {
            pid: e.pid,
            what: format!(
                "kcmp(KCMP_EPOLL_TFD) of epoll fd {} watch of fd {tfd}",
                e.epfd
            ),
            source: err,
        }),
    };
    if let Some(id) = cx.fds.of(e.pid, tfd) {
        if is(e.pid, tfd)? {
            return Ok(id);
        }
    }
    for &(q, fd, id) in all {
        if is(q, fd)? {
            return Ok(id);
        }
    }
    Err(Error::Unsupported {
        pid: e.pid,
        comm: e.comm.clone(),
        object: format!("fd {} (epoll)", e.epfd),
        reason: format!(
            "its watch of fd number {tfd} is on a file no process of the checkpointed tree holds open (fd {tfd} was closed or reused, and the file is held outside the tree or only by a memory mapping or in flight); remove the watch (EPOLL_CTL_DEL) first or checkpoint the process holding the file too"
        ),
    })
}

/// Adds watch `w` to epoll `epfd` of this process under its own fd number.
fn add_watch(cx: &InstallCx, epfd: i32, w: &EpollWatch) -> std::result::Result<(), String> {
    let tfd = w.tfd as i32;
    let add = |epfd: i32| -> std::result::Result<(), String> {
        let ctl = |op, events| {
            sys::epoll_ctl(epfd, op, tfd, events, w.data)
                .map_err(|e| format!("epoll_ctl(events {events:#x}): {e}"))
        };
        if !disarmed(w) {
            return ctl(libc::EPOLL_CTL_ADD, w.events);
        }
        // Armed for everything and fired at once when the target is ready
        // (only fired watches are in the epoll: the report is this one's);
        // else armed for what the kernel always adds (EPOLLERR|EPOLLHUP).
        ctl(libc::EPOLL_CTL_ADD, w.events | EVENT_BITS)?;
        if sys::epoll_wait_now(epfd).map_err(|e| format!("epoll_wait: {e}"))? == 0 {
            ctl(libc::EPOLL_CTL_MOD, w.events)?;
        }
        Ok(())
    };
    let holds_target =
        cx.p.fds
            .iter()
            .any(|d| d.fd == w.tfd && d.file_id == w.target_id);
    if holds_target {
        return add(epfd);
    }
    // The target goes to fd `tfd` for the moment, and whatever is there
    // (an fd of the image, a copy of the restorer's) comes back after.
    let src = (cx.source)(w.target_id).ok_or_else(|| format!("no file {}", w.target_id))?;
    let saved = match sys::fd_flags(tfd) {
        Ok(flags) => Some((
            sys::dup_above(tfd, 0).map_err(|e| format!("dup fd {tfd}: {e}"))?,
            flags,
        )),
        Err(_) => None,
    };
    // (When the epoll itself is at `tfd`, its copy stands in.)
    let ep = match saved {
        Some((s, _)) if tfd == epfd => s,
        _ => epfd,
    };
    let r = sys::dup2(src, tfd)
        .map_err(|e| format!("dup2 the target to fd {tfd}: {e}"))
        .and_then(|()| add(ep));
    match saved {
        Some((s, flags)) => {
            let back = sys::dup2(s, tfd).and_then(|()| sys::fcntl_set(tfd, libc::F_SETFD, flags));
            sys::close(s);
            back.map_err(|e| format!("put fd {tfd} back: {e}"))?;
        }
        None => sys::close(tfd),
    }
    r
}

/// The kernel drops EPOLLWAKEUP silently without CAP_BLOCK_SUSPEND: the
/// restart fails instead.
fn check_wakeup(epfd: i32, watches: &[&EpollWatch]) -> std::result::Result<(), String> {
    if !watches.iter().any(|w| w.events & EPOLLWAKEUP != 0) {
        return Ok(());
    }
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}"))
        .map_err(|e| format!("read fdinfo of epoll fd {epfd}: {e}"))?;
    let now = parse_watches(&text).map_err(|e| format!("fdinfo of epoll fd {epfd}: {e}"))?;
    let wake = |tfd: u32| {
        now.iter()
            .filter(|x| x.tfd as u32 == tfd && x.events & EPOLLWAKEUP != 0)
            .count()
    };
    for w in watches.iter().filter(|w| w.events & EPOLLWAKEUP != 0) {
        let want = watches
            .iter()
            .filter(|x| x.tfd == w.tfd && x.events & EPOLLWAKEUP != 0)
            .count();
        if wake(w.tfd) < want {
            return Err(format!("epoll fd {epfd}: the watch of fd number {} has EPOLLWAKEUP, which the kernel keeps only for a process with CAP_BLOCK_SUSPEND; restart with that capability (as root)", w.tfd));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_epoll_fdinfo() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n\
            tfd:        5 events:       19 data: deadbeefcafef00d  pos:0 ino:42 sdev:f\n\
            tfd:        7 events: 80000019 data:                7  pos:0 ino:1a3 sdev:d\n\
            tfd:       12 events: 40000000 data:               ff  pos:0 ino:1a3 sdev:d\n";
        let w = parse_watches(text).unwrap();
        assert_eq!(
            w,
            vec![
                WatchLine {
                    tfd: 5,
                    events: 0x19,
                    data: 0xdead_beef_cafe_f00d
                },
                WatchLine {
                    tfd: 7,
                    events: EPOLLET | 0x19,
                    data: 7
                },
                WatchLine {
                    tfd: 12,
                    events: EPOLLONESHOT,
                    data: 0xff
                },
            ]
        );
        assert!(disarmed(&EpollWatch {
            events: EPOLLONESHOT | EPOLLET,
            ..Default::default()
        }));
        assert!(!disarmed(&EpollWatch {
            events: EPOLLONESHOT | EPOLLOUT,
            ..Default::default()
        }));
        // An epoll without watches; a line of another form is an error.
        assert_eq!(parse_watches("pos:\t0\nflags:\t02\n").unwrap(), vec![]);
        assert!(parse_watches("tfd: 5 events: zz data: 0\n").is_err());
        assert!(parse_watches("tfd: 5 events: 1\n").is_err());
    }

    #[test]
    fn validates_watches() {
        let file = |id, kind| File {
            id,
            kind,
            ..Default::default()
        };
        let watch = |target_id, tfd, events| -> AnyRecord {
            EpollWatch {
                epoll_id: 1,
                target_id,
                tfd,
                events,
                data: 0,
            }
            .into()
        };
        let epoll: AnyRecord = Epoll {
            file_id: 1,
            ..Default::default()
        }
        .into();
        let img = |objects: Vec<AnyRecord>| crate::model::Image {
            files: vec![
                file(1, FILE_EPOLL),
                file(2, FILE_EVENTFD),
                file(3, FILE_EPOLL),
            ],
            objects,
            ..Default::default()
        };
        let check = |objects: Vec<AnyRecord>| {
            let i = img(objects);
            EpollKind.validate(&Check::new(&i, None), &i.files[0])
        };
        let third: AnyRecord = Epoll {
            file_id: 3,
            ..Default::default()
        }
        .into();
        // Two watches of one fd number on two files: fine.
        let ok = vec![
            epoll.clone(),
            third.clone(),
            watch(2, 5, EPOLLIN | EPOLLET),
            watch(3, 5, EPOLLIN),
        ];
        assert_eq!(check(ok), Ok(()));
        let refused = [
            vec![third.clone()],
            vec![epoll.clone(), epoll.clone()],
            vec![epoll.clone(), watch(9, 5, EPOLLIN)],
            vec![epoll.clone(), watch(1, 5, EPOLLIN)],
            vec![epoll.clone(), watch(2, 5, 0x800)],
            vec![epoll.clone(), watch(2, 5, EPOLLIN), watch(2, 5, EPOLLOUT)],
            vec![
                epoll.clone(),
                watch(2, 5, EPOLLIN | EPOLLEXCLUSIVE | EPOLLONESHOT),
            ],
            vec![
                epoll.clone(),
                third.clone(),
                watch(3, 5, EPOLLIN | EPOLLEXCLUSIVE),
            ],
            vec![epoll.clone(), watch(2, u32::MAX, EPOLLIN)],
        ];
        for objects in refused {
            let what = format!("{objects:?}");
            assert!(check(objects).is_err(), "{what} must be refused");
        }
    }

    #[test]
    fn reads_own_epoll() {
        let ep = sys::epoll_create().unwrap();
        let ev = sys::eventfd(0).unwrap();
        sys::epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            ev,
            EPOLLIN | EPOLLET,
            0x1234_5678_9abc_def0,
        )
        .unwrap();
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{ep}")).unwrap();
        let w = parse_watches(&text).unwrap();
        sys::close(ev);
        sys::close(ep);
        // (The kernel adds EPOLLERR and EPOLLHUP.)
        assert_eq!(
            w,
            vec![WatchLine {
                tfd: ev,
                events: EPOLLIN | EPOLLET | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32,
                data: 0x1234_5678_9abc_def0
            }]
        );
    }
}
