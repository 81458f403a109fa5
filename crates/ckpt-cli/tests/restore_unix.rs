//! Unix sockets (see `workloads/unix.c`): stream, seqpacket and datagram
//! pairs with data queued both ways, listeners on a path and an abstract
//! name, a connection waiting in a backlog, an accepted connection,
//! shutdown state, a closed peer, options and named datagrams come back
//! and verify themselves; what cannot come back is refused and the
//! process keeps running.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;
use std::os::fd::AsRawFd;

#[test]
fn restore_unix_sockets_with_queues_listeners_and_backlog() {
    let Some(env) = TestEnv::new("restore_unix_sockets_with_queues_listeners_and_backlog") else {
        return;
    };
    env.roundtrip(
        "unix",
        &["all"],
        |_, _| {},
        |env, _| {
            let img = env.path("img");
            let run = env.ckpt([std::ffi::OsStr::new("inspect"), img.as_os_str()]);
            assert!(
                run.stdout.contains("unix-socket") && run.stdout.contains("unix-queue"),
                "inspect does not show the unix socket records:\n{}",
                run.stdout
            );
        },
    );
}

#[test]
fn unix_socket_connected_outside_the_tree_is_refused() {
    let Some(env) = TestEnv::new("unix_socket_connected_outside_the_tree_is_refused") else {
        return;
    };
    // Bound through /proc/self/fd: the test directory's path may be too
    // long for sun_path; the workload connects by the relative name.
    let dir = std::fs::File::open(env.path(".")).expect("open the test directory");
    let short = format!("/proc/self/fd/{}/outside.sock", dir.as_raw_fd());
    let listener = std::os::unix::net::UnixListener::bind(&short).expect("bind");
    let Some(mut w) = env.start_workload("unix", &["outside", "outside.sock"]) else {
        return;
    };
    // The test holds the other end.
    let (_other, _) = listener.accept().expect("accept");
    let img = env.path("img");
    let run = env.checkpoint_must_fail(&mut w, &img, "checkpoint of a socket connected outside");
    let pid = w.pid.to_string();
    assert!(
        digit_tokens(&run.stderr).contains(&pid.as_str()),
        "the error must name pid {pid}\n{}",
        run.describe()
    );
    for word in [
        "unix socket",
        "no process of the checkpointed tree holds",
        "other end",
    ] {
        assert!(
            run.stderr.contains(word),
            "the error must say {word:?}\n{}",
            run.describe()
        );
    }
    env.assert_running_untraced(&mut w, "after the refused checkpoint");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

#[test]
fn unix_fds_in_flight_are_refused() {
    refused_workload(
        "unix_fds_in_flight_are_refused",
        "unix",
        "scm",
        &["SCM_RIGHTS", "read it before the checkpoint"],
    );
}

#[test]
fn unix_backlog_client_with_data_is_refused() {
    refused_workload(
        "unix_backlog_client_with_data_is_refused",
        "unix",
        "embryo",
        &["backlog", "accept the connection before the checkpoint"],
    );
}
