//! A checkpoint interrupted at any moment leaves the process unharmed.
//!
//! `workloads/interrupt.c` (4 threads, 256 MiB of checksummed memory, live
//! AVX registers, distinct signal masks and altstacks, counters) is
//! checkpointed with `--leave-running` again and again while ckpt is
//! killed: SIGKILL at exact injected syscalls (the
//! `CKPT_TEST_KILL_AT_INJECTION` hook: before, at the entry and at the exit
//! of the Nth one, and of the final munmap of the scratch region; also with
//! the fallbacks forced, `CKPT_TEST_OTHER_IN_SLOT` and
//! `CKPT_TEST_NO_HEAL_GADGETS`) and SIGKILL, SIGTERM, SIGINT after random delays over
//! the length of a whole checkpoint. After each, the process must be
//! running, untraced, with every thread's blocked mask and its fds as
//! before, no mapping changed (after SIGKILL, only the scratch region may
//! be left over: anonymous, small), and its counters moving. At the end it
//! verifies itself (memory, registers, masks, altstacks) and must PASS.
//!
//! Needs root; without it the test prints `SKIP: ...` and passes.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// What must not change in the process.
struct Baseline {
    masks: Vec<(i32, String)>,
    fds: Vec<String>,
    maps: Vec<Map>,
}

#[derive(Clone, Debug, PartialEq)]
struct Map {
    start: u64,
    end: u64,
    perms: String,
    path: String,
}

fn maps(pid: i32) -> Vec<Map> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (s, e) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let path = f.nth(3).unwrap_or("").to_string();
            Some(Map {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms,
                path,
            })
        })
        .collect()
}

fn fds(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = fs::read_link(e.path()).unwrap_or_default();
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn baseline(pid: i32) -> Baseline {
    Baseline {
        masks: thread_ids(pid)
            .into_iter()
            .map(|t| (t, task_status_field(pid, t, "SigBlk").unwrap_or_default()))
            .collect(),
        fds: fds(pid),
        maps: maps(pid),
    }
}

fn counters(pid: i32, addr: u64) -> [u64; 4] {
    let mut b = [0u8; 32];
    let f = fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc mem");
    f.read_exact_at(&mut b, addr).expect("read counters");
    std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()))
}

fn counters_addr(w: &Workload) -> u64 {
    let log = fs::read_to_string(&w.log).unwrap_or_default();
    let hex = log
        .lines()
        .find_map(|l| l.strip_prefix("interrupt: counters 0x"))
        .unwrap_or_else(|| panic!("no counters address in the log{}", w.diagnostics()));
    u64::from_str_radix(hex.trim(), 16).expect("counters address")
}

/// The process is as before `what`; `leftover` allows the scratch region
/// (which a SIGKILLed ckpt leaves only around its first mmap or in the
/// fallbacks) as extra anonymous mappings.
fn assert_unharmed(
    env: &TestEnv,
    w: &mut Workload,
    base: &Baseline,
    addr: u64,
    what: &str,
    leftover: bool,
) {
    let pid = w.pid;
    // A detached thread heals when it next runs, which may be a little
    // after ckpt has died: wait (bounded) until everything is back.
    wait_until(TIMEOUT, || {
        proc_status_field(pid, "TracerPid").as_deref() == Some("0")
            && fds(pid) == base.fds
            && base.masks.iter().all(|(tid, mask)| {
                task_status_field(pid, *tid, "SigBlk").as_deref() == Some(mask.as_str())
            })
    });
    env.assert_running_untraced(w, what);
    for (tid, mask) in &base.masks {
        let now = task_status_field(pid, *tid, "SigBlk").unwrap_or_default();
        assert_eq!(
            &now,
            mask,
            "{what}: thread {tid} has a different signal mask{}",
            w.diagnostics()
        );
        let st = task_state(pid, *tid);
        assert!(
            matches!(st, Some('R' | 'S')),
            "{what}: thread {tid} is in state {st:?}{}",
            w.diagnostics()
        );
    }
    assert_eq!(
        fds(pid),
        base.fds,
        "{what}: open fds changed{}",
        w.diagnostics()
    );
    let now = maps(pid);
    // Every mapping is still there, with the same permissions and file
    // (a leftover may have merged with a neighbour: coverage counts).
    for m in &base.maps {
        let mut a = m.start;
        while a < m.end {
            let Some(n) = now.iter().find(|n| n.start <= a && a < n.end) else {
                panic!(
                    "{what}: {m:?} is no longer mapped at {a:#x}{}",
                    w.diagnostics()
                );
            };
            assert!(
                n.perms == m.perms && n.path == m.path,
                "{what}: {m:?} became {n:?}{}",
                w.diagnostics()
            );
            a = n.end;
        }
    }
    let covered = |a: u64| base.maps.iter().any(|m| m.start <= a && a < m.end);
    let mut extra = 0;
    for n in &now {
        let mut a = n.start;
        while a < n.end {
            if !covered(a) {
                assert!(
                    leftover && (n.path.is_empty() || n.path == "[anon:ckpt-scratch]"),
                    "{what}: new mapping {n:?}{}",
                    w.diagnostics()
                );
                extra += 4096;
            }
            a += 4096;
        }
    }
    assert!(
        extra <= 1 << 20,
        "{what}: {extra} bytes of new mappings (the scratch region is < 100 KiB){}",
        w.diagnostics()
    );
    // It runs on: every thread counts.
    let c0 = counters(pid, addr);
    let moving = wait_until(Duration::from_secs(10), || {
        let c = counters(pid, addr);
        c.iter().zip(c0.iter()).all(|(a, b)| a > b)
    });
    assert!(
        moving,
        "{what}: counters stopped at {c0:?}{}",
        w.diagnostics()
    );
}

/// xorshift64*, seeded from the clock (printed, to replay a failure).
/// Runs `ckpt args` and sends it `sig` `delay` after it started (counted,
/// for a signal ckpt catches, from when its handler is in place: it
/// installs its handlers first thing); returns the finished run.
fn signal_ckpt_after(env: &TestEnv, args: [&OsStr; 5], sig: i32, delay: Duration) -> CkptRun {
    let mut c = env.spawn_ckpt(args);
    if sig != libc::SIGKILL {
        let cpid = c.proc.pid;
        let caught = wait_until(TIMEOUT, || signal_in_mask(cpid, "SigCgt", sig));
        assert!(caught, "ckpt never installed a handler for signal {sig}");
    }
    std::thread::sleep(delay);
    let _ = c.proc.signal(sig);
    c.wait(CKPT_TIMEOUT).expect("ckpt exits")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn checkpoint_killed_at_any_moment_leaves_the_process_unharmed() {
    let Some(env) = TestEnv::new("checkpoint_killed_at_any_moment") else {
        return;
    };
    let Some(mut w) = env.start_workload("interrupt", &["256"]) else {
        return;
    };
    let addr = counters_addr(&w);
    let img = env.path("x.img");
    let pid = w.pid.to_string();
    let args = [
        OsStr::new("checkpoint"),
        OsStr::new(&pid),
        OsStr::new("-o"),
        img.as_os_str(),
        OsStr::new("--leave-running"),
    ];
    // It closes the readiness FIFO right after writing to it.
    let wpid = w.pid;
    let closed = wait_until(TIMEOUT, || !fds(wpid).iter().any(|f| f.ends_with(".ready")));
    assert!(
        closed,
        "the workload keeps its FIFO open{}",
        w.diagnostics()
    );
    let mut base = baseline(w.pid);

    // One uninterrupted checkpoint: how long a whole one takes.
    let t0 = Instant::now();
    let run = env.ckpt(args);
    let whole = t0.elapsed();
    assert!(run.success(), "{}{}", run.describe(), w.diagnostics());
    assert_unharmed(&env, &mut w, &base, addr, "after a whole checkpoint", false);
    eprintln!("a whole checkpoint takes {whole:?}");

    // Exact moments: the Nth injected syscall, before/at entry/at exit.
    // (About 100 calls read the metadata; with more than one core, ckpt's
    // own threads write the 256 MiB of pages, which the random signals
    // below hit, and the last calls close the image and unmap.)
    // `unmap` is the final munmap of the scratch region.
    let ns = [
        "1", "2", "3", "4", "5", "6", "8", "11", "16", "30", "60", "90", "120", "150", "unmap",
        "unmap", "unmap",
    ];
    for (i, n) in ns.into_iter().enumerate() {
        let moment = ["before", "entry", "exit"][i % 3];
        let hook = format!("{n}:{moment}");
        let run = env.ckpt_with_env(args, &[("CKPT_TEST_KILL_AT_INJECTION", &hook)]);
        let what = format!("ckpt killed at injection {hook} ({})", run.status);
        // Only a kill around the first mmap (before the heal code knows
        // the region) leaves the scratch region behind.
        assert_unharmed(&env, &mut w, &base, addr, &what, n == "1");
        base = baseline(w.pid);
    }

    // The fallbacks: the second slot for the other threads, and no
    // gadgets at all (then only the first mmap and the final munmap cannot
    // heal, so they are not hit here). Both may leave the scratch region.
    for (mode, n) in [
        ("CKPT_TEST_OTHER_IN_SLOT", "80:entry"),
        ("CKPT_TEST_OTHER_IN_SLOT", "90:exit"),
        ("CKPT_TEST_NO_HEAL_GADGETS", "3:entry"),
        ("CKPT_TEST_NO_HEAL_GADGETS", "85:exit"),
        ("CKPT_TEST_NO_HEAL_GADGETS", "140:before"),
    ] {
        let env_vars = [("CKPT_TEST_KILL_AT_INJECTION", n), (mode, "1")];
        let run = env.ckpt_with_env(args, &env_vars);
        let what = format!("{mode}: ckpt killed at injection {n} ({})", run.status);
        assert_unharmed(&env, &mut w, &base, addr, &what, true);
        base = baseline(w.pid);
    }

    // Random moments, by signal.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("random seed {seed}");
    let mut rng = Rng(seed);
    let span = whole.as_micros() as u64 + 1;
    for k in 0..15 {
        let sig = [libc::SIGKILL, libc::SIGTERM, libc::SIGINT][k % 3];
        let delay = Duration::from_micros(rng.next() % span);
        let run = signal_ckpt_after(&env, args, sig, delay);
        let what = format!("signal {sig} to ckpt after {delay:?} ({})", run.status);
        if sig != libc::SIGKILL {
            use std::os::unix::process::ExitStatusExt;
            let code = run.status.code();
            // Done before the signal came, or cancelled cleanly.
            assert!(
                code == Some(0) || code == Some(128 + sig),
                "{what}: ckpt must exit 0 or {}\n{}",
                128 + sig,
                run.describe()
            );
            assert!(run.status.signal().is_none(), "{what}: {}", run.describe());
            if code == Some(128 + sig) {
                assert!(
                    run.stderr.contains("abandoned"),
                    "{what}: {}",
                    run.describe()
                );
                assert_incomplete_without_pages(&env, &img, &what);
            }
        }
        assert_unharmed(&env, &mut w, &base, addr, &what, sig == libc::SIGKILL);
        base = baseline(w.pid);
    }
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// An abandoned image keeps its head and an error record, but no pages.
fn assert_incomplete_without_pages(env: &TestEnv, img: &Path, what: &str) {
    let len = fs::metadata(img).map(|m| m.len()).unwrap_or(0);
    assert!(
        len < 64 << 10,
        "{what}: the abandoned image still has {len} bytes"
    );
    let run = env.ckpt([OsStr::new("inspect"), img.as_os_str()]);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("interrupted"),
        "{what}: inspect must report the interruption\n{}",
        run.describe()
    );
}

/// Every process of a tree (`tree.c`: a session, a group, a pipe with
/// 64 KiB in flight, a zombie) comes out of killed and cancelled
/// checkpoints as it went in, and the stream through the pipe has no gap
/// or duplicate at the end (nothing was consumed or injected).
#[test]
fn tree_checkpoint_killed_or_cancelled_leaves_every_process_unharmed() {
    let Some(env) = TestEnv::new("tree_checkpoint_killed_or_cancelled") else {
        return;
    };
    let Some(mut w) = env.start_workload("tree", &[]) else {
        return;
    };
    // R writes the pids file once its tree is in place.
    let pids_file = w.result_sibling(".pids");
    let ok = wait_until(TIMEOUT, || {
        fs::read_to_string(&pids_file).is_ok_and(|s| s.split_whitespace().count() == 4)
    });
    assert!(ok, "no pids file{}", w.diagnostics());
    let pids: Vec<i32> = fs::read_to_string(&pids_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let rpid = w.pid;
    let closed = wait_until(TIMEOUT, || !fds(rpid).iter().any(|f| f.ends_with(".ready")));
    assert!(
        closed,
        "the workload keeps its FIFO open{}",
        w.diagnostics()
    );
    let img = env.path("t.img");
    let pid = w.pid.to_string();
    let args = [
        OsStr::new("checkpoint"),
        OsStr::new(&pid),
        OsStr::new("-o"),
        img.as_os_str(),
        OsStr::new("--leave-running"),
    ];
    // Zombie, stopped, or alive (running and sleeping alike).
    let class = |p: i32| match proc_state(p) {
        Some('Z') => 'Z',
        Some('T' | 't') => 'T',
        Some(_) => 'A',
        None => '-',
    };
    let snap = |p: i32| (baseline(p), class(p));
    let base: Vec<_> = pids.iter().map(|&p| snap(p)).collect();
    let base_class = |p: i32| {
        let i = pids.iter().position(|&q| q == p).expect("a tree pid");
        base[i].1
    };
    let check = |w: &Workload, what: &str| {
        eprintln!("{what}");
        let settled = wait_until(TIMEOUT, || {
            pids.iter().zip(&base).all(|(&p, (b, _))| {
                let now = baseline(p);
                now.masks == b.masks
                    && now.fds == b.fds
                    && proc_status_field(p, "TracerPid").as_deref() == Some("0")
                    && class(p) == base_class(p)
            })
        });
        for (&p, (b, state)) in pids.iter().zip(&base) {
            let now = baseline(p);
            assert!(
                settled && now.masks == b.masks && now.fds == b.fds,
                "{what}: pid {p} changed: masks {:?} -> {:?}, fds {:?} -> {:?}{}",
                b.masks,
                now.masks,
                b.fds,
                now.fds,
                w.diagnostics()
            );
            // Alive stays alive, the zombie a zombie; never stopped.
            assert_eq!(class(p), *state, "{what}: pid {p} state{}", w.diagnostics());
        }
    };
    let t0 = Instant::now();
    let run = env.ckpt(args);
    let whole = t0.elapsed();
    assert!(run.success(), "{}{}", run.describe(), w.diagnostics());
    check(&w, "after a whole checkpoint");
    for hook in [
        "1:entry",
        "2:exit",
        "5:before",
        "20:entry",
        "60:exit",
        "unmap:exit",
    ] {
        let run = env.ckpt_with_env(args, &[("CKPT_TEST_KILL_AT_INJECTION", hook)]);
        check(
            &w,
            &format!("ckpt killed at injection {hook} ({})", run.status),
        );
    }
    let span = whole.as_micros() as u64 + 1;
    let mut rng = Rng(span.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for k in 0..6 {
        let sig = [libc::SIGTERM, libc::SIGINT, libc::SIGKILL][k % 3];
        let delay = Duration::from_micros(rng.next() % span);
        let run = signal_ckpt_after(&env, args, sig, delay);
        check(
            &w,
            &format!("signal {sig} to ckpt after {delay:?} ({})", run.status),
        );
    }
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
