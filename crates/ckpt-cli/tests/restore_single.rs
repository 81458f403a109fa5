//! Checkpoint/restart of single-threaded processes: after `ckpt checkpoint`
//! (which kills the process) and `ckpt restart --detach`, the process must
//! carry on with its state intact. See `common/mod.rs` for the protocol and
//! `workloads/*.c` for what each workload holds and verifies.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// What to wait for after "ready" before the checkpoint (or, in control runs,
/// before SIGTERM), and after a restart before SIGTERM.
type Settle = fn(&TestEnv, &mut Workload);

fn nothing(_: &TestEnv, _: &mut Workload) {}

fn asleep_in_nanosleep(env: &TestEnv, w: &mut Workload) {
    env.wait_blocked_in(w, NANOSLEEP_SYSCALLS);
}

fn asleep_in_pause(env: &TestEnv, w: &mut Workload) {
    env.wait_blocked_in(w, PAUSE_SYSCALLS);
}

/// signals.c sleeps with SIGALRM blocked; wait until its interval timer has
/// expired into a pending SIGALRM (so getitimer() reads value 0) and it sleeps.
fn alarm_pending(env: &TestEnv, w: &mut Workload) {
    let pid = w.pid;
    let ok = wait_until(TIMEOUT, || {
        signal_in_mask(pid, "SigBlk", libc::SIGALRM)
            && (signal_in_mask(pid, "ShdPnd", libc::SIGALRM)
                || signal_in_mask(pid, "SigPnd", libc::SIGALRM))
            && current_syscall(pid).is_some_and(|n| NANOSLEEP_SYSCALLS.contains(&n))
    });
    assert!(
        ok,
        "{}: signals never sat in nanosleep with SIGALRM blocked and pending{}",
        env.name,
        w.diagnostics()
    );
}

/// Every workload and argument combination the round-trip tests use.
const WORKLOADS: &[(&str, &[&str], Settle)] = &[
    ("counters", &[], nothing),
    ("counters", &["socketpair"], nothing),
    ("fpu", &[], nothing),
    ("memory", &[], nothing),
    ("files", &[], nothing),
    ("signals", &[], alarm_pending),
    ("sleeper", &["nanosleep"], asleep_in_nanosleep),
    ("sleeper", &["pause"], asleep_in_pause),
];

/// The workloads themselves work: run each without any checkpoint (ready,
/// SIGTERM, PASS, exit 0). Needs no privileges.
#[test]
fn workloads_pass_without_checkpoint() {
    let env = TestEnv::without_root("workloads_pass_without_checkpoint");
    for (name, extra, settle) in WORKLOADS {
        if !env.run_control(name, extra, settle) {
            return;
        }
    }
}

/// The harness's own checks catch what they must (needs no privileges).
#[test]
fn harness_checks_detect_gaps_and_duplicates() {
    let env = TestEnv::without_root("harness_checks_detect_gaps_and_duplicates");
    let f = env.path("seq");
    let check = |content: &str, step| {
        fs::write(&f, content).expect("writing test file");
        check_consecutive(&f, step)
    };
    assert_eq!(check("1\n2\n3\n", 1), Ok(3));
    assert_eq!(check("", 1), Ok(0));
    assert_eq!(check("100000\n200000\n", 100_000), Ok(2));
    assert!(check("1\n2\n4\n", 1).is_err(), "gap");
    assert!(check("1\n2\n2\n3\n", 1).is_err(), "duplicate");
    assert!(check("2\n3\n", 1).is_err(), "missing start");
    assert!(check("1\n2", 1).is_err(), "partial line");
    assert!(
        check("100000\n300000\n", 100_000).is_err(),
        "gap with a step"
    );
    assert_eq!(digit_tokens("pid 1234: fd 77 is a socket"), ["1234", "77"]);
    assert!(!digit_tokens("pid 177").contains(&"77"));
}

/// Heap, stack, TLS and global counters stay equal and keep counting; the
/// 64 MiB heap pattern survives; the O_APPEND log has no gap or duplicate
/// across the checkpoint. Also: `inspect --json` of the image works and
/// mentions the pid, and the restored process demonstrably makes progress.
#[test]
fn restore_counters() {
    let Some(env) = TestEnv::new("restore_counters") else {
        return;
    };
    let Some(mut w) = env.start_workload("counters", &[]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);

    let inspect = env.ckpt([OsStr::new("inspect"), img.as_os_str(), OsStr::new("--json")]);
    assert!(inspect.success(), "inspect failed:\n{}", inspect.describe());
    let json: serde_json::Value = serde_json::from_str(&inspect.stdout)
        .unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}):\n{}", inspect.describe()));
    assert!(
        json_mentions(&json, w.pid),
        "inspect --json does not mention pid {}:\n{}",
        w.pid,
        inspect.describe()
    );

    let log = w.result_sibling(".log");
    let size_at_checkpoint = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    env.restart_detached(&mut w, &img);
    // The restored loop must be running: its log grows (bounded wait on a side effect).
    let grew = wait_until(TIMEOUT, || {
        fs::metadata(&log).map(|m| m.len()).unwrap_or(0) > size_at_checkpoint + 1000
            || w.proc.has_exited()
    });
    assert!(
        grew && !w.proc.has_exited(),
        "restored counters made no progress (log {} stuck at {size_at_checkpoint} bytes){}",
        log.display(),
        w.diagnostics()
    );
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// ymm0-15 (or zmm0-31 + k1-7, or xmm0-15), checked continuously by an asm
/// loop the checkpoint interrupts; x87 round-toward-zero and MXCSR round-up +
/// flush-to-zero still set and still in effect.
#[test]
fn restore_fpu() {
    let Some(env) = TestEnv::new("restore_fpu") else {
        return;
    };
    env.roundtrip("fpu", &[], nothing, nothing);
}

/// Anonymous (touched and never-touched 256 MiB), private file (COW and
/// clean pages), shared file (still shared), read-only and PROT_NONE
/// mappings, brk (and growing it after restore), a 2000-frame-deep stack.
#[test]
fn restore_memory() {
    let Some(env) = TestEnv::new("restore_memory") else {
        return;
    };
    env.roundtrip("memory", &[], nothing, nothing);
}

/// Offsets, shared offsets of dup()ed fds, O_APPEND, an unlinked open file,
/// FD_CLOEXEC, O_NONBLOCK, fd 1000, /dev/{null,zero,urandom}, a directory
/// fd, cwd, umask, and an unchanged set of open fds.
#[test]
fn restore_files() {
    let Some(env) = TestEnv::new("restore_files") else {
        return;
    };
    env.roundtrip("files", &[], nothing, nothing);
}

/// Handlers and flags, sigaltstack, blocked mask, a pending SIGUSR2 with its
/// si_value, three queued SIGRTMIN+1 in order, a 10 ms ITIMER_REAL that keeps
/// firing, RLIMIT_NOFILE. Checkpointed while asleep with SIGALRM blocked and
/// pending (the expired interval timer then reads as value 0 until delivery).
#[test]
fn restore_signals() {
    let Some(env) = TestEnv::new("restore_signals") else {
        return;
    };
    env.roundtrip("signals", &[], alarm_pending, nothing);
}

/// Blocked in one nanosleep(1000 s) at checkpoint time (the harness waits
/// until /proc shows it there): after restore it keeps sleeping and wakes
/// (EINTR) only because of the SIGTERM.
#[test]
fn restore_sleeper_nanosleep() {
    let Some(env) = TestEnv::new("restore_sleeper_nanosleep") else {
        return;
    };
    env.roundtrip(
        "sleeper",
        &["nanosleep"],
        asleep_in_nanosleep,
        asleep_in_nanosleep,
    );
}

/// Blocked in pause() at checkpoint time: same as the nanosleep variant.
#[test]
fn restore_sleeper_pause() {
    let Some(env) = TestEnv::new("restore_sleeper_pause") else {
        return;
    };
    env.roundtrip("sleeper", &["pause"], asleep_in_pause, asleep_in_pause);
}

/// A handled signal pending when a `--leave-running` checkpoint lets the
/// process go interrupts the sleep the checkpoint interrupted (EINTR), as
/// it would have without ckpt; it is not handled and then slept through.
#[test]
fn signal_pending_at_release_interrupts_the_sleep() {
    for mode in ["pause", "nanosleep"] {
        let test = format!("signal_pending_at_release_interrupts_{mode}");
        let Some(env) = TestEnv::new(&test) else {
            return;
        };
        let Some(mut w) = env.start_workload("sleeper", &[mode]) else {
            return;
        };
        if mode == "pause" {
            asleep_in_pause(&env, &mut w);
        } else {
            asleep_in_nanosleep(&env, &mut w);
        }
        let img = env.path("img");
        let pid = w.pid.to_string();
        let sig = libc::SIGTERM.to_string();
        let args = [
            OsStr::new("checkpoint"),
            OsStr::new(&pid),
            OsStr::new("-o"),
            img.as_os_str(),
            OsStr::new("--leave-running"),
        ];
        let run = env.ckpt_with_env(args, &[("CKPT_TEST_SIGNAL_BEFORE_RELEASE", &sig)]);
        assert!(
            run.success(),
            "{test}: checkpoint failed\n{}",
            run.describe()
        );
        // The SIGTERM is already queued: the workload must end by itself.
        let status = w.proc.wait_exit(TIMEOUT);
        assert!(
            status.is_some(),
            "{test}: the sleeper handled SIGTERM but went on sleeping{}",
            w.diagnostics()
        );
        let result = std::fs::read_to_string(w.result_path()).unwrap_or_default();
        assert_eq!(result, "PASS\n", "{test}{}", w.diagnostics());

        // The same for the restored process: its image, restarted with a
        // SIGTERM queued just before it runs.
        let _ = std::fs::remove_file(w.result_path());
        let run = env.ckpt_with_env(
            [
                OsStr::new("restart"),
                img.as_os_str(),
                OsStr::new("--detach"),
            ],
            &[("CKPT_TEST_SIGNAL_BEFORE_RELEASE", &sig)],
        );
        assert!(run.success(), "{test}: restart failed\n{}", run.describe());
        let mut p = Proc::adopt(w.pid).expect("the restored sleeper");
        assert!(
            p.wait_exit(TIMEOUT).is_some(),
            "{test}: the restored sleeper handled SIGTERM but went on sleeping{}",
            w.diagnostics()
        );
        let result = std::fs::read_to_string(w.result_path()).unwrap_or_default();
        assert_eq!(result, "PASS\n", "{test}: restored{}", w.diagnostics());
    }
}

/// Looks `name` up in PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The real python3 executable (python3 in PATH may be a wrapper script that
/// forks, e.g. a pyenv shim).
fn python3() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    p.is_file().then_some(p)
}

/// An unmodified `sleep 1000` survives: same pid, comm "sleep", asleep again,
/// and SIGTERM still ends it.
#[test]
fn restore_sleep_binary() {
    let Some(env) = TestEnv::new("restore_sleep_binary") else {
        return;
    };
    let Some(sleep) = which("sleep") else {
        skip("restore_sleep_binary: no sleep in PATH");
        return;
    };
    // `sleep` cannot report readiness: poll /proc until it has exec'd and sleeps.
    let mut w = env.start_program("sleep", &sleep, &[OsStr::new("1000")], |pid| {
        identity(pid).is_ok_and(|i| i.comm == "sleep")
            && current_syscall(pid).is_some_and(|n| NANOSLEEP_SYSCALLS.contains(&n))
    });
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    env.restart_detached(&mut w, &img);
    assert_eq!(
        identity(w.pid).map(|i| i.comm).ok().as_deref(),
        Some("sleep")
    );
    asleep_in_nanosleep(&env, &mut w);
    w.proc.signal(libc::SIGTERM).expect("SIGTERM");
    assert!(
        w.proc.wait_exit(TIMEOUT).is_some(),
        "restored sleep did not die of SIGTERM within {TIMEOUT:?}{}",
        w.diagnostics()
    );
}

/// Waits (bounded) until `file` has at least `lines` lines; fails if the
/// process exits first.
fn wait_for_lines(env: &TestEnv, w: &mut Workload, file: &Path, lines: usize) {
    let ok = wait_until(TIMEOUT, || {
        count_lines(file) >= lines || w.proc.has_exited()
    });
    assert!(
        ok && !w.proc.has_exited(),
        "{}: {} has {} lines, waited for {lines}{}",
        env.name,
        file.display(),
        count_lines(file),
        w.diagnostics()
    );
}

/// Checkpoint/restart a program that appends a counter line to `out`; the
/// file must read step, 2*step, ... with no gap or duplicate across the
/// checkpoint, and the restored program must add lines.
fn counting_program(
    env: &TestEnv,
    label: &str,
    program: &Path,
    args: &[&OsStr],
    out: &Path,
    step: u64,
) {
    let lines_before = 3;
    let lines_after = 3;
    // These programs cannot report readiness: poll for their first lines.
    let mut w = env.start_program(label, program, args, |_| count_lines(out) >= lines_before);
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let at_checkpoint = count_lines(out);
    env.restart_detached(&mut w, &img);
    wait_for_lines(env, &mut w, out, at_checkpoint + lines_after);
    w.proc.signal(libc::SIGKILL).expect("SIGKILL");
    assert!(
        w.proc.wait_exit(TIMEOUT).is_some(),
        "{label} did not die{}",
        w.diagnostics()
    );
    match check_consecutive(out, step) {
        Ok(n) => assert!(n >= at_checkpoint + lines_after, "{} lines only", n),
        Err(e) => panic!(
            "{}: {e} (checkpoint taken at {at_checkpoint} lines){}",
            env.name,
            w.diagnostics()
        ),
    }
}

/// python3 appending an incrementing counter every 20 ms.
#[test]
fn restore_python_counter() {
    let Some(env) = TestEnv::new("restore_python_counter") else {
        return;
    };
    let Some(python) = python3() else {
        skip("restore_python_counter: python3 missing");
        return;
    };
    let out = env.path("python-counter.txt");
    let code = "import sys, time\n\
                f = open(sys.argv[1], 'a')\n\
                i = 0\n\
                while True:\n    \
                    i += 1\n    \
                    f.write(f'{i}\\n')\n    \
                    f.flush()\n    \
                    time.sleep(0.02)\n";
    let args = [
        OsStr::new("-I"),
        OsStr::new("-c"),
        OsStr::new(code),
        out.as_os_str(),
    ];
    counting_program(&env, "python", &python, &args, &out, 1);
}

/// bash counting with builtins only (no forks), appending every 100000th value.
#[test]
fn restore_bash_loop() {
    let Some(env) = TestEnv::new("restore_bash_loop") else {
        return;
    };
    let Some(bash) = which("bash") else {
        skip("restore_bash_loop: bash missing");
        return;
    };
    let out = env.path("bash-counter.txt");
    let script = "i=0; while :; do i=$((i+1)); \
                  if [ $((i % 100000)) = 0 ]; then echo $i >> \"$1\"; fi; done";
    let args = [
        OsStr::new("-c"),
        OsStr::new(script),
        OsStr::new("bash"),
        out.as_os_str(),
    ];
    counting_program(&env, "bash", &bash, &args, &out, 100_000);
}

/// A process holding an unsupported fd (a unix socket at fd 77): checkpoint
/// must fail with a message naming the pid and the fd, and leave the process
/// running, untraced and intact (it still PASSes its own verification).
#[test]
fn checkpoint_unsupported_fd_fails_and_leaves_process_running() {
    let name = "checkpoint_unsupported_fd_fails_and_leaves_process_running";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let Some(mut w) = env.start_workload("counters", &["socketpair"]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    let run = env.checkpoint_must_fail(&mut w, &img, "checkpoint of a process with a socket");
    let tokens = digit_tokens(&run.stderr);
    assert!(
        tokens.contains(&pid.as_str()) && tokens.contains(&"77"),
        "the error must name pid {pid} and fd 77\n{}",
        run.describe()
    );
    env.assert_running_untraced(&mut w, "after the failed checkpoint");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// Restarting an image whose pid is taken (checkpointed with --leave-running,
/// original still running) must fail clearly, naming the pid, and leave
/// nothing behind: no extra process, the original untouched (it PASSes).
/// Once the pid is free the same image restores fine. (Uses the pause()
/// sleeper, so that this test is only about pids.)
#[test]
fn restart_fails_while_pid_in_use() {
    let Some(env) = TestEnv::new("restart_fails_while_pid_in_use") else {
        return;
    };
    let Some(mut w) = env.start_workload("sleeper", &["pause"]) else {
        return;
    };
    asleep_in_pause(&env, &mut w);
    let img = env.path("img");
    let pid = w.pid.to_string();
    let args = [
        OsStr::new("checkpoint"),
        OsStr::new(&pid),
        OsStr::new("-o"),
        img.as_os_str(),
        OsStr::new("--leave-running"),
    ];
    let run = env.ckpt_reaping(args, Some(&mut w.proc));
    assert!(
        run.success(),
        "checkpoint --leave-running failed\n{}{}",
        run.describe(),
        w.diagnostics()
    );
    env.assert_running_untraced(&mut w, "after checkpoint --leave-running");

    let run = env.ckpt([
        OsStr::new("restart"),
        img.as_os_str(),
        OsStr::new("--detach"),
    ]);
    assert!(
        !run.success(),
        "restart must fail while pid {pid} is in use\n{}",
        run.describe()
    );
    assert!(
        digit_tokens(&run.stderr).contains(&pid.as_str()),
        "the error must name the pid {pid}\n{}",
        run.describe()
    );
    env.assert_running_untraced(&mut w, "after the failed restart");
    assert_eq!(
        identity(w.pid).ok().as_ref(),
        Some(&w.identity),
        "original changed"
    );
    let mut others = env.own_processes();
    others.retain(|&p| p != w.pid);
    assert!(
        others.is_empty(),
        "the failed restart left processes behind: {:?}",
        others.iter().map(|&p| describe_pid(p)).collect::<Vec<_>>()
    );
    // The original, checkpointed while running, is intact (and still asleep).
    asleep_in_pause(&env, &mut w);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);

    // The pid is free now (we reaped the original): the image restores.
    fs::remove_file(w.result_path()).expect("removing the original's result");
    env.restart_detached(&mut w, &img);
    asleep_in_pause(&env, &mut w);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// Checkpoint does not wait for its killed process to be reaped (its
/// parent's business); restart waits a bounded time for a pid still held by
/// a zombie, and names the parent that keeps it when that runs out.
#[test]
fn restart_waits_for_the_checkpointed_zombie_to_be_reaped() {
    let Some(env) = TestEnv::new("restart_waits_for_the_checkpointed_zombie_to_be_reaped") else {
        return;
    };
    let Some(mut w) = env.start_workload("sleeper", &["pause"]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    // We are the parent and do not reap it yet.
    let run = env.ckpt([
        OsStr::new("checkpoint"),
        OsStr::new(&pid),
        OsStr::new("-o"),
        img.as_os_str(),
    ]);
    assert!(run.success(), "checkpoint failed:\n{}", run.describe());
    // Checkpoint returns once its tree is killed, not once it has exited:
    // under load the task may still be tearing down its memory ('R').
    wait_until(TIMEOUT, || proc_ids(w.pid).map(|p| p.state) == Some('Z'));
    assert_eq!(
        proc_ids(w.pid).map(|p| p.state),
        Some('Z'),
        "the checkpointed process should be our unreaped zombie"
    );
    let restart = [
        OsStr::new("restart"),
        img.as_os_str(),
        OsStr::new("--detach"),
    ];
    let refused = env.ckpt(restart);
    assert!(
        !refused.success(),
        "restart over an unreaped zombie must fail"
    );
    assert!(
        refused.stderr.contains("zombie") && refused.stderr.contains("has not reaped"),
        "the refusal should say a zombie holds the pid and who must reap it:\n{}",
        refused.describe()
    );
    // Reaped while a restart waits: that restart goes ahead.
    let mut c = env.spawn_ckpt(restart);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(w.proc.wait_exit(TIMEOUT).is_some(), "reap the zombie");
    let run = c.wait(CKPT_TIMEOUT).expect("ckpt restart exits");
    assert!(run.success(), "restart failed:\n{}", run.describe());
    w.proc = Proc::adopt(w.pid).expect("restored pid");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A reader of `checkpoint -o -` that goes away mid-image, while the pages
/// are being written: the checkpoint fails and the process carries on
/// unharmed (no SIGPIPE of the broken pipe may reach it).
#[test]
fn reader_gone_mid_stream_leaves_the_process_unharmed() {
    use std::io::Read;
    let Some(env) = TestEnv::new("reader_gone_mid_stream_leaves_the_process_unharmed") else {
        return;
    };
    let Some(mut w) = env.start_workload("memory", &[]) else {
        return;
    };
    let mut ck = spawn_checkpoint_to_pipe(w.pid);
    let mut out = ck.stdout.take().expect("stdout");
    // Past the metadata, into the pages, then gone.
    let mut buf = vec![0u8; 512 << 10];
    let mut got = 0;
    while got < buf.len() {
        match out.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    drop(out);
    let status = wait_child(&mut ck);
    assert!(
        !status.success(),
        "the checkpoint cannot have succeeded without its reader"
    );
    env.assert_running_untraced(&mut w, "after the reader went away");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A process under a small RLIMIT_FSIZE of its own could not write its
/// pages into the image itself (EFBIG, and a SIGXFSZ): ckpt writes them,
/// and the process comes back whole, limit included.
#[test]
fn small_file_size_limit_of_the_process_does_not_stop_its_checkpoint() {
    let Some(env) =
        TestEnv::new("small_file_size_limit_of_the_process_does_not_stop_its_checkpoint")
    else {
        return;
    };
    env.roundtrip(
        "memory",
        &[],
        |_, w| {
            let lim = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            // SAFETY: prlimit on our workload with a valid new limit, no old one asked.
            let r = unsafe { libc::prlimit(w.pid, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
            assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
        },
        |_, w| {
            let limits = std::fs::read_to_string(format!("/proc/{}/limits", w.pid)).unwrap();
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max file size"))
                .unwrap();
            assert!(line.contains("65536"), "RLIMIT_FSIZE not restored: {line}");
        },
    );
}
