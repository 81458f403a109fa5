//! The structured checkpoint/restart log (`--log FILE`), one line per event
//! in the seeds' format: `[err N][pos P][pid X comm] message`.

use crate::error::Error;
use crate::sys::Pid;
use std::io::Write;

/// Progress of long work: `done` of `total` bytes of `what`.
pub type ProgressFn = Box<dyn FnMut(&str, u64, u64)>;

/// A log sink, and where progress goes; `Log::default()` discards both.
#[derive(Default)]
pub struct Log {
    out: Option<Box<dyn Write>>,
    progress: Option<ProgressFn>,
}

impl Log {
    pub fn new(out: Box<dyn Write>) -> Self {
        Log {
            out: Some(out),
            progress: None,
        }
    }

    /// Reports progress of long work (memory saved or restored) to `f`.
    pub fn with_progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }

    pub fn progress(&mut self, what: &str, done: u64, total: u64) {
        if let Some(p) = &mut self.progress {
            p(what, done, total);
        }
    }

    fn line(&mut self, err: i32, pos: u64, pid: Pid, comm: &str, msg: &str) {
        if let Some(o) = &mut self.out {
            let _ = writeln!(o, "[err {err}][pos {pos}][pid {pid} {comm}] {msg}");
            let _ = o.flush();
        }
        tracing::debug!(err, pid, pos, "{msg}");
    }

    pub fn info(&mut self, pos: u64, pid: Pid, comm: &str, msg: &str) {
        self.line(0, pos, pid, comm, msg);
    }

    /// Logs an error with its errno (or -1 when it has none).
    pub fn error(&mut self, e: &Error, pos: u64, pid: Pid, comm: &str) {
        let errno = match e {
            Error::Sys { source, .. } | Error::Write(source) => source.raw_os_error().unwrap_or(-1),
            Error::TaskGone(_) => libc::ESRCH,
            Error::Unsupported { .. } => libc::ENOTSUP,
            Error::Interrupted => libc::EINTR,
            _ => -1,
        };
        self.line(errno, pos, pid, comm, &e.to_string());
    }
}
