//! Orchestration of a checkpoint: freeze, collect, write, then kill or
//! release. Any failure before the image is complete leaves the process
//! running exactly as it was and records the error in the image and the log.

use crate::arch;
use crate::error::{Ctx, Error, Result};
use crate::files;
use crate::freeze::{self, Frozen};
use crate::log::Log;
use crate::mm::{self, PageStats};
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
}

impl Sink for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        match self.sync_all() {
            // Pipes and sockets cannot be synced; the reader has the data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            r => r,
        }
    }
}

impl<S: Sink> Sink for std::io::BufWriter<S> {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.get_mut().sync()
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
        .and_then(|_| run(pid, &mut w, log));
    match res {
        Ok((frozen, mut summary)) => {
            let mut out = w.finish().map_err(Error::Write)?;
            out.sync().map_err(Error::Write)?;
            if opts.leave_running {
                drop(frozen);
            } else if let Some(warn) = frozen.kill()? {
                log.info(0, pid, &comm, &warn);
                summary.warnings.push(warn);
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

fn run<S: Sink>(pid: Pid, w: &mut ImageWriter<S>, log: &mut Log) -> Result<(Frozen, Summary)> {
    let comm = procfs::read(pid, "comm")
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    let unsupported = |object: &str, reason: String| Error::Unsupported {
        pid,
        comm: comm.clone(),
        object: object.into(),
        reason,
    };
    let status = procfs::status(pid).ctx(pid, || "read /proc status (is the pid right?)".into())?;
    if status.num("Seccomp").unwrap_or(0) != 0 {
        return Err(unsupported(
            "seccomp filters",
            "seccomp state cannot be saved yet".into(),
        ));
    }
    let kids = procfs::children(pid).ctx(pid, || "list children".into())?;
    if !kids.is_empty() {
        return Err(unsupported(
            "its child processes",
            format!("it has children {kids:?}; checkpointing process trees is not supported yet"),
        ));
    }
    let frozen = freeze::freeze(pid)?;
    if frozen.tids.len() != 1 {
        return Err(unsupported(
            "its threads",
            format!(
                "it has {} threads; multi-threaded processes are not supported yet",
                frozen.tids.len()
            ),
        ));
    }
    let tid = frozen.tids[0];
    // Everything below reads a frozen process.
    let st = procfs::stat(pid).ctx(pid, || "read /proc stat".into())?;
    let status = procfs::status(pid).ctx(pid, || "read /proc status".into())?;
    let maps = procfs::maps(pid).ctx(pid, || "read /proc smaps".into())?;
    let mut vmas = Vec::with_capacity(maps.len());
    for m in &maps {
        vmas.push(mm::vma_of(pid, &comm, m)?);
    }
    let f = files::dump(pid, &comm)?;
    let sigmask = sys::get_sigmask(tid).ctx(tid, || "PTRACE_GETSIGMASK".into())?;
    let regs = sys::get_regs(tid).ctx(tid, || "PTRACE_GETREGS".into())?;
    let xstate = sys::get_xstate(tid).ctx(tid, || "PTRACE_GETREGSET NT_X86_XSTATE".into())?;
    let mut dr = [0u64; 8];
    for (i, d) in dr.iter_mut().enumerate() {
        if i != 4 && i != 5 {
            *d = sys::get_debugreg(tid, i).ctx(tid, || format!("read dr{i}"))?;
        }
    }
    let shared_pending = task::dump_pending(tid, true)?;

    // Injected syscalls: block every signal meanwhile so none is consumed,
    // and borrow one scratch page.
    let syscall_ip = find_syscall_insn(pid, &maps)?;
    sys::set_sigmask(tid, !0).ctx(tid, || "PTRACE_SETSIGMASK".into())?;
    let mut r = Remote::new(tid, syscall_ip)?;
    let result = (|| -> Result<ProcessImage> {
        let scratch = r.call(
            "mmap",
            libc::SYS_mmap,
            &[
                0,
                4096,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        let mem = procfs::mem(pid).ctx(pid, || "open /proc mem".into())?;
        let s = Scratch {
            addr: scratch,
            mem: &mem,
            pid,
        };
        let inner = (|| -> Result<ProcessImage> {
            let brk = r.call("brk", libc::SYS_brk, &[0])?;
            Ok(ProcessImage {
                process: task::dump_process(pid, &st, &status, &mut r, &s)?,
                creds: task::dump_creds(&status),
                rlimits: task::dump_rlimits(pid)?,
                sigactions: task::dump_sigactions(&mut r, &s)?,
                itimers: task::dump_itimers(&mut r, &s)?,
                shared_pending: SharedPending {
                    signals: shared_pending.clone(),
                },
                files: f.files.clone(),
                fds: f.fds.clone(),
                mm: mm::dump_mm(pid, &st, brk)?,
                vmas: vmas.clone(),
                threads: vec![ThreadImage {
                    thread: task::dump_thread(tid, sigmask, &mut r, &s)?,
                    regs: arch::regs_to_record(tid, &regs),
                    xstate: X86Xstate {
                        tid,
                        area: Bytes(xstate.clone()),
                    },
                    debug: X86DebugRegs { tid, dr },
                }],
                pages: Vec::new(),
            })
        })();
        r.call("munmap", libc::SYS_munmap, &[scratch, 4096])?;
        inner
    })();
    // Put registers and the signal mask back whatever happened.
    let fin = r.finish();
    sys::set_sigmask(tid, sigmask).ctx(tid, || "PTRACE_SETSIGMASK".into())?;
    let img = result?;
    fin?;

    let xcr0 = arch::xstate_xfeatures(&xstate).unwrap_or(sys::xcr0());
    w.write(&arch::arch_record(xcr0, xstate.len() as u32))
        .map_err(Error::Write)?;
    img.write_meta(w).map_err(Error::Write)?;
    log.info(
        w.offset(),
        pid,
        &comm,
        &format!("{} mappings, {} fds", img.vmas.len(), img.fds.len()),
    );
    let PageStats {
        pages,
        zero_skipped,
    } = mm::dump_pages(pid, &img.vmas, w)?;
    let summary = Summary {
        processes: 1,
        threads: 1,
        vmas: img.vmas.len(),
        pages,
        zero_pages_skipped: zero_skipped,
        bytes: w.offset(),
        files: img.files.len(),
        warnings: Vec::new(),
    };
    Ok((frozen, summary))
}
