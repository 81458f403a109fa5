//! timerfds and signalfds (see `workloads/timerfd.c` for what the workload
//! verifies itself after restart: rates, time left, absolute expiries,
//! unread expirations, masks, signals read). Here, from outside, the
//! fdinfo lines that must not change (clock, settime flags, interval,
//! sigmask, status flags) are compared before the checkpoint and after the
//! restart.
//!
//! The round trips need root; without it they print `SKIP: ...` and pass.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use ckpt_image::*;

use common::*;

fn asleep(env: &TestEnv, w: &mut Workload) {
    env.wait_blocked_in(w, &[libc::SYS_rt_sigsuspend]);
}

/// For every timerfd and signalfd of `pid`: its fd and the fdinfo lines a
/// restart keeps (not the time left or the ticks, which move).
fn kept_state(pid: i32) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    let dir = format!("/proc/{pid}/fd");
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {dir}: {e}")) {
        let e = e.expect("dir entry");
        let Ok(link) = fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if link != "anon_inode:[timerfd]" && link != "anon_inode:[signalfd]" {
            continue;
        }
        let fd: i32 = e.file_name().to_string_lossy().parse().expect("fd number");
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let kept: Vec<&str> = info
            .lines()
            .filter(|l| {
                [
                    "flags:",
                    "clockid:",
                    "settime flags:",
                    "it_interval:",
                    "sigmask:",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .collect();
        v.push((fd, format!("{link} {}", kept.join(" | "))));
    }
    v.sort();
    v
}

/// Starts `timerfd MODE`, checkpoints (killing it) and restarts it `times`
/// times, checking each time that the kept fdinfo lines are the same and
/// that it sleeps again; then SIGTERM: the workload must PASS.
fn roundtrip(test: &str, mode: &str, expect_fds: usize, times: usize) {
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("timerfd", &[mode]) else {
        return;
    };
    asleep(&env, &mut w);
    let before = kept_state(w.pid);
    assert_eq!(
        before.len(),
        expect_fds,
        "{test}: the workload should hold {expect_fds} timerfds/signalfds: {before:#?}"
    );
    let img = env.path("img");
    for _ in 0..times {
        env.checkpoint_and_kill(&mut w, &img);
        env.restart_detached(&mut w, &img);
        asleep(&env, &mut w);
        let after = kept_state(w.pid);
        assert_eq!(
            after,
            before,
            "{test}: clock, settime flags, interval, mask or status flags changed (left: after restart){}",
            w.diagnostics()
        );
    }
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

/// Both cases of the workload pass without any checkpoint (needs no root).
#[test]
fn timerfd_workloads_pass_without_checkpoint() {
    let env = TestEnv::without_root("timerfd_workloads_pass_without_checkpoint");
    for mode in ["timers", "signalfd", "shared", "absmono"] {
        if !env.run_control("timerfd", &[mode], asleep) {
            return;
        }
    }
}

/// A periodic CLOCK_MONOTONIC timer keeps its 50 ms rate; a relative
/// one-shot of 1 hour (and a CLOCK_BOOTTIME_ALARM one of 2 hours) keeps
/// the time it had left; absolute CLOCK_REALTIME and CLOCK_MONOTONIC
/// timers keep their expiry and flags; a periodic absolute timer counts
/// every expiry since its first; 3 and 1 unread expirations read back
/// exactly, through a dup()ed fd sharing the description; a 20 us timer
/// keeps firing; disarmed timers stay disarmed (with their interval).
#[test]
fn restore_timerfds() {
    roundtrip("restore_timerfds", "timers", 12, 1);
}

/// The same timers checkpointed and restarted twice: what a restart set up
/// (ticks set again, absolute expiries) saves and restores again.
#[test]
fn restore_timerfds_twice() {
    roundtrip("restore_timerfds_twice", "timers", 12, 2);
}

/// A signalfd for SIGUSR1|SIGUSR2 (O_NONBLOCK) with a sigqueue()d SIGUSR1
/// pending reads it, with its value, after restart; its mask and that of a
/// blocking SIGUSR2 signalfd are the same.
#[test]
fn restore_signalfd() {
    roundtrip("restore_signalfd", "signalfd", 2, 1);
}

/// A timerfd with 3 unread expirations shared by a parent and the child it
/// forked: the child reads the 3 after restart, leaving none for the
/// parent.
#[test]
fn restore_timerfd_shared_across_fork() {
    roundtrip("restore_timerfd_shared_across_fork", "shared", 1, 1);
}

/// Time left of timerfd `fd` of `pid`, from its fdinfo.
fn time_left(pid: i32, fd: i32) -> f64 {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .unwrap_or_else(|e| panic!("fdinfo {fd} of {pid}: {e}"));
    let v = info
        .lines()
        .find_map(|l| l.strip_prefix("it_value: ("))
        .and_then(|v| v.strip_suffix(')'))
        .and_then(|v| v.split_once(", "))
        .unwrap_or_else(|| panic!("no it_value in {info}"));
    v.0.parse::<f64>().expect("sec") + v.1.parse::<f64>().expect("nsec") / 1e9
}

/// Copies image `src` to `dst` with every timerfd's `boot_id` replaced
/// (records decoded, written again with a fresh checksum).
fn with_boot_id(src: &Path, dst: &Path, boot_id: &[u8]) {
    let data = fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let mut r = ImageReader::new(&data[..]);
    let mut w = ImageWriter::new(Vec::new());
    while let Some(rec) = r.next_record().expect("the image reads") {
        match &rec.body {
            Body::Pages { hdr, data_offset } => {
                let off = *data_offset as usize;
                let len = hdr.nr_pages as usize * PAGE_SIZE as usize;
                w.write_pages_flags(hdr.addr, &data[off..off + len], hdr.flags)
                    .expect("encode");
            }
            Body::Meta(_) => match rec.decode_any().expect("a known record") {
                AnyRecord::Tail(_) => {}
                // (Its checksum covers the edit.)
                AnyRecord::MetaEnd(m) => w.meta_end(m.nr_plans, m.compression).expect("encode"),
                AnyRecord::Timerfd(mut t) => {
                    t.boot_id = Text(boot_id.to_vec());
                    w.write_any(&AnyRecord::Timerfd(t)).expect("encode");
                }
                a => w.write_any(&a).expect("encode"),
            },
        }
    }
    fs::write(dst, w.finish().expect("finish")).expect("write the edited image");
}

/// An absolute CLOCK_MONOTONIC timer restarted in the boot it was saved
/// in keeps its expiry: the time checkpointed (>= 1.5 s here) is gone from
/// its time left, while a relative timer keeps the time it had left. The
/// same image marked as saved in another boot (`boot_id` edited): the
/// absolute timer gets the time it had left too, as the old expiry means
/// nothing on the new clock.
#[test]
fn restore_absolute_monotonic_timer_in_same_and_other_boot() {
    let test = "restore_absolute_monotonic_timer_in_same_and_other_boot";
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("timerfd", &["absmono"]) else {
        return;
    };
    asleep(&env, &mut w);
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let saved = {
        let data = fs::read(&img).expect("read image");
        let mut r = ImageReader::new(&data[..]);
        let mut left = Vec::new();
        while let Some(rec) = r.next_record().expect("the image reads") {
            if let Body::Meta(_) = rec.body {
                if let Ok(AnyRecord::Timerfd(t)) = rec.decode_any() {
                    left.push((
                        t.settime_flags,
                        t.value_sec as f64 + t.value_nsec as f64 / 1e9,
                    ));
                }
            }
        }
        left.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
        assert_eq!(left.len(), 2, "two timerfd records: {left:?}");
        (left[1].1, left[0].1) // (absolute, relative)
    };
    let other = env.path("img-other-boot");
    with_boot_id(&img, &other, b"00000000-0000-0000-0000-000000000000");
    const DOWN: f64 = 1.5;
    for (image, same_boot) in [(&img, true), (&other, false)] {
        // The time the process is away is what this test measures.
        std::thread::sleep(Duration::from_secs_f64(DOWN));
        env.restart_detached(&mut w, image);
        let (abs, rel) = (time_left(w.pid, 100), time_left(w.pid, 101));
        assert!(
            rel <= saved.1 && rel > saved.1 - 1.0,
            "{test}: the relative timer has {rel:.3} s left, saved with {:.3}{}",
            saved.1,
            w.diagnostics()
        );
        if same_boot {
            assert!(
                abs <= saved.0 - DOWN && abs > saved.0 - DOWN - 30.0,
                "{test}: same boot: the absolute timer has {abs:.3} s left, saved with {:.3} s, {DOWN} s away: its expiry moved{}",
                saved.0,
                w.diagnostics()
            );
        } else {
            assert!(
                abs <= saved.0 && abs > saved.0 - 1.0,
                "{test}: other boot: the absolute timer has {abs:.3} s left, saved with {:.3}: not the time it had left{}",
                saved.0,
                w.diagnostics()
            );
        }
        asleep(&env, &mut w);
        env.signal_and_expect_pass(&mut w, libc::SIGTERM);
        // Restored detached, it is not our child: whoever reaps it may take
        // a moment, and the next restart needs its pid free.
        assert!(
            wait_until(TIMEOUT, || !pid_exists(w.pid)),
            "{test}: pid {} was not reaped after it exited",
            w.pid
        );
    }
}
