//! Orchestration of a restart: read and validate the whole image, create
//! the process with its pid, rebuild its fds and signal dispositions inside
//! it, then replace its address space and set its registers from outside
//! with injected syscalls, and let it go. A failure at any step kills what
//! was created.

use crate::arch;
use crate::checkpoint::find_syscall_insn;
use crate::error::{Ctx, Error, Result};
use crate::files;
use crate::log::Log;
use crate::model::{Image, ProcessImage};
use crate::procfs;
use crate::remote::Remote;
use crate::sys::{self, Pid};
use crate::task::{self, Scratch};
use ckpt_image::*;
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// Return once the process runs instead of waiting for it.
    pub detach: bool,
}

/// How a restart ended.
#[derive(Debug)]
pub enum Outcome {
    /// `--detach`: the restored root's pid.
    Detached(Pid),
    /// The restored root exited with this status (128+N for signal N).
    Exited(u8),
}

const PAGE: u64 = 4096;
/// Trampoline: one page of code (a `syscall` instruction) and two of scratch.
const TRAMP_PAGES: u64 = 3;
const TRAMP_LEN: u64 = TRAMP_PAGES * PAGE;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// Restarts the image read from `input`.
pub fn restart(input: std::fs::File, opts: &RestartOptions, log: &mut Log) -> Result<Outcome> {
    let file = seekable(input)?;
    let img = Image::read(std::io::BufReader::with_capacity(1 << 20, &file))?;
    validate(&img, log)?;
    let p = &img.processes[0];
    let pid = p.process.pid;
    let comm = p.process.comm.to_string();
    log.info(0, pid, &comm, "restart: image valid, creating process");
    let mut child = Restoring::spawn(p, &file, &img)?;
    child
        .rebuild(p, &img)
        .inspect_err(|e| log.error(e, 0, pid, &comm))?;
    let pid = child.release()?;
    log.info(0, pid, &comm, "restart: process running");
    if opts.detach {
        return Ok(Outcome::Detached(pid));
    }
    Ok(Outcome::Exited(wait_forwarding(pid)?))
}

/// A regular file at offset 0 is used as is; anything else (a pipe from
/// another host) is copied into a memfd first so the task can pread from it.
fn seekable(mut input: std::fs::File) -> Result<std::fs::File> {
    let meta = input.metadata().map_err(|e| {
        Error::Image(ImageError::Io {
            offset: 0,
            source: e,
        })
    })?;
    if meta.is_file() && input.stream_position().ok() == Some(0) {
        return Ok(input);
    }
    let mut m = sys::memfd("ckpt-image").map_err(|e| {
        Error::Image(ImageError::Io {
            offset: 0,
            source: e,
        })
    })?;
    std::io::copy(&mut input, &mut m).map_err(|e| {
        Error::Image(ImageError::Io {
            offset: 0,
            source: e,
        })
    })?;
    m.rewind().map_err(|e| {
        Error::Image(ImageError::Io {
            offset: 0,
            source: e,
        })
    })?;
    Ok(m)
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(Error::Refused(msg))
}

fn special(kind: u32) -> bool {
    matches!(kind, VMA_VDSO | VMA_VVAR | VMA_VVAR_VCLOCK | VMA_VSYSCALL)
}

/// Everything that can be checked before a process is created.
fn validate(img: &Image, log: &mut Log) -> Result<()> {
    let u = crate::uname();
    let here = crate::head(0);
    if img.head.arch != ARCH_X86_64 || img.head.machine.0 != here.machine.0 {
        return refuse(format!(
            "image was written on {} (arch id {}); this machine is {}",
            img.head.machine, img.head.arch, here.machine
        ));
    }
    let _ = u;
    if img.head.kernel_release.0 != here.kernel_release.0 {
        log.info(
            0,
            0,
            "",
            &format!(
                "note: image written on kernel {}, restarting on {}",
                img.head.kernel_release, here.kernel_release
            ),
        );
    }
    arch::validate_arch(&img.arch)?;
    if img.processes.len() != 1 {
        return refuse(format!(
            "image holds {} processes; restarting process trees is not supported yet",
            img.processes.len()
        ));
    }
    let p = &img.processes[0];
    let pid = p.process.pid;
    if p.threads.len() != 1 {
        return refuse(format!("pid {pid}: image holds {} threads; only single-threaded processes can be restarted yet", p.threads.len()));
    }
    let own_xstate = sys::get_xstate_size();
    for t in &p.threads {
        if t.regs.tid != t.thread.tid || t.xstate.tid != t.thread.tid {
            return refuse(format!(
                "thread {}: register records belong to another thread",
                t.thread.tid
            ));
        }
        arch::validate_regs(&t.regs)?;
        arch::validate_debugregs(t.thread.tid, &t.debug.dr)?;
        let bv = arch::xstate_bv(&t.xstate.area.0);
        if bv & !sys::xcr0() != 0 {
            return refuse(format!(
                "thread {}: xsave state uses features this CPU lacks: {}",
                t.thread.tid,
                arch::feature_names(bv & !sys::xcr0())
            ));
        }
        if t.xstate.area.0.len() != own_xstate {
            return refuse(format!(
                "thread {}: xsave area is {} bytes, this kernel uses {}; restart on the same kind of machine",
                t.thread.tid,
                t.xstate.area.0.len(),
                own_xstate
            ));
        }
    }
    if pid <= 1 {
        return refuse(format!("image pid {pid} is not restorable"));
    }
    if procfs::exists(pid) {
        let who = procfs::read(pid, "comm").unwrap_or_default();
        return refuse(format!(
            "pid {pid} is in use by another process ({}); stop it, or wait until it exits, then restart",
            who.trim_end()
        ));
    }
    // Mappings: sorted, disjoint, page aligned, in user space.
    let mut last_end = 0;
    for v in &p.vmas {
        if v.kind == VMA_VSYSCALL {
            continue;
        }
        if v.start % PAGE != 0
            || v.end % PAGE != 0
            || v.start >= v.end
            || v.end > arch::TASK_SIZE
            || v.start < last_end
        {
            return refuse(format!(
                "pid {pid}: invalid mapping {:#x}-{:#x} in image",
                v.start, v.end
            ));
        }
        last_end = v.end;
        if v.kind == VMA_FILE && v.flags & VMAF_DELETED == 0 {
            let path = std::ffi::OsStr::from_bytes_ext(&v.path.0);
            if let Err(e) = std::fs::metadata(path) {
                return refuse(format!("pid {pid}: mapped file {} is missing: {e}", v.path));
            }
        }
    }
    for r in &p.pages {
        let end = r.addr.saturating_add(r.nr_pages * PAGE);
        let inside = p.vmas.iter().any(|v| {
            v.start <= r.addr && end <= v.end && !special(v.kind) && v.flags & VMAF_SHARED == 0
        });
        if !inside {
            return refuse(format!(
                "pid {pid}: page data at {:#x} ({} pages) lies outside every private mapping",
                r.addr, r.nr_pages
            ));
        }
    }
    // Our vDSO must look like the image's, since it is moved into place.
    let own = procfs::maps(std::process::id() as Pid).map_err(|e| Error::Sys {
        pid: 0,
        what: "read own maps".into(),
        source: e,
    })?;
    for kind in [VMA_VDSO, VMA_VVAR, VMA_VVAR_VCLOCK] {
        let mine = own
            .iter()
            .map(|m| (m, crate::mm::kind_of_special(&m.path)))
            .find(|(_, k)| *k == Some(kind))
            .map(|(m, _)| m.size());
        let theirs = p
            .vmas
            .iter()
            .find(|v| v.kind == kind)
            .map(|v| v.end - v.start);
        if mine != theirs {
            return refuse(format!(
                "pid {pid}: the image's vDSO layout ({theirs:?} bytes for kind {kind}) differs from this kernel's ({mine:?}); restart on the kernel that wrote the image"
            ));
        }
    }
    for d in &p.fds {
        if !p.files.iter().any(|f| f.id == d.file_id) {
            return refuse(format!(
                "pid {pid}: fd {} refers to a file the image does not have",
                d.fd
            ));
        }
    }
    for f in &p.files {
        if matches!(f.kind, FILE_REGULAR | FILE_DIR | FILE_CHR) {
            if let Err(e) = std::fs::metadata(std::ffi::OsStr::from_bytes_ext(&f.path.0)) {
                return refuse(format!("pid {pid}: open file {} is missing: {e}", f.path));
            }
        }
    }
    Ok(())
}

trait FromBytesExt {
    fn from_bytes_ext(b: &[u8]) -> &Self;
}
impl FromBytesExt for std::ffi::OsStr {
    fn from_bytes_ext(b: &[u8]) -> &Self {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// A process being built. Dropping it before `release` kills it.
struct Restoring {
    pid: Pid,
    tramp: u64,
    img_fd: i32,
    released: bool,
}

/// Chooses where the trampoline goes: free in this process (the child is a
/// copy of it) and clear of every mapping of the image.
fn map_trampoline(p: &ProcessImage) -> Result<u64> {
    let clear = |a: u64| {
        p.vmas
            .iter()
            .all(|v| a + TRAMP_LEN <= v.start || a >= v.end)
    };
    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    let mut candidates = vec![0u64];
    candidates.extend((1..64u64).map(|i| i << 40).rev());
    candidates.extend((1..16u64).map(|i| i << 28));
    for hint in candidates {
        let Ok(a) = sys::mmap_anon(hint, TRAMP_LEN as usize, rwx) else {
            continue;
        };
        if clear(a) {
            // syscall instruction (0f 05) at the start of the page.
            sys::poke_own(a, &[0x0f, 0x05]);
            return Ok(a);
        }
        sys::munmap(a, TRAMP_LEN as usize);
    }
    refuse("cannot find room for the restore trampoline outside the image's mappings".into())
}

/// Runs in the new child: fds, session, cwd, umask, dispositions; then
/// stops for the parent. Returns an error message for the parent.
fn child_setup(
    p: &ProcessImage,
    img_fd: i32,
    status_fd: i32,
) -> std::result::Result<(i32, i32), String> {
    sys::block_all_signals();
    // If ckpt dies before the restore completes, the half-built child dies too.
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64)
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    let max_fd = p.fds.iter().map(|f| f.fd as i32).max().unwrap_or(2).max(2);
    let img = sys::dup_above(img_fd, max_fd + 1).map_err(|e| format!("dup image fd: {e}"))?;
    let st = sys::dup_above(status_fd, max_fd + 1).map_err(|e| format!("dup status fd: {e}"))?;
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("list own fds: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd != img && fd != st {
            sys::close(fd);
        }
    }
    let pid = p.process.pid;
    if p.process.sid == pid {
        sys::setsid().map_err(|e| format!("setsid: {e}"))?;
    } else if p.process.pgid == pid {
        sys::setpgid(0, 0).map_err(|e| format!("setpgid: {e}"))?;
    } else if procfs::exists(p.process.pgid) {
        // Rejoin the original group if it still exists in our session.
        let _ = sys::setpgid(0, p.process.pgid);
    }
    files::restore(&p.files, &p.fds)?;
    if p.process.root.0 != b"/" {
        sys::chroot(&p.process.root.0).map_err(|e| format!("chroot {}: {e}", p.process.root))?;
    }
    sys::chdir(&p.process.cwd.0).map_err(|e| format!("chdir {}: {e}", p.process.cwd))?;
    sys::umask(p.process.umask);
    sys::set_comm(&p.process.comm.0);
    sys::personality(p.process.personality).map_err(|e| format!("personality: {e}"))?;
    task::restore_sigactions(&p.sigactions).map_err(|e| format!("rt_sigaction: {e}"))?;
    Ok((img, st))
}

impl Restoring {
    fn spawn(p: &ProcessImage, file: &std::fs::File, _img: &Image) -> Result<Self> {
        let pid = p.process.pid;
        let tramp = map_trampoline(p)?;
        let (rd, wr) = sys::pipe().ctx(0, || "pipe".into())?;
        let fork = sys::fork_with_pid(pid);
        match fork {
            Ok(0) => {
                // The child: a copy of this single-threaded process.
                sys::close(rd);
                match child_setup(p, file.as_raw_fd(), wr) {
                    Ok((img_fd, st)) => {
                        let ok = format!("ok {img_fd}");
                        let _ = sys::traceme();
                        let _ = sys::write_all(st, ok.as_bytes());
                        sys::close(st);
                        sys::stop_self();
                        sys::exit_now(127) // not reached: the parent takes over
                    }
                    Err(msg) => {
                        let _ = sys::write_all(wr, msg.as_bytes());
                        sys::exit_now(1)
                    }
                }
            }
            Err(e) => {
                sys::close(rd);
                sys::close(wr);
                sys::munmap(tramp, TRAMP_LEN as usize);
                return Err(if e.raw_os_error() == Some(libc::EEXIST) {
                    Error::Refused(format!(
                        "pid {pid} was taken by another process just now; retry the restart"
                    ))
                } else {
                    Error::Sys {
                        pid,
                        what: "clone3 with set_tid (needs root)".into(),
                        source: e,
                    }
                });
            }
            Ok(_) => {}
        }
        sys::close(wr);
        sys::munmap(tramp, TRAMP_LEN as usize);
        let mut this = Restoring {
            pid,
            tramp,
            img_fd: -1,
            released: false,
        };
        let mut msg = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = sys::read(rd, &mut buf) {
            if n == 0 {
                break;
            }
            msg.extend_from_slice(&buf[..n]);
        }
        sys::close(rd);
        let msg = String::from_utf8_lossy(&msg).into_owned();
        match msg.strip_prefix("ok ").and_then(|v| v.parse().ok()) {
            Some(fd) => this.img_fd = fd,
            None => {
                return Err(Error::Refused(format!(
                    "pid {pid}: setting up the new process failed: {}",
                    if msg.is_empty() { "it exited" } else { &msg }
                )))
            }
        }
        let (_, st) = sys::wait(pid, 0).ctx(pid, || "wait for the new process to stop".into())?;
        if !libc::WIFSTOPPED(st) {
            return Err(Error::TaskGone(pid));
        }
        sys::set_options(pid, libc::PTRACE_O_EXITKILL | crate::freeze::TRACE_OPTIONS)
            .ctx(pid, || "PTRACE_SETOPTIONS".into())?;
        Ok(this)
    }

    fn rebuild(&mut self, p: &ProcessImage, _img: &Image) -> Result<()> {
        let pid = self.pid;
        let mem = procfs::mem(pid).ctx(pid, || "open /proc mem".into())?;
        let mut r = Remote::new(pid, self.tramp)?;
        let s = Scratch {
            addr: self.tramp + PAGE,
            mem: &mem,
            pid,
        };

        // The child inherited our rseq registration: drop it before the
        // memory it points to is replaced.
        if let Ok((addr, len, sig)) = sys::rseq_config(pid) {
            if addr != 0 {
                r.call(
                    "rseq(unregister)",
                    libc::SYS_rseq,
                    &[addr, len as u64, RSEQ_FLAG_UNREGISTER, sig as u64],
                )?;
            }
        }
        crate::mm::replace_address_space(&mut r, &s, p, self.tramp, TRAMP_LEN, self.img_fd)?;

        let t = &p.threads[0];
        task::restore_thread(&mut r, &s, &t.thread)?;
        crate::creds::restore(&mut r, &s, &p.creds)?;
        task::restore_itimers(&mut r, &s, &p.itimers)?;
        task::restore_pending(&mut r, &s, pid, None, &p.shared_pending.signals)?;
        task::restore_pending(&mut r, &s, pid, Some(pid), &t.thread.pending)?;
        r.call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            &[libc::PR_SET_PDEATHSIG as u64, p.process.pdeathsig as u64],
        )?;
        if p.process.child_subreaper != 0 {
            r.call(
                "prctl(PR_SET_CHILD_SUBREAPER)",
                libc::SYS_prctl,
                &[libc::PR_SET_CHILD_SUBREAPER as u64, 1],
            )?;
        }
        if p.process.dumpable != 1 {
            r.call(
                "prctl(PR_SET_DUMPABLE)",
                libc::SYS_prctl,
                &[libc::PR_SET_DUMPABLE as u64, p.process.dumpable as u64],
            )?;
        }
        r.call("close", libc::SYS_close, &[self.img_fd as u64])?;
        task::restore_rlimits(pid, &p.rlimits)?;

        // The last injected call unmaps the trampoline, so it must run from
        // the restored vDSO's syscall instruction.
        let maps = procfs::maps(pid).ctx(pid, || "read maps".into())?;
        let ip = find_syscall_insn(pid, &maps)?;
        r.set_syscall_ip(ip);
        r.call("munmap", libc::SYS_munmap, &[self.tramp, TRAMP_LEN])?;
        r.disarm();

        let mut regs = arch::record_to_regs(&t.regs);
        arch::restart_fixup(&mut regs, false);
        sys::set_regs(pid, &regs).ctx(pid, || "PTRACE_SETREGS".into())?;
        sys::set_xstate(pid, &t.xstate.area.0).ctx(pid, || "set xsave state".into())?;
        for i in [0usize, 1, 2, 3, 6, 7] {
            if t.debug.dr[i] != 0 {
                sys::set_debugreg(pid, i, t.debug.dr[i]).ctx(pid, || format!("set dr{i}"))?;
            }
        }
        sys::set_sigmask(pid, t.thread.sigmask).ctx(pid, || "PTRACE_SETSIGMASK".into())?;
        Ok(())
    }

    /// Lets the process run on its own.
    fn release(mut self) -> Result<Pid> {
        sys::detach(self.pid, 0).ctx(self.pid, || "PTRACE_DETACH".into())?;
        self.released = true;
        Ok(self.pid)
    }
}

impl Drop for Restoring {
    fn drop(&mut self) {
        if !self.released {
            let _ = sys::kill(self.pid, libc::SIGKILL);
            let _ = sys::wait(self.pid, 0);
        }
    }
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: i32) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        let _ = sys::kill(pid, sig);
    }
}

/// Waits for the restored root, passing SIGINT/SIGTERM/SIGHUP on to it.
fn wait_forwarding(pid: Pid) -> Result<u8> {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        sys::on_signal(s, forward);
    }
    loop {
        let (_, st) = sys::wait(pid, 0).ctx(pid, || "wait for the restored process".into())?;
        if libc::WIFEXITED(st) {
            return Ok(libc::WEXITSTATUS(st) as u8);
        }
        if libc::WIFSIGNALED(st) {
            return Ok(128 + libc::WTERMSIG(st) as u8);
        }
    }
}
