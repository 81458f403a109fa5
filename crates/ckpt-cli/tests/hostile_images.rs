//! Images edited by someone who can recompute the checksum: records
//! removed, or the image cut at a record boundary and given a fresh tail.
//! Restart must refuse each before creating anything, naming what is wrong.

#[path = "common/skip.rs"]
mod skip;
use skip::skip;

use ckpt_image::{Body, ImageReader, ImageWriter, RawRecord, T_TAIL, T_THREAD, T_X86_DEBUGREGS};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ckpt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ckpt"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pid_exists(pid: i32) -> bool {
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
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    let Ok(mut child) = c.spawn() else {
        skip("edited_images_are_refused_before_anything_is_created: python3 missing");
        return;
    };
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(20);
    // A bounded poll: python cannot say when its threads are up.
    while std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
        < 4
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("python never started its threads");
        }
        std::thread::sleep(Duration::from_millis(10));
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
    assert!(!pid_exists(pid), "a refused restart created pid {pid}");

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
            !pid_exists(pid),
            "{what}: a refused restart created pid {pid}"
        );
    }

    // The rebuilt whole image restarts: the edits above, not the
    // rebuilding, are what restart refused.
    std::fs::write(&forged, rebuild(&bytes, &all)).unwrap();
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
