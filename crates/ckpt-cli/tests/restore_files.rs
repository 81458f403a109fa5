//! File state beyond offsets and flags (see `workloads/fsstate.c`): what is
//! restored must verify itself after restart; what ckpt refuses must fail
//! the checkpoint with a message naming the process and the object, and
//! leave the process running and intact.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

fn nothing(_: &TestEnv, _: &mut Workload) {}

fn roundtrip(test: &str, case: &str) {
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    env.roundtrip("fsstate", &[case], nothing, nothing);
}

/// Two descriptions of one unlinked file (opened by two names, both
/// removed) share one inode again, with its owner, set-id mode and mtime;
/// an O_TMPFILE file, an O_PATH fd and a removed FIFO with data come back.
#[test]
fn restore_unlinked_inode_attrs_tmpfile_opath_fifo() {
    roundtrip(
        "restore_unlinked_inode_attrs_tmpfile_opath_fifo",
        "unlinked",
    );
}

/// A chrooted child whose cwd lies outside its root: same root, same cwd,
/// and a file held inside the root still reads.
#[test]
fn restore_chroot_with_cwd_outside_root() {
    roundtrip("restore_chroot_with_cwd_outside_root", "chroot");
}

/// /proc/CHILD/stat and /proc/self/status held open describe the restored
/// child and parent.
#[test]
fn restore_proc_files_of_the_tree() {
    roundtrip("restore_proc_files_of_the_tree", "proc");
}

/// F_SETOWN, F_SETSIG and O_ASYNC of a pipe: they read back, and a write
/// raises the signal.
#[test]
fn restore_file_owner_and_signal() {
    roundtrip("restore_file_owner_and_signal", "fown");
}

/// A child sharing its parent's fd table (clone CLONE_FILES) still shares
/// it: an fd opened by the parent after restart is the child's too.
#[test]
fn restore_shared_fd_table() {
    roundtrip("restore_shared_fd_table", "fdtable");
}

/// A removed working directory, also held as an fd: recreated for a moment
/// at restart, so the process is again in a removed directory of that
/// name, mode and owner, which its fd names too.
#[test]
fn restore_removed_cwd() {
    roundtrip("restore_removed_cwd", "cwdgone");
}

/// Checkpoint of `case` must fail naming the pid and saying each of `words`;
/// the process keeps running untraced and passes its own checks.
fn refused(test: &str, case: &str, words: &[&str]) {
    refused_workload(test, "fsstate", case, words);
}

/// A pseudo-terminal pair: refused with advice to redirect stdio.
#[test]
fn checkpoint_refuses_terminals() {
    refused(
        "checkpoint_refuses_terminals",
        "pty",
        &[
            "/dev/ptmx",
            "pseudo-terminal",
            "terminals are not supported yet",
            "</dev/null",
        ],
    );
}

/// /proc/PPID/stat is about a process outside the tree (the harness):
/// refused, naming it.
#[test]
fn checkpoint_refuses_proc_file_of_foreign_pid() {
    refused(
        "checkpoint_refuses_proc_file_of_foreign_pid",
        "foreign",
        &[
            format!("/proc/{}/stat", std::process::id()).as_str(),
            "outside the checkpointed tree",
        ],
    );
}

/// A signal owner outside the tree (the harness): refused.
#[test]
fn checkpoint_refuses_file_owner_outside_tree() {
    refused(
        "checkpoint_refuses_file_owner_outside_tree",
        "ownerout",
        &[
            "F_SETOWN",
            "not a process or group of the checkpointed tree",
        ],
    );
}

/// A removed root directory (chroot into it, then rmdir): refused.
#[test]
fn checkpoint_refuses_removed_root() {
    refused(
        "checkpoint_refuses_removed_root",
        "rootgone",
        &["root directory", "was removed"],
    );
}

/// Two children sharing an fd table their parent left (unshare): refused,
/// as only sharing with the parent can be recreated.
#[test]
fn checkpoint_refuses_fd_table_shared_with_a_sibling() {
    refused(
        "checkpoint_refuses_fd_table_shared_with_a_sibling",
        "fdsibling",
        &["fd table, shared with pid", "other than the parent"],
    );
}
