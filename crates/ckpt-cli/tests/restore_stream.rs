//! Streamed and compressed images: `ckpt restart -` restores from a pipe
//! as it reads, holding a bounded part of the image; a large one restarts
//! intact from a file, its pages copied by several threads, and from what
//! `checkpoint -o -` wrote into a pipe; `--compress lz4|zstd`
//! images restart from files and streams; a stream whose pages are
//! corrupt or cut short leaves nothing running. See `workloads/bulk.c`.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `cat PATH` with its output as a stream for `ckpt restart -`.
fn cat(path: &Path) -> (Child, Stdio) {
    let mut c = Command::new("cat")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cat");
    let out = c.stdout.take().expect("piped");
    (c, Stdio::from(out))
}

/// `cat IMG | ckpt restart - --detach EXTRA` as
/// [`TestEnv::restart_streamed`] does it; `cat` must succeed too.
fn restart_from_cat(env: &TestEnv, w: &mut Workload, img: &Path, extra: &[&OsStr]) {
    let (mut c, stream) = cat(img);
    env.restart_streamed(w, stream, extra);
    assert!(c.wait().unwrap().success(), "cat failed");
}

/// The stream offset of the first page data of image `bytes` (after its
/// `meta-end` record).
fn first_page_data(bytes: &[u8]) -> u64 {
    let mut rd = ckpt_image::ImageReader::new(bytes);
    let mut after_meta = false;
    while let Some(r) = rd.next_record().expect("a valid image") {
        after_meta |= r.rtype == ckpt_image::T_META_END;
        if let (true, ckpt_image::Body::Pages { data_offset, .. }) = (after_meta, &r.body) {
            return *data_offset;
        }
    }
    panic!("no page data after the metadata");
}

/// "at most N KiB" from the restart log line of a streamed restore.
fn held_kib(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("held at once"))
        .unwrap_or_else(|| panic!("no streamed-restore line in the log:\n{log}"));
    line.split("at most ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable: {line}"))
}

/// A 256 MiB process restarted from a pipe: it holds at most 64 MiB of its
/// pages at once beyond the process, and comes back intact.
#[test]
fn streamed_restart_holds_a_bounded_part_of_the_image() {
    let Some(env) = TestEnv::new("streamed_restart_holds_a_bounded_part_of_the_image") else {
        return;
    };
    let Some(mut w) = env.start_workload("bulk", &["256"]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let log = env.path("restart.log");
    restart_from_cat(&env, &mut w, &img, &[OsStr::new("--log"), log.as_os_str()]);
    let held = held_kib(&std::fs::read_to_string(&log).unwrap());
    assert!(
        held <= 64 << 10,
        "the restore held {held} KiB of a 256 MiB image at once"
    );
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// A 256 MiB process restarted from a file, its pages copied by the task
/// and by ckpt's threads at once (from 32 MiB, with two cores), comes back
/// intact, every byte checked; the same image with one byte of its pages
/// changed is refused (the checksum) and leaves nothing running.
#[test]
fn bulk_restart_from_a_file_is_intact_and_checked() {
    let Some(env) = TestEnv::new("bulk_restart_from_a_file_is_intact_and_checked") else {
        return;
    };
    let Some(mut w) = env.start_workload("bulk", &["256"]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let mut bytes = std::fs::read(&img).unwrap();
    let pages = first_page_data(&bytes) as usize;
    bytes[pages + (200 << 20) + 12345] ^= 0x40;
    let bad = env.path("img-flipped");
    std::fs::write(&bad, &bytes).unwrap();
    drop(bytes);
    let run = env.ckpt(["restart", bad.to_str().unwrap(), "--detach"]);
    assert!(
        !run.success() && run.stderr.contains("checksum"),
        "a changed page must be refused by its checksum:\n{}",
        run.describe()
    );
    env.assert_none_runs(&[w.pid], "after the changed image");
    env.restart_detached(&mut w, &img);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// `checkpoint -o -` into a pipe: the pages of a 64 MiB process, read by a
/// thread of ckpt ahead of its writes, come through whole; the process
/// restarts intact, every byte checked.
#[test]
fn checkpoint_into_a_pipe_restarts_intact() {
    use std::io::Read;
    let Some(env) = TestEnv::new("checkpoint_into_a_pipe_restarts_intact") else {
        return;
    };
    let Some(mut w) = env.start_workload("bulk", &["64"]) else {
        return;
    };
    let mut ck = spawn_checkpoint_to_pipe(w.pid);
    let mut out = ck.stdout.take().expect("stdout");
    // (Ends when ckpt closes its end: exits.)
    let reader = std::thread::spawn(move || {
        let mut image = Vec::new();
        out.read_to_end(&mut image).map(|_| image)
    });
    let status = wait_child(&mut ck);
    let mut err = String::new();
    let _ = ck.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(status.success(), "checkpoint -o - failed: {err}");
    let image = reader.join().unwrap().expect("read the stream");
    assert!(
        image.len() > 64 << 20,
        "the stream has {} bytes",
        image.len()
    );
    assert!(
        w.proc.wait_exit(TIMEOUT).is_some(),
        "the checkpoint kills it"
    );
    let img = env.path("img");
    std::fs::write(&img, &image).unwrap();
    env.restart_detached(&mut w, &img);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// `--compress`: a compressible 64 MiB process makes a small image that
/// `inspect` names, and restarts intact from the file (lz4) and from a
/// stream (zstd).
#[test]
fn compressed_images_restart_from_files_and_streams() {
    let Some(env) = TestEnv::new("compressed_images_restart_from_files_and_streams") else {
        return;
    };
    for (algo, streamed) in [("lz4", false), ("zstd", true)] {
        let Some(mut w) = env.start_workload("bulk", &["64", "compressible"]) else {
            return;
        };
        let img = env.path(&format!("img-{algo}"));
        env.checkpoint_and_kill_with(&mut w, &img, &[OsStr::new("--compress"), OsStr::new(algo)]);
        let size = std::fs::metadata(&img).unwrap().len();
        assert!(
            size < 16 << 20,
            "{algo}: the image of 64 MiB of repeated words is {size} bytes"
        );
        let shown = env.ckpt([OsStr::new("inspect"), img.as_os_str()]);
        assert!(
            shown.success() && shown.stdout.contains(&format!("{algo}-compressed")),
            "{algo}: inspect does not name the compression:\n{}",
            shown.describe()
        );
        if streamed {
            restart_from_cat(&env, &mut w, &img, &[]);
        } else {
            env.restart_detached(&mut w, &img);
        }
        env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    }
}

/// A stream whose page data was changed, or that ends inside the pages, is
/// refused once that is seen, and the processes made so far are gone: the
/// tree runs only after the whole image was read and its checksum is right.
/// An edit in the metadata is refused before anything is created.
#[test]
fn a_bad_stream_leaves_nothing_running() {
    let Some(env) = TestEnv::new("a_bad_stream_leaves_nothing_running") else {
        return;
    };
    let Some(mut w) = env.start_workload("bulk", &["64"]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let bytes = std::fs::read(&img).unwrap();
    let pages = first_page_data(&bytes) as usize;
    let mut flipped = bytes.clone();
    flipped[pages + (32 << 20)] ^= 1;
    let mut meta = bytes.clone();
    meta[200] ^= 1; // inside the head's text fields
    let cases = [
        ("flipped", flipped, "checksum"),
        ("cut", bytes[..pages + (40 << 20)].to_vec(), "ends"),
        ("meta", meta, "checksum"),
    ];
    for (name, data, says) in cases {
        let bad = env.path(&format!("img-{name}"));
        std::fs::write(&bad, &data).unwrap();
        let (mut c, stream) = cat(&bad);
        let run = env.ckpt_stdin(["restart", "-", "--detach"], stream);
        let _ = c.wait();
        assert!(
            !run.success() && run.stderr.contains(says),
            "{name}: a bad stream must be refused saying {says:?}:\n{}",
            run.describe()
        );
        env.assert_none_runs(&[w.pid], &format!("after the {name} stream"));
    }
    // The good image still restarts.
    restart_from_cat(&env, &mut w, &img, &[]);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// Pages a child shares copy-on-write with its parent are shared again
/// after a streamed restore: their data comes first in the stream and is
/// in place before the processes are forked (the `cow` workload checks the
/// page frames).
#[test]
fn streamed_restart_keeps_copy_on_write_sharing() {
    let Some(env) = TestEnv::new("streamed_restart_keeps_copy_on_write_sharing") else {
        return;
    };
    let Some(mut w) = env.start_workload("cow", &[]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let shown = env.ckpt([OsStr::new("inspect"), img.as_os_str()]);
    assert!(
        shown.stdout.contains("(early)"),
        "the image has no early pages, so this would test nothing:\n{}",
        shown.stdout
    );
    restart_from_cat(&env, &mut w, &img, &[]);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}
