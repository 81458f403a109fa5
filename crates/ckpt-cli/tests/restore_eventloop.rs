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

/// A checkpoint of the event-loop process killed at injected syscalls
/// (those that read its POSIX timers and signal state among them) leaves
/// every object as it was: the process verifies itself afterwards.
#[test]
fn event_loop_checkpoint_killed_midway_is_unharmed() {
    let Some(env) = TestEnv::new("event_loop_checkpoint_killed_midway_is_unharmed") else {
        return;
    };
    let Some(mut w) = env.start_workload("eventloop", &[]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    let args = [
        std::ffi::OsStr::new("checkpoint"),
        std::ffi::OsStr::new(&pid),
        std::ffi::OsStr::new("-o"),
        img.as_os_str(),
        std::ffi::OsStr::new("--leave-running"),
    ];
    // The first ones are reached by every checkpoint; the later ones only
    // if it makes that many calls (then it completes, which is fine too).
    for (i, n) in [1, 2, 5, 10, 20, 30, 45, 60].into_iter().enumerate() {
        let hook = format!("{n}:{}", ["before", "entry", "exit"][i % 3]);
        let run = env.ckpt_with_env(args, &[("CKPT_TEST_KILL_AT_INJECTION", &hook)]);
        if n <= 20 {
            assert!(
                !run.success(),
                "ckpt was not killed at {hook}\n{}",
                run.describe()
            );
        }
        env.assert_running_untraced(&mut w, &format!("after ckpt was killed at {hook}"));
    }
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
