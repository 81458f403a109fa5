//! Images a user could have forged grant nothing (see `ckpt::trust`): the
//! checksum has no key, so root believes an image only as far as its owner
//! could go. A user's own image restarts as that user, its restored process
//! stays that user's (dumpable, /proc owned by it) and the user can
//! checkpoint it again; an image edited to ask for root, capabilities or a
//! file the user cannot open is refused before anything is left behind.
//!
//! The workloads run as `nobody` (65534/65534) from their start; images are
//! edited with the ckpt-image crate (records decoded, changed, written again
//! with a fresh checksum) and chowned to stand for the user's own files.

mod common;

use ckpt_image::*;
use common::*;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// Skips (loudly) unless the user database knows nobody as 65534/65534: the
/// owner's groups come from it.
fn have_nobody(name: &str) -> bool {
    let ok = std::fs::read_to_string("/etc/passwd")
        .map(|p| {
            p.lines()
                .any(|l| l.starts_with("nobody:") && l.contains(":65534:65534:"))
        })
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP: {name}: no nobody user with uid/gid 65534");
    }
    ok
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Every file in the test directory becomes the user's (the workload's
/// log, FIFO, result), as they would be had the user made them.
fn chown_dir(env: &TestEnv, uid: u32, gid: u32) {
    chown(&env.dir, uid, gid);
    for e in std::fs::read_dir(&env.dir)
        .expect("list test dir")
        .flatten()
    {
        chown(&e.path(), uid, gid);
    }
}

/// One item of an image as read: a metadata record or a page run.
enum Item {
    Rec(AnyRecord),
    Pages(PagesHdr, Vec<u8>),
}

fn write_rec<W: std::io::Write>(w: &mut ImageWriter<W>, r: &AnyRecord) -> std::io::Result<()> {
    match r {
        // A forger fixes the metadata's checksum as well as the tail's.
        AnyRecord::MetaEnd(m) => w.meta_end(m.nr_plans, m.compression),
        r => w.write_any(r),
    }
}

/// Forges an image as a user could: reads `src` (checksum verified), lets
/// `edit` change its records, writes `dst` with a fresh checksum, owned by
/// `owner`.
fn forge(src: &Path, dst: &Path, owner: (u32, u32), edit: impl FnOnce(&mut Vec<Item>)) {
    let data = std::fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let mut r = ImageReader::new(&data[..]);
    let mut items = Vec::new();
    while let Some(rec) = r.next_record().expect("the original image reads") {
        match &rec.body {
            Body::Pages { hdr, data_offset } => {
                let off = *data_offset as usize;
                let len = hdr.nr_pages as usize * PAGE_SIZE as usize;
                items.push(Item::Pages(*hdr, data[off..off + len].to_vec()));
            }
            Body::Meta(_) => match rec.decode_any().expect("a known record") {
                AnyRecord::Tail(_) => {}
                a => items.push(Item::Rec(a)),
            },
        }
    }
    edit(&mut items);
    let mut w = ImageWriter::new(Vec::new());
    for it in &items {
        match it {
            Item::Rec(a) => write_rec(&mut w, a).expect("encode"),
            Item::Pages(h, d) => w.write_pages_flags(h.addr, d, h.flags).expect("encode"),
        }
    }
    std::fs::write(dst, w.finish().expect("finish")).expect("write forged image");
    chown(dst, owner.0, owner.1);
}

fn restart_args(img: &Path) -> [&OsStr; 3] {
    [
        OsStr::new("restart"),
        img.as_os_str(),
        OsStr::new("--detach"),
    ]
}

/// `ckpt restart` of `img` must fail saying `says`, and leave no process
/// with `pid` (the restart must not have left one behind).
fn restart_must_fail(env: &TestEnv, img: &Path, pid: i32, says: &[&str]) {
    let run = env.ckpt(restart_args(img));
    assert!(
        !run.success(),
        "restart of a forged image must fail\n{}",
        run.describe()
    );
    eprintln!("refused as it must be: {}", run.stderr.trim());
    for s in says {
        assert!(
            run.stderr.contains(s),
            "the refusal should say {s:?}\n{}",
            run.describe()
        );
    }
    assert!(
        wait_until(TIMEOUT, || !pid_exists(pid)),
        "pid {pid} exists after a refused restart: {}",
        describe_pid(pid)
    );
}

fn uid_line(pid: i32) -> String {
    proc_status_field(pid, "Uid")
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn proc_owner(pid: i32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}"))
        .unwrap_or_else(|e| panic!("stat /proc/{pid}: {e}"))
        .uid()
}

/// The user's own image restarts as the user; the restored process is
/// still dumpable (its /proc is the user's), so the user's own `ckpt
/// checkpoint` of it works, and that image (the user's file) restarts
/// again under root and passes.
#[test]
fn user_image_restarts_as_the_user_who_can_checkpoint_it_again() {
    let name = "user_image_restarts_as_the_user_who_can_checkpoint_it_again";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    if !have_nobody(name) {
        return;
    }
    let Some(mut w) = env.start_workload_as("sleeper", &[], NOBODY, NOGROUP) else {
        return;
    };
    assert_eq!(uid_line(w.pid), "65534 65534 65534 65534");
    assert_eq!(proc_owner(w.pid), NOBODY, "a user's process owns its /proc");

    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    // The user's image: unauthenticated, within the user's own rights.
    chown_dir(&env, NOBODY, NOGROUP);
    env.restart_detached(&mut w, &img);
    assert_eq!(uid_line(w.pid), "65534 65534 65534 65534");
    assert_eq!(
        proc_owner(w.pid),
        NOBODY,
        "after restart by root /proc/{} must still be the user's (dumpable lost?){}",
        w.pid,
        w.diagnostics()
    );
    let status = std::fs::metadata(format!("/proc/{}/status", w.pid)).expect("status");
    assert_eq!((status.uid(), status.gid()), (NOBODY, NOGROUP));

    // The user checkpoints its restored process itself.
    let img2 = env.path("img2");
    let pid = w.pid.to_string();
    let run = env.ckpt_as(
        NOBODY,
        NOGROUP,
        [
            OsStr::new("checkpoint"),
            OsStr::new(&pid),
            OsStr::new("-o"),
            img2.as_os_str(),
        ],
    );
    assert!(
        run.success(),
        "the user's ckpt checkpoint of its restored process failed\n{}{}",
        run.describe(),
        w.diagnostics()
    );
    assert!(
        w.proc.wait_exit(TIMEOUT).is_some(),
        "pid {} alive after the user's checkpoint",
        w.pid
    );
    assert_eq!(std::fs::metadata(&img2).expect("img2").uid(), NOBODY);
    env.restart_detached(&mut w, &img2);
    assert_eq!(uid_line(w.pid), "65534 65534 65534 65534");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A sleeper run as nobody, checkpointed (killed) by root into an image
/// that nobody owns, as a user's own image would be.
fn nobody_sleeper_image(name: &str) -> Option<(TestEnv, Workload, PathBuf)> {
    let env = TestEnv::new(name)?;
    if !have_nobody(name) {
        return None;
    }
    let mut w = env.start_workload_as("sleeper", &[], NOBODY, NOGROUP)?;
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    chown_dir(&env, NOBODY, NOGROUP);
    Some((env, w, img))
}

/// A user's image edited to run as root, or with capabilities, is refused
/// by root before any process exists; a user may not restart root's image
/// either. The same uid-0 image owned by root is believed and restarts as
/// root (trusted, as before).
#[test]
fn forged_credentials_are_refused_unless_root_owns_the_image() {
    let name = "forged_credentials_are_refused_unless_root_owns_the_image";
    let Some((env, mut w, img)) = nobody_sleeper_image(name) else {
        return;
    };
    let pid = w.pid;

    let as_root = env.path("root.img");
    forge(&img, &as_root, (NOBODY, NOGROUP), |items| {
        for it in items.iter_mut() {
            if let Item::Rec(AnyRecord::Creds(c)) = it {
                (c.uid, c.euid, c.suid, c.fsuid) = (0, 0, 0, 0);
                (c.gid, c.egid, c.sgid, c.fsgid) = (0, 0, 0, 0);
                c.groups = vec![0];
                (c.cap_eff, c.cap_prm) = (c.cap_bnd, c.cap_bnd);
            }
        }
    });
    restart_must_fail(
        &env,
        &as_root,
        pid,
        &[
            &format!("owned by uid {NOBODY}, asks for uid 0 in pid {pid} (sleeper)"),
            "only images owned by root",
        ],
    );

    let caps = env.path("caps.img");
    forge(&img, &caps, (NOBODY, NOGROUP), |items| {
        for it in items.iter_mut() {
            if let Item::Rec(AnyRecord::Creds(c)) = it {
                (c.cap_eff, c.cap_prm, c.cap_amb) = (c.cap_bnd, c.cap_bnd, 1 << 21);
            }
        }
    });
    restart_must_fail(
        &env,
        &caps,
        pid,
        &[&format!("asks for effective capabilities {:#x}", {
            let s = proc_status_field(std::process::id() as i32, "CapBnd").unwrap();
            u64::from_str_radix(s.trim(), 16).unwrap()
        })],
    );

    // The user cannot restart root's image (nor any other user's).
    chown(&as_root, 0, 0);
    let run = env.ckpt_as(NOBODY, NOGROUP, restart_args(&as_root));
    assert!(!run.success(), "{}", run.describe());
    assert!(
        run.stderr.contains("only by root or by its owner"),
        "{}",
        run.describe()
    );
    assert!(!pid_exists(pid));

    // Root vouches for a root-owned image: restored as it says.
    env.restart_detached(&mut w, &as_root);
    assert_eq!(uid_line(w.pid), "0 0 0 0");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A user's image whose fd 0 names /etc/shadow (read-write), or an
/// unlinked set-user-id file in /etc, fails to restart: the file is opened
/// (created) as the user, who may not, or refused; nothing is created.
#[test]
fn forged_fds_naming_root_files_fail_as_the_user_would() {
    let name = "forged_fds_naming_root_files_fail_as_the_user_would";
    let Some((env, w, img)) = nobody_sleeper_image(name) else {
        return;
    };
    let pid = w.pid;

    let shadow = env.path("shadow.img");
    forge(&img, &shadow, (NOBODY, NOGROUP), |items| {
        let f = stdin_file(items);
        f.kind = FILE_REGULAR;
        f.path = Text(b"/etc/shadow".to_vec());
        f.flags = libc::O_RDWR as u32;
        f.pos = 0;
    });
    restart_must_fail(
        &env,
        &shadow,
        pid,
        &[
            &format!("pid {pid}: cannot open /etc/shadow as uid {NOBODY}"),
            "Permission denied",
        ],
    );

    // An unlinked file whose content is in its own record (the form of
    // images before ghost objects) is refused before anything is made:
    // unlinked files are only ever recreated from their ghost object.
    let unlinked = env.path("unlinked.img");
    forge(&img, &unlinked, (NOBODY, NOGROUP), |items| {
        let f = stdin_file(items);
        f.kind = FILE_UNLINKED;
        f.path = Text(b"/etc/forged".to_vec());
        f.flags = libc::O_RDWR as u32;
        f.mode = 0o104755;
        f.content = Bytes(b"#!/bin/sh\n".to_vec());
        f.pos = 0;
    });
    restart_must_fail(
        &env,
        &unlinked,
        pid,
        &["removed file /etc/forged names a missing shared memory object"],
    );

    // The same as a ghost object (how ckpt saves unlinked files), owned by
    // root and set-user-id: created as the user, so refused as well.
    let ghost = env.path("ghost.img");
    forge(&img, &ghost, (NOBODY, NOGROUP), |items| {
        const ID: u32 = 0x7777;
        let f = stdin_file(items);
        f.kind = FILE_UNLINKED;
        f.path = Text(b"/etc/forged-ghost".to_vec());
        f.flags = libc::O_RDWR as u32;
        f.content = Bytes(Vec::new());
        f.obj = ID;
        f.pos = 0;
        let first_process = items
            .iter()
            .position(|it| matches!(it, Item::Rec(AnyRecord::Process(_))))
            .expect("a process");
        let objects = [
            AnyRecord::Shmem(Shmem {
                id: ID,
                kind: SHMEM_GHOST,
                size: 10,
                name: Text(b"/etc/forged-ghost".to_vec()),
            }),
            AnyRecord::ShmemAttrs(ShmemAttrs {
                id: ID,
                mode: 0o4755,
                ..Default::default()
            }),
        ];
        for (i, r) in objects.into_iter().enumerate() {
            items.insert(first_process + i, Item::Rec(r));
        }
        for it in items.iter_mut() {
            if let Item::Rec(AnyRecord::ImageEnd(e)) = it {
                e.nr_shmems += 1;
            }
        }
    });
    restart_must_fail(
        &env,
        &ghost,
        pid,
        &[
            "create the unlinked file /etc/forged-ghost",
            "Permission denied",
        ],
    );
    assert!(
        !Path::new("/etc/forged-ghost").exists(),
        "a forged image left /etc/forged-ghost"
    );
}

/// The description behind fd 0 of an image's first process.
fn stdin_file(items: &mut [Item]) -> &mut File {
    let stdin = items
        .iter()
        .find_map(|it| match it {
            Item::Rec(AnyRecord::Fd(d)) if d.fd == 0 => Some(d.file_id),
            _ => None,
        })
        .expect("the workload has an fd 0");
    items
        .iter_mut()
        .find_map(|it| match it {
            Item::Rec(AnyRecord::File(f)) if f.id == stdin => Some(f),
            _ => None,
        })
        .expect("fd 0 has its file")
}

/// A user's image mapping /etc/shadow fails too: mappings are opened by the
/// restored task itself, which does so with the user's filesystem ids; the
/// half-built process is killed.
#[test]
fn forged_mapping_of_shadow_fails_as_the_user_would() {
    let name = "forged_mapping_of_shadow_fails_as_the_user_would";
    let Some((env, w, img)) = nobody_sleeper_image(name) else {
        return;
    };
    let pid = w.pid;

    let mapped = env.path("mapped.img");
    let mut done = false;
    forge(&img, &mapped, (NOBODY, NOGROUP), |items| {
        for it in items.iter_mut() {
            if let Item::Rec(AnyRecord::Vma(v)) = it {
                if !done && v.kind == VMA_FILE && v.flags & VMAF_SHARED == 0 {
                    v.path = Text(b"/etc/shadow".to_vec());
                    v.pgoff = 0;
                    done = true;
                }
            }
        }
    });
    assert!(done, "the workload maps a file");
    restart_must_fail(&env, &mapped, pid, &["/etc/shadow", "Permission denied"]);
}

/// Credentials are per thread: every thread of a user's threaded process
/// comes back as the user, none keeps the restorer's root.
#[test]
fn every_thread_gets_the_credentials() {
    let name = "every_thread_gets_the_credentials";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    if !have_nobody(name) {
        return;
    }
    let Some(mut w) = env.start_workload_as("threads", &[], NOBODY, NOGROUP) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    // Root's own image of the user's process: trusted.
    env.restart_detached(&mut w, &img);
    let tids = thread_ids(w.pid);
    assert!(tids.len() > 1, "threads restored: {tids:?}");
    for t in tids {
        for (field, want) in [
            ("Uid", "65534 65534 65534 65534"),
            ("Gid", "65534 65534 65534 65534"),
            ("CapEff", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
        ] {
            let got = task_status_field(w.pid, t, field)
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(got, want, "thread {t} of {}: {field}", w.pid);
        }
    }
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
