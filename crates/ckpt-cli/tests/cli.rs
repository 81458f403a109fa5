//! The CLI contract: help text, and bad input of every kind giving a clear
//! one-line error (never a panic) from `inspect` and `restart`.

#[path = "common/skip.rs"]
mod skip;
use skip::skip;

use ckpt_image::{
    Body, ImageReader, ImageWriter, MetaEnd, RawRecord, T_META_END, T_OPTIONAL, T_PROCESS, T_TAIL,
    T_THREAD, T_X86_DEBUGREGS,
};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ckpt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ckpt"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Asserts a clean failure: non-zero exit, a `ckpt:` message, no panic.
fn assert_clean_failure(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what}: expected failure, got success"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit status {:?}, stderr: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    assert!(err.contains("ckpt:"), "{what}: no error message: {err}");
    err
}

/// The child gets /dev/null as stdin/stdout/stderr and no other fd: fds
/// the test runner may have inherited (pipes, sockets) would make the
/// workload something else than the test means.
fn only_std_fds(c: &mut Command) {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
}

/// A sleeping child with only stdin/stdout/stderr open; killed on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Self {
        let mut c = Command::new("sleep");
        c.arg("1000");
        only_std_fds(&mut c);
        Sleeper(c.spawn().expect("spawn sleep"))
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `pid` sleeps in the kernel (state S). `sleep` has
/// no way to say it is ready, so this polls /proc.
fn wait_sleeping(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.contains(") S ") {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// `ckpt checkpoint PID -o IMG` of our child `child`, reaped as it is
/// killed (ckpt returns once the pid is free); the checkpoint must succeed.
/// A failed checkpoint leaves the child running, so this never waits for
/// the child alone: it polls both (bounded; neither can signal the other).
fn checkpoint_reaping(pid: i32, child: &mut std::process::Child, img: &Path) {
    let mut ck = ckpt()
        .args(["checkpoint", &pid.to_string(), "-o"])
        .arg(img)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut reaped = false;
    loop {
        if !reaped {
            reaped = child.try_wait().unwrap().is_some();
        }
        if let Some(st) = ck.try_wait().unwrap() {
            if !st.success() {
                let _ = child.kill();
                let _ = child.wait();
                let out = ck.wait_with_output().unwrap();
                panic!(
                    "checkpoint of {pid} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if reaped {
                return;
            }
        }
        if std::time::Instant::now() > deadline {
            let _ = ck.kill();
            let _ = child.kill();
            let _ = child.wait();
            panic!("checkpoint of {pid} did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The next line from a child's pipe, waiting at most until `deadline`;
/// `Ok(None)` at end of file (no writer left), `Err` on timeout. A test
/// must fail, not hang, when a tree never writes.
fn line_before(
    r: &mut std::io::BufReader<std::process::ChildStdout>,
    deadline: std::time::Instant,
) -> Result<Option<String>, ()> {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    if r.buffer().is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd: r.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n == 0 {
            return Err(());
        }
    }
    let mut l = String::new();
    match r.read_line(&mut l) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(l.trim_end().to_owned())),
        Err(_) => Err(()),
    }
}

/// `ckpt restart --detach IMG`, which must succeed.
fn restart_detached(img: &Path) {
    let out = ckpt()
        .args(["restart", "--detach"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_explains_every_command() {
    let out = ckpt().arg("--help").output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8_lossy(&out.stdout);
    for cmd in ["checkpoint", "restart", "inspect", "check"] {
        assert!(h.contains(cmd), "--help lacks {cmd}: {h}");
    }
    let out = ckpt().args(["checkpoint", "--help"]).output().unwrap();
    let h = String::from_utf8_lossy(&out.stdout);
    assert!(
        h.contains("--leave-running") && h.contains("--log") && h.contains("-o"),
        "{h}"
    );
    let out = ckpt().args(["restart", "--help"]).output().unwrap();
    let h = String::from_utf8_lossy(&out.stdout);
    assert!(h.contains("--detach") && h.contains("exit status"), "{h}");
}

#[test]
fn bad_usage_fails_with_status_2() {
    let out = ckpt().args(["checkpoint"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ckpt()
        .args(["checkpoint", "notapid", "-o", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_pid_is_a_clear_error() {
    let d = tmpdir("nopid");
    let out = ckpt()
        .args(["checkpoint", "999999", "-o"])
        .arg(d.join("x.img"))
        .output()
        .unwrap();
    let err = assert_clean_failure(&out, "checkpoint of a missing pid");
    assert!(err.contains("999999"), "{err}");
}

fn bad_inputs(d: &Path, valid: Option<&[u8]>) -> Vec<(String, PathBuf)> {
    let mut v = vec![("/dev/null".to_string(), PathBuf::from("/dev/null"))];
    let mut put = |name: String, data: &[u8]| {
        let p = d.join(&name);
        std::fs::write(&p, data).unwrap();
        v.push((name, p));
    };
    put("empty".into(), b"");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    put("random".into(), &random);
    put("text".into(), b"#!/bin/sh\necho not an image\n");
    if let Some(img) = valid {
        for cut in [
            1,
            7,
            8,
            9,
            64,
            200,
            img.len() / 3,
            img.len() / 2,
            img.len() - 33,
            img.len() - 1,
        ] {
            put(format!("truncated-{cut}"), &img[..cut]);
        }
        for pos in [
            3,
            12,
            100,
            300,
            img.len() / 2,
            img.len() - 40,
            img.len() - 5,
        ] {
            let mut m = img.to_vec();
            m[pos] ^= 0x10;
            put(format!("flipped-{pos}"), &m);
        }
        let mut extra = img.to_vec();
        extra.extend_from_slice(b"trailing");
        put("trailing".into(), &extra);
    }
    v
}

fn check_all_refused(inputs: &[(String, PathBuf)]) {
    for (name, p) in inputs {
        let out = ckpt().arg("inspect").arg(p).output().unwrap();
        assert_clean_failure(&out, &format!("inspect {name}"));
        let out = ckpt().arg("inspect").arg("--json").arg(p).output().unwrap();
        assert_clean_failure(&out, &format!("inspect --json {name}"));
        let out = ckpt().arg("restart").arg(p).output().unwrap();
        assert_clean_failure(&out, &format!("restart {name}"));
        // The same through a pipe.
        let out = ckpt()
            .args(["restart", "-"])
            .stdin(std::fs::File::open(p).unwrap())
            .output()
            .unwrap();
        assert_clean_failure(&out, &format!("restart - < {name}"));
    }
}

#[test]
fn garbage_images_are_refused_cleanly() {
    let d = tmpdir("garbage");
    check_all_refused(&bad_inputs(&d, None));
}

#[test]
fn checkpoint_leave_running_then_inspect_json() {
    if !is_root() {
        skip("checkpoint_leave_running_then_inspect_json: needs root");
        return;
    }
    let d = tmpdir("sleep");
    let s = Sleeper::start();
    assert!(wait_sleeping(s.pid()), "sleep never went to sleep");
    let img = d.join("sleep.img");
    let log = d.join("log");
    let out = ckpt()
        .args([
            "checkpoint",
            &s.pid().to_string(),
            "--leave-running",
            "--log",
        ])
        .arg(&log)
        .arg("-o")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "checkpoint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still running, and back asleep (not stopped or traced).
    assert!(
        wait_sleeping(s.pid()),
        "sleep is not sleeping any more: {}",
        std::fs::read_to_string(format!("/proc/{}/stat", s.pid())).unwrap_or_default()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    assert!(status.contains("TracerPid:\t0"), "still traced: {status}");
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(
        logtext.contains(&format!(
            "[err 0][pos 0][pid {} sleep] checkpoint started",
            s.pid()
        )),
        "{logtext}"
    );

    let out = ckpt()
        .args(["inspect", "--json"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json is JSON");
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.first().unwrap()["name"], "head");
    assert_eq!(recs.last().unwrap()["name"], "tail");
    assert_eq!(v["summary"]["processes"][0]["pid"], s.pid());
    assert_eq!(v["summary"]["processes"][0]["comm"], "sleep");
    assert!(v["summary"]["pages"].as_u64().unwrap() > 0);
    assert!(v["summary"]["mappings"].as_u64().unwrap() > 5);
    assert_eq!(v["summary"]["complete"], true);
    assert!(v["error"].is_null());
    // Offsets are increasing and 8-aligned; page data records exist.
    let mut last = None;
    for r in recs {
        let off = r["offset"].as_u64().unwrap();
        assert_eq!(off % 8, 0);
        assert!(last.is_none_or(|l| off > l));
        last = Some(off);
    }
    assert!(recs.iter().any(|r| r["name"] == "pages"));

    // The human table names the same things.
    let out = ckpt().arg("inspect").arg(&img).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("checksum ok") && t.contains(&format!("{} (sleep)", s.pid())),
        "{t}"
    );

    // Every corruption of this real image is refused, and the pid in use
    // makes even the intact image refused by restart.
    let data = std::fs::read(&img).unwrap();
    check_all_refused(&bad_inputs(&d, Some(&data)));
    let out = ckpt().arg("restart").arg(&img).output().unwrap();
    let err = assert_clean_failure(&out, "restart while the pid is in use");
    assert!(err.contains(&format!("pid {} is in use", s.pid())), "{err}");
}

#[test]
fn check_reports_every_feature() {
    let out = ckpt().args(["check", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for n in [
        "ptrace",
        "process_vm_readv",
        "clone3-set_tid",
        "PR_SET_MM_MAP",
        "rseq",
        "userfaultfd",
    ] {
        assert!(names.contains(&n), "check lacks {n}: {names:?}");
    }
    if is_root() {
        assert!(
            out.status.success(),
            "check fails as root: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn image_streams_through_a_pipe() {
    if !is_root() {
        skip("image_streams_through_a_pipe: needs root");
        return;
    }
    let s = Sleeper::start();
    let pid = s.pid();
    let mut ck = ckpt()
        .args(["checkpoint", &pid.to_string(), "-o", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stream = ck.stdout.take().unwrap();
    let mut child = s;
    // Reap the original as soon as it dies, so its pid is free for restart.
    let reaper = std::thread::spawn(move || {
        let _ = child.0.wait();
        child
    });
    let out = ckpt()
        .args(["restart", "--detach", "-"])
        .stdin(stream)
        .output()
        .unwrap();
    let ck = ck.wait_with_output().unwrap();
    if !ck.status.success() {
        // A failed checkpoint leaves the sleeper running: end it, or the
        // reaper would wait forever.
        // SAFETY: kill of our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _orig = reaper.join().unwrap();
    assert!(
        ck.status.success(),
        "checkpoint -o -: {}",
        String::from_utf8_lossy(&ck.stderr)
    );
    assert!(
        out.status.success(),
        "restart -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pid.to_string());
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // SAFETY: kill with a pid we restored; it is not our child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(comm.trim(), "sleep", "restored pid {pid} is not sleep");
}

#[test]
fn refused_checkpoint_writes_error_record_and_log_line() {
    if !is_root() {
        skip("refused_checkpoint_writes_error_record_and_log_line: needs root");
        return;
    }
    let d = tmpdir("refused");
    // A process holding a unix socket with an fd in flight (SCM_RIGHTS),
    // which ckpt cannot save yet; /dev/zero is opened once it is sent.
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import socket,time; a,b=socket.socketpair(socket.AF_UNIX,socket.SOCK_DGRAM); socket.send_fds(a,[b'x'],[0]); z=open('/dev/zero'); time.sleep(1000)",
    ]);
    only_std_fds(&mut c);
    let Ok(child) = c.spawn() else {
        skip("refused_checkpoint_writes_error_record_and_log_line: python3 missing");
        return;
    };
    let p = Sleeper(child);
    let pid = p.pid();
    // Wait until python has sent the fd (a bounded poll: it cannot signal).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l == std::path::Path::new("/dev/zero"))
            })
        })
        .unwrap_or(false)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "python never opened its sockets"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let img = d.join("img");
    let log = d.join("log");
    let out = ckpt()
        .args(["checkpoint", &pid.to_string(), "--log"])
        .arg(&log)
        .arg("-o")
        .arg(&img)
        .output()
        .unwrap();
    let err = assert_clean_failure(&out, "checkpoint of a process with a socket");
    assert!(
        err.contains(&format!("pid {pid}"))
            && err.contains("socket:")
            && err.contains("SCM_RIGHTS"),
        "{err}"
    );
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(
        logtext
            .lines()
            .any(|l| l.starts_with(&format!("[err {}][pos ", libc::ENOTSUP))
                && l.contains(&format!("[pid {pid} python3]"))
                && l.contains("socket:")),
        "no error line in the log: {logtext}"
    );
    // The image ends with the error record, which inspect and restart report.
    let out = ckpt()
        .args(["inspect", "--json"])
        .arg(&img)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap_or("").contains("socket:"), "{v}");
    let out = ckpt().arg("restart").arg(&img).output().unwrap();
    let err = assert_clean_failure(&out, "restart of a failed image");
    assert!(
        err.contains("checkpoint that wrote this image failed"),
        "{err}"
    );
    // And the process was left running, untraced.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("TracerPid:\t0") && !status.contains("State:\tt"),
        "{status}"
    );
}

fn sig_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// A real python3 with a SIGTERM handler (CPython installs handlers with
/// SA_ONSTACK) and a FIFO holding bytes in flight: after restart the
/// dispositions are exactly the saved ones (none inherited from ckpt), and on
/// SIGTERM python reads the FIFO and reports PASS.
#[test]
fn python_verifies_itself_on_sigterm_after_restart() {
    if !is_root() {
        skip("python_verifies_itself_on_sigterm_after_restart: needs root");
        return;
    }
    let d = tmpdir("pyterm");
    let fifo = d.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let script = r#"
import os, signal, sys, time
d = sys.argv[1]
r = os.open(d + "/fifo", os.O_RDONLY | os.O_NONBLOCK)
w = os.open(d + "/fifo", os.O_WRONLY)
os.write(w, b"in-flight\n")
done = False
def term(s, f):
    global done
    done = True
signal.signal(signal.SIGTERM, term)
open(d + "/ready", "w").close()
while not done:
    time.sleep(0.02)
data = os.read(r, 100)
open(d + "/result", "w").write("PASS\n" if data == b"in-flight\n" else "FAIL %r\n" % data)
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(&d);
    only_std_fds(&mut cmd);
    let Ok(child) = cmd.spawn() else {
        skip("python_verifies_itself_on_sigterm_after_restart: python3 missing");
        return;
    };
    let mut p = Sleeper(child);
    let pid = p.pid();
    // python3 cannot signal readiness other than through a file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.join("ready").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "python never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let caught = sig_field(pid, "SigCgt:");
    let img = d.join("img");
    checkpoint_reaping(pid, &mut p.0, &img);
    restart_detached(&img);
    let after = sig_field(pid, "SigCgt:");
    // SAFETY: kill of the pid we restored.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: as above; a no-op once it has exited.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(after, caught, "caught signals changed across the restart");
    let result = std::fs::read_to_string(d.join("result")).unwrap_or_default();
    assert_eq!(result, "PASS\n", "python did not verify itself");
}

/// Nice value, CPU affinity and OOM score adjustment are the process's own,
/// not inherited from ckpt, after a restart.
#[test]
fn scheduling_state_survives() {
    if !is_root() {
        skip("scheduling_state_survives: needs root");
        return;
    }
    let d = tmpdir("sched");
    let mut c = Command::new("nice");
    c.args(["-n", "7", "taskset", "-c", "0", "sleep", "1000"]);
    only_std_fds(&mut c);
    let mut s = Sleeper(c.spawn().expect("spawn nice taskset sleep"));
    let pid = s.pid();
    assert!(wait_sleeping(pid), "sleep never went to sleep");
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), "300").unwrap();
    let state = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let nice = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(16)
            .unwrap_or("")
            .to_string();
        let cpus = sig_field(pid, "Cpus_allowed_list:");
        let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap_or_default();
        (nice, cpus, oom.trim().to_string())
    };
    let before = state(pid);
    assert_eq!(
        before,
        ("7".to_string(), "0".to_string(), "300".to_string())
    );
    let img = d.join("img");
    checkpoint_reaping(pid, &mut s.0, &img);
    restart_detached(&img);
    let after = state(pid);
    // SAFETY: kill of the pid we restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        after, before,
        "nice, affinity, oom_score_adj changed across the restart"
    );
}

/// Page data damaged in an image file: restart builds the processes while
/// a thread checks the page section, then fails with the checksum's
/// message and leaves nothing behind; the intact image restarts.
#[test]
fn damaged_page_data_fails_restart_leaving_nothing() {
    if !is_root() {
        skip("damaged_page_data_fails_restart_leaving_nothing: needs root");
        return;
    }
    let d = tmpdir("damaged-pages");
    let mut s = Sleeper::start();
    let pid = s.pid();
    assert!(wait_sleeping(pid), "sleep never went to sleep");
    let img = d.join("img");
    checkpoint_reaping(pid, &mut s.0, &img);
    let bytes = std::fs::read(&img).unwrap();
    let (data, pages) = records(&bytes)
        .iter()
        .rev()
        .find_map(|r| match r.body {
            Body::Pages { hdr, data_offset } => Some((data_offset as usize, hdr.nr_pages)),
            _ => None,
        })
        .expect("the image has page data");
    let mut damaged = bytes.clone();
    damaged[data + pages as usize * 4096 / 2] ^= 0x40;
    let forged = d.join("damaged");
    std::fs::write(&forged, &damaged).unwrap();
    let kill_restored = || {
        // SAFETY: kill of the pid we restored.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while pid_present(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let out = ckpt()
        .args(["restart", "--detach"])
        .arg(&forged)
        .output()
        .unwrap();
    if out.status.success() {
        kill_restored();
        panic!("the damaged image restarted");
    }
    let err = assert_clean_failure(&out, "restart of damaged page data");
    assert!(err.contains("checksum"), "{err}");
    assert!(!pid_present(pid), "a failed restart left pid {pid}");
    restart_detached(&img);
    kill_restored();
}

/// A tree whose stdout is a pipe read by this test (outside the tree): after
/// the restart the tree writes into the very same pipe, so the reader sees
/// the numbers go on with no gap or repeat.
#[test]
fn pipe_to_an_outside_reader_reconnects() {
    if !is_root() {
        skip("pipe_to_an_outside_reader_reconnects: needs root");
        return;
    }
    let d = tmpdir("outpipe");
    let mut c = Command::new("sh");
    c.args([
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done",
    ]);
    only_std_fds(&mut c);
    c.stdout(Stdio::piped());
    // SAFETY: setsid is async-signal-safe; the tree gets its own session
    // (restored as such), so killing it by group at the end is exact.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    };
    let mut child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap());
    let kill_tree = || {
        // SAFETY: kill the tree's process group (its own session).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    };
    let soon = || std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut got: Vec<u64> = Vec::new();
    let deadline = soon();
    while got.len() < 20 {
        let Ok(Some(l)) = line_before(&mut lines, deadline) else {
            kill_tree();
            panic!("the tree wrote fewer than 20 lines in 20 s");
        };
        got.push(l.parse().unwrap());
    }
    let img = d.join("img");
    checkpoint_reaping(pid, &mut child, &img);
    // The writers are gone: read what is left up to end of file.
    let deadline = soon();
    while let Ok(Some(l)) = line_before(&mut lines, deadline) {
        got.push(l.parse().unwrap());
    }
    restart_detached(&img);
    // Same reader, same pipe: the numbers go on. Until the restored writer
    // runs, the pipe reads as end of file: poll for it, bounded.
    let before = got.len();
    let deadline = soon();
    while got.len() < before + 20 {
        match line_before(&mut lines, deadline) {
            Ok(Some(l)) => got.push(l.parse().unwrap()),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            _ => break,
        }
    }
    kill_tree();
    assert!(
        got.len() >= before + 20,
        "no output after restart (got {} lines)",
        got.len()
    );
    let want: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(got, want, "numbers lost or repeated across the restart");
}

/// A real-time policy with SCHED_RESET_ON_FORK and its priority come back.
#[test]
fn realtime_policy_survives() {
    if !is_root() {
        skip("realtime_policy_survives: needs root");
        return;
    }
    let d = tmpdir("rtpolicy");
    let mut s = Sleeper::start();
    let pid = s.pid();
    assert!(wait_sleeping(pid), "sleep never went to sleep");
    let want = libc::SCHED_RR | libc::SCHED_RESET_ON_FORK;
    let p = libc::sched_param { sched_priority: 3 };
    // SAFETY: p is a valid sched_param; pid is our child.
    let rc = unsafe { libc::sched_setscheduler(pid, want, &p) };
    assert_eq!(
        rc,
        0,
        "sched_setscheduler: {}",
        std::io::Error::last_os_error()
    );
    let policy = |pid: i32| {
        let mut p = libc::sched_param { sched_priority: -1 };
        // SAFETY: p is a valid out-pointer.
        let prio = unsafe { libc::sched_getparam(pid, &mut p) };
        // SAFETY: plain syscall.
        let pol = unsafe { libc::sched_getscheduler(pid) };
        (pol, if prio == 0 { p.sched_priority } else { -1 })
    };
    assert_eq!(policy(pid), (want, 3));
    let img = d.join("img");
    checkpoint_reaping(pid, &mut s.0, &img);
    restart_detached(&img);
    let after = policy(pid);
    // SAFETY: kill of the pid we restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(
        after,
        (want, 3),
        "policy or priority changed across the restart"
    );
}

/// A stopped process is restored stopped by the same signal, and runs on
/// when continued.
#[test]
fn stopped_process_stays_stopped() {
    if !is_root() {
        skip("stopped_process_stays_stopped: needs root");
        return;
    }
    let d = tmpdir("stopped");
    let mut c = Command::new("sleep");
    c.arg("1000");
    only_std_fds(&mut c);
    // Its own session: when the restorer (its parent after the restart)
    // exits, the kernel sends SIGHUP to a stopped process group that
    // becomes orphaned within the parent's session, which an own session
    // is not. (SIGTSTP, which orphaned groups ignore, is covered by ZDTM
    // stopped03, whose parent is restored with it.)
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        })
    };
    let mut s = Sleeper(c.spawn().expect("spawn sleep"));
    let pid = s.pid();
    assert!(wait_sleeping(pid), "sleep never went to sleep");
    // SAFETY: signal to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let state = run_state;
    let mut st = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: st is a valid out-pointer; pid is our child.
        let w = unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED | libc::WNOHANG) };
        if w == pid {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sleep did not stop on SIGSTOP (state {})",
            state(pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(libc::WIFSTOPPED(st) && libc::WSTOPSIG(st) == libc::SIGSTOP);
    let img = d.join("img");
    checkpoint_reaping(pid, &mut s.0, &img);
    let json = ckpt()
        .args(["inspect", "--json"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(json.status.success());
    restart_detached(&img);
    let stopped = wait_until_state(pid, "T");
    // SAFETY: signals to the pid we restored.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let running = wait_until_state(pid, "S");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        stopped,
        "restored process is not stopped (state {})",
        state(pid)
    );
    assert!(running, "restored process did not continue on SIGCONT");
    let text = String::from_utf8_lossy(&json.stdout);
    assert!(
        text.contains(&format!("\"exit_status\": {}", (libc::SIGSTOP << 8) | 0x7f)),
        "image does not record the stop by SIGSTOP"
    );
}

/// The state letter of `pid` from /proc/PID/stat ("?" when gone).
fn run_state(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Waits (bounded poll of /proc: the process is not our child) until `pid`
/// is in state `want`.
fn wait_until_state(pid: i32, want: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if run_state(pid) == want {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// Runs `argv`, waits until `ready` says it has built its state, and checks
/// that `ckpt checkpoint` refuses it with a message naming the pid and
/// containing `why`, leaves it running untraced, and writes no page data.
fn assert_refused(name: &str, argv: &[&str], ready: &dyn Fn(i32) -> bool, why: &str) {
    assert_refused_in(name, argv, ready, why, "S");
}

/// [`assert_refused`] for a process that must be left in `state`.
fn assert_refused_in(
    name: &str,
    argv: &[&str],
    ready: &dyn Fn(i32) -> bool,
    why: &str,
    state: &str,
) {
    let d = tmpdir(name);
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]);
    only_std_fds(&mut c);
    let p = Sleeper(
        c.spawn()
            .unwrap_or_else(|e| panic!("{name}: spawn {argv:?}: {e}")),
    );
    let pid = p.pid();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // A bounded poll: these programs cannot say when they are ready.
    while !ready(pid) {
        assert!(std::time::Instant::now() < deadline, "{name}: never ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let img = d.join("img");
    let out = ckpt()
        .args(["checkpoint", &pid.to_string(), "-o"])
        .arg(&img)
        .output()
        .unwrap();
    let err = assert_clean_failure(&out, name);
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains(why),
        "{name}: {err}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.contains("TracerPid:\t0"),
        "{name}: left traced or gone: {status}"
    );
    // Just detached, a sleeper runs for a moment to re-enter its sleep.
    assert!(
        wait_until_state(pid, state),
        "{name}: not as before (state {}, want {state})",
        run_state(pid)
    );
    let len = std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0);
    assert!(
        len < 4096,
        "{name}: refused image holds {len} bytes (page data?)"
    );
}

/// State ckpt cannot save yet is refused, never saved as something else.
#[test]
fn unsupported_process_state_is_refused() {
    if !is_root() {
        skip("unsupported_process_state_is_refused: needs root");
        return;
    }
    let sleeping = |pid: i32| wait_sleeping(pid);
    // Own uts namespace: would come back with the host's hostname.
    assert_refused(
        "uts-namespace",
        &["unshare", "--uts", "sleep", "1000"],
        &|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|l| l.ends_with("sleep"))
                && sleeping(pid)
        },
        "uts namespace",
    );
    let py = |code: &str| ["python3", "-c", code].map(str::to_owned);
    // Stopped, with a second SIGSTOP queued: it cannot stay queued while
    // ckpt injects syscalls.
    assert_refused_in(
        "pending-sigstop",
        &["sleep", "1000"],
        &|pid| {
            if !sleeping(pid) {
                return false;
            }
            // SAFETY: signals to our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            let stopped = wait_until_state(pid, "T");
            if stopped {
                // SAFETY: as above; tgkill queues it on the stopped thread.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGSTOP) };
            }
            stopped
        },
        "pending SIGSTOP",
        "T",
    );
    // A read lease (F_SETLEASE 1024, F_RDLCK 0); file locks are saved
    // (tests/restore_locks.rs), leases not.
    let d = tmpdir("lease");
    let lockfile = d.join("lockfile");
    let locked = d.join("locked");
    let lock = py(&format!(
        "import fcntl,time\nopen('{0}','w').close()\nf=open('{0}','r')\nfcntl.fcntl(f,1024,0)\nopen('{1}','w').close()\ntime.sleep(1000)",
        lockfile.display(),
        locked.display()
    ));
    assert_refused(
        "lease",
        &lock.each_ref().map(String::as_str),
        &|pid| locked.exists() && sleeping(pid),
        "read lease",
    );
}

// ---------------------------------------------------------------------------
// Images edited by someone who can recompute the checksum: records removed,
// or the image cut at a record boundary and given a fresh tail. Restart must
// refuse each before creating anything, naming what is wrong.
// ---------------------------------------------------------------------------

fn pid_present(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Every record of an image (the tail excluded), with its page data.
fn records(bytes: &[u8]) -> Vec<RawRecord> {
    let mut rd = ImageReader::new(bytes);
    let mut out = Vec::new();
    while let Some(r) = rd.next_record().expect("a valid image") {
        if r.rtype != T_TAIL {
            out.push(r);
        }
    }
    out
}

/// A new image of `recs` (page data taken from `bytes`) with a fresh,
/// valid tail: what anyone can produce.
fn rebuild(bytes: &[u8], recs: &[&RawRecord]) -> Vec<u8> {
    let mut w = ImageWriter::new(Vec::new());
    for r in recs {
        match &r.body {
            // The metadata's own checksum, as a forger would fix it.
            Body::Meta(_) if r.rtype == T_META_END => {
                let m: MetaEnd = r.decode().unwrap();
                w.meta_end(m.nr_plans, m.compression).unwrap()
            }
            Body::Meta(p) => w.write_raw(r.rtype, p).unwrap(),
            Body::Pages { hdr, data_offset } => {
                let start = *data_offset as usize;
                let data = &bytes[start..start + hdr.nr_pages as usize * 4096];
                w.write_pages_flags(hdr.addr, data, hdr.flags).unwrap()
            }
        }
    }
    w.finish().unwrap()
}

/// `ckpt restart --detach IMG` must refuse; returns its message.
fn refused(img: &Path, what: &str) -> String {
    let out = ckpt()
        .args(["restart", "--detach"])
        .arg(img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: restart was not refused: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

#[test]
fn edited_images_are_refused_before_anything_is_created() {
    if !is_root() {
        skip("edited_images_are_refused_before_anything_is_created: needs root");
        return;
    }
    let d = tmpdir("edited");
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import threading,time\nfor _ in range(3): threading.Thread(target=time.sleep,args=(1000,)).start()\ntime.sleep(1000)",
    ]);
    only_std_fds(&mut c);
    let Ok(mut child) = c.spawn() else {
        skip("edited_images_are_refused_before_anything_is_created: python3 missing");
        return;
    };
    let pid = child.id() as i32;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // A bounded poll: python cannot say when its threads are up.
    while std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
        < 4
    {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("python never started its threads");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let img = d.join("img");
    let ck = ckpt()
        .args(["checkpoint", &pid.to_string(), "-o"])
        .arg(&img)
        .spawn()
        .unwrap();
    let _ = child.wait();
    assert!(
        ck.wait_with_output().unwrap().status.success(),
        "checkpoint failed"
    );
    let bytes = std::fs::read(&img).unwrap();
    let recs = records(&bytes);
    let all: Vec<&RawRecord> = recs.iter().collect();
    let forged = d.join("forged");

    // One thread's four records removed (thread, regs, xstate, debug regs).
    let last_thread = recs.iter().rposition(|r| r.rtype == T_THREAD).unwrap();
    assert_eq!(recs[last_thread + 3].rtype, T_X86_DEBUGREGS);
    let mut fewer = all.clone();
    fewer.drain(last_thread..last_thread + 4);
    std::fs::write(&forged, rebuild(&bytes, &fewer)).unwrap();
    let err = refused(&forged, "a thread removed");
    assert!(
        err.contains("process-end") && err.contains("threads"),
        "{err}"
    );
    assert!(!pid_present(pid), "a refused restart created pid {pid}");

    // Cut after every record, each with a fresh tail.
    for k in 1..all.len() {
        std::fs::write(&forged, rebuild(&bytes, &all[..k])).unwrap();
        let what = format!("cut after record {k} of {}", all.len());
        let err = refused(&forged, &what);
        assert!(
            err.contains("cut short") || err.contains("process-end") || err.contains("arch record"),
            "{what}: {err}"
        );
        assert!(
            !pid_present(pid),
            "{what}: a refused restart created pid {pid}"
        );
    }

    // A record of a type this ckpt does not know, inside the first
    // process: refused, unless its writer marked it optional.
    let unknown = |rtype: u32| RawRecord {
        rtype,
        offset: 0,
        len: 16,
        body: Body::Meta(vec![1, 2, 3, 4, 5, 6, 7, 8]),
    };
    let first = recs.iter().position(|r| r.rtype == T_PROCESS).unwrap() + 1;
    let (mandatory, optional) = (unknown(0x7777), unknown(T_OPTIONAL | 0x7777));
    let mut with = all.clone();
    with.insert(first, &mandatory);
    std::fs::write(&forged, rebuild(&bytes, &with)).unwrap();
    let err = refused(&forged, "an unknown mandatory record");
    assert!(err.contains("unknown record type 30583"), "{err}");
    assert!(!pid_present(pid), "a refused restart created pid {pid}");

    // The rebuilt whole image, with an unknown optional record, restarts:
    // the edits above, not the rebuilding, are what restart refused.
    let mut with = all.clone();
    with.insert(first, &optional);
    std::fs::write(&forged, rebuild(&bytes, &with)).unwrap();
    let shown = ckpt().arg("inspect").arg(&forged).output().unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("skipped (optional)"),
        "inspect does not show the optional record as skipped"
    );
    let out = ckpt()
        .args(["restart", "--detach"])
        .arg(&forged)
        .output()
        .unwrap();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    // SAFETY: kill of the pid we restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(threads, 4, "restored with {threads} threads");
}
