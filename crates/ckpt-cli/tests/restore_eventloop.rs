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
