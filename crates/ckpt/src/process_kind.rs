//! The seam for per-process kinds of kernel state (POSIX timers, file
//! locks...): like `files::kind` for fds, each kind is one module with its
//! checkpoint, validation and restart side by side, and the orchestrators
//! only walk `PROCESS_KINDS`. Its records are in the per-process kind range
//! (`ckpt_image::is_process_kind_record`) and land in `ProcessImage::extra`.

use crate::error::Result;
use crate::model::{Image, ProcessImage};
use crate::remote::Remote;
use crate::sys::Pid;
use crate::task::Scratch;
use ckpt_image::AnyRecord;

/// What a per-process kind sees while a frozen process is saved.
pub struct ProcessCx<'a> {
    pub pid: Pid,
    pub comm: &'a str,
    /// Every fd of the tree saved so far (this process's are all in) and
    /// the id of its description.
    pub fds: &'a crate::ids::FdIds,
    /// The descriptions saved so far.
    pub files: &'a [ckpt_image::File],
    /// /proc/locks, as read once for the checkpoint.
    pub proc_locks: &'a crate::locks::ProcLocks,
}

/// One kind of per-process state.
pub trait ProcessKind: Sync {
    /// What it is, for messages ("POSIX timers").
    fn name(&self) -> &'static str;
    /// Saves this kind's state of a frozen process whose fds are saved;
    /// `main` runs injected calls in its main thread (`s` is its scratch).
    fn dump(&self, cx: &ProcessCx, main: &mut Remote, s: &Scratch) -> Result<Vec<AnyRecord>>;
    /// Checks the process's records of this kind before restart creates
    /// anything. An `Err` is the reason the image is refused.
    fn validate(&self, img: &Image, p: &ProcessImage) -> std::result::Result<(), String>;
    /// Runs inside the restored process (still ckpt's code) once its fds
    /// are in place, before it is seized and its memory replaced.
    fn restore_in_process(
        &self,
        _img: &Image,
        _p: &ProcessImage,
    ) -> std::result::Result<(), String> {
        Ok(())
    }
    /// Runs from outside once the process's memory, threads and
    /// credentials are back, just before its signals are queued again.
    fn restore(&self, _r: &mut Remote, _s: &Scratch, _p: &ProcessImage) -> Result<()> {
        Ok(())
    }
    /// Saved pending signals that `restore` makes the kernel queue again
    /// itself (a POSIX timer's own signal), which restart then leaves out
    /// of the queues it refills: each is the queue (`None` the process's
    /// shared one, else that thread's) and the signal's index in it.
    fn own_pending(&self, _p: &ProcessImage) -> Vec<(Option<Pid>, usize)> {
        Vec::new()
    }
}

/// Every per-process kind, in the order they are saved and restored.
pub static PROCESS_KINDS: &[&dyn ProcessKind] =
    &[&crate::locks::FileLocks, &crate::timers::PosixTimers];

/// The records of type `R` of process `p`.
pub fn records_of<R: 'static>(p: &ProcessImage) -> impl Iterator<Item = &R> + '_ {
    p.extra.iter().filter_map(|r| r.as_any().downcast_ref())
}

/// Saved queue `queue` of `p` (see `ProcessKind::own_pending`) without the
/// signals a kind queues again itself.
pub fn pending_left(
    p: &ProcessImage,
    queue: Option<Pid>,
    sigs: &[ckpt_image::SigInfo],
) -> Vec<ckpt_image::SigInfo> {
    let own: Vec<usize> = PROCESS_KINDS
        .iter()
        .flat_map(|k| k.own_pending(p))
        .filter(|o| o.0 == queue)
        .map(|o| o.1)
        .collect();
    sigs.iter()
        .enumerate()
        .filter(|(i, _)| !own.contains(i))
        .map(|(_, si)| si.clone())
        .collect()
}
