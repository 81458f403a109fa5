//! Errors with context: which process, which object, what the user can do.

use crate::sys::Pid;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syscall or /proc read failed for a task.
    #[error("pid {pid}: {what}: {source}")]
    Sys {
        pid: Pid,
        what: String,
        #[source]
        source: io::Error,
    },
    /// State ckpt cannot save faithfully; the process is left as it was.
    #[error("pid {pid} ({comm}): cannot checkpoint {object}: {reason}")]
    Unsupported {
        pid: Pid,
        comm: String,
        object: String,
        reason: String,
    },
    /// The task died while ckpt worked on it.
    #[error("pid {0} exited while ckpt was working on it")]
    TaskGone(Pid),
    /// The image cannot be restored here (validation failed before anything was created).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Image(#[from] ckpt_image::ImageError),
    /// The caller cancelled the checkpoint (`CheckpointOptions::cancel`);
    /// every process was given back as it was.
    #[error(
        "interrupted: the checkpoint was abandoned and the processes left running as they were"
    )]
    Interrupted,
    /// A self-checkpoint's helper failed (its message and errno); the
    /// caller was given back as it was.
    #[error("self-checkpoint failed: {message}")]
    SelfCheckpoint { errno: i32, message: String },
    /// Writing the image failed.
    #[error("cannot write the image: {0}")]
    Write(#[source] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds pid and operation context to io errors.
pub trait Ctx<T> {
    fn ctx(self, pid: Pid, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, pid: Pid, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                Error::TaskGone(pid)
            } else {
                Error::Sys {
                    pid,
                    what: what(),
                    source,
                }
            }
        })
    }
}
