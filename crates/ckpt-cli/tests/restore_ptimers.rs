//! POSIX timers (timer_create) through checkpoint and restart: see
//! `workloads/ptimers.c` for what the workload verifies itself, and
//! `common/mod.rs` for the protocol. The round trips need root; without it
//! they print `SKIP: ...` and pass.

mod common;

use std::fs;

use common::*;

/// Its main thread sleeps in pause() between timer signals.
fn settled(env: &TestEnv, w: &mut Workload) {
    env.wait_blocked_in(w, &[libc::SYS_pause]);
}

fn proc_timers(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/timers"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/timers: {e}"))
}

/// The workload passes without any checkpoint (needs no root).
#[test]
fn ptimers_workload_passes_without_checkpoint() {
    let env = TestEnv::without_root("ptimers_workload_passes_without_checkpoint");
    env.run_control("ptimers", &[], settled);
}

/// Periodic, one-shot, thread-directed and SIGEV_NONE timers, three whose
/// signal is pending (periodic, expired one-shot, and one the kernel drops
/// as stale), with
/// non-contiguous ids come back with the same ids, notifications, values
/// and targets (/proc/PID/timers reads the same, the workload's handles
/// still work) and keep running; the image holds one record per timer.
#[test]
fn restore_posix_timers() {
    let Some(env) = TestEnv::new("restore_posix_timers") else {
        return;
    };
    let Some(mut w) = env.start_workload("ptimers", &[]) else {
        return;
    };
    settled(&env, &mut w);
    let before = proc_timers(w.pid);
    assert!(before.contains("notify: signal/tid."), "{before}");
    assert!(before.contains("notify: none/pid."), "{before}");
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let run = env.ckpt([std::ffi::OsStr::new("inspect"), img.as_os_str()]);
    assert!(run.success(), "inspect: {}", run.describe());
    assert_eq!(
        run.stdout.matches("posix-timer").count(),
        7,
        "one posix-timer record per timer:\n{}",
        run.stdout
    );
    env.restart_detached(&mut w, &img);
    let after = proc_timers(w.pid);
    assert_eq!(after, before, "/proc/{}/timers changed", w.pid);
    settled(&env, &mut w);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A timer on the process's CPU-time clock, and one signalling a thread
/// that has exited, are refused by name; the process keeps running as it
/// was (it passes afterwards).
#[test]
fn unrestorable_posix_timers_are_refused() {
    let Some(env) = TestEnv::new("unrestorable_posix_timers_are_refused") else {
        return;
    };
    for (mode, why) in [("cpu", "CPU time"), ("dead-target", "which has exited")] {
        let Some(mut w) = env.start_workload("ptimers", &[mode]) else {
            return;
        };
        settled(&env, &mut w);
        let img = env.path(&format!("img-{mode}"));
        let run = env.checkpoint_must_fail(&mut w, &img, mode);
        assert!(
            run.stderr.contains("POSIX timer") && run.stderr.contains(why),
            "{mode}: {}",
            run.describe()
        );
        env.assert_running_untraced(&mut w, "after the refused checkpoint");
        settled(&env, &mut w);
        env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    }
}
