//! Large tables of objects restore, within the machine's limits: 10,000
//! fds need about 10,000 fd numbers in the restorer, not 20,000 (a root
//! without CAP_SYS_RESOURCE cannot raise its hard limit of 20,000 here).
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

fn nothing(_: &TestEnv, _: &mut Workload) {}

/// Whether this machine lets a process hold `n` fds (the hard limit, raised
/// if we may); else says why the test cannot run.
fn room_for_fds(test: &str, n: u64) -> bool {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_max >= n {
        return true;
    }
    let want = libc::rlimit {
        rlim_cur: r.rlim_cur,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return true;
    }
    skip(&format!(
        "{test}: the hard fd limit is {} (< {n}) and cannot be raised here",
        r.rlim_max
    ));
    false
}

/// 10,000 fds of one process (5,000 descriptions of one file at their own
/// offsets, 5,000 of /dev/null) come back at their numbers.
#[test]
fn ten_thousand_fds_restore() {
    let Some(env) = TestEnv::new("ten_thousand_fds_restore") else {
        return;
    };
    if !room_for_fds("ten_thousand_fds_restore", 10_100) {
        return;
    }
    env.roundtrip("manyfds", &["single", "10000"], nothing, nothing);
}

/// A child whose first 3,000 fd numbers name other descriptions than its
/// parent's (so the restorer's copies sit where the child needs its own)
/// and whose other 3,000 share the parent's.
#[test]
fn many_fds_of_a_tree_restore_where_numbers_clash() {
    let Some(env) = TestEnv::new("many_fds_of_a_tree_restore_where_numbers_clash") else {
        return;
    };
    if !room_for_fds("many_fds_of_a_tree_restore_where_numbers_clash", 6_100) {
        return;
    }
    env.roundtrip("manyfds", &["tree", "6000"], nothing, nothing);
}
