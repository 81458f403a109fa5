//! Self-checkpoint through the C interface (include/ckpt.h, libckpt.so):
//! C programs with two threads and a Python program through ctypes
//! checkpoint themselves mid-computation, finish, and restarted with
//! `ckpt restart IMAGE` resume inside the call (which returns 0) and
//! finish with the same result; a failed self-checkpoint returns -1 with
//! errno and the caller carries on; `ckpt_restart` from C. Sources are in
//! tests/capi/. They run with their stdout on a log file in the test's
//! directory (reopened by path after restart), so both lives write there.

mod common;

use common::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The directory of the libckpt.so built with the `ckpt` binary under
/// test. Cargo builds every crate type of the `ckpt` library whenever the
/// binary needs it, into the profile's deps/; it copies them up into the
/// profile directory only when `ckpt` itself is built (`cargo build`), so
/// the newer of the two is this build's.
fn lib_dir() -> PathBuf {
    let profile = ckpt_bin().parent().expect("ckpt in a directory");
    let age = |d: &Path| {
        std::fs::metadata(d.join("libckpt.so"))
            .and_then(|m| m.modified())
            .ok()
    };
    let deps = profile.join("deps");
    match (age(profile), age(&deps)) {
        (Some(a), Some(b)) if a >= b => profile.to_path_buf(),
        (Some(_), None) => profile.to_path_buf(),
        (None, None) => panic!(
            "no libckpt.so in {} or its deps/: the ckpt library's cdylib is built with the ckpt binary",
            profile.display()
        ),
        _ => deps,
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/capi")
}

/// Compiles tests/capi/NAME.c against include/ckpt.h and libckpt.so (with
/// an rpath to it); `None` (after a loud SKIP) without gcc.
fn build_c(env: &TestEnv, name: &str) -> Option<PathBuf> {
    build_c_from(env, &sources().join(format!("{name}.c")))
}

/// Compiles the C program `src` (see `build_c`).
fn build_c_from(env: &TestEnv, src: &Path) -> Option<PathBuf> {
    let name = src.file_stem().expect("a C file").to_string_lossy();
    let lib = lib_dir();
    assert!(
        lib.join("libckpt.so").exists(),
        "{} is missing: the ckpt library's cdylib should be built with the ckpt binary",
        lib.join("libckpt.so").display()
    );
    let out = env.path(&name);
    let res = Command::new("gcc")
        .args(["-O1", "-g", "-Wall", "-Wextra", "-I"])
        .arg(repo_root().join("include"))
        .arg("-o")
        .arg(&out)
        .arg(src)
        .arg("-L")
        .arg(&lib)
        // DT_RPATH, searched before LD_LIBRARY_PATH (which cargo sets
        // for tests, with the profile directory and its possibly stale
        // copy of libckpt.so in it).
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", lib.display()))
        .args(["-lckpt", "-lpthread"])
        .stdin(Stdio::null())
        .output();
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip(&format!("{}: gcc missing", env.name));
            None
        }
        Err(e) => panic!("running gcc: {e}"),
        Ok(o) if !o.status.success() => panic!(
            "gcc {name}.c failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => Some(out),
    }
}

/// Runs `program args` the way workloads run (own session, stdout and
/// stderr appended to DIR/LABEL.out) until it exits; returns its exit code
/// and that log.
fn run_to_end(env: &TestEnv, label: &str, program: &Path, args: &[&OsStr]) -> (i32, String) {
    let (mut p, log) = env.spawn(label, program, args);
    let status = p
        .wait_exit(CKPT_TIMEOUT)
        .unwrap_or_else(|| panic!("{label} did not finish within {CKPT_TIMEOUT:?}"))
        .expect("our child");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    (status.code().unwrap_or(-1), out)
}

fn log_of(env: &TestEnv, label: &str) -> String {
    std::fs::read_to_string(env.path(&format!("{label}.out"))).unwrap_or_default()
}

/// `ckpt restart IMAGE`, waiting for the restored process: its exit status.
fn restart(env: &TestEnv, img: &Path) -> CkptRun {
    env.ckpt([OsStr::new("restart"), img.as_os_str()])
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn c_program_with_two_threads_resumes_inside_the_call() {
    let Some(env) = TestEnv::new("capi_c_two_threads") else {
        return;
    };
    let Some(prog) = build_c(&env, "selfckpt") else {
        return;
    };
    let img = env.path("img");
    let (code, out) = run_to_end(&env, "selfckpt", &prog, &[img.as_os_str()]);
    assert_eq!(code, 0, "the checkpointed run must finish right:\n{out}");
    assert_eq!(lines(&out)[0], "taken 1", "{out}");
    let result = lines(&out)[1];
    assert!(result.ends_with(" ok"), "{out}");
    let run = restart(&env, &img);
    assert!(
        run.success(),
        "the restarted run must finish right\n{}\n{}",
        run.describe(),
        log_of(&env, "selfckpt")
    );
    let out = log_of(&env, "selfckpt");
    assert_eq!(
        lines(&out)[2..],
        ["resumed", result],
        "the restarted process returns 0 from the call and computes the same"
    );
}

#[test]
fn c_program_checkpoints_twice_and_each_image_resumes_its_own_call() {
    let Some(env) = TestEnv::new("capi_c_twice") else {
        return;
    };
    let Some(prog) = build_c(&env, "selfckpt") else {
        return;
    };
    let (img1, img2) = (env.path("img1"), env.path("img2"));
    let (code, out) = run_to_end(
        &env,
        "selfckpt",
        &prog,
        &[img1.as_os_str(), img2.as_os_str()],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out)[..2], ["taken 1", "taken 2"], "{out}");
    let result = lines(&out)[2].to_string();
    // From the first image: the first call returns 0, the second runs again
    // (numbered on: 2) and writes img2 anew, from the restarted process.
    let run = restart(&env, &img1);
    assert!(run.success(), "{}", run.describe());
    let out = log_of(&env, "selfckpt");
    assert_eq!(lines(&out)[3..], ["resumed", "taken 2", &result], "{out}");
    // And that image resumes the second call.
    let run = restart(&env, &img2);
    assert!(run.success(), "{}", run.describe());
    let out = log_of(&env, "selfckpt");
    assert_eq!(lines(&out)[6..], ["resumed", &result], "{out}");
}

#[test]
fn python_through_ctypes_resumes_inside_the_call() {
    let Some(env) = TestEnv::new("capi_python") else {
        return;
    };
    let Some(python) = find_program("python3") else {
        skip("capi_python: python3 missing");
        return;
    };
    let img = env.path("img");
    let lib = lib_dir().join("libckpt.so");
    let script = sources().join("selfckpt.py");
    let (code, out) = run_to_end(
        &env,
        "selfckpt-py",
        &python,
        &[script.as_os_str(), lib.as_os_str(), img.as_os_str()],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out)[0], "taken 1", "{out}");
    let result = lines(&out)[1].to_string();
    assert!(result.ends_with(" ok"), "{out}");
    let run = restart(&env, &img);
    assert!(
        run.success(),
        "{}\n{}",
        run.describe(),
        log_of(&env, "selfckpt-py")
    );
    let out = log_of(&env, "selfckpt-py");
    assert_eq!(lines(&out)[2..], ["resumed", &result], "{out}");
}

#[test]
fn failed_self_checkpoint_returns_minus_one_and_the_caller_carries_on() {
    let Some(env) = TestEnv::new("capi_failed") else {
        return;
    };
    let Some(prog) = build_c(&env, "selfckpt") else {
        return;
    };
    // The image fd is read-only: refused before anything is frozen.
    let img = env.path("img");
    let (code, out) = run_to_end(
        &env,
        "rdonly",
        &prog,
        &[OsStr::new("--rdonly"), img.as_os_str()],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        lines(&out)[0].starts_with("checkpoint failed: errno 9 (Bad file descriptor)")
            && out.contains("open it for writing"),
        "{out}"
    );
    assert!(lines(&out)[1].ends_with(" ok"), "{out}");
    // The process holds a packet socket, which ckpt refuses once the
    // process is frozen: it must come back as it was, and the call must not
    // mistake the marker of the abandoned image for a restart.
    let (code, out) = run_to_end(
        &env,
        "packet",
        &prog,
        &[OsStr::new("--packet"), img.as_os_str()],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        lines(&out)[0].starts_with("checkpoint failed: errno 95")
            && out.contains("cannot checkpoint fd"),
        "{out}"
    );
    assert!(lines(&out)[1].ends_with(" ok"), "{out}");
}

#[test]
fn ckpt_restart_from_c() {
    let Some(env) = TestEnv::new("capi_restart") else {
        return;
    };
    let (Some(prog), Some(restarter)) = (build_c(&env, "selfckpt"), build_c(&env, "restart"))
    else {
        return;
    };
    let img = env.path("img");
    let (code, out) = run_to_end(&env, "selfckpt", &prog, &[img.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    let result = lines(&out)[1].to_string();
    // The restarter restores the image, reaps the restored root (its
    // child) and exits with its status.
    let (code, rout) = run_to_end(&env, "restarter", &restarter, &[img.as_os_str()]);
    assert_eq!(code, 0, "{rout}\n{}", log_of(&env, "selfckpt"));
    assert!(rout.contains("\nrestored as pid "), "{rout}");
    let out = log_of(&env, "selfckpt");
    assert_eq!(lines(&out)[2..], ["resumed", &result], "{out}");
    // A bad image fd is an error with errno, not a crash.
    let (code, rout) = run_to_end(&env, "restarter-bad", &restarter, &[OsStr::new("--bad-fd")]);
    assert_eq!(code, 0, "{rout}");
}

/// The exported symbols of libckpt.so are exactly the header's functions.
#[test]
fn libckpt_exports_what_the_header_declares() {
    let header = std::fs::read_to_string(repo_root().join("include/ckpt.h")).expect("header");
    let mut declared: Vec<String> = header
        .lines()
        .filter(|l| l.trim_end().ends_with(");"))
        .filter_map(|l| {
            let name = l.split('(').next()?.rsplit([' ', '*']).next()?;
            Some(name.to_string())
        })
        .collect();
    declared.sort();
    let Some(nm) = find_program("nm") else {
        skip("libckpt_exports: nm missing");
        return;
    };
    let out = Command::new(nm)
        .args(["-D", "--defined-only"])
        .arg(lib_dir().join("libckpt.so"))
        .output()
        .expect("nm");
    let mut exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("ckpt_"))
        .map(String::from)
        .collect();
    exported.sort();
    assert_eq!(exported, declared);
}

/// Runs `program args` with stdout and stderr on pipes read here (as a
/// harness capturing output would), within [`CKPT_TIMEOUT`]: exit code
/// and stdout.
fn run_captured(program: &Path, args: &[&OsStr], cwd: &Path) -> (i32, String) {
    use std::io::Read;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + CKPT_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish within {CKPT_TIMEOUT:?}",
                program.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let out = reader.join().expect("reader");
    let err = err_reader.join().expect("reader");
    (status.code().unwrap_or(-1), format!("{out}{err}"))
}

/// The way a harness would check it: both runs with their output captured
/// through pipes. The first run's reader is gone when `ckpt restart` runs,
/// so the restored process writes to ckpt's own stdout (not into a pipe
/// nobody reads, where it would die of SIGPIPE).
#[test]
fn captured_output_of_the_restarted_process_comes_out_of_ckpt_restart() {
    let Some(env) = TestEnv::new("capi_captured") else {
        return;
    };
    let Some(prog) = build_c(&env, "selfckpt") else {
        return;
    };
    let img = env.path("img");
    let (code, out) = run_captured(&prog, &[img.as_os_str()], &env.dir);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out)[0], "taken 1", "{out}");
    let result = lines(&out)[1].to_string();
    let (code, out) = run_captured(
        ckpt_bin(),
        &[OsStr::new("restart"), img.as_os_str()],
        &env.dir,
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out), ["resumed", &result], "{out}");
}

/// The image written to a stream (a FIFO this test reads into a file): in
/// the image, the stream fd stands in as /dev/null (the image's own bytes
/// in flight are not saved as pipe data), and the file restarts.
#[test]
fn image_written_to_a_pipe_restarts() {
    let Some(env) = TestEnv::new("capi_fifo") else {
        return;
    };
    let Some(prog) = build_c(&env, "selfckpt") else {
        return;
    };
    let fifo = env.path("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let img = env.path("img");
    let (fifo2, img2) = (fifo.clone(), img.clone());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    // O_RDWR never blocks on a FIFO; EOF never comes either, so the reader
    // stops once the program has exited and the FIFO is empty.
    let reader = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo2)
            .expect("open fifo");
        let mut out = std::fs::File::create(&img2).expect("image file");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut buf = vec![0u8; 1 << 16];
        let deadline = std::time::Instant::now() + CKPT_TIMEOUT;
        while std::time::Instant::now() < deadline {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: p is one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
                if done2.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            let n = f.read(&mut buf).expect("read fifo");
            out.write_all(&buf[..n]).expect("write image");
        }
    });
    let (code, out) = run_to_end(&env, "selfckpt", &prog, &[fifo.as_os_str()]);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().expect("reader");
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out)[0], "taken 1", "{out}");
    let result = lines(&out)[1].to_string();
    let inspect = env.ckpt([OsStr::new("inspect"), img.as_os_str()]);
    assert!(inspect.success(), "{}", inspect.describe());
    assert!(
        !inspect.stdout.contains(&*fifo.to_string_lossy()),
        "the image stream must not be saved as the FIFO:\n{}",
        inspect.stdout
    );
    let run = restart(&env, &img);
    assert!(
        run.success(),
        "{}\n{}",
        run.describe(),
        log_of(&env, "selfckpt")
    );
    let out = log_of(&env, "selfckpt");
    assert_eq!(lines(&out)[2..], ["resumed", &result], "{out}");
}

/// The examples (examples/c/selfloop.c, examples/python/selfloop.py): a
/// loop checkpointing itself every N steps crashes; restarted from its
/// last image it finishes with the result of an uninterrupted run.
#[test]
fn example_loops_survive_a_crash() {
    let Some(env) = TestEnv::new("capi_examples") else {
        return;
    };
    let examples = repo_root().join("examples");
    let Some(prog) = build_c_from(&env, &examples.join("c/selfloop.c")) else {
        return;
    };
    let mut runs: Vec<(String, PathBuf, Vec<std::ffi::OsString>, &str)> =
        vec![("c".into(), prog, Vec::new(), "7500000")];
    match find_program("python3") {
        Some(py) => runs.push((
            "py".into(),
            py,
            vec![examples.join("python/selfloop.py").into_os_string()],
            "75000",
        )),
        None => skip("capi_examples: python3 missing"),
    }
    for (label, program, lead, crash_at) in runs {
        let with = |extra: &[&OsStr]| -> Vec<std::ffi::OsString> {
            lead.iter()
                .cloned()
                .chain(extra.iter().map(|s| s.to_os_string()))
                .collect()
        };
        let args = with(&[OsStr::new("--no-checkpoint")]);
        let args: Vec<&OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        let (code, plain) = run_to_end(&env, &format!("{label}-plain"), &program, &args);
        assert_eq!(code, 0, "{plain}");
        let want = plain.lines().last().expect("a result").to_string();
        let img = env.path(&format!("{label}.img"));
        let args = with(&[
            img.as_os_str(),
            OsStr::new("--crash-at"),
            OsStr::new(crash_at),
        ]);
        let args: Vec<&OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        std::env::set_var("CKPT_LIB", lib_dir().join("libckpt.so"));
        let (code, out) = run_to_end(&env, &label, &program, &args);
        assert_eq!(code, 1, "it must crash:\n{out}");
        assert!(out.ends_with("crash!\n"), "{out}");
        let run = restart(&env, &img);
        assert!(
            run.success(),
            "{}\n{}",
            run.describe(),
            log_of(&env, &label)
        );
        let out = log_of(&env, &label);
        assert!(out.contains(": resumed from the checkpoint\n"), "{out}");
        assert_eq!(out.lines().last(), Some(want.as_str()), "{out}");
    }
}

/// A caller with a child: without CKPT_TREE the call is refused (the child
/// would be missing after restart) and the caller carries on; with it the
/// child is saved too (the helper left out) and comes back as the
/// restarted caller's child; with CKPT_KILL as well the call does not
/// return in the original, which dies once the image is complete.
#[test]
fn tree_flag_takes_the_children_and_kill_flag_ends_the_caller() {
    let Some(env) = TestEnv::new("capi_tree") else {
        return;
    };
    let Some(prog) = build_c(&env, "tree") else {
        return;
    };
    let img = env.path("img");
    let (code, out) = run_to_end(&env, "alone", &prog, &[img.as_os_str(), OsStr::new("0")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        lines(&out)[1].starts_with("r=-1 errno=95 ") && out.contains("CKPT_TREE"),
        "{out}"
    );
    assert_eq!(lines(&out)[2], "child exit 42", "{out}");

    let (code, out) = run_to_end(&env, "tree", &prog, &[img.as_os_str(), OsStr::new("2")]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out)[1..], ["r=1 errno=0", "child exit 42"], "{out}");
    let run = restart(&env, &img);
    assert!(run.success(), "{}", run.describe());
    let out = log_of(&env, "tree");
    assert_eq!(lines(&out)[3..], ["r=0 errno=0", "child exit 42"], "{out}");

    let (code, out) = run_to_end(&env, "kill", &prog, &[img.as_os_str(), OsStr::new("3")]);
    assert_eq!(code, -1, "the caller must die of SIGKILL:\n{out}");
    assert_eq!(lines(&out).len(), 1, "the call must not return:\n{out}");
    // Its child is reaped by whoever inherited it: wait until its pid is free.
    let child: i32 = lines(&out)[0]
        .strip_prefix("child ")
        .and_then(|p| p.parse().ok())
        .expect("child pid");
    assert!(
        wait_until(TIMEOUT, || !Path::new(&format!("/proc/{child}")).exists()),
        "the killed child {child} was not reaped"
    );
    let run = restart(&env, &img);
    assert!(run.success(), "{}", run.describe());
    let out = log_of(&env, "kill");
    assert_eq!(lines(&out)[1..], ["r=0 errno=0", "child exit 42"], "{out}");
}

/// Threads that come and go while the helper attaches: one that exits
/// before it is stopped is no part of the process any more, not a failure;
/// 40 checkpoints in one life, numbered 1 to 40.
#[test]
fn threads_exiting_during_the_freeze_do_not_fail_it() {
    let Some(env) = TestEnv::new("capi_churn") else {
        return;
    };
    let Some(prog) = build_c(&env, "churn") else {
        return;
    };
    let img = env.path("img");
    let (code, out) = run_to_end(&env, "churn", &prog, &[img.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out), ["fails 0"], "{out}");
}

/// ckpt_checkpoint of another process (the caller's child): it keeps
/// running by default and finishes; its image restarts it where it was.
#[test]
fn checkpoint_of_another_process_from_c() {
    let Some(env) = TestEnv::new("capi_other") else {
        return;
    };
    let Some(prog) = build_c(&env, "other") else {
        return;
    };
    let img = env.path("img");
    let (code, out) = run_to_end(&env, "other", &prog, &[img.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines(&out), ["id 1", "child exit 7"], "{out}");
    // Restarted, the child counts on from where it was and exits 7.
    let run = restart(&env, &img);
    assert_eq!(run.status.code(), Some(7), "{}", run.describe());
}
