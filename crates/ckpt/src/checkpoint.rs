//! Orchestration of a checkpoint: freeze, collect, write, then kill or
//! release. Any failure before the image is complete leaves the process
//! running exactly as it was and records the error in the image and the log.

use crate::arch;
use crate::error::{Ctx, Error, Result};
use crate::files::FileTable;
use crate::freeze::{self, FrozenTree};
use crate::log::Log;
use crate::mm::{self, PageStats, ShmemTable};
use crate::model::{ProcessImage, ThreadImage};
use crate::procfs;
use crate::remote::Remote;
use crate::sys::{self, Pid};
use crate::task::{self, Scratch};
use ckpt_image::*;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Leave the process running after the checkpoint.
    pub leave_running: bool,
    /// Freeze this cgroup (v1 freezer or v2) while seizing the tree.
    pub freeze_cgroup: Option<std::path::PathBuf>,
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
    /// Non-fatal problems (e.g. a zombie not reaped by its parent).
    pub warnings: Vec<String>,
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
}

/// Checkpoints the process `pid` into `out`.
pub fn checkpoint<S: Sink>(
    pid: Pid,
    out: S,
    opts: &CheckpointOptions,
    log: &mut Log,
) -> Result<Summary> {
    let mut w = ImageWriter::new(out);
    let comm = procfs::read(pid, "comm")
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    log.info(w.offset(), pid, &comm, "checkpoint started");
    // The head goes first, so that even a failed image names its writer.
    let head = crate::head(if opts.leave_running {
        FLAG_LEAVE_RUNNING
    } else {
        0
    });
    let res = w
        .write(&head)
        .map_err(Error::Write)
        .and_then(|_| run(pid, &mut w, opts, log));
    match res {
        Ok((frozen, mut summary)) => {
            let mut out = w.finish().map_err(Error::Write)?;
            out.sync().map_err(Error::Write)?;
            if opts.leave_running {
                drop(frozen);
            } else {
                for warn in frozen.kill()? {
                    log.info(0, pid, &comm, &warn);
                    summary.warnings.push(warn);
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
            let msg = e.to_string();
            log.error(&e, w.offset(), pid, &comm);
            // Best effort: the image says why it is incomplete.
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
            comm: String::new(),
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
            comm: String::new(),
            object: "the vDSO".into(),
            reason: "it contains no syscall instruction".into(),
        })
}

fn run<S: Sink>(
    root: Pid,
    w: &mut ImageWriter<S>,
    opts: &CheckpointOptions,
    log: &mut Log,
) -> Result<(FrozenTree, Summary)> {
    let status =
        procfs::status(root).ctx(root, || "read /proc status (is the pid right?)".into())?;
    if status.num("Seccomp").unwrap_or(0) != 0 {
        return Err(Error::Unsupported {
            pid: root,
            comm: comm_of(root),
            object: "seccomp filters".into(),
            reason: "seccomp state cannot be saved yet".into(),
        });
    }
    let tree = freeze::freeze_tree(root, opts.freeze_cgroup.as_deref())?;
    let mut ft = FileTable::new(tree.procs.iter().map(|p| p.0).collect());
    let mut shm = ShmemTable::default();
    let mut images = Vec::with_capacity(tree.procs.len());
    let mut first_xstate = None;
    for (pid, frozen) in &tree.procs {
        match frozen {
            None => images.push(zombie(*pid)?),
            Some(f) => {
                let img = dump_process(*pid, &f.tids, &mut ft, &mut shm)?;
                if first_xstate.is_none() {
                    first_xstate = img.threads.first().map(|t| t.xstate.area.0.clone());
                }
                images.push(img);
            }
        }
    }
    // A memfd open as an fd is the same object as its mappings.
    for (dev, ino, file_id, source) in std::mem::take(&mut ft.memfds) {
        let f = &mut ft.files[file_id as usize - 1];
        let name = f
            .path
            .0
            .strip_prefix(b"/memfd:")
            .unwrap_or(&f.path.0)
            .to_vec();
        f.obj = shm.id(dev, ino, SHMEM_MEMFD, &name, source)?;
    }
    let xstate = first_xstate.unwrap_or_default();
    let xcr0 = arch::xstate_xfeatures(&xstate).unwrap_or(sys::xcr0());
    w.write(&arch::arch_record(xcr0, xstate.len() as u32))
        .map_err(Error::Write)?;
    for f in &ft.files {
        w.write(f).map_err(Error::Write)?;
    }
    for a in &ft.attrs {
        w.write(a).map_err(Error::Write)?;
    }
    for o in &ft.owners {
        w.write(o).map_err(Error::Write)?;
    }
    for p in &ft.pipes {
        w.write(p).map_err(Error::Write)?;
    }
    let mut summary = Summary {
        pages: shm.dump(w)?,
        files: ft.files.len(),
        ..Default::default()
    };
    // Resident memory of the tree: an upper bound of what will be saved.
    let total: u64 = images
        .iter()
        .filter(|i| !i.is_zombie())
        .filter_map(|i| procfs::status(i.pid()).ok()?.bytes("VmRSS"))
        .sum();
    let mut saved = 0u64;
    let zero_pfn = sys::zero_page_pfn();
    for img in &images {
        img.write_meta(w).map_err(Error::Write)?;
        summary.processes += 1;
        if img.is_zombie() {
            continue;
        }
        let comm = img.process.comm.to_string();
        log.info(
            w.offset(),
            img.pid(),
            &comm,
            &format!(
                "{} mappings, {} fds, {} threads",
                img.vmas.len(),
                img.fds.len(),
                img.threads.len()
            ),
        );
        let PageStats {
            pages,
            zero_skipped,
        } = {
            let mut report = |n| {
                saved += n;
                log.progress("saving memory", saved, total.max(saved));
            };
            match w
                .get_mut()
                .file_fd()
                .map(|fd| TaskWriter::open(img.pid(), fd))
                .transpose()?
            {
                Some(Some(mut tw)) => {
                    let mut d = mm::Direct {
                        remote: &mut tw.remote,
                        tracee_fd: tw.tracee_fd,
                        image_fd: tw.image_fd,
                        zero_pfn,
                    };
                    let r = mm::dump_pages(img.pid(), &img.vmas, w, Some(&mut d), &mut report);
                    // Leave the task as it was, whatever happened.
                    let closed = tw.close();
                    let stats = r?;
                    closed?;
                    stats
                }
                _ => mm::dump_pages(img.pid(), &img.vmas, w, None, &mut report)?,
            }
        };
        summary.pages += pages;
        summary.zero_pages_skipped += zero_skipped;
        summary.threads += img.threads.len();
        summary.vmas += img.vmas.len();
    }
    // Resident memory was only an estimate: close the report at what was saved.
    log.progress("saving memory", saved, saved);
    summary.bytes = w.offset();
    Ok((tree, summary))
}

/// The image file opened inside a frozen task, so that it writes its own
/// pages (`mm::Direct`): every signal blocked, a scratch page for the path.
struct TaskWriter {
    remote: Remote,
    pid: Pid,
    sigmask: u64,
    scratch: u64,
    tracee_fd: u64,
    image_fd: i32,
}

impl TaskWriter {
    /// None when the task cannot open the image (e.g. it runs as another
    /// user than ckpt and may not look into ckpt's fds): ckpt then copies
    /// the pages itself.
    fn open(pid: Pid, image_fd: i32) -> Result<Option<TaskWriter>> {
        let maps = procfs::maps(pid).ctx(pid, || "read /proc smaps".into())?;
        let ip = find_syscall_insn(pid, &maps)?;
        let sigmask = sys::get_sigmask(pid).ctx(pid, || "PTRACE_GETSIGMASK".into())?;
        sys::set_sigmask(pid, !0).ctx(pid, || "PTRACE_SETSIGMASK".into())?;
        let mut remote = Remote::new(pid, ip)?;
        let scratch = remote.mmap_scratch(4096)?;
        let mut tw = TaskWriter {
            remote,
            pid,
            sigmask,
            scratch,
            tracee_fd: u64::MAX,
            image_fd,
        };
        let path = format!("/proc/{}/fd/{image_fd}\0", std::process::id());
        let opened = procfs::mem(pid)
            .and_then(|m| m.write_all_at(path.as_bytes(), scratch))
            .ctx(pid, || "write scratch memory".into())
            .and_then(|_| {
                tw.remote.syscall(
                    libc::SYS_openat,
                    &[
                        libc::AT_FDCWD as i64 as u64,
                        scratch,
                        (libc::O_WRONLY | libc::O_CLOEXEC) as u64,
                        0,
                    ],
                )
            });
        match opened {
            Ok(fd) if fd >= 0 => {
                tw.tracee_fd = fd as u64;
                Ok(Some(tw))
            }
            other => {
                tw.close()?;
                other.map(|_| None)
            }
        }
    }

    /// Closes the fd, frees the scratch page, restores registers and mask.
    fn close(mut self) -> Result<()> {
        let mut r = Ok(0);
        if self.tracee_fd != u64::MAX {
            r = self
                .remote
                .call("close", libc::SYS_close, &[self.tracee_fd]);
        }
        let unmapped = self
            .remote
            .call("munmap", libc::SYS_munmap, &[self.scratch, 4096]);
        let fin = self.remote.finish();
        let mask =
            sys::set_sigmask(self.pid, self.sigmask).ctx(self.pid, || "PTRACE_SETSIGMASK".into());
        r.and(unmapped)
            .and(fin.map(|_| 0))
            .and(mask.map(|_| 0))
            .map(drop)
    }
}

fn comm_of(pid: Pid) -> String {
    procfs::read(pid, "comm")
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
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

/// Everything about one frozen process (all its threads are stopped).
fn dump_process(
    pid: Pid,
    tids: &[Pid],
    ft: &mut FileTable,
    shm: &mut ShmemTable,
) -> Result<ProcessImage> {
    let comm = comm_of(pid);
    let st = procfs::stat(pid).ctx(pid, || "read /proc stat".into())?;
    let status = procfs::status(pid).ctx(pid, || "read /proc status".into())?;
    if status.num("Seccomp").unwrap_or(0) != 0 {
        return Err(Error::Unsupported {
            pid,
            comm,
            object: "seccomp filters".into(),
            reason: "seccomp state cannot be saved yet".into(),
        });
    }
    let maps = procfs::maps(pid).ctx(pid, || "read /proc smaps".into())?;
    let mut vmas = Vec::with_capacity(maps.len());
    for m in &maps {
        vmas.push(mm::vma_of(pid, &comm, m, shm)?);
    }
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

    // Injected syscalls: every signal stays blocked meanwhile so none is
    // consumed, and one scratch page is borrowed.
    let syscall_ip = find_syscall_insn(pid, &maps)?;
    for r in &raws {
        sys::set_sigmask(r.tid, !0).ctx(r.tid, || "PTRACE_SETSIGMASK".into())?;
    }
    let result = (|| -> Result<ProcessImage> {
        let mut main = Remote::new(pid, syscall_ip)?;
        let scratch = main.mmap_scratch(4096)?;
        let mem = procfs::mem(pid).ctx(pid, || "open /proc mem".into())?;
        let s = Scratch {
            addr: scratch,
            mem: &mem,
            pid,
        };
        let inner = (|| -> Result<ProcessImage> {
            let brk = main.call("brk", libc::SYS_brk, &[0])?;
            let mut process = task::dump_process(pid, &st, &status, &mut main, &s)?;
            process.nr_threads = raws.len() as u32;
            let sigactions = task::dump_sigactions(&mut main, &s)?;
            let itimers = task::dump_itimers(&mut main, &s)?;
            let mut threads = Vec::new();
            for r in &raws {
                let thread = if r.tid == pid {
                    task::dump_thread(r.tid, r.sigmask, &mut main, &s)?
                } else {
                    let mut t = Remote::new(r.tid, syscall_ip)?;
                    let th = task::dump_thread(r.tid, r.sigmask, &mut t, &s);
                    t.finish()?;
                    th?
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
            Ok(ProcessImage {
                process,
                cwd_removed: task::dump_cwd_removed(pid)?,
                creds: task::dump_creds(&status),
                rlimits: task::dump_rlimits(pid)?,
                sigactions,
                itimers,
                shared_pending: SharedPending {
                    signals: shared_pending.clone(),
                },
                fds,
                files_shared: ft.files_shared(pid),
                mm: mm::dump_mm(pid, &st, brk)?,
                vmas,
                threads,
                pages: Vec::new(),
            })
        })();
        let unmapped = main.call("munmap", libc::SYS_munmap, &[scratch, 4096]);
        main.finish()?;
        let img = inner?;
        unmapped?;
        Ok(img)
    })();
    // Put the signal masks back whatever happened.
    for r in &raws {
        sys::set_sigmask(r.tid, r.sigmask).ctx(r.tid, || "PTRACE_SETSIGMASK".into())?;
    }
    result
}
