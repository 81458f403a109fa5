//! Real event-loop programs (see `tests/programs/`): a node program on
//! libuv (epoll, eventfds, pipes, a child process) and a Go program (the
//! runtime's epoll netpoller, goroutines on several threads, a ticker).
//! Each is checkpointed, killed, restarted detached, must keep counting
//! (the harness waits for its log to grow past what it had), then verifies
//! on SIGTERM that its counter has no gap or repeat.
//!
//! These tests need root, node and go; without them they print `SKIP: ...`
//! (which fails CI where the machine could have run them).

mod common;

use common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

fn programs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

/// Lines in the program's counter log.
fn logged(w: &Workload) -> usize {
    let mut log = w.result_path().as_os_str().to_owned();
    log.push(".log");
    std::fs::read_to_string(log).map_or(0, |s| s.lines().count())
}

/// Checkpoint, kill, restart; the counter must grow by 50 more ticks, then
/// the program verifies itself.
fn keeps_counting(env: &TestEnv, mut w: Workload) {
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let at_checkpoint = logged(&w);
    env.restart_detached(&mut w, &img);
    assert!(
        wait_until(TIMEOUT, || logged(&w) > at_checkpoint + 50 || w.proc.has_exited()),
        "{}: the counter did not go on after restart (logged {} lines, {at_checkpoint} at checkpoint){}",
        w.label,
        logged(&w),
        w.diagnostics()
    );
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

#[test]
fn node_program_keeps_counting() {
    let Some(env) = TestEnv::new("node_program_keeps_counting") else {
        return;
    };
    let Some(node) = find_program("node") else {
        skip("node_program_keeps_counting: node is not installed (apt install nodejs)");
        return;
    };
    let script = programs().join("counter.js");
    let w = env.start_protocol("node-counter", &node, &[script.as_os_str()]);
    keeps_counting(&env, w);
}

#[test]
fn go_program_keeps_counting() {
    let Some(env) = TestEnv::new("go_program_keeps_counting") else {
        return;
    };
    let Some(go) = find_program("go") else {
        skip("go_program_keeps_counting: go is not installed (apt install golang-go)");
        return;
    };
    let bin = env.path("counter-go");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gocache");
    let out = std::process::Command::new(go)
        .args([OsStr::new("build"), OsStr::new("-o"), bin.as_os_str()])
        .arg(programs().join("counter.go"))
        .env("GOCACHE", &cache)
        .env("GOPATH", cache.join("gopath"))
        .env("HOME", &cache)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .output()
        .expect("run go build");
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = env.start_protocol("go-counter", &bin, &[]);
    keeps_counting(&env, w);
}
