//! epoll instances and their watches (see `workloads/epoll.c`): a restored
//! epoll reports the same readiness with the same cookies, its watches
//! answer EPOLL_CTL_MOD / DEL by their original fd numbers, nested,
//! dup'ed and inherited epolls come back as one; watches that cannot come
//! back are refused at checkpoint, and the process keeps running.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

fn nothing(_: &TestEnv, _: &mut Workload) {}

/// Watches on an eventfd with a count, a pipe's read end (EPOLLET, one
/// edge pending), fired EPOLLONESHOT watches (one on a pipe in EPOLLERR),
/// an fd number closed after a dup and reused by a nested epoll, a closed
/// fd number, an EPOLLEXCLUSIVE watch; the epoll dup'ed and shared with a
/// child.
#[test]
fn restore_epoll_watches() {
    let Some(env) = TestEnv::new("restore_epoll_watches") else {
        return;
    };
    env.roundtrip("epoll", &["watches"], nothing, nothing);
}

/// The only fd of a watched eventfd is held by an orphaned grandchild,
/// outside the tree: refused, naming the epoll fd and the watch.
#[test]
fn checkpoint_refuses_epoll_target_outside_tree() {
    refused(
        "checkpoint_refuses_epoll_target_outside_tree",
        "outside",
        &[
            "(epoll)",
            "watch of fd number",
            "no process of the checkpointed tree",
        ],
    );
}

/// A child's /proc/self/mounts watched by the epoll it shares with its
/// parent: refused (restart adds the watches in the parent).
#[test]
fn checkpoint_refuses_epoll_watch_on_proc_file_of_another_process() {
    refused(
        "checkpoint_refuses_epoll_watch_on_proc_file_of_another_process",
        "procwatch",
        &["/proc file", "reopens its own /proc files"],
    );
}

/// Checkpoint of `case` must fail naming the pid and saying each of
/// `words`; the process keeps running untraced and passes its own checks.
fn refused(test: &str, case: &str, words: &[&str]) {
    refused_workload(test, "epoll", case, words);
}
