//! More checkpoint/restart cases: a restart failing after it created the
//! processes, hardware debug registers, dropped credentials, rseq, and a
//! process someone else already traces. See `common/mod.rs` for the protocol
//! and `workloads/*.c` for what each workload verifies.
//!
//! The round trips need root; without it they print `SKIP: ...` and pass.

mod common;

use std::ffi::OsStr;
use std::fs;

use common::*;

fn asleep_in_sigsuspend(env: &TestEnv, w: &mut Workload) {
    env.wait_blocked_in(w, &[libc::SYS_rt_sigsuspend]);
}

/// The workloads of this file work without any checkpoint (needs no root).
#[test]
fn extra_workloads_pass_without_checkpoint() {
    let env = TestEnv::without_root("extra_workloads_pass_without_checkpoint");
    for (name, extra) in [("dbgreg", &[][..]), ("rseq", &[])] {
        if !env.run_control(name, extra, asleep_in_sigsuspend) {
            return;
        }
    }
    if is_root() {
        for mode in ["same", "mixed"] {
            if !env.run_control("creds", &[mode], asleep_in_sigsuspend) {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 7. a restart failing after the processes exist
// ---------------------------------------------------------------------------

/// tree.c's pids: [R, A, G, Z].
fn tree_pids(w: &Workload) -> Vec<i32> {
    let path = w.result_sibling(".pids");
    let pids: Vec<i32> = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .split_whitespace()
        .map(|t| t.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 4, "RESULT.pids: {pids:?}");
    assert_eq!(pids[0], w.pid);
    pids
}

/// R in sigsuspend, A in wait4, G in write (the pipe is full), Z a zombie.
fn tree_settled(env: &TestEnv, w: &mut Workload, pids: &[i32]) {
    let expect = [
        (pids[0], libc::SYS_rt_sigsuspend),
        (pids[1], libc::SYS_wait4),
        (pids[2], libc::SYS_write),
    ];
    for (pid, nr) in expect {
        let ok = wait_until(TIMEOUT, || {
            proc_state(pid) == Some('S') && current_syscall(pid) == Some(nr)
        });
        assert!(
            ok,
            "{}: pid {pid} not asleep in syscall {nr}: {}{}",
            env.name,
            describe_pid(pid),
            w.diagnostics()
        );
    }
    assert_eq!(proc_state(pids[3]), Some('Z'), "Z is not a zombie");
}

/// tree.c, checkpointed; `CKPT_TEST_FAIL_AFTER_SPAWN=1 ckpt restart` (with
/// and without --detach) fails once all four processes (zombie included)
/// exist, and `CKPT_TEST_FAIL_REBUILD=PID` fails while the processes are
/// rebuilt (each by its own thread), in the middle of one of them: non-zero
/// exit, a message, no pid on stdout, and when it returns none of the
/// image's pids exists and no process of ours is left. Then the same image
/// restarts fine (same pids, links, groups) and PASSes.
#[test]
fn restart_failing_after_spawn_leaves_nothing_behind() {
    let name = "restart_failing_after_spawn_leaves_nothing_behind";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let Some(mut w) = env.start_workload("tree", &[]) else {
        return;
    };
    let pids = tree_pids(&w);
    tree_settled(&env, &mut w, &pids);
    let before: Vec<ProcIds> = pids.iter().map(|&p| proc_ids(p).expect("ids")).collect();
    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &pids);

    let (second, root) = (pids[1].to_string(), pids[0].to_string());
    let cases = [
        ("CKPT_TEST_FAIL_AFTER_SPAWN", "1", true),
        ("CKPT_TEST_FAIL_AFTER_SPAWN", "1", false),
        ("CKPT_TEST_FAIL_REBUILD", second.as_str(), true),
        ("CKPT_TEST_FAIL_REBUILD", root.as_str(), false),
    ];
    for (hook, value, detach) in cases {
        let mut args = vec![OsStr::new("restart"), img.as_os_str()];
        if detach {
            args.push(OsStr::new("--detach"));
        }
        let run = env.ckpt_with_env(args, &[(hook, value)]);
        assert!(
            !run.success(),
            "restart with {hook}={value} must fail\n{}",
            run.describe()
        );
        assert!(
            run.stderr.contains(hook),
            "the error must say what failed\n{}",
            run.describe()
        );
        assert!(
            run.stdout.trim().is_empty(),
            "a failed restart must not print a pid\n{}",
            run.describe()
        );
        let left: Vec<String> = pids
            .iter()
            .filter(|&&p| pid_exists(p))
            .map(|&p| describe_pid(p))
            .collect();
        if !left.is_empty() {
            // Say whether they go away later (e.g. zombies reaped by init
            // only once ckpt has exited) or stay: either way it is a failure.
            let t0 = std::time::Instant::now();
            let later = wait_until(std::time::Duration::from_secs(10), || {
                pids.iter().all(|&p| !pid_exists(p))
            });
            let fate = if later {
                format!("they were gone {:?} later", t0.elapsed())
            } else {
                "they were still there 10 s later".to_owned()
            };
            panic!(
                "after the failed restart ({hook}={value}, detach: {detach}) returned, pids of \
                 the image still exist: {left:#?} ({fate})\n{}",
                run.describe()
            );
        }
        let strays = env.own_processes();
        assert!(
            strays.is_empty(),
            "the failed restart left processes: {:#?}",
            strays.iter().map(|&p| describe_pid(p)).collect::<Vec<_>>()
        );
    }

    env.restart_detached(&mut w, &img);
    env.assert_tree_restored(&w, &before);
    tree_settled(&env, &mut w, &pids);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

// ---------------------------------------------------------------------------
// 8. debug registers
// ---------------------------------------------------------------------------

/// dr7: local enable of breakpoint 0 (bit 0), R/W0 = 01 "break on data
/// writes" (bits 16-17), LEN0 = 10 "8 bytes" (bits 18-19).
const DR7_WATCH_WRITE_8: u64 = 1 | (0b01 << 16) | (0b10 << 18);

/// dr0-dr3 and dr7 of `pid`, read by seizing, stopping and detaching.
fn read_debugregs(pid: i32) -> [u64; 5] {
    let mut t = Tracee::seize(pid).unwrap_or_else(|e| panic!("PTRACE_SEIZE {pid}: {e}"));
    let mut dr = [0u64; 5];
    for (slot, i) in dr.iter_mut().zip([0, 1, 2, 3, 7]) {
        *slot = t
            .debugreg(i)
            .unwrap_or_else(|e| panic!("PEEKUSER dr{i} of {pid}: {e}"));
    }
    t.detach()
        .unwrap_or_else(|e| panic!("PTRACE_DETACH {pid}: {e}"));
    dr
}

/// Sets a write watchpoint on dbgreg.c's `watched` as a debugger would, and
/// returns dr0-3, dr7 as read back.
fn set_watchpoint(env: &TestEnv, w: &Workload) -> [u64; 5] {
    let path = w.result_sibling(".addr");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let addr = u64::from_str_radix(text.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()));
    let mut t = Tracee::seize(w.pid).unwrap_or_else(|e| panic!("PTRACE_SEIZE {}: {e}", w.pid));
    t.set_debugreg(0, addr)
        .unwrap_or_else(|e| panic!("POKEUSER dr0: {e}"));
    t.set_debugreg(7, DR7_WATCH_WRITE_8)
        .unwrap_or_else(|e| panic!("POKEUSER dr7: {e}"));
    t.detach().unwrap_or_else(|e| panic!("PTRACE_DETACH: {e}"));
    let dr = read_debugregs(w.pid);
    assert_eq!(
        dr,
        [addr, 0, 0, 0, DR7_WATCH_WRITE_8],
        "{}: debug registers read back differently right after setting them",
        env.name
    );
    dr
}

#[test]
fn debugreg_offset_is_848() {
    assert_eq!(
        DEBUGREG_OFFSET, 848,
        "offsetof(struct user, u_debugreg) on x86_64"
    );
}

/// Without any checkpoint: the watchpoint the harness sets fires in the
/// workload (one SIGTRAP, TRAP_HWBKPT) when it writes the variable. Shows
/// the environment supports hardware watchpoints (needs no root: the
/// workload is our child).
#[test]
fn debug_watchpoint_fires_without_checkpoint() {
    let env = TestEnv::without_root("debug_watchpoint_fires_without_checkpoint");
    let Some(mut w) = env.start_workload("dbgreg", &["expect-trap"]) else {
        return;
    };
    asleep_in_sigsuspend(&env, &mut w);
    set_watchpoint(&env, &w);
    asleep_in_sigsuspend(&env, &mut w);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A hardware write watchpoint (dr0 = &watched, dr7 = enabled for 8-byte
/// writes) set with ptrace before the checkpoint: after the restart the
/// harness reads dr0-dr3 and dr7 back the same way and they are equal, and
/// the watchpoint still fires when the workload writes the variable.
#[test]
fn restore_debug_registers() {
    let Some(env) = TestEnv::new("restore_debug_registers") else {
        return;
    };
    let Some(mut w) = env.start_workload("dbgreg", &["expect-trap"]) else {
        return;
    };
    asleep_in_sigsuspend(&env, &mut w);
    let before = set_watchpoint(&env, &w);
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    env.restart_detached(&mut w, &img);
    asleep_in_sigsuspend(&env, &mut w);
    let after = read_debugregs(w.pid);
    assert_eq!(
        after,
        before,
        "dr0-dr3, dr7 after restart (left) differ from before (right){}",
        w.diagnostics()
    );
    env.assert_running_untraced(&mut w, "after reading the debug registers");
    asleep_in_sigsuspend(&env, &mut w);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

// ---------------------------------------------------------------------------
// 9. credentials
// ---------------------------------------------------------------------------

const CRED_FIELDS: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
];

fn cred_lines(pid: i32) -> Vec<(String, Option<String>)> {
    CRED_FIELDS
        .iter()
        .map(|f| ((*f).to_owned(), proc_status_field(pid, f)))
        .collect()
}

fn creds_roundtrip(name: &str, mode: &str, uids: &str) {
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let Some(mut w) = env.start_workload("creds", &[mode]) else {
        return;
    };
    asleep_in_sigsuspend(&env, &mut w);
    let before = cred_lines(w.pid);
    // The workload really dropped everything.
    let field = |lines: &[(String, Option<String>)], f: &str| {
        lines
            .iter()
            .find(|l| l.0 == f)
            .and_then(|l| l.1.clone())
            .unwrap_or_default()
    };
    let ws = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(ws(field(&before, "Uid")), uids, "Uid before: {before:?}");
    assert_eq!(ws(field(&before, "Gid")), uids, "Gid before: {before:?}");
    assert_eq!(ws(field(&before, "Groups")), "100", "Groups before");
    assert_eq!(
        field(&before, "CapEff"),
        "0000000000000000",
        "CapEff before"
    );

    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    env.restart_detached(&mut w, &img);
    asleep_in_sigsuspend(&env, &mut w);
    assert_eq!(
        cred_lines(w.pid),
        before,
        "credentials in /proc/{}/status after restart (left) differ from before (right){}",
        w.pid,
        w.diagnostics()
    );
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// setgroups({100}), setresgid(65534 x3), setresuid(65534 x3) before ready:
/// /proc/PID/status Uid/Gid/Groups/Cap*/NoNewPrivs unchanged after restart;
/// inside, the ids are the same and no privilege came back.
#[test]
fn restore_credentials_nobody() {
    creds_roundtrip(
        "restore_credentials_nobody",
        "same",
        "65534 65534 65534 65534",
    );
}

/// Real, effective and saved ids all different (65534/65533/65532; fs id =
/// effective): each comes back in its place.
#[test]
fn restore_credentials_mixed_ids() {
    creds_roundtrip(
        "restore_credentials_mixed_ids",
        "mixed",
        "65534 65533 65532 65533",
    );
}

// ---------------------------------------------------------------------------
// 10. rseq
// ---------------------------------------------------------------------------

/// glibc's rseq registration in two threads: after restart each thread's
/// area is registered with the kernel again (probe: EBUSY), cpu_id >= 0
/// agrees with getcpu()/sched_getcpu(), and follows the thread when it is
/// pinned to another cpu. Skips loudly without glibc rseq.
#[test]
fn restore_rseq() {
    let Some(env) = TestEnv::new("restore_rseq") else {
        return;
    };
    let Some(mut w) = env.start_workload("rseq", &[]) else {
        return;
    };
    let info = fs::read_to_string(w.result_sibling(".rseq")).unwrap_or_default();
    if !info.starts_with("registered ") {
        skip(&format!("restore_rseq: {}", info.trim()));
        asleep_in_sigsuspend(&env, &mut w);
        env.signal_and_expect_pass(&mut w, libc::SIGTERM);
        return;
    }
    asleep_in_sigsuspend(&env, &mut w);
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    env.restart_detached(&mut w, &img);
    asleep_in_sigsuspend(&env, &mut w);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

// ---------------------------------------------------------------------------
// 11. a process traced by someone else
// ---------------------------------------------------------------------------

/// The counters workload, PTRACE_SEIZEd (and left running) by this test
/// thread: checkpoint fails with a message naming the pid and the tracer
/// (our thread id, as TracerPid shows it), leaves the process as it was
/// (running, still traced by us only); after we detach it PASSes.
#[test]
fn checkpoint_of_traced_process_fails_and_leaves_it_running() {
    let name = "checkpoint_of_traced_process_fails_and_leaves_it_running";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let Some(mut w) = env.start_workload("counters", &[]) else {
        return;
    };
    let tracer = gettid();
    let tracee = Tracee::seize(w.pid).unwrap_or_else(|e| panic!("PTRACE_SEIZE: {e}"));
    assert_eq!(
        proc_status_field(w.pid, "TracerPid"),
        Some(tracer.to_string())
    );
    let img = env.path("img");
    let pid = w.pid.to_string();
    let run = env.checkpoint_must_fail(&mut w, &img, "checkpoint of a traced process");
    let tokens = digit_tokens(&run.stderr);
    assert!(
        tokens.contains(&pid.as_str()) && tokens.contains(&tracer.to_string().as_str()),
        "the error must name pid {pid} and the tracer {tracer}\n{}",
        run.describe()
    );
    assert!(
        !w.proc.has_exited() && matches!(proc_state(w.pid), Some('R' | 'S')),
        "the traced process must be left running: {}{}",
        describe_pid(w.pid),
        w.diagnostics()
    );
    assert_eq!(
        proc_status_field(w.pid, "TracerPid"),
        Some(tracer.to_string()),
        "still traced by us, and only us"
    );
    tracee
        .detach()
        .unwrap_or_else(|e| panic!("PTRACE_DETACH: {e}"));
    env.assert_running_untraced(&mut w, "after the failed checkpoint and our detach");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// threads.c with one thread (the cond waiter) PTRACE_SEIZEd by us: the
/// checkpoint must fail naming the process or thread and the tracer, and
/// leave every thread running untraced by ckpt; after we detach it PASSes.
#[test]
fn checkpoint_with_a_traced_thread_fails_and_leaves_it_running() {
    let name = "checkpoint_with_a_traced_thread_fails_and_leaves_it_running";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let Some(mut w) = env.start_workload("threads", &[]) else {
        return;
    };
    let tids_path = w.result_sibling(".tids");
    let cond_tid: i32 = fs::read_to_string(&tids_path)
        .expect("RESULT.tids")
        .lines()
        .find_map(|l| l.strip_prefix("cond ")?.parse().ok())
        .expect("cond thread in RESULT.tids");
    let tracer = gettid();
    let tracee = Tracee::seize(cond_tid).unwrap_or_else(|e| panic!("PTRACE_SEIZE: {e}"));
    let img = env.path("img");
    let pid = w.pid.to_string();
    let run = env.checkpoint_must_fail(&mut w, &img, "checkpoint with a traced thread");
    let tokens = digit_tokens(&run.stderr);
    let cond = cond_tid.to_string();
    assert!(
        (tokens.contains(&pid.as_str()) || tokens.contains(&cond.as_str()))
            && tokens.contains(&tracer.to_string().as_str()),
        "the error must name pid {pid} (or thread {cond}) and the tracer {tracer}\n{}",
        run.describe()
    );
    for tid in thread_ids(w.pid) {
        let want = if tid == cond_tid {
            tracer.to_string()
        } else {
            "0".to_owned()
        };
        assert_eq!(
            task_status_field(w.pid, tid, "TracerPid"),
            Some(want),
            "thread {tid}: tracer after the failed checkpoint"
        );
        assert!(
            matches!(task_state(w.pid, tid), Some('R' | 'S')),
            "thread {tid} is in state {:?} after the failed checkpoint",
            task_state(w.pid, tid)
        );
    }
    tracee
        .detach()
        .unwrap_or_else(|e| panic!("PTRACE_DETACH: {e}"));
    env.assert_running_untraced(&mut w, "after the failed checkpoint and our detach");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
