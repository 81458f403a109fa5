//! Who may restart whose image. The image's checksum has no key: anyone who
//! can write an image can make it say anything. So an image is believed
//! only as far as whoever could have written it (its *owner*) could go:
//!
//! * the owner is read from the input itself: a regular file's owner (a
//!   file writable by group or others counts as nobody's, unless it is the
//!   restorer's own), the creator of a pipe, the peer of a unix socket;
//! * root restarting an image owned by root: trusted, every credential in it
//!   is restored;
//! * anything else is *unauthenticated*: before anything is created, every
//!   process must have exactly the owner's uids, only the owner's groups,
//!   no capabilities, and nothing else that only privilege grants (higher
//!   limits, lower nice or OOM score, pages below mmap_min_addr, more
//!   locked memory than its limit, a chroot without no_new_privs); and
//!   every path in the image is opened with the owner's filesystem ids
//!   (see [`crate::sys::FsIdsGuard`]), so a forged fd naming /etc/shadow
//!   fails like the owner's own open would.

use crate::error::{Error, Result};
use crate::model::{Image, ProcessImage};
use crate::sys::{self, FsIds};
use ckpt_image::*;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Whoever could have written the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    /// Primary group (for files the restore creates).
    pub gid: u32,
    /// Every group of the owner, the primary one included; empty when the
    /// user database does not know the uid.
    pub groups: Vec<u32>,
    /// How the owner was found, for messages ("the image file, owned by uid 1000").
    pub source: String,
}

const NOBODY: u32 = 65534;

impl Owner {
    /// `uid` with its groups from the user database.
    pub fn user(uid: u32, source: String) -> Owner {
        let (gid, groups) = sys::user_groups(uid).unwrap_or((NOBODY, Vec::new()));
        Owner {
            uid,
            gid,
            groups,
            source,
        }
    }

    /// Nobody: an input anyone may have written.
    pub fn nobody(why: String) -> Owner {
        Owner::user(
            NOBODY,
            format!("{why}, so it counts as nobody's (uid {NOBODY})"),
        )
    }

    /// The filesystem ids the restore opens the image's paths with.
    pub fn fs_ids(&self) -> FsIds {
        FsIds {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
        }
    }
}

/// Finds the owner of the image read from `input` (before it is copied
/// anywhere). `restorer` is ckpt's effective uid.
pub fn owner_of(input: &std::fs::File, restorer: u32) -> Owner {
    let meta = match input.metadata() {
        Ok(m) => m,
        Err(e) => return Owner::nobody(format!("the image input cannot be examined ({e})")),
    };
    let ft = meta.file_type();
    let mode = meta.mode() & 0o7777;
    if ft.is_file() || ft.is_fifo() {
        let pipe = ft.is_fifo();
        let what = if pipe {
            "the pipe the image comes from"
        } else {
            "the image file"
        };
        if mode & 0o022 != 0 && meta.uid() != restorer {
            return Owner::nobody(format!(
                "{what} (owner uid {}) is writable by group or others (mode {mode:04o})",
                meta.uid()
            ));
        }
        let verb = if pipe { "made by" } else { "owned by" };
        return Owner::user(meta.uid(), format!("{what}, {verb} uid {}", meta.uid()));
    }
    if ft.is_socket() {
        return match sys::unix_peer_uid(input.as_raw_fd()) {
            Some(uid) => Owner::user(uid, format!("the unix socket's peer, uid {uid}")),
            None => Owner::nobody("the image comes from a network socket".into()),
        };
    }
    Owner::nobody("the image input is neither a file, a pipe nor a unix socket".into())
}

/// How far an image is believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Root restarting root's image: restored as it says.
    Trusted,
    /// Limited to what the owner has.
    Unauthenticated(Owner),
}

impl Trust {
    /// The rule: only root's own images are believed by root.
    pub fn decide(restorer_euid: u32, owner: Owner) -> Trust {
        if restorer_euid == 0 && owner.uid == 0 {
            Trust::Trusted
        } else {
            Trust::Unauthenticated(owner)
        }
    }

    /// The filesystem ids image paths are opened with (`None`: ckpt's own).
    pub fn fs_ids(&self) -> Option<FsIds> {
        match self {
            Trust::Trusted => None,
            Trust::Unauthenticated(o) => Some(o.fs_ids()),
        }
    }
}

/// What the restorer itself has: the bounds of an unauthenticated image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restorer {
    pub euid: u32,
    pub cap_bnd: u64,
    /// Hard limit by resource number.
    pub hard_limits: Vec<u64>,
    pub nice: i32,
    pub oom_score_adj: i32,
    pub mmap_min_addr: u64,
}

impl Restorer {
    /// ckpt as it runs now.
    pub fn current() -> Restorer {
        let me = std::process::id() as sys::Pid;
        let cap_bnd = crate::procfs::status(me)
            .map(|s| s.hex("CapBnd"))
            .unwrap_or(0);
        let hard_limits = (0..16)
            .map(|r| sys::prlimit(0, r, None).map(|l| l.1).unwrap_or(0))
            .collect();
        let num = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<i64>().ok();
        Restorer {
            euid: sys::geteuid(),
            cap_bnd,
            hard_limits,
            nice: sys::own_nice(),
            oom_score_adj: num("/proc/self/oom_score_adj").unwrap_or(0) as i32,
            // Unreadable: assume the usual 64 KiB rather than nothing.
            mmap_min_addr: num("/proc/sys/vm/mmap_min_addr").unwrap_or(65536) as u64,
        }
    }
}

const RLIMIT_NAMES: [&str; 16] = [
    "CPU",
    "FSIZE",
    "DATA",
    "STACK",
    "CORE",
    "RSS",
    "NPROC",
    "NOFILE",
    "MEMLOCK",
    "AS",
    "LOCKS",
    "SIGPENDING",
    "MSGQUEUE",
    "NICE",
    "RTPRIO",
    "RTTIME",
];

/// The first credential in `c` that `owner` does not have, described.
/// `bnd` is the restorer's bounding set (the image's may only be narrower).
pub fn excess_creds(owner: &Owner, bnd: u64, c: &Creds) -> Option<String> {
    for (name, id) in [
        ("uid", c.uid),
        ("effective uid", c.euid),
        ("saved uid", c.suid),
        ("filesystem uid", c.fsuid),
    ] {
        if id != owner.uid {
            return Some(format!("{name} {id}"));
        }
    }
    for (name, id) in [
        ("gid", c.gid),
        ("effective gid", c.egid),
        ("saved gid", c.sgid),
        ("filesystem gid", c.fsgid),
    ] {
        if !owner.groups.contains(&id) {
            return Some(format!("{name} {id}"));
        }
    }
    if let Some(g) = c.groups.iter().find(|g| !owner.groups.contains(g)) {
        return Some(format!("supplementary group {g}"));
    }
    for (name, caps) in [
        ("effective", c.cap_eff),
        ("permitted", c.cap_prm),
        ("inheritable", c.cap_inh),
        ("ambient", c.cap_amb),
    ] {
        if caps != 0 {
            return Some(format!("{name} capabilities {caps:#x}"));
        }
    }
    if c.cap_bnd & !bnd != 0 {
        return Some(format!(
            "bounding-set capabilities {:#x} the restorer lacks",
            c.cap_bnd & !bnd
        ));
    }
    None
}

/// The first thing in process `p` beyond what `owner` could give itself,
/// described; `None` if `p` stays within it.
pub fn excess(owner: &Owner, me: &Restorer, p: &ProcessImage) -> Option<String> {
    if p.is_zombie() {
        // Only its pid and exit status come back.
        return None;
    }
    if let Some(e) = excess_creds(owner, me.cap_bnd, &p.creds) {
        return Some(e);
    }
    let mut memlock = u64::MAX;
    let mut rlimit_nice = 0;
    for l in &p.rlimits.limits {
        let r = l.resource as usize;
        let have = me.hard_limits.get(r).copied().unwrap_or(0);
        if l.max > have {
            let name = RLIMIT_NAMES.get(r).copied().unwrap_or("?");
            return Some(format!(
                "hard resource limit RLIMIT_{name} {} above the restorer's {have}",
                l.max
            ));
        }
        if l.resource == libc::RLIMIT_MEMLOCK {
            memlock = l.cur;
        }
        if l.resource == libc::RLIMIT_NICE {
            rlimit_nice = l.cur.min(l.max);
        }
    }
    for t in &p.threads {
        // setpriority: lowering nice below what one inherited needs
        // RLIMIT_NICE >= 20 - nice (or CAP_SYS_NICE).
        let n = t.thread.nice;
        if n < me.nice && (20 - n as i64) > rlimit_nice.min(40) as i64 {
            return Some(format!("nice {n} in thread {}", t.thread.tid));
        }
    }
    if p.process.oom_score_adj < me.oom_score_adj {
        return Some(format!(
            "oom_score_adj {} (below the restorer's {})",
            p.process.oom_score_adj, me.oom_score_adj
        ));
    }
    let mut locked = 0u64;
    for v in p.vmas.iter().filter(|v| !crate::mm::is_special(v.kind)) {
        if v.start < me.mmap_min_addr {
            return Some(format!(
                "a mapping at {:#x}, below vm.mmap_min_addr ({:#x})",
                v.start, me.mmap_min_addr
            ));
        }
        if v.flags & VMAF_LOCKED != 0 {
            locked = locked.saturating_add(v.end.saturating_sub(v.start));
        }
    }
    if locked > memlock {
        return Some(format!(
            "{locked} bytes of locked memory (RLIMIT_MEMLOCK allows {memlock})"
        ));
    }
    if p.process.root.0 != b"/" && p.creds.no_new_privs == 0 {
        // chroot with set-user-id programs in reach is the classic way up.
        return Some(format!(
            "a chroot to {} without no_new_privs",
            p.process.root
        ));
    }
    None
}

/// Refuses, before anything is created, an image that asks for more than
/// its owner has (nothing to check for a trusted one).
pub fn validate(img: &Image, trust: &Trust, me: &Restorer) -> Result<()> {
    let Trust::Unauthenticated(owner) = trust else {
        return Ok(());
    };
    if me.euid != 0 && me.euid != owner.uid {
        return Err(Error::Refused(format!(
            "{}: an image can be restarted only by root or by its owner (you are uid {}); restart it as uid {} or as root",
            owner.source, me.euid, owner.uid
        )));
    }
    for p in &img.processes {
        if let Some(what) = excess(owner, me, p) {
            return Err(Error::Refused(format!(
                "{}, asks for {what} in pid {} ({}); only images owned by root may raise credentials or limits: if you trust its content, have root checkpoint the process (or chown the image to root) and restart it again",
                owner.source,
                p.pid(),
                p.process.comm
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: u32, groups: &[u32]) -> Owner {
        Owner {
            uid,
            gid: groups.first().copied().unwrap_or(NOBODY),
            groups: groups.to_vec(),
            source: format!("test owner {uid}"),
        }
    }

    fn creds(uid: u32, gid: u32) -> Creds {
        Creds {
            uid,
            euid: uid,
            suid: uid,
            fsuid: uid,
            gid,
            egid: gid,
            sgid: gid,
            fsgid: gid,
            groups: vec![gid],
            cap_bnd: 0x1ff_ffff_ffff,
            ..Default::default()
        }
    }

    fn me() -> Restorer {
        Restorer {
            euid: 0,
            cap_bnd: 0x1ff_ffff_ffff,
            hard_limits: vec![u64::MAX; 16],
            nice: 0,
            oom_score_adj: 0,
            mmap_min_addr: 65536,
        }
    }

    fn process(c: Creds) -> ProcessImage {
        let mut p = ProcessImage {
            creds: c,
            ..Default::default()
        };
        p.process.pid = 1234;
        p.process.root = Text(b"/".to_vec());
        p
    }

    #[test]
    fn only_root_trusts_root_images() {
        assert_eq!(Trust::decide(0, owner(0, &[0])), Trust::Trusted);
        let user = owner(1000, &[1000]);
        assert_eq!(
            Trust::decide(0, user.clone()),
            Trust::Unauthenticated(user.clone())
        );
        assert_eq!(
            Trust::decide(1000, owner(0, &[0])),
            Trust::Unauthenticated(owner(0, &[0]))
        );
        assert_eq!(Trust::Trusted.fs_ids(), None);
        assert_eq!(
            Trust::Unauthenticated(user).fs_ids(),
            Some(FsIds {
                uid: 1000,
                gid: 1000,
                groups: vec![1000]
            })
        );
    }

    #[test]
    fn owners_own_creds_pass() {
        let o = owner(1000, &[1000, 27, 100]);
        let mut c = creds(1000, 1000);
        c.groups = vec![27, 100];
        c.egid = 100;
        assert_eq!(excess_creds(&o, me().cap_bnd, &c), None);
        // A narrower bounding set and no_new_privs only take away.
        c.cap_bnd = 0x3;
        c.no_new_privs = 1;
        assert_eq!(excess_creds(&o, me().cap_bnd, &c), None);
    }

    #[test]
    fn raised_uids_are_refused() {
        let o = owner(1000, &[1000]);
        for (i, want) in [
            "uid 0",
            "effective uid 0",
            "saved uid 0",
            "filesystem uid 0",
        ]
        .iter()
        .enumerate()
        {
            let mut c = creds(1000, 1000);
            *[&mut c.uid, &mut c.euid, &mut c.suid, &mut c.fsuid][i] = 0;
            assert_eq!(excess_creds(&o, u64::MAX, &c).as_deref(), Some(*want));
        }
        // Another user's uid is no better than root's.
        let c = creds(1001, 1000);
        assert_eq!(excess_creds(&o, u64::MAX, &c).as_deref(), Some("uid 1001"));
    }

    #[test]
    fn foreign_groups_are_refused() {
        let o = owner(1000, &[1000, 100]);
        let mut c = creds(1000, 1000);
        c.sgid = 0;
        assert_eq!(
            excess_creds(&o, u64::MAX, &c).as_deref(),
            Some("saved gid 0")
        );
        let mut c = creds(1000, 1000);
        c.groups = vec![100, 42];
        assert_eq!(
            excess_creds(&o, u64::MAX, &c).as_deref(),
            Some("supplementary group 42")
        );
        // An owner the user database does not know has no groups at all.
        let c = creds(1000, 1000);
        assert_eq!(
            excess_creds(&owner(1000, &[]), u64::MAX, &c).as_deref(),
            Some("gid 1000")
        );
    }

    #[test]
    fn capabilities_are_refused() {
        let o = owner(1000, &[1000]);
        for i in 0..4 {
            let mut c = creds(1000, 1000);
            *[
                &mut c.cap_eff,
                &mut c.cap_prm,
                &mut c.cap_inh,
                &mut c.cap_amb,
            ][i] = 1 << 21;
            let e = excess_creds(&o, u64::MAX, &c).expect("capability refused");
            assert!(e.ends_with("capabilities 0x200000"), "{e}");
        }
        let mut c = creds(1000, 1000);
        c.cap_bnd = 0x3ff_ffff_ffff;
        let e = excess_creds(&o, 0x1ff_ffff_ffff, &c).expect("wider bounding set refused");
        assert!(
            e.starts_with("bounding-set capabilities 0x20000000000"),
            "{e}"
        );
    }

    #[test]
    fn privileged_process_state_is_refused() {
        let o = owner(1000, &[1000]);
        let p = process(creds(1000, 1000));
        assert_eq!(excess(&o, &me(), &p), None);

        let mut q = p.clone();
        q.process.oom_score_adj = -1000;
        assert!(excess(&o, &me(), &q)
            .unwrap()
            .starts_with("oom_score_adj -1000"));

        let mut q = p.clone();
        q.threads.push(Default::default());
        q.threads[0].thread.nice = -5;
        assert!(excess(&o, &me(), &q).unwrap().starts_with("nice -5"));
        // ...unless RLIMIT_NICE allowed it (20 - nice <= 25).
        q.rlimits.limits.push(Rlimit {
            resource: libc::RLIMIT_NICE,
            cur: 25,
            max: 25,
        });
        assert_eq!(excess(&o, &me(), &q), None);

        let mut q = p.clone();
        let mut r = me();
        r.hard_limits[libc::RLIMIT_NOFILE as usize] = 20000;
        q.rlimits.limits.push(Rlimit {
            resource: libc::RLIMIT_NOFILE,
            cur: 1024,
            max: 1 << 20,
        });
        assert!(excess(&o, &r, &q)
            .unwrap()
            .starts_with("hard resource limit RLIMIT_NOFILE 1048576"));

        let mut q = p.clone();
        q.vmas.push(Vma {
            start: 0,
            end: 4096,
            kind: VMA_ANON,
            ..Default::default()
        });
        assert!(excess(&o, &me(), &q).unwrap().contains("mmap_min_addr"));

        let mut q = p.clone();
        q.vmas.push(Vma {
            start: 1 << 20,
            end: (1 << 20) + 8192,
            kind: VMA_ANON,
            flags: VMAF_LOCKED,
            ..Default::default()
        });
        q.rlimits.limits.push(Rlimit {
            resource: libc::RLIMIT_MEMLOCK,
            cur: 4096,
            max: 4096,
        });
        assert!(excess(&o, &me(), &q).unwrap().contains("locked memory"));

        let mut q = p.clone();
        q.process.root = Text(b"/jail".to_vec());
        assert!(excess(&o, &me(), &q).unwrap().contains("chroot"));
        q.creds.no_new_privs = 1;
        assert_eq!(excess(&o, &me(), &q), None);
    }

    #[test]
    fn owner_comes_from_the_input() {
        let me = sys::geteuid();
        let path = std::env::temp_dir().join(format!("ckpt-trust-owner-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = owner_of(&f, me);
        assert_eq!(o.uid, me);
        assert_eq!(o.source, format!("the image file, owned by uid {me}"));
        // Writable by others: anyone's, unless it is the restorer's own.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(owner_of(&f, me).uid, me);
        let o = owner_of(&f, me.wrapping_add(1));
        assert_eq!(o.uid, NOBODY);
        assert!(
            o.source.contains("writable by group or others (mode 0666)"),
            "{}",
            o.source
        );
        std::fs::remove_file(&path).unwrap();

        let (r, _w) = std::io::pipe().unwrap();
        let r = std::fs::File::from(std::os::fd::OwnedFd::from(r));
        let o = owner_of(&r, me);
        assert_eq!(o.uid, me);
        assert!(o
            .source
            .starts_with("the pipe the image comes from, made by"));

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = std::fs::File::from(std::os::fd::OwnedFd::from(a));
        let o = owner_of(&a, me);
        assert_eq!(o.uid, me);
        assert!(o.source.starts_with("the unix socket's peer"));

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::fs::File::from(std::os::fd::OwnedFd::from(tcp));
        assert_eq!(owner_of(&tcp, me).uid, NOBODY);
    }

    /// The guard changes this thread only, and gives everything back.
    #[test]
    fn fs_guard_opens_as_the_owner_on_this_thread_only() {
        if sys::geteuid() != 0 || !std::path::Path::new("/etc/shadow").exists() {
            eprintln!("SKIP: needs root and /etc/shadow");
            return;
        }
        let status = |k: &str| {
            crate::procfs::read(
                std::process::id() as sys::Pid,
                &format!("task/{}/status", own_tid()),
            )
            .unwrap()
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .to_string()
        };
        let before = (
            status("Uid:"),
            status("Gid:"),
            status("Groups:"),
            status("CapEff:"),
        );
        let ids = FsIds {
            uid: NOBODY,
            gid: NOBODY,
            groups: vec![NOBODY],
        };
        // A thread started before the guard (a new one would copy the
        // guarded thread's credentials).
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            wait.recv().unwrap();
            std::fs::File::open("/etc/shadow").map(drop)
        });
        {
            let _g = sys::FsIdsGuard::enter(&ids).unwrap();
            let e = std::fs::File::open("/etc/shadow").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES));
            assert!(status("Uid:").ends_with("\t65534"), "{}", status("Uid:"));
            assert_eq!(status("Groups:").trim_end(), "Groups:\t65534");
            // Other threads keep root's rights meanwhile.
            go.send(()).unwrap();
            other.join().unwrap().unwrap();
        }
        std::fs::File::open("/etc/shadow").unwrap();
        let after = (
            status("Uid:"),
            status("Gid:"),
            status("Groups:"),
            status("CapEff:"),
        );
        assert_eq!(after, before);
        assert_eq!(
            sys::with_fs_ids(Some(&ids), || std::fs::File::open("/etc/shadow"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EACCES)
        );
    }

    /// This thread's id, from /proc/thread-self.
    fn own_tid() -> String {
        std::fs::read_link("/proc/thread-self")
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn validate_names_owner_pid_and_comm() {
        let o = owner(1000, &[1000]);
        let mut p = process(creds(0, 0));
        p.process.comm = Text(b"victim".to_vec());
        let img = Image {
            processes: vec![p],
            ..Default::default()
        };
        let e = validate(&img, &Trust::Unauthenticated(o.clone()), &me())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "test owner 1000, asks for uid 0 in pid 1234 (victim); only images owned by root"
            ),
            "{e}"
        );
        assert!(validate(&img, &Trust::Trusted, &me()).is_ok());
        // A user restarting someone else's image.
        let mut r = me();
        r.euid = 1001;
        let e = validate(&img, &Trust::Unauthenticated(o), &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only by root or by its owner"), "{e}");
    }
}
