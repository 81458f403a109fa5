//! Every kind of the object seam in one process (see
//! `workloads/eventloop.c`): an epoll over an eventfd, a timerfd, a
//! signalfd and an inotify fd, a POSIX timer, an flock and a POSIX lock,
//! and a pidfd, as one event loop holds them. After checkpoint, kill and
//! restart the process verifies each and their interplay itself.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

#[test]
fn restore_event_loop_with_every_kind() {
    let Some(env) = TestEnv::new("restore_event_loop_with_every_kind") else {
        return;
    };
    env.roundtrip("eventloop", &[], |_, _| {}, |_, _| {});
}

/// `--leave-running`: the checkpointed process keeps every object working
/// (repair-free kinds must leave nothing changed), verifies itself, and
/// once it is gone its image restarts and verifies itself too.
#[test]
fn event_loop_left_running_then_restarted() {
    let Some(env) = TestEnv::new("event_loop_left_running_then_restarted") else {
        return;
    };
    let Some(mut w) = env.start_workload("eventloop", &[]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    let run = env.ckpt([
        std::ffi::OsStr::new("checkpoint"),
        std::ffi::OsStr::new(&pid),
        std::ffi::OsStr::new("-o"),
        img.as_os_str(),
        std::ffi::OsStr::new("--leave-running"),
    ]);
    assert!(
        run.success(),
        "checkpoint --leave-running failed\n{}",
        run.describe()
    );
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || !pid_exists(w.pid)),
        "pid {} still exists after it passed",
        w.pid
    );
    let _ = std::fs::remove_file(w.result_path());
    env.restart_detached(&mut w, &img);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
