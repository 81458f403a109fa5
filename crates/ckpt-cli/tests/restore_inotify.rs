//! inotify instances and pidfds (see `workloads/inotify.c`): restored ones
//! verify themselves after restart (same watch descriptors, events still
//! come; the pidfd signals and reports the exit of the same child); a
//! fanotify fd and a pidfd on a process outside the tree are refused, the
//! process running on intact.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use std::ffi::OsStr;

use common::*;

fn nothing(_: &TestEnv, _: &mut Workload) {}

/// The workload cases work without any checkpoint.
#[test]
fn inotify_workloads_pass_without_checkpoint() {
    let Some(env) = TestEnv::new("inotify_workloads_pass_without_checkpoint") else {
        return;
    };
    for case in [
        "inotify",
        "pidfd",
        "pidfddead",
        "fanotify",
        "pidfdout",
        "inogone",
        "inoqueued",
    ] {
        if !env.run_control("inotify", &[case], nothing) {
            return;
        }
    }
}

/// Watches on a directory (wd 1) and a one-shot file watch (wd 3, wd 2
/// removed before): the same wds, masks and inodes after restart, and
/// events on them; `ckpt inspect` shows the watches.
#[test]
fn restore_inotify_watches_with_their_wds() {
    let Some(env) = TestEnv::new("restore_inotify_watches_with_their_wds") else {
        return;
    };
    env.roundtrip("inotify", &["inotify"], nothing, |env, w| {
        let img = env.path("img");
        let run = env.ckpt([OsStr::new("inspect"), img.as_os_str()]);
        assert!(run.success(), "inspect failed\n{}", run.describe());
        let dir = w.result_sibling(".d");
        for word in ["inotify-watch", "wd", dir.to_str().expect("utf-8 path")] {
            assert!(
                run.stdout.contains(word),
                "inspect must show {word:?}\n{}",
                run.describe()
            );
        }
    });
}

/// A PIDFD_NONBLOCK pidfd on a child: after restart it signals the child
/// and poll/waitid report its exit.
#[test]
fn restore_pidfd_on_child() {
    let Some(env) = TestEnv::new("restore_pidfd_on_child") else {
        return;
    };
    env.roundtrip("inotify", &["pidfd"], nothing, nothing);
}

/// pidfds on reaped processes (two on one, one on another): still dead
/// after restart, sharing inodes as before, with the same exit statuses.
#[test]
fn restore_pidfds_of_reaped_processes() {
    let Some(env) = TestEnv::new("restore_pidfds_of_reaped_processes") else {
        return;
    };
    env.roundtrip("inotify", &["pidfddead"], nothing, nothing);
}

/// Checkpoint of `case` must fail naming the pid and saying each of `words`;
/// the process keeps running untraced and passes its own checks.
fn refused(test: &str, case: &str, words: &[&str]) {
    refused_workload(test, "inotify", case, words);
}

#[test]
fn checkpoint_refuses_fanotify() {
    refused(
        "checkpoint_refuses_fanotify",
        "fanotify",
        &["fd 40", "fanotify is not supported yet"],
    );
}

#[test]
fn checkpoint_refuses_pidfd_outside_tree() {
    let harness = std::process::id().to_string();
    refused(
        "checkpoint_refuses_pidfd_outside_tree",
        "pidfdout",
        &["fd 41", "pidfd", "outside the tree", &harness],
    );
}

/// A watch on a file that was unlinked (still open): no path to watch
/// again, refused naming the watch.
#[test]
fn checkpoint_refuses_inotify_watch_on_deleted_file() {
    refused(
        "checkpoint_refuses_inotify_watch_on_deleted_file",
        "inogone",
        &["fd 40", "anon_inode:inotify", "watch 1", "deleted"],
    );
}

/// Unread events cannot be saved (reading them would consume them).
#[test]
fn checkpoint_refuses_inotify_with_queued_events() {
    refused(
        "checkpoint_refuses_inotify_with_queued_events",
        "inoqueued",
        &[
            "fd 40",
            "queued and unread",
            "once the process has read its events",
        ],
    );
}
