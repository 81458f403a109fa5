//! The C interface (`include/ckpt.h`, `libckpt.so`, `libckpt.a`), with the
//! seeds' shape: `ckpt_checkpoint(pid, fd, flags, logfd)` returns a
//! positive id to its caller and 0 in the process restarted from the
//! image; `ckpt_restart(fd, flags, logfd)` returns the restored root's pid.
//! Failures return -1 with errno set and a message for `ckpt_last_error`.
//! The header is hand-written; a test checks it against this file.

use crate::error::Error;
use crate::log::Log;
use crate::self_checkpoint::{self, errno_of, SelfCheckpoint, SelfOptions};
use crate::sys::{self, Pid};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_long, c_ulong, CString};

/// Kill the checkpointed processes once the image is complete and synced
/// (for pid 0: the call then returns only in the restarted process).
/// Without it they keep running.
pub const CKPT_KILL: c_ulong = 1;
/// Include every descendant of the process (without it, a process with
/// children is refused).
pub const CKPT_TREE: c_ulong = 2;
/// Established TCP connections are closed with a killed tree and come
/// back reset, instead of being frozen in repair mode.
pub const CKPT_TCP_CLOSE: c_ulong = 4;

/// Every flag `ckpt_checkpoint` takes, by name (checked against the header).
pub const CHECKPOINT_FLAGS: &[(&str, c_ulong)] = &[
    ("CKPT_KILL", CKPT_KILL),
    ("CKPT_TREE", CKPT_TREE),
    ("CKPT_TCP_CLOSE", CKPT_TCP_CLOSE),
];

/// The C prototypes of the exported functions, as the header has them.
pub const PROTOTYPES: &[&str] = &[
    "long ckpt_checkpoint(pid_t pid, int fd, unsigned long flags, int logfd);",
    "pid_t ckpt_restart(int fd, unsigned long flags, int logfd);",
    "const char *ckpt_last_error(void);",
];

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn fail(errno: i32, msg: String) -> c_long {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = msg);
    sys::set_errno(errno);
    -1
}

/// A log sink writing to a caller's fd it does not own (never closed).
struct FdLog(c_int);

impl std::io::Write for FdLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sys::write_all(self.0, buf).map(|_| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_for(logfd: c_int) -> Log {
    if logfd < 0 {
        Log::default()
    } else {
        Log::new(Box::new(FdLog(logfd)))
    }
}

/// A file of ours on a dup of the caller's fd.
fn dup_file(fd: c_int) -> std::io::Result<std::fs::File> {
    let d = sys::dup_above(fd, 3)?;
    Ok(std::fs::File::from(sys::own_fd(d)))
}

/// Runs `f`, turning a panic into a failure (no unwinding into C).
fn guarded(f: impl FnOnce() -> Result<c_long, (i32, String)>) -> c_long {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err((errno, msg))) => fail(errno, msg),
        Err(_) => fail(libc::EIO, "ckpt: internal error (panic)".into()),
    }
}

fn lib_err(e: Error) -> (i32, String) {
    (errno_of(&e), e.to_string())
}

/// See `include/ckpt.h`.
#[no_mangle]
pub extern "C" fn ckpt_checkpoint(pid: Pid, fd: c_int, flags: c_ulong, logfd: c_int) -> c_long {
    guarded(|| {
        let unknown = flags & !(CKPT_KILL | CKPT_TREE | CKPT_TCP_CLOSE);
        if unknown != 0 {
            return Err((libc::EINVAL, format!("unknown flags {unknown:#x}")));
        }
        let mut log = log_for(logfd);
        if pid == 0 {
            let opts = SelfOptions {
                tree: flags & CKPT_TREE != 0,
                kill: flags & CKPT_KILL != 0,
                tcp_close: flags & CKPT_TCP_CLOSE != 0,
            };
            let fd = sys::borrow_fd(fd).map_err(|e| {
                (
                    e.raw_os_error().unwrap_or(libc::EBADF),
                    format!("image fd {fd}: {e}"),
                )
            })?;
            return match self_checkpoint::checkpoint_self(fd, &opts, &mut log) {
                Ok(SelfCheckpoint::Taken(id)) => Ok(id as c_long),
                Ok(SelfCheckpoint::Resumed) => Ok(0),
                Err(e) => Err(lib_err(e)),
            };
        }
        if pid < 0 {
            return Err((libc::EINVAL, format!("invalid pid {pid}")));
        }
        let out = dup_file(fd).map_err(|e| {
            (
                e.raw_os_error().unwrap_or(libc::EBADF),
                format!("image fd {fd}: {e}"),
            )
        })?;
        let opts = crate::CheckpointOptions {
            leave_running: flags & CKPT_KILL == 0,
            single_process: flags & CKPT_TREE == 0,
            tcp_close: flags & CKPT_TCP_CLOSE != 0,
            ..Default::default()
        };
        let sink = std::io::BufWriter::with_capacity(1 << 20, out);
        crate::checkpoint(pid, sink, &opts, &mut log).map_err(lib_err)?;
        Ok(self_checkpoint::next_id() as c_long)
    })
}

/// See `include/ckpt.h`.
#[no_mangle]
pub extern "C" fn ckpt_restart(fd: c_int, flags: c_ulong, logfd: c_int) -> Pid {
    guarded(|| {
        if flags != 0 {
            return Err((libc::EINVAL, format!("unknown flags {flags:#x}")));
        }
        let input = dup_file(fd).map_err(|e| {
            (
                e.raw_os_error().unwrap_or(libc::EBADF),
                format!("image fd {fd}: {e}"),
            )
        })?;
        let mut log = log_for(logfd);
        // The restored root is the caller's child, like a job it started.
        let opts = crate::RestartOptions {
            inherit_stdio: true,
        };
        let pid = crate::restart(input, &opts, &mut log).map_err(lib_err)?;
        Ok(pid as c_long)
    }) as Pid
}

/// See `include/ckpt.h`.
#[no_mangle]
pub extern "C" fn ckpt_last_error() -> *const c_char {
    // The pointer stays valid until this thread's next failing call.
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!("../../../include/ckpt.h");

    #[test]
    fn header_has_every_flag_with_its_value() {
        let defines: Vec<(&str, &str)> = HEADER
            .lines()
            .filter_map(|l| l.strip_prefix("#define CKPT_"))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?, w.next()?))
            })
            .collect();
        for (name, value) in CHECKPOINT_FLAGS {
            let want = format!("{value}UL");
            let got = defines
                .iter()
                .find(|d| format!("CKPT_{}", d.0) == *name)
                .map(|d| d.1);
            assert_eq!(got, Some(want.as_str()), "{name} in include/ckpt.h");
        }
        let flags: Vec<&str> = defines
            .iter()
            .map(|d| d.0)
            .filter(|n| !n.ends_with("_H"))
            .collect();
        assert_eq!(
            flags.len(),
            CHECKPOINT_FLAGS.len(),
            "extra defines: {flags:?}"
        );
    }

    #[test]
    fn header_has_every_function() {
        for p in PROTOTYPES {
            assert!(HEADER.contains(p), "include/ckpt.h lacks `{p}`");
        }
        let protos = HEADER
            .lines()
            .filter(|l| l.contains("ckpt_") && l.trim_end().ends_with(");"))
            .count();
        assert_eq!(
            protos,
            PROTOTYPES.len(),
            "include/ckpt.h declares other functions"
        );
    }

    #[test]
    fn errors_set_errno_and_message() {
        let r = ckpt_checkpoint(0, -1, 0, -1);
        assert_eq!(r, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EBADF)
        );
        let msg = LAST_ERROR.with(|l| l.borrow().to_string_lossy().into_owned());
        assert!(msg.contains("image fd -1"), "{msg}");
        assert_eq!(ckpt_checkpoint(0, 1, 1 << 20, -1), -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
