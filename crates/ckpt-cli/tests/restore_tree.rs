//! Checkpoint/restart of multi-threaded processes and process trees: every
//! thread and process comes back with its ids, parent links, session and
//! group; pipes keep their bytes in flight; shared memory and shared file
//! offsets stay shared; `ckpt restart` without --detach forwards signals and
//! exit codes; `--freeze-cgroup` catches a tree that forks all the time.
//! See `common/mod.rs` for the protocol and `workloads/*.c` for what each
//! workload holds and verifies.
//!
//! The round trips need root; without it they print `SKIP: ...` and pass.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Waits (bounded) until process `pid` of workload `w` sleeps in one of
/// `syscalls`; `what` names it in the failure message.
fn wait_proc_blocked(env: &TestEnv, w: &mut Workload, pid: i32, syscalls: &[i64], what: &str) {
    let ok = wait_until(TIMEOUT, || {
        w.proc.has_exited()
            || (proc_state(pid) == Some('S')
                && current_syscall(pid).is_some_and(|n| syscalls.contains(&n)))
    });
    assert!(
        ok && !w.proc.has_exited(),
        "{}: {what} (pid {pid}) is not asleep in one of syscalls {syscalls:?}: {}, syscall {:?}{}",
        env.name,
        describe_pid(pid),
        current_syscall(pid),
        w.diagnostics()
    );
}

/// Waits (bounded) until thread `tid` of `w` sleeps in one of `syscalls`.
fn wait_thread_blocked(env: &TestEnv, w: &mut Workload, tid: i32, syscalls: &[i64], what: &str) {
    let pid = w.pid;
    let ok = wait_until(TIMEOUT, || {
        w.proc.has_exited()
            || (task_state(pid, tid) == Some('S')
                && task_syscall(pid, tid).is_some_and(|n| syscalls.contains(&n)))
    });
    assert!(
        ok && !w.proc.has_exited(),
        "{}: thread {what} ({tid}) of {pid} is not asleep in one of syscalls {syscalls:?}: \
         state {:?}, syscall {:?}{}",
        env.name,
        task_state(pid, tid),
        task_syscall(pid, tid),
        w.diagnostics()
    );
}

/// The whitespace-separated numbers of a file the workload wrote.
fn read_numbers(path: &Path) -> Vec<i32> {
    let s = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    s.split_whitespace()
        .map(|t| {
            t.parse()
                .unwrap_or_else(|e| panic!("{}: {t:?}: {e}", path.display()))
        })
        .collect()
}

fn ids_of(env: &TestEnv, w: &Workload, pids: &[i32]) -> Vec<ProcIds> {
    pids.iter()
        .map(|&p| {
            proc_ids(p)
                .unwrap_or_else(|| panic!("{}: pid {p} vanished{}", env.name, w.diagnostics()))
        })
        .collect()
}

/// The workloads of this file work without any checkpoint (needs no root).
#[test]
fn tree_workloads_pass_without_checkpoint() {
    let env = TestEnv::without_root("tree_workloads_pass_without_checkpoint");
    let none = |_: &TestEnv, _: &mut Workload| {};
    for (name, extra) in [
        ("threads", &[][..]),
        ("tree", &[]),
        ("shm", &[]),
        ("forker", &[]),
        ("exiter", &["15", "0"]),
        ("orphans", &[]),
    ] {
        if !env.run_control(name, extra, none) {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// 1. threads
// ---------------------------------------------------------------------------

/// `ROLE TID` lines of threads.c's RESULT.tids.
fn thread_roles(w: &Workload) -> Vec<(String, i32)> {
    let path = w.result_sibling(".tids");
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| {
            let (role, tid) = l.split_once(' ').expect("ROLE TID");
            (role.to_owned(), tid.parse().expect("tid"))
        })
        .collect()
}

/// Main in sigsuspend, cond/joiner/mutex in futex waits: before the
/// checkpoint, and again after the restore.
fn threads_parked(env: &TestEnv, w: &mut Workload, roles: &[(String, i32)]) {
    for (role, tid) in roles {
        match role.as_str() {
            "main" => wait_thread_blocked(env, w, *tid, &[libc::SYS_rt_sigsuspend], role),
            "cond" | "joiner" | "mutex" => {
                wait_thread_blocked(env, w, *tid, &[libc::SYS_futex], role)
            }
            _ => {}
        }
    }
}

/// Eight threads (four TLS counters, one in pthread_cond_wait, one in
/// pthread_join, one on a held mutex, main in sigsuspend): same tids (from
/// outside: /proc/PID/task), the parked threads parked again in the same
/// syscalls, the same per-thread blocked-signal masks; inside (threads.c):
/// tids, TLS addresses and counters continuing and matching their global
/// mirrors, signal masks, the cond thread waking, joins completing.
#[test]
fn restore_threads() {
    let Some(env) = TestEnv::new("restore_threads") else {
        return;
    };
    let Some(mut w) = env.start_workload("threads", &[]) else {
        return;
    };
    let roles = thread_roles(&w);
    let mut tids: Vec<i32> = roles.iter().map(|r| r.1).collect();
    tids.sort_unstable();
    assert_eq!(roles.len(), 8, "threads.c lists 8 threads");
    assert_eq!(roles[0], ("main".to_owned(), w.pid), "main thread first");
    assert_eq!(
        thread_ids(w.pid),
        tids,
        "/proc/{}/task does not match RESULT.tids",
        w.pid
    );
    threads_parked(&env, &mut w, &roles);
    let masks = |pid: i32| -> Vec<Option<String>> {
        roles
            .iter()
            .map(|(_, tid)| task_status_field(pid, *tid, "SigBlk"))
            .collect()
    };
    let masks_before = masks(w.pid);

    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &tids);
    env.restart_detached(&mut w, &img);
    assert_eq!(
        thread_ids(w.pid),
        tids,
        "restored process has other threads (left: now, right: before){}",
        w.diagnostics()
    );
    threads_parked(&env, &mut w, &roles);
    assert_eq!(
        masks(w.pid),
        masks_before,
        "per-thread SigBlk differs after restore (threads: {roles:?}){}",
        w.diagnostics()
    );
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

// ---------------------------------------------------------------------------
// 2. tree: session, group, pipe in flight, zombie
// ---------------------------------------------------------------------------

/// tree.c's pids: [R, A, G, Z].
fn tree_pids(env: &TestEnv, w: &Workload) -> [i32; 4] {
    let v = read_numbers(&w.result_sibling(".pids"));
    let pids: [i32; 4] = v
        .try_into()
        .unwrap_or_else(|v| panic!("{}: RESULT.pids holds {v:?}", env.name));
    assert_eq!(pids[0], w.pid, "R is the workload itself");
    pids
}

/// R asleep in sigsuspend, A in wait4(G), G in write() on the full pipe, Z a zombie.
fn tree_settled(env: &TestEnv, w: &mut Workload, pids: &[i32; 4]) {
    let [r, a, g, z] = *pids;
    wait_proc_blocked(env, w, r, &[libc::SYS_rt_sigsuspend], "R");
    wait_proc_blocked(env, w, a, &[libc::SYS_wait4], "A");
    wait_proc_blocked(env, w, g, &[libc::SYS_write], "G (pipe full)");
    assert_eq!(
        proc_state(z),
        Some('Z'),
        "{}: Z ({z}) is not a zombie{}",
        env.name,
        w.diagnostics()
    );
}

/// Starts tree.c and checks the tree is as designed, from outside: R leads
/// its session and group, A leads its own group in R's session, G is A's
/// child in A's group, Z a zombie child of R; nothing else.
fn start_tree(env: &TestEnv, extra: &[&str]) -> Option<(Workload, [i32; 4], Vec<ProcIds>)> {
    let mut w = env.start_workload("tree", extra)?;
    let pids = tree_pids(env, &w);
    tree_settled(env, &mut w, &pids);
    let [r, a, _, _] = pids;
    let mut tree = process_tree(r);
    tree.sort_unstable();
    let mut want = pids.to_vec();
    want.sort_unstable();
    assert_eq!(tree, want, "{}: the tree under R is not R A G Z", env.name);
    let ids = ids_of(env, &w, &pids);
    let got: Vec<(i32, i32, i32)> = ids.iter().map(|i| (i.ppid, i.pgid, i.sid)).collect();
    let r_ppid = ids[0].ppid;
    assert_eq!(
        got,
        [(r_ppid, r, r), (r, a, r), (a, a, r), (r, r, r)],
        "{}: (ppid, pgid, sid) of R A G Z ({pids:?}) not as designed",
        env.name
    );
    Some((w, pids, ids))
}

/// The image holds the four processes, root first, with their ids; Z as a
/// zombie whose wait status is "exited 7".
fn check_tree_image(env: &TestEnv, img: &Path, before: &[ProcIds]) {
    let procs = env.image_processes(img);
    let mut got: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    got.sort_unstable();
    let mut want: Vec<i32> = before.iter().map(|b| b.pid).collect();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "{}: processes in the image: {procs:#?}",
        env.name
    );
    assert_eq!(procs[0].pid, before[0].pid, "the image's root comes first");
    for b in before {
        let p = procs.iter().find(|p| p.pid == b.pid).expect("listed");
        assert_eq!(
            (p.pgid, p.sid, p.zombie),
            (b.pgid, b.sid, b.state == 'Z'),
            "{}: image record {p:?} vs process before {b:?}",
            env.name
        );
        if b.pid != before[0].pid {
            assert_eq!(p.ppid, b.ppid, "{}: image record {p:?}", env.name);
        }
        if p.zombie {
            assert_eq!(
                p.exit_status,
                7 << 8,
                "{}: zombie {} should carry wait status 0x700 (exit 7): {p:?}",
                env.name,
                p.pid
            );
        }
    }
}

/// R (session leader) -> Z (zombie, exit 7), A (own group) -> G, with a
/// 64 KiB full pipe G -> R: after checkpoint every pid (zombie too) is free;
/// after restart the same pids with the same parents, groups, sessions and
/// states, each blocked where it was (R sigsuspend, A wait4, G write); then
/// tree.c checks getsid/getpgid/ppid of all, the pipe's bytes in flight and
/// the stream continuing with no gap or duplicate, G alive, G and A verifying
/// themselves and exiting 0, waitpid(Z) = exit 7.
#[test]
fn restore_tree() {
    let Some(env) = TestEnv::new("restore_tree") else {
        return;
    };
    let Some((mut w, pids, before)) = start_tree(&env, &[]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &pids);
    check_tree_image(&env, &img, &before);
    env.restart_detached(&mut w, &img);
    env.assert_tree_restored(&w, &before);
    tree_settled(&env, &mut w, &pids);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    let gone = wait_until(TIMEOUT, || pids.iter().all(|&p| !pid_exists(p)));
    assert!(gone, "{}: the tree did not go away after PASS", env.name);
}

/// tree.c with G PTRACE_SEIZEd (and left running) by this test thread: the
/// checkpoint fails with a message naming G and the tracer; R and A, frozen
/// before ckpt reached G, are released as they were (untraced, asleep in
/// the same syscalls), G is still traced by us only; after we detach, the
/// tree PASSes (pipe stream intact, ids, zombie).
#[test]
fn checkpoint_of_tree_with_traced_member_fails_and_leaves_it_running() {
    let name = "checkpoint_of_tree_with_traced_member_fails_and_leaves_it_running";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let Some((mut w, pids, before)) = start_tree(&env, &[]) else {
        return;
    };
    let g = pids[2];
    let tracer = gettid();
    let tracee = Tracee::seize(g).unwrap_or_else(|e| panic!("PTRACE_SEIZE {g}: {e}"));
    let img = env.path("img");
    let run = env.checkpoint_must_fail(&mut w, &img, "checkpoint of a tree with a traced member");
    let tokens = digit_tokens(&run.stderr);
    assert!(
        tokens.contains(&g.to_string().as_str()) && tokens.contains(&tracer.to_string().as_str()),
        "the error must name the traced pid {g} and its tracer {tracer}\n{}",
        run.describe()
    );
    for &p in &pids[..2] {
        assert_eq!(
            proc_status_field(p, "TracerPid").as_deref(),
            Some("0"),
            "{}: pid {p} still traced after the failed checkpoint",
            env.name
        );
    }
    assert_eq!(
        proc_status_field(g, "TracerPid"),
        Some(tracer.to_string()),
        "G is still traced by us, and only us"
    );
    tracee
        .detach()
        .unwrap_or_else(|e| panic!("PTRACE_DETACH {g}: {e}"));
    env.assert_tree_restored(&w, &before);
    tree_settled(&env, &mut w, &pids);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

// ---------------------------------------------------------------------------
// 3. a shell pipeline
// ---------------------------------------------------------------------------

/// Looks `name` up in PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `sh -c 'i=0; while :; do i=$((i+1)); echo $i; done | cat > FILE'`: the
/// shell, the producer subshell and cat come back with their pids and links,
/// and FILE continues with no gap or duplicate (bytes in the pipe at
/// checkpoint time are neither lost nor repeated).
#[test]
fn restore_shell_pipeline() {
    let Some(env) = TestEnv::new("restore_shell_pipeline") else {
        return;
    };
    let (Some(sh), Some(_)) = (which("sh"), which("cat")) else {
        skip("restore_shell_pipeline: sh or cat missing");
        return;
    };
    let out = env.path("pipeline.txt");
    let script = "i=0; while :; do i=$((i+1)); echo $i; done | cat > \"$1\"";
    let args = [
        OsStr::new("-c"),
        OsStr::new(script),
        OsStr::new("sh"),
        out.as_os_str(),
    ];
    let mut w = env.start_program("pipeline", &sh, &args, |pid| {
        let tree = process_tree(pid);
        tree.len() == 3
            && tree
                .iter()
                .any(|&p| identity(p).is_ok_and(|i| i.comm == "cat"))
            && count_lines(&out) >= 1000
    });
    let tree = process_tree(w.pid);
    let before = ids_of(&env, &w, &tree);
    let comms: Vec<String> = tree
        .iter()
        .map(|&p| identity(p).map(|i| i.comm).unwrap_or_default())
        .collect();

    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &tree);
    let at_checkpoint = count_lines(&out);
    env.restart_detached(&mut w, &img);
    env.assert_tree_restored(&w, &before);
    let comms_now: Vec<String> = tree
        .iter()
        .map(|&p| identity(p).map(|i| i.comm).unwrap_or_default())
        .collect();
    assert_eq!(
        comms_now, comms,
        "{}: commands of the tree changed",
        env.name
    );

    let want = at_checkpoint + 20_000;
    let grew = wait_until(TIMEOUT, || count_lines(&out) >= want || w.proc.has_exited());
    assert!(
        grew && !w.proc.has_exited(),
        "{}: {} stuck at {} lines (checkpoint at {at_checkpoint}){}",
        env.name,
        out.display(),
        count_lines(&out),
        w.diagnostics()
    );
    // The whole group: the shell leads it, the others are in it.
    kill(-w.pid, libc::SIGKILL).expect("killing the pipeline's process group");
    let gone = wait_until(TIMEOUT, || tree.iter().all(|&p| !pid_exists(p)));
    assert!(gone, "{}: the pipeline did not die", env.name);
    assert!(w.proc.wait_exit(TIMEOUT).is_some());
    match check_consecutive(&out, 1) {
        Ok(n) => assert!(n >= want, "{n} lines only"),
        Err(e) => panic!(
            "{}: {e} (checkpoint taken at {at_checkpoint} lines){}",
            env.name,
            w.diagnostics()
        ),
    }
}

// ---------------------------------------------------------------------------
// 4. shared memory and shared file offsets
// ---------------------------------------------------------------------------

/// (start, end, inode) of every shared mapping of `pid`, with its path.
fn shared_mappings(pid: i32) -> Vec<(String, String)> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let perms = f.get(1)?;
            if !perms.ends_with('s') {
                return None;
            }
            let path = f.get(5..).map(|p| p.join(" ")).unwrap_or_default();
            Some((format!("{} {}", f[0], f.get(4)?), path))
        })
        .collect()
}

/// A parent and child sharing a MAP_SHARED|MAP_ANONYMOUS region, a memfd
/// mapping (fd open in the parent only) and one open file description:
/// from outside, both processes map the same objects (same address and
/// inode) before and after; inside (shm.c), writes by either process are
/// seen by the other, a pwrite through the memfd fd shows in both mappings,
/// and a read by the child moves the offset the parent sees.
#[test]
fn restore_shared_memory() {
    let Some(env) = TestEnv::new("restore_shared_memory") else {
        return;
    };
    let Some(mut w) = env.start_workload("shm", &[]) else {
        return;
    };
    let pids = read_numbers(&w.result_sibling(".pids"));
    assert_eq!(pids.len(), 2);
    let (parent, child) = (pids[0], pids[1]);
    assert_eq!(parent, w.pid);
    let mut tree = process_tree(parent);
    tree.sort_unstable();
    let mut want = pids.clone();
    want.sort_unstable();
    assert_eq!(tree, want, "{}: tree is not parent + child", env.name);
    wait_proc_blocked(&env, &mut w, parent, &[libc::SYS_rt_sigsuspend], "parent");
    wait_proc_blocked(&env, &mut w, child, NANOSLEEP_SYSCALLS, "child");
    let same_objects = |when: &str| {
        let (p, c) = (shared_mappings(parent), shared_mappings(child));
        assert!(
            p.len() >= 2,
            "{}: {when}: parent has {} shared mappings: {p:?}",
            env.name,
            p.len()
        );
        let key = |v: &[(String, String)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(
            key(&p),
            key(&c),
            "{}: {when}: parent and child map different shared objects\nparent: {p:#?}\nchild: {c:#?}",
            env.name
        );
        p
    };
    let maps_before = same_objects("before checkpoint");
    let before = ids_of(&env, &w, &pids);

    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &pids);
    env.restart_detached(&mut w, &img);
    env.assert_tree_restored(&w, &before);
    let maps_after = same_objects("after restore");
    if maps_after != maps_before {
        // Not a failure by itself (the objects are still shared), but worth seeing.
        eprintln!(
            "note: restore_shared_memory: shared mappings look different after restore\n\
             before: {maps_before:#?}\nafter: {maps_after:#?}"
        );
    }
    wait_proc_blocked(&env, &mut w, parent, &[libc::SYS_rt_sigsuspend], "parent");
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// (range, path) of every shared mapping of `pid` (the inode of a restored
/// object is new, so it is left out).
fn shared_mapping_names(pid: i32) -> Vec<(String, String)> {
    shared_mappings(pid)
        .into_iter()
        .map(|(k, path)| (k.split(' ').next().unwrap_or("").to_owned(), path))
        .collect()
}

/// What the restored processes show of their shared objects is what the
/// originals showed: the memfd fd's link (`/memfd:NAME (deleted)`), and in
/// /proc/PID/maps of both processes the memfd mapping's name and the shared
/// anonymous mapping as `/dev/zero (deleted)`. (A program may look at these,
/// and a name that changes on every restart grows with every cycle.)
#[test]
fn restore_keeps_shared_memory_names() {
    let Some(env) = TestEnv::new("restore_keeps_shared_memory_names") else {
        return;
    };
    let Some(mut w) = env.start_workload("shm", &[]) else {
        return;
    };
    let pids = read_numbers(&w.result_sibling(".pids"));
    let fd_link = |pid: i32| fs::read_link(format!("/proc/{pid}/fd/50")).ok();
    let names = |pids: &[i32]| -> Vec<Vec<(String, String)>> {
        pids.iter().map(|&p| shared_mapping_names(p)).collect()
    };
    let link_before = fd_link(w.pid);
    assert_eq!(
        link_before.as_deref(),
        Some(Path::new("/memfd:ckpt-test-shm (deleted)")),
        "shm.c's memfd at fd 50"
    );
    let names_before = names(&pids);
    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &pids);
    env.restart_detached(&mut w, &img);
    let mut diffs = Vec::new();
    let link_after = fd_link(w.pid);
    if link_after != link_before {
        diffs.push(format!(
            "fd 50 links to {link_after:?}, was {link_before:?}"
        ));
    }
    let names_after = names(&pids);
    for ((pid, b), a) in pids.iter().zip(&names_before).zip(&names_after) {
        if a != b {
            diffs.push(format!(
                "pid {pid}: shared mappings are now {a:?}, were {b:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{}: shared objects look different after restore: {diffs:#?}{}",
        env.name,
        w.diagnostics()
    );
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

// ---------------------------------------------------------------------------
// 5. restart without --detach
// ---------------------------------------------------------------------------

/// `ckpt restart IMG` as our child; returns once the restored root runs on
/// its own (its identity is the original's, it is not traced or stopped) and
/// ckpt waits for it (asleep in wait4, so its signal forwarding is set up).
fn restart_attached(env: &TestEnv, w: &mut Workload, img: &Path) -> CkptChild {
    let mut ckpt = env.spawn_ckpt([OsStr::new("restart"), img.as_os_str()]);
    let pid = w.pid;
    let ckpt_pid = ckpt.proc.pid;
    let running = wait_until(CKPT_TIMEOUT, || {
        ckpt.proc.has_exited()
            || (identity(pid).ok().as_ref() == Some(&w.identity)
                && proc_status_field(pid, "TracerPid").as_deref() == Some("0")
                && matches!(proc_state(pid), Some('R' | 'S' | 'D'))
                && proc_state(ckpt_pid) == Some('S')
                && current_syscall(ckpt_pid) == Some(libc::SYS_wait4))
    });
    if !running || ckpt.proc.has_exited() {
        let run = ckpt.wait(Duration::ZERO);
        panic!(
            "{}: `ckpt restart` (attached) did not get pid {pid} running: ckpt {}, {}\n{}{}",
            env.name,
            describe_pid(ckpt_pid),
            describe_pid(pid),
            run.map(|r| r.describe())
                .unwrap_or_else(|| ckpt.stderr_so_far()),
            w.diagnostics()
        );
    }
    w.proc = Proc::adopt(pid).unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
    assert_eq!(
        proc_ids(pid).map(|i| i.ppid),
        Some(ckpt_pid),
        "{}: without --detach the restored root should be ckpt's child",
        env.name
    );
    ckpt
}

/// Sends `sig` to ckpt and expects it to exit with `code` once the
/// workload has written PASS.
fn signal_ckpt_expect(env: &TestEnv, w: &mut Workload, ckpt: &mut CkptChild, sig: i32, code: i32) {
    ckpt.proc
        .signal(sig)
        .unwrap_or_else(|e| panic!("signal {sig} to ckpt: {e}"));
    let Some(run) = ckpt.wait(TIMEOUT) else {
        panic!(
            "{}: ckpt did not exit within {TIMEOUT:?} of signal {sig} ({}){}",
            env.name,
            describe_pid(w.pid),
            w.diagnostics()
        );
    };
    let result = fs::read_to_string(w.result_path()).unwrap_or_else(|e| format!("<{e}>"));
    assert_eq!(
        result,
        "PASS\n",
        "{}: workload did not pass\n{}{}",
        env.name,
        run.describe(),
        w.diagnostics()
    );
    assert_eq!(
        run.status.code(),
        Some(code),
        "{}: ckpt should exit with the restored root's exit code {code}\n{}{}",
        env.name,
        run.describe(),
        w.diagnostics()
    );
    assert!(
        w.proc.wait_exit(TIMEOUT).is_some(),
        "{}: root still there",
        env.name
    );
}

/// `ckpt restart IMG` (no --detach) of the tree: ckpt is the restored root's
/// parent; SIGTERM to ckpt is forwarded, the tree verifies itself (PASS,
/// exit 0) and ckpt exits 0.
#[test]
fn restart_attached_forwards_sigterm() {
    let Some(env) = TestEnv::new("restart_attached_forwards_sigterm") else {
        return;
    };
    let Some((mut w, pids, before)) = start_tree(&env, &[]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &pids);
    let mut ckpt = restart_attached(&env, &mut w, &img);
    env.assert_tree_restored(&w, &before);
    tree_settled(&env, &mut w, &pids);
    signal_ckpt_expect(&env, &mut w, &mut ckpt, libc::SIGTERM, 0);
}

/// Same, with the tree exiting 3 after PASS: ckpt exits 3.
#[test]
fn restart_attached_passes_exit_code() {
    let Some(env) = TestEnv::new("restart_attached_passes_exit_code") else {
        return;
    };
    let Some((mut w, pids, before)) = start_tree(&env, &["3"]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, &pids);
    let mut ckpt = restart_attached(&env, &mut w, &img);
    env.assert_tree_restored(&w, &before);
    tree_settled(&env, &mut w, &pids);
    signal_ckpt_expect(&env, &mut w, &mut ckpt, libc::SIGTERM, 3);
}

/// SIGINT, SIGHUP and SIGQUIT sent to an attached `ckpt restart` reach the
/// restored process (exactly that signal, once), and its exit code (4, 5, 6)
/// is ckpt's.
#[test]
fn restart_attached_forwards_other_signals() {
    let Some(env) = TestEnv::new("restart_attached_forwards_other_signals") else {
        return;
    };
    for (sig, code) in [(libc::SIGINT, 4), (libc::SIGHUP, 5), (libc::SIGQUIT, 6)] {
        let (s, c) = (sig.to_string(), code.to_string());
        let Some(mut w) = env.start_workload("exiter", &[&s, &c]) else {
            return;
        };
        env.wait_blocked_in(&mut w, &[libc::SYS_rt_sigsuspend]);
        let img = env.path(&format!("img-{sig}"));
        env.checkpoint_and_kill(&mut w, &img);
        let mut ckpt = restart_attached(&env, &mut w, &img);
        env.wait_blocked_in(&mut w, &[libc::SYS_rt_sigsuspend]);
        signal_ckpt_expect(&env, &mut w, &mut ckpt, sig, code);
    }
}

/// Whether `root` runs on its own as the restored `exe`: untraced, not
/// stopped (before the restore it is a traced copy of ckpt).
fn runs_untraced_as(root: i32, exe: &Path) -> bool {
    proc_status_field(root, "TracerPid").as_deref() == Some("0")
        && matches!(proc_state(root), Some('R' | 'S' | 'D'))
        && fs::read_link(format!("/proc/{root}/exe")).ok().as_deref() == Some(exe)
}

/// SIGTERM reaching an attached `ckpt restart` at any moment after the
/// restored root runs on its own must be forwarded: the workload PASSes
/// and ckpt exits 0. The earliest such moment is made to happen for sure:
/// this test traces ckpt itself, stops it at every syscall boundary, and at
/// the first one where the root already runs untraced, sends ckpt SIGTERM
/// and lets it go (the scheduler can delay ckpt there just as well). A ckpt
/// that installs its forwarding only afterwards dies of the signal, and the
/// restored process runs on without ever getting it.
#[test]
fn restart_attached_forwards_sigterm_sent_right_after_release() {
    let name = "restart_attached_forwards_sigterm_sent_right_after_release";
    let Some(env) = TestEnv::new(name) else {
        return;
    };
    let Some(mut w) = env.start_workload("exiter", &["15", "0"]) else {
        return;
    };
    env.wait_blocked_in(&mut w, &[libc::SYS_rt_sigsuspend]);
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let root = w.pid;
    let exe = w.identity.exe.clone();

    let mut ckpt = env.spawn_ckpt([OsStr::new("restart"), img.as_os_str()]);
    let ckpt_pid = ckpt.proc.pid;
    let mut t = Tracee::seize_with(ckpt_pid, libc::PTRACE_O_TRACESYSGOOD)
        .unwrap_or_else(|e| panic!("PTRACE_SEIZE of ckpt {ckpt_pid}: {e}"));
    t.stop().unwrap_or_else(|e| panic!("stopping ckpt: {e}"));
    assert!(
        !runs_untraced_as(root, &exe),
        "{}: the root already ran before ckpt could be traced; cannot test",
        env.name
    );
    let mut sig = 0;
    let mut stops = 0u64;
    let at = loop {
        let st = t
            .syscall_step(sig)
            .unwrap_or_else(|e| panic!("{}: tracing ckpt: {e}", env.name));
        sig = 0;
        if !libc::WIFSTOPPED(st) {
            panic!(
                "{}: ckpt ended (status {st:#x}) before the root ran untraced\n{}{}",
                env.name,
                ckpt.stderr_so_far(),
                w.diagnostics()
            );
        }
        stops += 1;
        let stopsig = libc::WSTOPSIG(st);
        if stopsig == (libc::SIGTRAP | 0x80) {
            if runs_untraced_as(root, &exe) {
                break fs::read_to_string(format!("/proc/{ckpt_pid}/syscall")).unwrap_or_default();
            }
        } else if st >> 16 == 0 {
            sig = stopsig; // a signal for ckpt (e.g. SIGCHLD): pass it on
        }
    };
    eprintln!(
        "{}: root {root} runs untraced at ckpt's syscall stop #{stops} (syscall {}); sending \
         SIGTERM",
        env.name,
        at.split_whitespace().next().unwrap_or("?")
    );
    ckpt.proc.signal(libc::SIGTERM).expect("SIGTERM to ckpt");
    t.detach()
        .unwrap_or_else(|e| panic!("detaching from ckpt: {e}"));

    let run = ckpt
        .wait(TIMEOUT)
        .unwrap_or_else(|| panic!("{}: ckpt did not exit after SIGTERM", env.name));
    if run.status.signal() == Some(libc::SIGTERM) {
        std::thread::sleep(Duration::from_millis(100));
        panic!(
            "{}: ckpt died of the SIGTERM instead of forwarding it; the restored process did \
             not get it and runs on without ckpt ({}; result file: {:?})\n{}",
            env.name,
            describe_pid(root),
            fs::read_to_string(w.result_path()).ok(),
            run.describe()
        );
    }
    assert_eq!(
        (run.status.code(), fs::read_to_string(w.result_path()).ok()),
        (Some(0), Some("PASS\n".to_owned())),
        "{}\n{}{}",
        env.name,
        run.describe(),
        w.diagnostics()
    );
}

/// The restored root killed by SIGKILL: the attached ckpt exits 128 + 9.
#[test]
fn restart_attached_reports_death_by_signal() {
    let Some(env) = TestEnv::new("restart_attached_reports_death_by_signal") else {
        return;
    };
    let Some(mut w) = env.start_workload("exiter", &["15", "0"]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let mut ckpt = restart_attached(&env, &mut w, &img);
    w.proc.signal(libc::SIGKILL).expect("SIGKILL to the root");
    let run = ckpt
        .wait(TIMEOUT)
        .unwrap_or_else(|| panic!("{}: ckpt did not exit after its child died", env.name));
    assert_eq!(
        run.status.code(),
        Some(128 + libc::SIGKILL),
        "{}: ckpt should exit 137 when the root dies of SIGKILL\n{}",
        env.name,
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// 6. --freeze-cgroup
// ---------------------------------------------------------------------------

/// forker.c (forking short-lived children all the time) in `cg` from the
/// start: `checkpoint --freeze-cgroup` succeeds, leaves the cgroup thawed,
/// frees every pid of the image; the restart runs and forker.c verifies its
/// children's exit statuses (zombies and live children restored) and that
/// forking goes on. The cgroup directory is removed at the end.
fn freeze_cgroup_roundtrip(env: &TestEnv, cg: TestCgroup) {
    let Some(mut w) = env.start_workload_in("forker", &[], Some(&cg.path)) else {
        return;
    };
    assert!(
        cg.procs().contains(&w.pid),
        "{}: forker {} is not in {} ({:?})",
        env.name,
        w.pid,
        cg.path.display(),
        cg.procs()
    );
    let img = env.path("img");
    env.checkpoint_and_kill_with(
        &mut w,
        &img,
        &[OsStr::new("--freeze-cgroup"), cg.path.as_os_str()],
    );
    assert!(
        cg.is_thawed(),
        "{}: {} is left frozen after the checkpoint: {}",
        env.name,
        cg.path.display(),
        cg.freeze_state()
    );
    let procs = env.image_processes(&img);
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    eprintln!(
        "{}: image holds {} processes ({} zombies)",
        env.name,
        procs.len(),
        procs.iter().filter(|p| p.zombie).count()
    );
    assert_eq!(pids.first(), Some(&w.pid), "the image's root is the forker");
    env.assert_none_runs(
        &pids,
        "right after `ckpt checkpoint --freeze-cgroup` returned",
    );
    let empty = wait_until(TIMEOUT, || cg.procs().is_empty());
    assert!(
        empty,
        "{}: processes left in the cgroup: {:?}",
        env.name,
        cg.procs()
    );
    env.restart_detached(&mut w, &img);
    // Cgroup membership is part of the saved state.
    let back = cg.procs().contains(&w.pid);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    assert!(
        back,
        "{}: restored forker {} is not back in {}",
        env.name,
        w.pid,
        cg.path.display()
    );
    let path = cg.path.clone();
    drop(cg);
    assert!(
        !path.exists(),
        "{}: could not remove {}",
        env.name,
        path.display()
    );
}

#[test]
fn restore_forker_freeze_cgroup_v2() {
    let Some(env) = TestEnv::new("restore_forker_freeze_cgroup_v2") else {
        return;
    };
    match TestCgroup::new_v2(&env) {
        Ok(cg) => freeze_cgroup_roundtrip(&env, cg),
        Err(why) => skip(&format!("restore_forker_freeze_cgroup_v2: {why}")),
    }
}

#[test]
fn restore_forker_freeze_cgroup_v1() {
    let Some(env) = TestEnv::new("restore_forker_freeze_cgroup_v1") else {
        return;
    };
    match TestCgroup::new_v1_freezer(&env) {
        Ok(cg) => freeze_cgroup_roundtrip(&env, cg),
        Err(why) => skip(&format!("restore_forker_freeze_cgroup_v1: {why}")),
    }
}

/// orphans.c: a process group and a session whose leaders are gone (the
/// session's member was reparented to the subreaper root) come back with
/// the same ids, through temporary helpers holding the leaders' pids; the
/// dead leaders do not exist after the restore.
#[test]
fn restore_ids_of_dead_leaders() {
    let Some(env) = TestEnv::new("restore_ids_of_dead_leaders") else {
        return;
    };
    let Some(mut w) = env.start_workload("orphans", &[]) else {
        return;
    };
    let all = read_numbers(&w.result_sibling(".pids"));
    let (live, dead) = all.split_at(3);
    let before = ids_of(&env, &w, live);
    let img = env.path("img");
    env.checkpoint_tree_and_kill(&mut w, &img, live);
    env.restart_detached(&mut w, &img);
    env.assert_tree_restored(&w, &before);
    for &d in dead {
        assert!(
            !pid_exists(d),
            "{}: dead leader {d} exists after restore",
            env.name
        );
    }
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
