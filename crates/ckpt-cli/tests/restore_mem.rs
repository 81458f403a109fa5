//! Address-space state beyond page contents: madvise advice and mmap flags
//! (smaps VmFlags), the access mode behind shared file mappings, private
//! mappings of shared memory objects, memfd mode and seals, THP-disable,
//! membarrier registrations, and unlinked files (holes, size, mode, and one
//! file again for its fd and its mappings). See `workloads/mmstate.c`.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

fn nothing(_: &TestEnv, _: &mut Workload) {}

/// The workload passes on its own, without any checkpoint.
#[test]
fn mmstate_passes_without_checkpoint() {
    let env = TestEnv::without_root("mmstate_passes_without_checkpoint");
    env.run_control("mmstate", &[], nothing);
}

/// Every piece of `mmstate.c` is intact after checkpoint and restart.
#[test]
fn restore_mmstate() {
    let Some(env) = TestEnv::new("restore_mmstate") else {
        return;
    };
    env.roundtrip("mmstate", &[], nothing, nothing);
}

/// The unlinked file's holes are not in the image: of its four pages only
/// the two that hold data are saved, and its mode, owner and size are.
#[test]
fn unlinked_file_holes_are_not_saved() {
    let Some(env) = TestEnv::new("unlinked_file_holes_are_not_saved") else {
        return;
    };
    let Some(mut w) = env.start_workload("mmstate", &[]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let out = env.ckpt([std::ffi::OsStr::new("inspect"), img.as_os_str()]);
    assert!(out.success(), "inspect failed: {}", out.describe());
    let text = out.stdout.clone();
    let is_shmem = |l: &str| l.split_whitespace().nth(2) == Some("shmem");
    let ghost = text
        .lines()
        .position(|l| is_shmem(l) && l.contains(".ghost (16384 bytes)"))
        .unwrap_or_else(|| panic!("no unlinked-file object for the ghost in:\n{text}"));
    // Its page plans, in the metadata.
    let offsets: Vec<&str> = text
        .lines()
        .skip(ghost + 1)
        .take_while(|l| !is_shmem(l))
        .filter(|l| l.split_whitespace().nth(2) == Some("page-plan"))
        .filter_map(|l| l.split("  page-plan").nth(1))
        .map(|l| l.trim().split(", in the page section").next().unwrap_or(""))
        .collect();
    assert_eq!(
        offsets,
        [
            "1 pages in 1 runs from 0x0 to 0x1000",
            "1 pages in 1 runs from 0x2000 to 0x3000"
        ],
        "ghost pages saved: {offsets:?}\n{text}"
    );
    env.restart_detached(&mut w, &img);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// The cow workload passes on its own (it needs root to see page frames).
#[test]
fn cow_passes_without_checkpoint() {
    let Some(env) = TestEnv::new("cow_passes_without_checkpoint") else {
        return;
    };
    env.run_control("cow", &[], nothing);
}

/// Pages a child shares copy-on-write with its parent are still the same
/// page frames in both after restart; pages either wrote are their own.
#[test]
fn restore_cow_sharing() {
    let Some(env) = TestEnv::new("restore_cow_sharing") else {
        return;
    };
    env.roundtrip("cow", &[], nothing, nothing);
}

/// On kernels without PAGEMAP_SCAN (before 6.7) pages are found through
/// pagemap, entry by entry: the `memory` workload (untouched, copied-on-
/// write, read-only and PROT_NONE memory, the break, a deep stack) comes
/// back intact that way too.
#[test]
fn pages_are_found_through_pagemap_without_pagemap_scan() {
    let Some(env) = TestEnv::new("pages_are_found_through_pagemap_without_pagemap_scan") else {
        return;
    };
    let Some(mut w) = env.start_workload("memory", &[]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    let run = env.ckpt_with_env(
        [
            std::ffi::OsStr::new("checkpoint"),
            std::ffi::OsStr::new(&pid),
            std::ffi::OsStr::new("-o"),
            img.as_os_str(),
        ],
        &[("CKPT_TEST_NO_PAGEMAP_SCAN", "1")],
    );
    assert!(run.success(), "checkpoint failed:\n{}", run.describe());
    assert!(
        w.proc.wait_exit(TIMEOUT).is_some(),
        "pid {} still alive after the checkpoint",
        w.pid
    );
    env.restart_detached(&mut w, &img);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A process with memory-deny-write-execute is refused (restart would lose
/// it), names it, and goes on untouched.
#[test]
fn memory_deny_write_execute_is_refused() {
    common::refused_workload(
        "memory_deny_write_execute_is_refused",
        "mmstate",
        "mdwe",
        &["memory-deny-write-execute", "PR_SET_MDWE"],
    );
}

/// Page records are checksummed from the task's memory while it writes
/// them, except those holding memory the kernel rewrites as the task runs
/// its injected calls (rseq's cpu_id, when it moves to another CPU): every
/// image of many checkpoints of a process left running must be whole. (A
/// checksum of the memory there failed 4 checkpoints in 100 on 2 CPUs.)
#[test]
fn images_stay_whole_while_the_kernel_updates_rseq() {
    let Some(env) = TestEnv::new("images_stay_whole_while_the_kernel_updates_rseq") else {
        return;
    };
    let Some(mut w) = env.start_workload("maps", &["2000"]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    for i in 0..100 {
        let run = env.ckpt([
            std::ffi::OsStr::new("checkpoint"),
            std::ffi::OsStr::new("--leave-running"),
            std::ffi::OsStr::new(&pid),
            std::ffi::OsStr::new("-o"),
            img.as_os_str(),
        ]);
        assert!(run.success(), "checkpoint {i} failed: {}", run.describe());
        let out = env.ckpt([std::ffi::OsStr::new("inspect"), img.as_os_str()]);
        assert!(
            out.success(),
            "the image of checkpoint {i} is not whole: {}",
            out.describe()
        );
    }
    env.checkpoint_and_kill(&mut w, &img);
    env.restart_detached(&mut w, &img);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
