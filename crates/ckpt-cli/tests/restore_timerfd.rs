//! timerfds and signalfds (see `workloads/timerfd.c` for what the workload
//! verifies itself after restart: rates, time left, absolute expiries,
//! unread expirations, masks, signals read). Here, from outside, the
//! fdinfo lines that must not change (clock, settime flags, interval,
//! sigmask, status flags) are compared before the checkpoint and after the
//! restart.
//!
//! The round trips need root; without it they print `SKIP: ...` and pass.

mod common;

use std::fs;

use common::*;

fn asleep(env: &TestEnv, w: &mut Workload) {
    env.wait_blocked_in(w, &[libc::SYS_rt_sigsuspend]);
}

/// For every timerfd and signalfd of `pid`: its fd and the fdinfo lines a
/// restart keeps (not the time left or the ticks, which move).
fn kept_state(pid: i32) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    let dir = format!("/proc/{pid}/fd");
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {dir}: {e}")) {
        let e = e.expect("dir entry");
        let Ok(link) = fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if link != "anon_inode:[timerfd]" && link != "anon_inode:[signalfd]" {
            continue;
        }
        let fd: i32 = e.file_name().to_string_lossy().parse().expect("fd number");
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let kept: Vec<&str> = info
            .lines()
            .filter(|l| {
                [
                    "flags:",
                    "clockid:",
                    "settime flags:",
                    "it_interval:",
                    "sigmask:",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .collect();
        v.push((fd, format!("{link} {}", kept.join(" | "))));
    }
    v.sort();
    v
}

/// Starts `timerfd MODE`, checkpoints (killing it) and restarts it `times`
/// times, checking each time that the kept fdinfo lines are the same and
/// that it sleeps again; then SIGTERM: the workload must PASS.
fn roundtrip(test: &str, mode: &str, expect_fds: usize, times: usize) {
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("timerfd", &[mode]) else {
        return;
    };
    asleep(&env, &mut w);
    let before = kept_state(w.pid);
    assert_eq!(
        before.len(),
        expect_fds,
        "{test}: the workload should hold {expect_fds} timerfds/signalfds: {before:#?}"
    );
    let img = env.path("img");
    for _ in 0..times {
        env.checkpoint_and_kill(&mut w, &img);
        env.restart_detached(&mut w, &img);
        asleep(&env, &mut w);
        let after = kept_state(w.pid);
        assert_eq!(
            after,
            before,
            "{test}: clock, settime flags, interval, mask or status flags changed (left: after restart){}",
            w.diagnostics()
        );
    }
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// Both cases of the workload pass without any checkpoint (needs no root).
#[test]
fn timerfd_workloads_pass_without_checkpoint() {
    let env = TestEnv::without_root("timerfd_workloads_pass_without_checkpoint");
    for mode in ["timers", "signalfd", "shared"] {
        if !env.run_control("timerfd", &[mode], asleep) {
            return;
        }
    }
}

/// A periodic CLOCK_MONOTONIC timer keeps its 50 ms rate; a relative
/// one-shot of 1 hour (and a CLOCK_BOOTTIME_ALARM one of 2 hours) keeps
/// the time it had left; absolute CLOCK_REALTIME and CLOCK_MONOTONIC
/// timers keep their expiry and flags; a periodic absolute timer counts
/// every expiry since its first; 3 and 1 unread expirations read back
/// exactly, through a dup()ed fd sharing the description; a 20 us timer
/// keeps firing; disarmed timers stay disarmed (with their interval).
#[test]
fn restore_timerfds() {
    roundtrip("restore_timerfds", "timers", 12, 1);
}

/// The same timers checkpointed and restarted twice: what a restart set up
/// (ticks set again, absolute expiries) saves and restores again.
#[test]
fn restore_timerfds_twice() {
    roundtrip("restore_timerfds_twice", "timers", 12, 2);
}

/// A signalfd for SIGUSR1|SIGUSR2 (O_NONBLOCK) with a sigqueue()d SIGUSR1
/// pending reads it, with its value, after restart; its mask and that of a
/// blocking SIGUSR2 signalfd are the same.
#[test]
fn restore_signalfd() {
    roundtrip("restore_signalfd", "signalfd", 2, 1);
}

/// A timerfd with 3 unread expirations shared by a parent and the child it
/// forked: the child reads the 3 after restart, leaving none for the
/// parent.
#[test]
fn restore_timerfd_shared_across_fork() {
    roundtrip("restore_timerfd_shared_across_fork", "shared", 1, 1);
}
