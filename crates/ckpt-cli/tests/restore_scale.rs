//! Large tables of objects restore, within the machine's limits: 10,000
//! fds need about 10,000 fd numbers in the restorer, not 20,000 (a root
//! without CAP_SYS_RESOURCE cannot raise its hard limit of 20,000 here).
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

fn nothing(_: &TestEnv, _: &mut Workload) {}

/// 10,000 fds of one process (5,000 descriptions of one file at their own
/// offsets, 5,000 of /dev/null) come back at their numbers.
#[test]
fn ten_thousand_fds_restore() {
    let Some(env) = TestEnv::new("ten_thousand_fds_restore") else {
        return;
    };
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
    env.roundtrip("manyfds", &["tree", "6000"], nothing, nothing);
}
