//! Self-checkpoint: a process saves itself (all its threads, and with
//! `tree` its descendants) and carries on; restarted from that image, it
//! comes back inside the very same call, which then says `Resumed`.
//!
//! A process cannot ptrace itself, so the calling thread forks a helper
//! and waits for it inside the call, polling a pipe whose two ends both
//! stay in the caller (so the image holds that pipe, wholly). The helper
//! freezes the caller like any other tree (leaving itself out), writes a
//! marker byte into the pipe, saves everything (the pipe with its marker),
//! takes the marker out again through its own copy of the read end while
//! the caller is still frozen, lets the caller go and tells it "taken".
//! Restarted from the image, the caller's interrupted poll finds the
//! marker: the call returns `Resumed`. See docs/self-checkpoint.md.

use crate::checkpoint::{self, CheckpointOptions, Internal};
use crate::error::{Error, Result};
use crate::log::Log;
use crate::sys::{self, Pid};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a self-checkpoint returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfCheckpoint {
    /// The image is complete and this is the original process, still
    /// running; the id numbers the checkpoints of this process (1, 2, ...,
    /// counted on across restarts).
    Taken(u64),
    /// This process was restarted from the image this call made.
    Resumed,
}

/// What a self-checkpoint does besides saving the calling process.
#[derive(Debug, Clone, Default)]
pub struct SelfOptions {
    /// Include the caller's descendants (without it, a caller with child
    /// processes is refused: they would be missing after restart).
    pub tree: bool,
    /// Kill the caller once the image is complete (the call then returns
    /// only in the restarted process, with `Resumed`).
    pub kill: bool,
    /// See `CheckpointOptions::tcp_close`.
    pub tcp_close: bool,
}

/// Numbers the checkpoints this process took (restored with its memory).
static LAST_ID: AtomicU64 = AtomicU64::new(0);

/// The next checkpoint id of this process, for a checkpoint that succeeded.
pub(crate) fn next_id() -> u64 {
    LAST_ID.fetch_add(1, Ordering::SeqCst) + 1
}

/// The marker the image's pipe holds: its reader was restarted.
const RESUMED: u8 = b'R';
/// Helper to caller: the checkpoint is complete.
const TAKEN: u8 = b'T';
/// Helper to caller: it failed; errno (i32), length (u32), message follow.
const FAILED: u8 = b'E';

/// Checkpoints the calling process into `out` (a regular file, pipe or
/// socket open for writing; a regular file open for reading and writing
/// lets the frozen process write its own pages into it, which is fastest).
///
/// Returns `Taken(id)` once the image is complete, and `Resumed` when the
/// process was restarted from that image (`ckpt restart IMAGE`). The other
/// threads are frozen for the checkpoint and resume with the caller. On
/// failure the process carries on as it was.
///
/// In the image, `out` is saved as `/dev/null` open for writing: the
/// restarted process finds its own image neither as a stream that is over
/// nor as a file that may have been renamed (say from `IMAGE.tmp` to
/// `IMAGE`) or removed since. The log is written by the helper, a fork of
/// the caller: give a sink that writes to an fd.
///
/// ```no_run
/// use ckpt::self_checkpoint::{checkpoint_self, SelfCheckpoint, SelfOptions};
/// let image = std::fs::OpenOptions::new()
///     .read(true).write(true).create(true).truncate(true)
///     .open("/tmp/me.img")?;
/// match checkpoint_self(&image, &SelfOptions::default(), &mut ckpt::Log::default())? {
///     SelfCheckpoint::Taken(id) => println!("checkpoint {id} taken; carrying on"),
///     SelfCheckpoint::Resumed => println!("restarted from /tmp/me.img"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn checkpoint_self(
    out: impl AsFd,
    opts: &SelfOptions,
    log: &mut Log,
) -> Result<SelfCheckpoint> {
    let me = std::process::id() as Pid;
    let out = out.as_fd().as_raw_fd();
    let err = |what: &str, e: std::io::Error| Error::Sys {
        pid: me,
        what: format!("self-checkpoint: {what}"),
        source: e,
    };
    // Before anything: an fd the image cannot be written to.
    let fl = sys::status_flags(out).map_err(|e| err("the image fd", e))?;
    if fl & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(err(
            "the image fd is open for reading only; open it for writing",
            std::io::Error::from_raw_os_error(libc::EBADF),
        ));
    }
    let (r, w) = sys::pipe().map_err(|e| err("pipe", e))?;
    let (go_r, go_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            sys::close(r);
            sys::close(w);
            return Err(err("pipe", e));
        }
    };
    let yama = needs_ptracer();
    // Taken only once the checkpoint succeeds (the image holds the number
    // before it; the restarted process takes it in turn).
    let id = LAST_ID.load(Ordering::SeqCst) + 1;
    let copts = CheckpointOptions {
        leave_running: !opts.kill,
        tcp_close: opts.tcp_close,
        single_process: !opts.tree,
        ..Default::default()
    };
    let child = match sys::fork() {
        Ok(0) => {
            sys::close(go_w);
            // Out of the caller's session and group: a killed caller's pid
            // must be free for its restart even while the helper finishes.
            let _ = sys::setsid();
            helper(me, out, (r, w), go_r, copts, log)
        }
        Ok(c) => c,
        Err(e) => {
            for fd in [r, w, go_r, go_w] {
                sys::close(fd);
            }
            return Err(err("fork the checkpoint helper", e));
        }
    };
    sys::close(go_r);
    if yama {
        // Yama's ptrace_scope 1 lets only ancestors trace: name the helper.
        let _ = sys::prctl(libc::PR_SET_PTRACER, child as u64);
    }
    // The helper starts once it sees EOF here, with no fd of ours but the
    // pipe's ends left to be saved.
    sys::close(go_w);
    let res = wait_helper(me, child, r);
    if yama {
        let _ = sys::prctl(libc::PR_SET_PTRACER, 0);
    }
    sys::close(r);
    sys::close(w);
    let reply = res?;
    LAST_ID.store(id, Ordering::SeqCst);
    match reply {
        Reply::Resumed => Ok(SelfCheckpoint::Resumed),
        Reply::Taken => Ok(SelfCheckpoint::Taken(id)),
    }
}

enum Reply {
    Taken,
    Resumed,
}

/// Waits in the call for the helper's answer, or (in the restarted
/// process) finds the marker. Every wait is a poll with a timeout, so a
/// helper that died is noticed.
fn wait_helper(me: Pid, child: Pid, r: i32) -> Result<Reply> {
    let mut buf = Vec::new();
    let mut helper_gone = false;
    loop {
        if sys::poll_in(r, 100) {
            let mut chunk = [0u8; 4096];
            match sys::read(r, &mut chunk) {
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Err(Error::Sys {
                        pid: me,
                        what: "self-checkpoint: read the helper's answer".into(),
                        source: e,
                    })
                }
            }
        }
        match parse(&buf) {
            Some(Ok(Reply::Resumed)) => return Ok(Reply::Resumed),
            Some(reply) => {
                // The helper exits right after answering.
                reap(child);
                return reply.map_err(|(errno, message)| Error::SelfCheckpoint { errno, message });
            }
            None => {}
        }
        if helper_gone {
            return Err(Error::Sys {
                pid: me,
                what: "self-checkpoint: the helper process ended without an answer".into(),
                source: std::io::Error::from_raw_os_error(libc::ECHILD),
            });
        }
        // Gone (or reaped by someone else, with SIGCHLD ignored): one more
        // look at the pipe, then give up.
        helper_gone = !matches!(sys::wait_nohang(child), Ok(0));
    }
}

/// Reaps the helper, which exits right after answering (10 s at most).
fn reap(child: Pid) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while matches!(sys::wait_nohang(child), Ok(0)) {
        if std::time::Instant::now() > deadline {
            let _ = sys::kill(child, libc::SIGKILL);
            let _ = sys::wait(child, 0);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The answer in `buf`, once complete.
#[allow(clippy::type_complexity)]
fn parse(buf: &[u8]) -> Option<std::result::Result<Reply, (i32, String)>> {
    match *buf.first()? {
        RESUMED => Some(Ok(Reply::Resumed)),
        TAKEN => Some(Ok(Reply::Taken)),
        FAILED if buf.len() >= 9 => {
            let errno = i32::from_le_bytes(buf[1..5].try_into().ok()?);
            let len = u32::from_le_bytes(buf[5..9].try_into().ok()?) as usize;
            let msg = buf.get(9..9 + len)?;
            Some(Err((errno, String::from_utf8_lossy(msg).into_owned())))
        }
        FAILED => None,
        _ => Some(Err((libc::EPROTO, "garbled answer from the helper".into()))),
    }
}

/// Yama (ptrace_scope 1) lets a process trace only its descendants unless
/// it has CAP_SYS_PTRACE; the helper is the caller's child.
fn needs_ptracer() -> bool {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if scope != Some(1) {
        return false;
    }
    let cap_eff = crate::procfs::status(std::process::id() as Pid)
        .map(|s| s.hex("CapEff"))
        .unwrap_or(0);
    const CAP_SYS_PTRACE: u32 = 19;
    cap_eff & (1 << CAP_SYS_PTRACE) == 0
}

/// The forked helper: checkpoints `caller` (leaving itself out), answers
/// on the pipe and exits. Never returns.
fn helper(
    caller: Pid,
    out: i32,
    (r, w): (i32, i32),
    go_r: i32,
    mut opts: CheckpointOptions,
    log: &mut Log,
) -> ! {
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Until the caller has closed its end of the go pipe (and named
        // us its ptracer where Yama wants it).
        let mut b = [0u8; 1];
        while matches!(sys::read(go_r, &mut b), Ok(n) if n > 0) {}
        sys::close(go_r);
        let me = std::process::id() as Pid;
        opts.internal = Internal {
            exclude: vec![me],
            stand_ins: vec![(caller, out)],
            on_frozen: Some(Arc::new(move || {
                sys::write_all(w, &[RESUMED])?;
                Ok(Box::new(TakeBack(r)) as Box<dyn std::any::Any>)
            })),
        };
        let file = match sys::dup_above(out, 3) {
            Ok(fd) => std::fs::File::from(sys::own_fd(fd)),
            Err(e) => return Err((e.raw_os_error().unwrap_or(libc::EIO), e.to_string())),
        };
        let sink = std::io::BufWriter::with_capacity(1 << 20, file);
        match checkpoint::checkpoint(caller, sink, &opts, log) {
            Ok(_) => Ok(()),
            Err(e) => Err((errno_of(&e), e.to_string())),
        }
    }));
    let msg = match answer {
        Ok(Ok(())) => vec![TAKEN],
        Ok(Err((errno, text))) => failed(errno, &text),
        Err(_) => failed(libc::EIO, "the checkpoint helper panicked"),
    };
    let _ = sys::write_all(w, &msg);
    sys::exit_now(0)
}

fn failed(errno: i32, text: &str) -> Vec<u8> {
    let mut m = vec![FAILED];
    m.extend_from_slice(&errno.to_le_bytes());
    m.extend_from_slice(&(text.len() as u32).to_le_bytes());
    m.extend_from_slice(text.as_bytes());
    m
}

/// Takes the marker back out of the pipe once the caller's state is
/// saved (the original must not find it when it runs again).
struct TakeBack(i32);

impl Drop for TakeBack {
    fn drop(&mut self) {
        let mut b = [0u8; 1];
        let _ = sys::read(self.0, &mut b);
    }
}

/// The errno that stands for a library error.
pub fn errno_of(e: &Error) -> i32 {
    match e {
        Error::Sys { source, .. } | Error::Write(source) => {
            source.raw_os_error().unwrap_or(libc::EIO)
        }
        Error::TaskGone(_) => libc::ESRCH,
        Error::Unsupported { .. } => libc::ENOTSUP,
        Error::Interrupted => libc::EINTR,
        Error::Refused(_) => libc::EINVAL,
        Error::SelfCheckpoint { errno, .. } => *errno,
        Error::Image(ckpt_image::ImageError::Io { source, .. }) => {
            source.raw_os_error().unwrap_or(libc::EIO)
        }
        Error::Image(_) => libc::EINVAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert!(matches!(parse(b"R"), Some(Ok(Reply::Resumed))));
        assert!(matches!(parse(b"T"), Some(Ok(Reply::Taken))));
        assert!(parse(b"").is_none());
        assert!(parse(b"E\x05\0\0\0").is_none());
        let m = failed(libc::EBADF, "no");
        assert!(parse(&m[..m.len() - 1]).is_none());
        match parse(&m) {
            Some(Err((e, t))) => assert_eq!((e, t.as_str()), (libc::EBADF, "no")),
            _ => panic!("failure not parsed"),
        }
    }
}
