//! File locks (see `workloads/locks.c`): POSIX, OFD and flock locks are
//! held again after restart, as this test process (a second process) and
//! /proc/locks see them; leases and POSIX locks in a shared fd table are
//! refused at checkpoint with the process left running; a lock taken by
//! someone else while the process was checkpointed fails the restart,
//! naming the file and the holder.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The lock F_GETLK-like `cmd` reports for a `ty` lock on start/len of
/// `path`, as (type, pid, start, len); type F_UNLCK if none conflicts.
fn getlk(path: &Path, cmd: i32, ty: i32, start: i64, len: i64) -> (i32, i32, i64, i64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut fl = flock(ty, start, len);
    // SAFETY: a valid struct flock the kernel fills in.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) };
    assert_eq!(
        r,
        0,
        "F_GETLK on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    (fl.l_type as i32, fl.l_pid, fl.l_start, fl.l_len)
}

fn flock(ty: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: ty as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// Whether a fresh description of `path` gets flock `op` (then drops it).
fn flock_free(path: &Path, op: i32) -> bool {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: integer-only syscall on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EWOULDBLOCK),
            "flock {}: {e}",
            path.display()
        );
    }
    r == 0
}

/// The /proc/locks lines (waiters left out) on the inode of `path`, as
/// (class, type, pid, start, end).
fn proc_locks_on(path: &Path) -> Vec<(String, String, i32, String, String)> {
    let ino = std::fs::metadata(path).unwrap().ino();
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    text.lines()
        .filter(|l| !l.contains("->"))
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() == 8 && t[5].rsplit(':').next() == Some(&ino.to_string())).then(|| {
                (
                    t[1].to_string(),
                    t[3].to_string(),
                    t[4].parse().unwrap_or(0),
                    t[6].to_string(),
                    t[7].to_string(),
                )
            })
        })
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

/// Every lock of the `hold` workload `pid`, seen from this process.
fn check_hold(env: &TestEnv, pid: i32, when: &str) {
    let posix = env.path("posix.lck");
    let (w, r, u) = (libc::F_WRLCK, libc::F_RDLCK, libc::F_UNLCK);
    assert_eq!(
        getlk(&posix, libc::F_GETLK, w, 0, 100),
        (w, pid, 0, 100),
        "{when}: posix.lck 0-99"
    );
    assert_eq!(
        getlk(&posix, libc::F_GETLK, w, 100, 100).0,
        u,
        "{when}: posix.lck 100-199"
    );
    assert_eq!(
        getlk(&posix, libc::F_GETLK, w, 200, 0),
        (r, pid, 200, 0),
        "{when}: posix.lck 200-"
    );
    assert_eq!(
        getlk(&posix, libc::F_GETLK, r, 200, 0).0,
        u,
        "{when}: read on read"
    );
    let ofd = env.path("ofd.lck");
    assert_eq!(
        getlk(&ofd, libc::F_OFD_GETLK, r, 0, 0),
        (w, -1, 10, 10),
        "{when}: ofd.lck"
    );
    let fl = env.path("flock.lck");
    assert!(!flock_free(&fl, libc::LOCK_SH), "{when}: flock.lck is free");

    let mut p = proc_locks_on(&posix);
    p.sort();
    assert_eq!(
        p,
        vec![
            (s("POSIX"), s("READ"), pid, s("200"), s("EOF")),
            (s("POSIX"), s("WRITE"), pid, s("0"), s("99")),
        ],
        "{when}: /proc/locks on posix.lck"
    );
    assert_eq!(
        proc_locks_on(&ofd),
        vec![(s("OFDLCK"), s("WRITE"), -1, s("10"), s("19"))],
        "{when}: /proc/locks on ofd.lck"
    );
    assert_eq!(
        proc_locks_on(&fl),
        vec![(s("FLOCK"), s("WRITE"), pid, s("0"), s("EOF"))],
        "{when}: /proc/locks on flock.lck"
    );
}

/// A POSIX write lock on 0-99 and a read lock on 200-EOF, an OFD lock and
/// an flock: the same locks after restart, held by the same pid, seen by
/// F_GETLK / F_OFD_GETLK / flock from this process and in /proc/locks; the
/// workload checks them again from a child of its own.
#[test]
fn restore_posix_ofd_and_flock_locks() {
    let Some(env) = TestEnv::new("restore_posix_ofd_and_flock_locks") else {
        return;
    };
    env.roundtrip(
        "locks",
        &["hold"],
        |env, w| check_hold(env, w.pid, "before checkpoint"),
        |env, w| check_hold(env, w.pid, "after restart"),
    );
}

/// One flock'ed description held by a parent and its child (inherited):
/// one lock again after restart, shown on both processes' fds, held until
/// both have closed it (the workload checks the sharing).
#[test]
fn restore_flock_of_a_description_shared_with_a_child() {
    let Some(env) = TestEnv::new("restore_flock_of_a_description_shared_with_a_child") else {
        return;
    };
    let check = |env: &TestEnv, w: &mut Workload, when: &str| {
        let path = env.path("shared.lck");
        assert!(
            !flock_free(&path, libc::LOCK_SH),
            "{when}: shared.lck is free"
        );
        let locks = proc_locks_on(&path);
        assert_eq!(locks.len(), 1, "{when}: one lock on shared.lck: {locks:?}");
        assert_eq!(
            (locks[0].0.as_str(), locks[0].1.as_str()),
            ("FLOCK", "WRITE"),
            "{when}"
        );
        let kids = children_of(w.pid);
        assert_eq!(kids.len(), 1, "{when}: the workload has one child");
        for pid in [w.pid, kids[0]] {
            let shown = fdinfo_locks(pid, &path);
            assert_eq!(
                shown.len(),
                1,
                "{when}: fdinfo of pid {pid} on shared.lck: {shown:?}"
            );
            assert!(shown[0].contains("FLOCK"), "{when}: {shown:?}");
        }
    };
    env.roundtrip(
        "locks",
        &["inherit"],
        |env, w| check(env, w, "before checkpoint"),
        |env, w| check(env, w, "after restart"),
    );
}

/// Children blocked in flock(LOCK_EX) and F_SETLKW on the parent's locks:
/// the waits are not saved as locks; after restart the children wait
/// again (shown as waiters in /proc/locks) and get the locks once the
/// parent releases them.
#[test]
fn restore_processes_waiting_for_locks() {
    let Some(env) = TestEnv::new("restore_processes_waiting_for_locks") else {
        return;
    };
    let check = |env: &TestEnv, w: &mut Workload, when: &str| {
        let path = env.path("wait.lck");
        let ino = std::fs::metadata(&path).unwrap().ino();
        let waiters = || {
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .filter(|l| l.contains("->") && l.contains(&format!(":{ino} ")))
                .count()
        };
        assert!(
            wait_until(TIMEOUT, || waiters() == 2),
            "{when}: /proc/locks shows {} waiters on wait.lck, not 2{}",
            waiters(),
            w.diagnostics()
        );
        let held = proc_locks_on(&path);
        assert_eq!(held.len(), 2, "{when}: the parent's two locks: {held:?}");
        assert!(held.iter().all(|l| l.2 == w.pid), "{when}: {held:?}");
    };
    env.roundtrip(
        "locks",
        &["waiter"],
        |env, w| check(env, w, "before checkpoint"),
        |env, w| check(env, w, "after restart"),
    );
}

/// The `lock:` lines of the fdinfo of `pid`'s fds on `path`.
fn fdinfo_locks(pid: i32, path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(e.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let name = e.file_name();
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy()))
                .unwrap_or_default();
        out.extend(
            info.lines()
                .filter(|l| l.starts_with("lock:"))
                .map(str::to_string),
        );
    }
    out
}

/// Checkpoint of `case` must fail naming the pid and saying each of `words`;
/// the process keeps running untraced and passes its own checks.
fn refused(test: &str, case: &str, words: &[&str]) {
    refused_workload(test, "locks", case, words);
}

/// A read lease: refused, and the lease is still there.
#[test]
fn checkpoint_refuses_lease() {
    refused(
        "checkpoint_refuses_lease",
        "lease",
        &["lease.lck", "read lease", "F_SETLEASE"],
    );
}

/// An flock on an unlinked file: refused (restart makes a new file, which
/// the lock would not protect), and the lock is still held.
#[test]
fn checkpoint_refuses_lock_on_unlinked_file() {
    refused(
        "checkpoint_refuses_lock_on_unlinked_file",
        "unlinked",
        &["gone.lck", "makes anew rather than reopens (unlinked)"],
    );
}

/// A POSIX lock in a process whose child shares its fd table: refused (the
/// restart would drop it), and the lock is still held.
#[test]
fn checkpoint_refuses_posix_lock_in_shared_fd_table() {
    refused(
        "checkpoint_refuses_posix_lock_in_shared_fd_table",
        "posixshared",
        &["POSIX lock", "CLONE_FILES"],
    );
}

/// Someone takes a conflicting lock while the process is checkpointed: the
/// restart fails, naming the file and the holder (this process), and
/// leaves nothing behind; once the lock is released the restart works.
#[test]
fn restart_fails_while_another_process_holds_a_lock() {
    let Some(env) = TestEnv::new("restart_fails_while_another_process_holds_a_lock") else {
        return;
    };
    let Some(mut w) = env.start_workload("locks", &["hold"]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let me = std::process::id().to_string();
    let restart_fails = |file: &str, words: &[&str]| {
        let run = env.ckpt([
            OsStr::new("restart"),
            img.as_os_str(),
            OsStr::new("--detach"),
        ]);
        assert!(
            !run.success(),
            "restart with {file} taken must fail\n{}",
            run.describe()
        );
        assert!(
            run.stderr.contains(file),
            "the error must name {file}\n{}",
            run.describe()
        );
        assert!(
            digit_tokens(&run.stderr).contains(&me.as_str()),
            "the error must name the holder, pid {me}\n{}",
            run.describe()
        );
        for word in words {
            assert!(
                run.stderr.contains(word),
                "the error must say {word:?}\n{}",
                run.describe()
            );
        }
        assert!(
            wait_until(TIMEOUT, || !pid_exists(w.pid)),
            "pid {} is left behind by the failed restart",
            w.pid
        );
    };

    // A POSIX lock on one byte of the saved write lock.
    let posix = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.path("posix.lck"))
        .unwrap();
    let fl = flock(libc::F_RDLCK, 50, 1);
    // SAFETY: a valid struct flock the kernel reads.
    let r = unsafe { libc::fcntl(posix.as_raw_fd(), libc::F_SETLK, &fl) };
    assert_eq!(r, 0);
    restart_fails("posix.lck", &["POSIX write lock on bytes 0-99"]);
    drop(posix); // releases it

    // A shared flock on the file the process holds LOCK_EX on.
    let f = std::fs::File::open(env.path("flock.lck")).unwrap();
    // SAFETY: integer-only syscall on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    assert_eq!(r, 0);
    restart_fails("flock.lck", &["flock LOCK_EX", "holds a flock LOCK_SH"]);
    drop(f);

    env.restart_detached(&mut w, &img);
    check_hold(&env, w.pid, "after restart");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
