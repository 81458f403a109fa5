//! Orchestration of a checkpoint: freeze, collect, write, then kill or
//! release. Any failure before the image is complete leaves the process
//! running exactly as it was and records the error in the image and the log.

use crate::arch;
use crate::error::{Ctx, Error, Result};
use crate::files::FileTable;
use crate::freeze::{self, FrozenTree};
use crate::log::Log;
use crate::mm::{self, ShmemTable};
use crate::model::{ProcessImage, ThreadImage};
use crate::procfs;
use crate::remote::Session;
use crate::sys::{self, Pid};
use crate::task;
use ckpt_image::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Leave the process running after the checkpoint.
    pub leave_running: bool,
    /// Freeze this cgroup (v1 freezer or v2) while seizing the tree.
    pub freeze_cgroup: Option<std::path::PathBuf>,
    /// Set (e.g. by a signal handler of the caller) to abandon the
    /// checkpoint: it is checked between processes, threads, chunks of
    /// pages and writes, and the checkpoint then gives every process back
    /// as it was and fails with `Error::Interrupted`. Wrap the output in
    /// `Interruptible` so that a write blocked on a pipe notices too.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Established TCP connections are not frozen in repair mode but
    /// closed with the tree, and restored as reset connections.
    pub tcp_close: bool,
    /// Save only the process itself, not its descendants; a process with
    /// children is then refused (they would be missing after restart).
    pub single_process: bool,
    /// How page data is compressed (none by default: the task then writes
    /// its own pages into a file image, one copy).
    pub compression: crate::mm::Compression,
    /// Self-checkpoint plumbing (see `self_checkpoint`); not a stable API.
    #[doc(hidden)]
    pub internal: Internal,
}

/// What a self-checkpoint needs from the checkpoint it runs.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct Internal {
    /// Processes left out of the tree, with their descendants.
    pub exclude: Vec<Pid>,
    /// (pid, fd): saved as `/dev/null` opened for writing instead of what
    /// they are (the pipe or socket the image itself is written to).
    pub stand_ins: Vec<(Pid, i32)>,
    /// Runs once the tree is frozen, before anything is saved; what it
    /// returns is dropped once the tree's state is saved, while the tree
    /// is still frozen, also when the checkpoint fails.
    #[allow(clippy::type_complexity)]
    pub on_frozen: Option<Arc<dyn Fn() -> std::io::Result<Box<dyn std::any::Any>> + Send + Sync>>,
}

impl std::fmt::Debug for Internal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Internal")
            .field("exclude", &self.exclude)
            .field("stand_ins", &self.stand_ins)
            .field("on_frozen", &self.on_frozen.is_some())
            .finish()
    }
}

impl CheckpointOptions {
    fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.load(Ordering::SeqCst) => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }
}

/// What a checkpoint did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub processes: usize,
    pub threads: usize,
    pub vmas: usize,
    pub pages: u64,
    pub zero_pages_skipped: u64,
    pub bytes: u64,
    pub files: usize,
}

/// The sink an image is written to: anything `Write`, plus a way to make it
/// durable before the checkpointed process is killed.
pub trait Sink: Write {
    fn sync(&mut self) -> std::io::Result<()>;
    /// The fd of a regular file opened for reading and writing, into which
    /// checkpointed tasks can write their pages themselves (see
    /// `mm::Direct`); None for pipes and sockets.
    fn file_fd(&self) -> Option<i32> {
        None
    }
    /// Moves the write position (after data others put in the file).
    fn seek_to(&mut self, _off: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
    /// Cuts a regular file back to `len` bytes and writes on from there
    /// (a failed checkpoint drops its page data); pipes cannot.
    fn truncate_to(&mut self, _len: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl Sink for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        match self.sync_all() {
            // Pipes and sockets cannot be synced; the reader has the data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            r => r,
        }
    }
    fn file_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        let fd = self.as_raw_fd();
        let rw = sys::status_flags(fd).is_ok_and(|fl| fl & libc::O_ACCMODE == libc::O_RDWR);
        (rw && self.metadata().is_ok_and(|m| m.is_file())).then_some(fd)
    }
    fn seek_to(&mut self, off: u64) -> std::io::Result<()> {
        std::io::Seek::seek(self, std::io::SeekFrom::Start(off)).map(drop)
    }
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        if !self.metadata()?.is_file() {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        self.set_len(len)?;
        self.seek_to(len)
    }
}

impl<S: Sink> Sink for std::io::BufWriter<S> {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.get_mut().sync()
    }
    fn file_fd(&self) -> Option<i32> {
        self.get_ref().file_fd()
    }
    fn seek_to(&mut self, off: u64) -> std::io::Result<()> {
        self.flush()?;
        self.get_mut().seek_to(off)
    }
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        self.flush()?;
        self.get_mut().truncate_to(len)
    }
}

/// A sink whose writes interrupted by a signal (EINTR) are retried unless
/// the checkpoint is being cancelled: then they fail, so a write blocked on
/// a slow pipe does not keep a cancelled checkpoint alive. Put it under any
/// buffering (which retries EINTR itself). Once a write was cut short so,
/// later ones fail at once (the error record must not block on the same
/// stuck reader).
pub struct Interruptible<S> {
    inner: S,
    cancel: Arc<AtomicBool>,
    stuck: bool,
}

impl<S> Interruptible<S> {
    pub fn new(inner: S, cancel: Arc<AtomicBool>) -> Self {
        Interruptible {
            inner,
            cancel,
            stuck: false,
        }
    }
}

impl<S: Write> Write for Interruptible<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let stuck = || std::io::Error::other("output blocked and the checkpoint was cancelled");
        if self.stuck {
            return Err(stuck());
        }
        loop {
            match self.inner.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    if self.cancel.load(Ordering::SeqCst) {
                        self.stuck = true;
                        return Err(stuck());
                    }
                }
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Sink> Sink for Interruptible<S> {
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.sync()
    }
    fn file_fd(&self) -> Option<i32> {
        self.inner.file_fd()
    }
    fn seek_to(&mut self, off: u64) -> std::io::Result<()> {
        self.inner.seek_to(off)
    }
    fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.truncate_to(len)
    }
}

/// Any `Write` as a sink (a socket, a pipe, a buffer in memory): made
/// durable by flushing. A `File` is a sink of its own (synced, and a
/// regular file open for reading and writing takes the pages directly).
///
/// ```no_run
/// use std::io::Write;
/// let mut image = Vec::new();
/// let opts = ckpt::CheckpointOptions { leave_running: true, ..Default::default() };
/// ckpt::checkpoint(1234, ckpt::checkpoint::Stream(&mut image), &opts, &mut ckpt::Log::default())?;
/// std::net::TcpStream::connect("backup:9000")?.write_all(&image)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Stream<W>(pub W);

impl<W: Write> Write for Stream<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Sink for Stream<W> {
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Checkpoints the process `pid` (with its descendants unless
/// `single_process`) into `out`, and kills it once the image is complete
/// and synced unless `leave_running`. On failure every process is left
/// running as it was and the image ends with an error record. Returns
/// what was saved. Needs ptrace rights over the processes (root, usually).
///
/// ```no_run
/// let out = std::fs::OpenOptions::new()
///     .read(true).write(true).create(true).truncate(true)
///     .open("job.img")?;
/// let opts = ckpt::CheckpointOptions { leave_running: true, ..Default::default() };
/// let mut log = ckpt::Log::new(Box::new(std::io::stderr()));
/// let summary = ckpt::checkpoint(1234, out, &opts, &mut log)?;
/// println!("{} processes, {} pages", summary.processes, summary.pages);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn checkpoint<S: Sink>(
    pid: Pid,
    out: S,
    opts: &CheckpointOptions,
    log: &mut Log,
) -> Result<Summary> {
    let mut w = ImageWriter::new(out);
    let comm = procfs::comm(pid);
    log.info(w.offset(), pid, &comm, "checkpoint started");
    // The head goes first, so that even a failed image names its writer.
    let head = crate::head(if opts.leave_running {
        FLAG_LEAVE_RUNNING
    } else {
        0
    });
    let res = w.write(&head).map_err(Error::Write);
    let after_head = w.mark();
    let res = res.and_then(|_| run(pid, &mut w, opts, log)).and_then(|r| {
        // The last moment to give up: after the tail, the image stands.
        opts.check_cancel()?;
        Ok(r)
    });
    match res {
        Ok((mut files, frozen, summary)) => {
            let written = w
                .finish()
                .and_then(|mut out| out.sync())
                .map_err(Error::Write);
            if let Err(e) = written {
                // Kinds undo what they changed while the tree is frozen.
                drop(files);
                drop(frozen);
                return Err(e);
            }
            if opts.leave_running {
                crate::files::after_checkpoint(&mut files, false);
                signal_before_release_for_tests(pid);
                drop(frozen);
            } else {
                match frozen.kill() {
                    Ok(dying) => {
                        crate::files::after_checkpoint(&mut files, true);
                        freeze::reap_in_background(dying);
                    }
                    Err(e) => {
                        crate::files::after_checkpoint(&mut files, false);
                        return Err(e);
                    }
                }
            }
            log.info(
                0,
                pid,
                &comm,
                &format!("checkpoint done: {} pages", summary.pages),
            );
            Ok(summary)
        }
        Err(e) => {
            // A cancelled checkpoint fails because of the cancellation,
            // whatever the step that noticed it reported.
            let e = match opts.check_cancel() {
                Err(c) => c,
                Ok(()) => e,
            };
            let msg = e.to_string();
            log.error(&e, w.offset(), pid, &comm);
            // Best effort: no partial page data stays in a file, and the
            // image says why it is incomplete.
            if w.get_mut().truncate_to(after_head.offset()).is_ok() {
                w.rewind(after_head);
            }
            let _ = w.write_error(&msg);
            if let Ok(mut out) = w.finish() {
                let _ = out.flush();
            }
            Err(e)
        }
    }
}

/// Finds a `syscall` instruction (0f 05) in the task's vDSO.
pub fn find_syscall_insn(pid: Pid, maps: &[procfs::MapEntry]) -> Result<u64> {
    let vdso = maps
        .iter()
        .find(|m| m.path == b"[vdso]")
        .ok_or_else(|| Error::Unsupported {
            pid,
            comm: procfs::comm(pid),
            object: "the address space".into(),
            reason: "it has no [vdso] mapping to run injected syscalls from".into(),
        })?;
    let mem = procfs::mem(pid).ctx(pid, || "open /proc mem".into())?;
    let mut code = vec![0u8; vdso.size() as usize];
    mem.read_exact_at(&mut code, vdso.start)
        .ctx(pid, || "read the vDSO".into())?;
    code.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| vdso.start + i as u64)
        .ok_or_else(|| Error::Unsupported {
            pid,
            comm: procfs::comm(pid),
            object: "the vDSO".into(),
            reason: "it contains no syscall instruction".into(),
        })
}

fn run<S: Sink>(
    root: Pid,
    w: &mut ImageWriter<S>,
    opts: &CheckpointOptions,
    log: &mut Log,
) -> Result<(crate::files::kind::DumpCx, FrozenTree, Summary)> {
    let status =
        procfs::status(root).ctx(root, || "read /proc status (is the pid right?)".into())?;
    // Before anything is frozen: the common refusal, cheaply.
    crate::unsupported::seccomp(root, &procfs::comm(root), &status)?;
    opts.check_cancel()?;
    let spec = freeze::TreeSpec {
        descendants: !opts.single_process,
        exclude: &opts.internal.exclude,
    };
    let tree = freeze::freeze_tree(root, opts.freeze_cgroup.as_deref(), spec)?;
    // Dropped before `tree` on every path (declared after it), and at the
    // end of this function on success, when all state is saved.
    let _while_frozen = match &opts.internal.on_frozen {
        Some(f) => Some(f().map_err(|e| Error::Sys {
            pid: root,
            what: "prepare the self-checkpoint".into(),
            source: e,
        })?),
        None => None,
    };
    // Files, pipes, shared memory and kind objects share one id space.
    let ids = crate::ids::IdSpace::default();
    let mut ft = FileTable::new(tree.procs.iter().map(|p| p.0).collect(), ids.clone());
    ft.cx.opts = opts.clone();
    let mut shm = ShmemTable::new(ids);
    let mut images = Vec::with_capacity(tree.procs.len());
    // Declared after the tree: on every path the sessions give their
    // processes back before the tree detaches from them.
    let mut sessions: Vec<Option<Session>> = Vec::with_capacity(tree.procs.len());
    // Per process, the ranges of its mappings that have pages (from the
    // one smaps read its mappings came from).
    let mut present: Vec<mm::Ranges> = Vec::with_capacity(tree.procs.len());
    let mut first_xstate = None;
    for (pid, frozen) in &tree.procs {
        opts.check_cancel()?;
        match frozen {
            None => {
                images.push(zombie(*pid)?);
                sessions.push(None);
                present.push(Vec::new());
            }
            Some(f) => {
                let (mut img, session, with_pages) =
                    dump_process(*pid, &f.tids, &mut ft, &mut shm, opts)?;
                present.push(with_pages);
                if f.stop_sig != 0 {
                    img.process.state = PROC_STOPPED;
                    img.process.exit_status = (f.stop_sig << 8) | 0x7f;
                }
                if first_xstate.is_none() {
                    first_xstate = img.threads.first().map(|t| t.xstate.area.0.clone());
                }
                images.push(img);
                sessions.push(Some(session));
            }
        }
    }
    ft.finish(&mut shm)?;
    mm::find_cow(&mut images, sys::zero_page_pfn())?;
    let xstate = first_xstate.unwrap_or_default();
    let xcr0 = arch::xstate_xfeatures(&xstate).unwrap_or(sys::xcr0());
    let arch_rec = arch::arch_record(xcr0, xstate.len() as u32);
    // Before anything is written or killed: the image must pass the rules
    // restart applies, or the only copy of the tree would be unrestorable.
    // (It is then written from this very model.)
    let meta = crate::model::Image {
        head: crate::head(0),
        arch: arch_rec.clone(),
        files: std::mem::take(&mut ft.files),
        pipes: std::mem::take(&mut ft.cx.pipes),
        objects: std::mem::take(&mut ft.cx.objects),
        shmems: shm
            .objs
            .iter()
            .map(|o| crate::model::ShmemImage {
                shmem: o.shmem.clone(),
                attrs: Some(o.attrs.clone()),
                pages: Vec::new(),
            })
            .collect(),
        file_attrs: std::mem::take(&mut ft.cx.attrs),
        file_owners: std::mem::take(&mut ft.owners),
        processes: images,
        section: None,
    };
    crate::restart::check_restorable(&meta).map_err(|e| {
        Error::Refused(format!(
            "the image would not restart, so the checkpoint is refused: {e}"
        ))
    })?;
    // Every page is planned before anything is written: the metadata,
    // plans included, goes first, so a reader of a stream knows where each
    // page goes before the pages arrive (see `ckpt_image::MetaEnd`).
    let zero_pfn = sys::zero_page_pfn();
    let compression = opts.compression;
    let to_file = w.get_mut().file_fd().is_some() && compression == mm::Compression::None;
    let shm_plans = shm.plan()?;
    let mut batches: Vec<Vec<mm::Batch>> = Vec::with_capacity(meta.processes.len());
    let mut summary = Summary {
        files: meta.files.len(),
        ..Default::default()
    };
    for (img, present) in meta.processes.iter().zip(&present) {
        opts.check_cancel()?;
        if img.is_zombie() {
            batches.push(Vec::new());
            continue;
        }
        // The task writes its own pages into the image when it is a
        // regular file (not into a pipe, which ckpt could not read back
        // to checksum the records holding memory the kernel may touch
        // meanwhile, e.g. rseq's cpu_id: see `mm::write_by_task`), and
        // not under a file size limit of the task's own, which its writes
        // would hit.
        let fsize_limited = img
            .rlimits
            .limits
            .iter()
            .any(|l| l.resource == libc::RLIMIT_FSIZE && l.cur != libc::RLIM_INFINITY);
        let early = mm::premap_candidates(&meta.processes, img);
        let policy = mm::PagePolicy {
            by_task: to_file && !fsize_limited,
            zero_pfn,
            early: &early,
        };
        let (b, stats) = mm::plan_pages(img, present, &policy)?;
        summary.pages += stats.pages;
        summary.zero_pages_skipped += stats.zero_skipped;
        batches.push(b);
    }
    w.write(&arch_rec).map_err(Error::Write)?;
    for f in &meta.files {
        w.write(f).map_err(Error::Write)?;
    }
    for a in &meta.file_attrs {
        w.write(a).map_err(Error::Write)?;
    }
    for o in &meta.file_owners {
        w.write(o).map_err(Error::Write)?;
    }
    for p in &meta.pipes {
        w.write(p).map_err(Error::Write)?;
    }
    for o in &meta.objects {
        w.write_any(o).map_err(Error::Write)?;
    }
    opts.check_cancel()?;
    let shmem_pages = shm.write_meta(w, &shm_plans)?;
    let mut nr_plans = shm_plans.iter().map(Vec::len).sum::<usize>();
    for (img, b) in meta.processes.iter().zip(&batches) {
        img.write_meta(w).map_err(Error::Write)?;
        for batch in b {
            w.write(&batch.plan()).map_err(Error::Write)?;
        }
        nr_plans += b.len();
        w.write(&ProcessEnd {
            pid: img.pid(),
            nr_threads: img.threads.len() as u32,
            nr_fds: img.fds.len() as u32,
            nr_vmas: img.vmas.len() as u32,
            nr_pages: b.iter().map(|b| b.pages).sum(),
        })
        .map_err(Error::Write)?;
        summary.processes += 1;
        if !img.is_zombie() {
            summary.threads += img.threads.len();
            summary.vmas += img.vmas.len();
        }
    }
    w.meta_end(nr_plans as u32, compression.code())
        .map_err(Error::Write)?;
    // The page section, in the order restart reads it.
    opts.check_cancel()?;
    shm.write_pages(w, &shm_plans, compression)?;
    let total = summary.pages * ckpt_image::PAGE_SIZE;
    let mut saved = 0u64;
    for early in [true, false] {
        for ((img, session), b) in meta.processes.iter().zip(sessions.iter_mut()).zip(&batches) {
            opts.check_cancel()?;
            let (Some(session), true) = (session, b.iter().any(|b| b.early == early)) else {
                continue;
            };
            if !early {
                log.info(
                    w.offset(),
                    img.pid(),
                    &img.process.comm.to_string(),
                    &format!(
                        "{} mappings, {} fds, {} threads",
                        img.vmas.len(),
                        img.fds.len(),
                        img.threads.len()
                    ),
                );
            }
            let mut report = |n| -> Result<()> {
                saved += n;
                log.progress("saving memory", saved, total);
                opts.check_cancel()
            };
            let these: Vec<&mm::Batch> = b.iter().filter(|b| b.early == early).collect();
            write_pages(img, session, &these, w, compression, &mut report)?;
        }
    }
    w.write(&ImageEnd {
        nr_processes: meta.processes.len() as u32,
        nr_files: meta.files.len() as u32,
        nr_pipes: meta.pipes.len() as u32,
        nr_objects: meta.objects.len() as u32,
        nr_shmems: shm.objs.len() as u32,
        nr_shmem_pages: shmem_pages,
    })
    .map_err(Error::Write)?;
    log.progress("saving memory", saved, saved);
    summary.pages += shmem_pages;
    summary.bytes = w.offset();
    // Each process is given back as its session ends.
    for mut s in sessions.iter_mut().filter_map(Option::take) {
        s.release()?;
    }
    drop(sessions);
    // The kinds' state goes first in the tuple: dropped first, while the
    // tree is still frozen.
    Ok((ft.cx, tree, summary))
}

/// Writes the page records of `batches` of process `pid`: those planned
/// for the task by the task itself when it can open the image file
/// (through /proc; not e.g. as another user), the rest by ckpt.
fn write_pages<S: Sink>(
    img: &ProcessImage,
    session: &mut Session,
    batches: &[&mm::Batch],
    w: &mut ImageWriter<S>,
    compression: mm::Compression,
    report: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let pid = img.pid();
    let image_fd = w
        .get_mut()
        .file_fd()
        .filter(|_| batches.iter().any(|b| b.by_task));
    let tracee_fd = match image_fd {
        Some(fd) => {
            let path = format!("/proc/{}/fd/{fd}", std::process::id());
            session.open_fd(path.as_bytes(), libc::O_WRONLY)?
        }
        None => None,
    };
    let (Some(image_fd), Some(tfd)) = (image_fd, tracee_fd) else {
        return mm::write_batches(pid, batches, w, None, compression, report);
    };
    let (remote, scratch) = session.main();
    let mut d = mm::Direct {
        remote,
        scratch,
        tracee_fd: tfd as u64,
        image_fd,
        kernel_written: img
            .threads
            .iter()
            .map(|t| &t.thread)
            .filter(|t| t.rseq_addr != 0)
            .map(|t| (t.rseq_addr, t.rseq_addr + t.rseq_len as u64))
            .collect(),
    };
    let r = mm::write_batches(pid, batches, w, Some(&mut d), compression, report);
    let closed = session.close_fd(tfd);
    r?;
    closed
}

/// A zombie: its ids and exit status are all there is.
fn zombie(pid: Pid) -> Result<ProcessImage> {
    let st = procfs::stat(pid).ctx(pid, || "read /proc stat".into())?;
    Ok(ProcessImage {
        process: Process {
            pid,
            ppid: st.ppid,
            pgid: st.pgrp,
            sid: st.session,
            comm: task::text(&st.comm),
            state: PROC_ZOMBIE,
            exit_status: st.exit_code,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Everything about one frozen process (all its threads are stopped), and
/// the injection session, kept for its pages, and the ranges of mappings
/// that have pages (see `mm::dump_pages`).
fn dump_process(
    pid: Pid,
    tids: &[Pid],
    ft: &mut FileTable,
    shm: &mut ShmemTable,
    opts: &CheckpointOptions,
) -> Result<(ProcessImage, Session, mm::Ranges)> {
    let comm = procfs::comm(pid);
    let st = procfs::stat(pid).ctx(pid, || "read /proc stat".into())?;
    let status = procfs::status(pid).ctx(pid, || "read /proc status".into())?;
    crate::unsupported::check_process(pid, &comm, &status)?;
    let maps = procfs::maps(pid).ctx(pid, || "read /proc smaps".into())?;
    let mut vmas = Vec::with_capacity(maps.len());
    for m in &maps {
        vmas.push(mm::vma_of(pid, &comm, m, shm)?);
    }
    let with_pages = maps
        .iter()
        .filter(|m| m.present_kb > 0)
        .map(|m| (m.start, m.end))
        .collect();
    let fds = ft.dump(pid, &comm)?;
    // The main thread first: it runs the process-wide injected calls.
    let mut tids = tids.to_vec();
    tids.sort_by_key(|&t| t != pid);
    struct Raw {
        tid: Pid,
        sigmask: u64,
        regs: sys::Regs,
        xstate: Vec<u8>,
        dr: [u64; 8],
    }
    let mut raws = Vec::new();
    for &tid in &tids {
        let mut dr = [0u64; 8];
        for (i, d) in dr.iter_mut().enumerate() {
            if i != 4 && i != 5 {
                *d = sys::get_debugreg(tid, i).ctx(tid, || format!("read dr{i}"))?;
            }
        }
        raws.push(Raw {
            tid,
            sigmask: sys::get_sigmask(tid).ctx(tid, || "PTRACE_GETSIGMASK".into())?,
            regs: sys::get_regs(tid).ctx(tid, || "PTRACE_GETREGS".into())?,
            xstate: sys::get_xstate(tid).ctx(tid, || "PTRACE_GETREGSET NT_X86_XSTATE".into())?,
            dr,
        });
    }
    let shared_pending = task::dump_pending(pid, true)?;
    opts.check_cancel()?;

    // Injected syscalls: the session blocks signals in the threads it runs
    // them in, so none is consumed, and heals them if ckpt dies.
    let mut session = Session::open(pid, &maps)?;
    let (main, s) = session.main();
    let brk = main.call("brk", libc::SYS_brk, &[0])?;
    let (mut process, cwd_removed) = task::dump_process(pid, &st, &status, main, &s)?;
    process.nr_threads = raws.len() as u32;
    let sigactions = task::dump_sigactions(main, &s, &status)?;
    let itimers = task::dump_itimers(main, &s)?;
    let mm_state = mm::dump_mm_state(main, &comm)?;
    let mut extra = Vec::new();
    let pcx = crate::process_kind::ProcessCx {
        pid,
        comm: &comm,
        fds: &ft.cx.fds,
        files: &ft.files,
        proc_locks: &ft.cx.proc_locks,
    };
    for k in crate::process_kind::PROCESS_KINDS {
        extra.extend(k.dump(&pcx, main, &s)?);
    }
    let mut threads = Vec::new();
    for r in &raws {
        opts.check_cancel()?;
        let thread = if r.tid == pid {
            let (main, s) = session.main();
            task::dump_thread(r.tid, r.sigmask, main, &s)?
        } else {
            session.with_thread(r.tid, |t, s| task::dump_thread(r.tid, r.sigmask, t, s))?
        };
        threads.push(ThreadImage {
            thread,
            regs: arch::regs_to_record(r.tid, &r.regs),
            xstate: X86Xstate {
                tid: r.tid,
                area: Bytes(r.xstate.clone()),
            },
            debug: X86DebugRegs {
                tid: r.tid,
                dr: r.dr,
            },
        });
    }
    let img = ProcessImage {
        process,
        cwd_removed,
        files_shared: ft.files_shared(pid),
        creds: task::dump_creds(&status),
        rlimits: task::dump_rlimits(pid)?,
        sigactions,
        itimers,
        shared_pending: SharedPending {
            signals: shared_pending.clone(),
        },
        cgroups: Cgroups {
            membership: Text(crate::cgroup::dump(pid, &comm)?.into_bytes()),
        },
        fds,
        mm: mm::dump_mm(pid, &st, brk)?,
        mm_state,
        vmas,
        cow: Vec::new(),
        extra,
        threads,
        pages: Vec::new(),
    };
    Ok((img, session, with_pages))
}

/// Test hook (`test_hooks::TestHooks::signal_before_release`).
pub(crate) fn signal_before_release_for_tests(pid: Pid) {
    if let Some(sig) = crate::test_hooks::get().signal_before_release {
        let _ = sys::kill(pid, sig);
    }
}
