//! eventfds through the object seam (see `workloads/eventfd.c`): counters
//! wider than 32 bits, EFD_SEMAPHORE, O_NONBLOCK, a dup and a description
//! shared with a child come back and verify themselves.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

#[test]
fn restore_eventfd_counters_flags_and_sharing() {
    let Some(env) = TestEnv::new("restore_eventfd_counters_flags_and_sharing") else {
        return;
    };
    env.roundtrip(
        "eventfd",
        &[],
        |_, _| {},
        |env, _| {
            let img = env.path("img");
            let run = env.ckpt([std::ffi::OsStr::new("inspect"), img.as_os_str()]);
            assert!(
                run.stdout.contains("eventfd") && run.stdout.contains("count 18446744065119617029"),
                "inspect does not show the eventfd counter:\n{}",
                run.stdout
            );
        },
    );
}
