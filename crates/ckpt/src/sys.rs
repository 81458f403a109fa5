//! The syscall boundary: every raw syscall, ptrace request and kernel struct
//! ckpt uses lives here, each in a small function with a SAFETY note. The
//! rest of the library is safe Rust.

use std::io;

pub type Pid = i32;
pub type Regs = libc::user_regs_struct;

/// NT_X86_XSTATE regset (elf.h).
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Offset of `u_debugreg` in `struct user` (x86_64).
const DEBUGREG_OFFSET: usize = std::mem::offset_of!(libc::user, u_debugreg);
/// Largest xsave area we accept from the kernel (AMX tiles need ~11 KiB).
pub const XSTATE_MAX: usize = 16384;

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ptrace(req: libc::c_uint, tid: Pid, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every caller passes addr/data that are either integers or
    // pointers to live buffers of the size the request expects.
    check(unsafe { libc::ptrace(req, tid, addr, data) })
}

/// PTRACE_SEIZE with `options`.
pub fn seize(tid: Pid, options: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}
/// PTRACE_INTERRUPT: stop a seized task.
pub fn interrupt(tid: Pid) -> io::Result<()> {
    ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}
/// PTRACE_SETOPTIONS.
pub fn set_options(tid: Pid, options: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SETOPTIONS, tid, 0, options as usize).map(drop)
}
/// PTRACE_CONT delivering `sig` (0 for none).
pub fn cont(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}
/// PTRACE_SYSCALL: run to the next syscall entry or exit.
pub fn cont_syscall(tid: Pid) -> io::Result<()> {
    ptrace(libc::PTRACE_SYSCALL, tid, 0, 0).map(drop)
}
/// PTRACE_DETACH delivering `sig`.
pub fn detach(tid: Pid, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}
/// PTRACE_TRACEME (called in a child we created).
pub fn traceme() -> io::Result<()> {
    ptrace(libc::PTRACE_TRACEME, 0, 0, 0).map(drop)
}

/// PTRACE_GETREGS.
pub fn get_regs(tid: Pid) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    let mut r: Regs = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, tid, 0, &mut r as *mut Regs as usize)?;
    Ok(r)
}
/// PTRACE_SETREGS.
pub fn set_regs(tid: Pid, r: &Regs) -> io::Result<()> {
    ptrace(libc::PTRACE_SETREGS, tid, 0, r as *const Regs as usize).map(drop)
}

/// PTRACE_GETREGSET NT_X86_XSTATE: the full xsave area.
pub fn get_xstate(tid: Pid) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}
/// PTRACE_SETREGSET NT_X86_XSTATE.
pub fn set_xstate(tid: Pid, area: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: area.as_ptr() as *mut libc::c_void,
        iov_len: area.len(),
    };
    ptrace(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut libc::iovec as usize,
    )
    .map(drop)
}

/// Reads debug register `i` (PTRACE_PEEKUSER).
pub fn get_debugreg(tid: Pid, i: usize) -> io::Result<u64> {
    // PEEKUSER returns the value; -1 is ambiguous, so clear errno first.
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: PEEKUSER reads a word at an offset inside struct user.
    let v = unsafe { libc::ptrace(libc::PTRACE_PEEKUSER, tid, DEBUGREG_OFFSET + i * 8, 0) };
    let e = io::Error::last_os_error();
    if v == -1 && e.raw_os_error() != Some(0) {
        return Err(e);
    }
    Ok(v as u64)
}
/// Writes debug register `i` (PTRACE_POKEUSER).
pub fn set_debugreg(tid: Pid, i: usize, v: u64) -> io::Result<()> {
    ptrace(
        libc::PTRACE_POKEUSER,
        tid,
        DEBUGREG_OFFSET + i * 8,
        v as usize,
    )
    .map(drop)
}

/// PTRACE_GETSIGMASK.
pub fn get_sigmask(tid: Pid) -> io::Result<u64> {
    let mut m = 0u64;
    ptrace(libc::PTRACE_GETSIGMASK, tid, 8, &mut m as *mut u64 as usize)?;
    Ok(m)
}
/// PTRACE_SETSIGMASK.
pub fn set_sigmask(tid: Pid, m: u64) -> io::Result<()> {
    ptrace(libc::PTRACE_SETSIGMASK, tid, 8, &m as *const u64 as usize).map(drop)
}

/// PTRACE_PEEKSIGINFO: the queued signals (private or shared queue), raw.
pub fn peek_siginfo(tid: Pid, shared: bool) -> io::Result<Vec<[u8; 128]>> {
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; 128]; 32];
        let args = libc::ptrace_peeksiginfo_args {
            off: out.len() as u64,
            flags: if shared {
                libc::PTRACE_PEEKSIGINFO_SHARED
            } else {
                0
            },
            nr: buf.len() as i32,
        };
        let n = ptrace(
            libc::PTRACE_PEEKSIGINFO,
            tid,
            &args as *const _ as usize,
            buf.as_mut_ptr() as usize,
        )? as usize;
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// PTRACE_GET_RSEQ_CONFIGURATION: (address, length, signature).
pub fn rseq_config(tid: Pid) -> io::Result<(u64, u32, u32)> {
    // SAFETY: plain integers; zero is valid.
    let mut c: libc::ptrace_rseq_configuration = unsafe { std::mem::zeroed() };
    ptrace(
        libc::PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of_val(&c),
        &mut c as *mut _ as usize,
    )?;
    Ok((c.rseq_abi_pointer, c.rseq_abi_size, c.signature))
}

/// waitpid(tid, __WALL | extra): returns the raw status.
pub fn wait(tid: Pid, extra: i32) -> io::Result<(Pid, i32)> {
    let mut st = 0;
    loop {
        // SAFETY: st is a valid out-pointer.
        let r = unsafe { libc::waitpid(tid, &mut st, libc::__WALL | extra) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((r, st));
    }
}

/// kill(pid, sig).
pub fn kill(pid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::kill(pid, sig) } as libc::c_long).map(drop)
}

/// tgkill(tgid, tid, sig).
pub fn tgkill(tgid: Pid, tid: Pid, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) }).map(drop)
}

/// kcmp(KCMP_FILE): do two fds of two processes share one open file description?
pub fn same_file(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> io::Result<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp takes integers only.
    let r = check(unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) })?;
    Ok(r == 0)
}

/// kcmp(KCMP_FILE) as an order: how the open file description of fd `fd1`
/// of `pid1` compares with that of `fd2` of `pid2` (the kernel orders them
/// by obfuscated address, consistently), so descriptions can be sorted and
/// searched rather than compared pairwise.
pub fn file_order(pid1: Pid, fd1: i32, pid2: Pid, fd2: i32) -> io::Result<std::cmp::Ordering> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp takes integers only.
    let r = check(unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) })?;
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        _ => Err(io::Error::other("kcmp: descriptions not comparable")),
    }
}

/// kcmp(KCMP_FILES): do two processes share one fd table?
pub fn same_fd_table(pid1: Pid, pid2: Pid) -> io::Result<bool> {
    const KCMP_FILES: i32 = 2;
    // SAFETY: kcmp takes integers only.
    let r = check(unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILES, 0, 0) })?;
    Ok(r == 0)
}

/// kcmp(KCMP_EPOLL_TFD): is fd `fd1` of `pid1` the description that the
/// `toff`-th watch under fd number `tfd` of epoll `efd` of `pid2` watches?
/// (ENOENT: the epoll has no such watch.)
pub fn same_epoll_target(
    pid1: Pid,
    fd1: i32,
    pid2: Pid,
    efd: i32,
    tfd: i32,
    toff: u32,
) -> io::Result<bool> {
    const KCMP_EPOLL_TFD: i32 = 7;
    /// struct kcmp_epoll_slot of <linux/kcmp.h>.
    #[repr(C)]
    struct KcmpEpollSlot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    const _: () = assert!(std::mem::size_of::<KcmpEpollSlot>() == 12);
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: slot is a live kcmp_epoll_slot the kernel only reads.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1,
            pid2,
            KCMP_EPOLL_TFD,
            fd1,
            &slot as *const KcmpEpollSlot,
        )
    })?;
    Ok(r == 0)
}

/// prlimit(pid, resource, new, old).
pub fn prlimit(pid: Pid, res: u32, new: Option<(u64, u64)>) -> io::Result<(u64, u64)> {
    let n = new.map(|(c, m)| libc::rlimit64 {
        rlim_cur: c,
        rlim_max: m,
    });
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let np = n.as_ref().map_or(std::ptr::null(), |n| n as *const _);
    // SAFETY: np is null or points to a live rlimit64; old is a valid out-pointer.
    check(unsafe { libc::prlimit64(pid, res as _, np, &mut old) } as libc::c_long)?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// clone3 with `set_tid = [pid]`: a fork whose child gets `pid`.
/// Returns 0 in the child, the pid in the parent.
pub fn fork_with_pid(pid: Pid) -> io::Result<Pid> {
    fork_with_pid_flags(pid, 0)
}

/// [`fork_with_pid`] with extra clone flags (only `CLONE_FILES` is used: the
/// child shares our fd table).
pub fn fork_with_pid_flags(pid: Pid, flags: u64) -> io::Result<Pid> {
    let tid: [libc::pid_t; 1] = [pid];
    // SAFETY: clone_args is plain integers.
    let mut a: libc::clone_args = unsafe { std::mem::zeroed() };
    a.flags = flags & libc::CLONE_FILES as u64;
    a.exit_signal = libc::SIGCHLD as u64;
    a.set_tid = tid.as_ptr() as u64;
    a.set_tid_size = 1;
    // SAFETY: without CLONE_VM this is a fork: the child gets a copy of our
    // (single-threaded) address space and returns 0 on its own stack copy.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &a as *const libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    check(r).map(|r| r as Pid)
}

/// pidfd_open(pid).
pub fn pidfd_open(pid: Pid) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments; on success the kernel returns a new fd we own.
    let r = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: r is a fresh fd owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// pidfd_getfd(pidfd, fd): a new fd of ours for the same open file
/// description as `fd` of the pidfd's process (we trace it, so we may).
pub fn pidfd_getfd(pidfd: i32, fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments; on success the kernel returns a new fd we own.
    let r = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) })?;
    // SAFETY: r is a fresh fd owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// struct f_owner_ex (F_GETOWN_EX / F_SETOWN_EX).
#[repr(C)]
#[derive(Default)]
pub struct FOwnerEx {
    pub kind: i32,
    pub pid: i32,
}
const _: () = assert!(std::mem::size_of::<FOwnerEx>() == 8);
pub const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
pub const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;

/// The owner (F_GETOWN_EX: type, id) and F_GETSIG signal of a description.
pub fn file_owner(fd: i32) -> io::Result<(i32, i32, i32)> {
    let mut o = FOwnerEx::default();
    // SAFETY: o is a valid f_owner_ex out-pointer.
    check(unsafe { libc::fcntl(fd, F_GETOWN_EX, &mut o as *mut FOwnerEx) } as libc::c_long)?;
    // SAFETY: F_GETSIG takes no argument.
    let sig = check(unsafe { libc::fcntl(fd, F_GETSIG) } as libc::c_long)?;
    Ok((o.kind, o.pid, sig as i32))
}

/// CPUID leaf/subleaf: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    #[allow(unused_unsafe)]
    // SAFETY: cpuid exists on every x86_64 CPU.
    let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, sub) };
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// XCR0: the xstate features the OS enabled on this CPU.
pub fn xcr0() -> u64 {
    #[target_feature(enable = "xsave")]
    unsafe fn xgetbv0() -> u64 {
        // SAFETY: the caller checked OSXSAVE.
        unsafe { std::arch::x86_64::_xgetbv(0) }
    }
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 27) == 0 {
        return 0x3; // no OSXSAVE: x87 + SSE only
    }
    // SAFETY: OSXSAVE is set, so xgetbv is available.
    unsafe { xgetbv0() }
}

/// Blocks every signal in the calling thread (used in restore children).
pub fn block_all_signals() {
    let all = !0u64;
    // SAFETY: raw rt_sigprocmask with an 8-byte mask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            std::ptr::null_mut::<u64>(),
            8,
        )
    };
}

/// rt_sigaction with the kernel's struct layout (handler, flags, restorer, mask).
pub fn set_sigaction(
    sig: u32,
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
) -> io::Result<()> {
    let act: [u64; 4] = [handler, flags, restorer, mask];
    // SAFETY: act matches struct kernel_sigaction on x86_64; the handler
    // addresses are not called in this process (all signals are blocked).
    check(unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            act.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8,
        )
    })
    .map(drop)
}

/// The signal-return trampoline ckpt's own libc gives the handlers it
/// installs (the restorer of the first handler with SA_RESTORER), read
/// back with rt_sigaction; None if no handler has one.
pub fn own_restorer() -> Option<u64> {
    const SA_RESTORER: u64 = 0x0400_0000;
    (1..=64).find_map(|sig: u64| {
        let mut old = [0u64; 4];
        // SAFETY: a query only (no new action); old matches struct
        // kernel_sigaction on x86_64 and is writable.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<u64>(),
                old.as_mut_ptr(),
                8,
            )
        };
        (r == 0 && old[0] > 1 && old[1] & SA_RESTORER != 0 && old[2] != 0).then_some(old[2])
    })
}

/// raise(SIGSTOP) in the calling process.
pub fn stop_self() {
    // SAFETY: plain syscall.
    unsafe { libc::raise(libc::SIGSTOP) };
}

/// _exit(code): leave a forked child without running destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: terminates the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

/// mmap of anonymous memory in the calling process at `addr` (MAP_FIXED_NOREPLACE if addr != 0).
pub fn mmap_anon(addr: u64, len: usize, prot: i32) -> io::Result<u64> {
    let flags = libc::MAP_PRIVATE
        | libc::MAP_ANONYMOUS
        | if addr != 0 {
            libc::MAP_FIXED_NOREPLACE
        } else {
            0
        };
    // SAFETY: anonymous mapping; with NOREPLACE it cannot clobber existing mappings.
    let p = unsafe { libc::mmap(addr as *mut _, len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as u64)
}

/// A private mapping of `fd` at exactly `addr` in the calling process,
/// failing rather than replacing anything mapped there.
pub fn mmap_file_private(addr: u64, len: usize, prot: i32, fd: i32, off: u64) -> io::Result<u64> {
    let flags = libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE;
    // SAFETY: with NOREPLACE the new mapping cannot clobber existing ones.
    let p = unsafe { libc::mmap(addr as *mut _, len, prot, flags, fd, off as libc::off_t) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as u64)
}

/// munmap in the calling process.
pub fn munmap(addr: u64, len: usize) {
    // SAFETY: callers only unmap regions they mapped and no longer reference.
    unsafe { libc::munmap(addr as *mut _, len) };
}

/// pread(2) from `fd` at `off` straight into our own memory at `addr`
/// (a writable mapping the caller made and owns, `len` bytes long).
pub fn pread_own(fd: i32, addr: u64, len: usize, off: u64) -> io::Result<usize> {
    // SAFETY: callers pass a writable anonymous mapping of ours holding
    // `len` bytes that nothing else references; the kernel writes only there.
    check(unsafe { libc::pread64(fd, addr as *mut libc::c_void, len, off as i64) } as libc::c_long)
        .map(|v| v as usize)
}

/// prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ...): names anonymous memory.
pub const PR_SET_VMA: i32 = 0x5356_4d41;
pub const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;

/// Writes `data` at `addr` in our own memory (a page we mapped ourselves).
pub fn poke_own(addr: u64, data: &[u8]) {
    // SAFETY: callers pass an address inside a writable mapping of ours,
    // with room for data.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}

/// umask(mask).
pub fn umask(mask: u32) {
    // SAFETY: plain syscall.
    unsafe { libc::umask(mask) };
}

/// personality(p).
pub fn personality(p: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::personality(p as _) } as libc::c_long).map(drop)
}

/// setsid().
pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setsid() } as libc::c_long).map(drop)
}

/// setpgid(pid, pgid).
pub fn setpgid(pid: Pid, pgid: Pid) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::setpgid(pid, pgid) } as libc::c_long).map(drop)
}

/// dup3 / fcntl helpers on raw fds of the calling process.
/// Whether fd number `fd` is free in this process.
pub fn fd_is_free(fd: i32) -> bool {
    // SAFETY: F_GETFD takes no argument.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
}

/// dup3(old, new, O_CLOEXEC).
pub fn dup3_cloexec(old: i32, new: i32) -> io::Result<()> {
    // SAFETY: plain syscall on integer fds.
    check(unsafe { libc::dup3(old, new, libc::O_CLOEXEC) } as libc::c_long).map(drop)
}

pub fn dup2(old: i32, new: i32) -> io::Result<()> {
    if old == new {
        return Ok(());
    }
    // SAFETY: plain syscall on integer fds.
    check(unsafe { libc::dup2(old, new) } as libc::c_long).map(drop)
}
pub fn dup_above(fd: i32, min: i32) -> io::Result<i32> {
    // SAFETY: plain syscall on integer fds.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) } as libc::c_long).map(|v| v as i32)
}
pub fn close(fd: i32) {
    // SAFETY: the caller owns fd by number (restore child rebuilding its table).
    unsafe { libc::close(fd) };
}
/// fcntl(F_GETFL).
pub fn status_flags(fd: i32) -> io::Result<i32> {
    // SAFETY: F_GETFL takes no argument.
    check(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long).map(|v| v as i32)
}
pub fn fcntl_set(fd: i32, cmd: i32, v: i32) -> io::Result<()> {
    // SAFETY: F_SETFD/F_SETFL take an integer.
    check(unsafe { libc::fcntl(fd, cmd, v) } as libc::c_long).map(drop)
}
pub fn lseek(fd: i32, pos: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::lseek64(fd, pos as i64, libc::SEEK_SET) } as libc::c_long).map(drop)
}
/// open(2) returning a raw fd number the caller manages.
pub fn open_raw(path: &[u8], flags: i32, mode: u32) -> io::Result<i32> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated string.
    check(unsafe { libc::open(c.as_ptr(), flags, mode) } as libc::c_long).map(|v| v as i32)
}
/// Closes every fd of the calling process from `first` up.
pub fn close_range_from(first: u32) {
    // SAFETY: closes fds >= first; callers moved what they need below.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
}

/// Closes every fd of the calling process but those in `keep`, a range
/// of fd numbers at a time (no listing of /proc/self/fd, which costs more
/// than the closing in a process holding 10,000 fds).
pub fn close_all_but(keep: &std::collections::HashSet<i32>) {
    let mut kept: Vec<u32> = keep
        .iter()
        .filter(|&&fd| fd >= 0)
        .map(|&fd| fd as u32)
        .collect();
    kept.sort_unstable();
    let mut from = 0u32;
    for fd in kept.into_iter().chain([u32::MAX]) {
        if fd > from {
            // SAFETY: integer arguments; the caller owns the fds by number
            // (a restore child rebuilding its table).
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd.saturating_add(1);
    }
}

/// write(2) all of `data` to a raw fd of the calling process.
pub fn write_all(fd: i32, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is a live buffer of data.len() bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// pipe2(O_CLOEXEC): (read end, write end) as raw fds.
pub fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid out-array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

/// eventfd2(0, flags | EFD_CLOEXEC) as a raw fd.
pub fn eventfd(flags: i32) -> io::Result<i32> {
    // SAFETY: no pointers; returns a new fd or -1.
    let fd = check(unsafe { libc::eventfd(0, flags | libc::EFD_CLOEXEC) } as libc::c_long)?;
    Ok(fd as i32)
}

/// epoll_create1(EPOLL_CLOEXEC) as a raw fd.
pub fn epoll_create() -> io::Result<i32> {
    // SAFETY: no pointers; returns a new fd or -1.
    let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } as libc::c_long)?;
    Ok(fd as i32)
}

/// epoll_ctl(epfd, op, fd, {events, data}).
pub fn epoll_ctl(epfd: i32, op: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is a live epoll_event (read by ADD/MOD, ignored by DEL).
    check(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) } as libc::c_long).map(drop)
}

/// epoll_wait(epfd, 1 event, timeout 0): how many events it reported (0 or 1).
pub fn epoll_wait_now(epfd: i32) -> io::Result<usize> {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    loop {
        // SAFETY: ev is a live, writable array of one epoll_event.
        let r = unsafe { libc::epoll_wait(epfd, &mut ev, 1, 0) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// struct epoll_params of <linux/eventpoll.h> (EPIOCGPARAMS, Linux 6.9).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EpollParams {
    pub busy_poll_usecs: u32,
    pub busy_poll_budget: u16,
    pub prefer_busy_poll: u8,
    pad: u8,
}
const _: () = assert!(std::mem::size_of::<EpollParams>() == 8);
/// _IOR(0x8A, 0x02, struct epoll_params) and _IOW(0x8A, 0x01, ...).
const EPIOCGPARAMS: libc::c_ulong = 0x8008_8a02;
const EPIOCSPARAMS: libc::c_ulong = 0x4008_8a01;

impl EpollParams {
    pub fn new(busy_poll_usecs: u32, busy_poll_budget: u16, prefer_busy_poll: u8) -> Self {
        EpollParams {
            busy_poll_usecs,
            busy_poll_budget,
            prefer_busy_poll,
            pad: 0,
        }
    }
}

/// The busy-poll parameters of epoll `fd`; all 0 on kernels without
/// EPIOCGPARAMS (ENOTTY), where they cannot have been set either.
pub fn epoll_params(fd: i32) -> io::Result<EpollParams> {
    let mut p = EpollParams::default();
    // SAFETY: p is a live, writable epoll_params.
    let r = unsafe { libc::ioctl(fd, EPIOCGPARAMS, &mut p as *mut EpollParams) };
    match check(r as libc::c_long) {
        Ok(_) => Ok(p),
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Ok(EpollParams::default()),
        Err(e) => Err(e),
    }
}

/// Sets the busy-poll parameters of epoll `fd` (EPIOCSPARAMS).
pub fn set_epoll_params(fd: i32, p: &EpollParams) -> io::Result<()> {
    // SAFETY: p is a live epoll_params the kernel only reads.
    check(unsafe { libc::ioctl(fd, EPIOCSPARAMS, p as *const EpollParams) } as libc::c_long)
        .map(drop)
}

/// fcntl(F_GETFD): the fd flags (FD_CLOEXEC) of `fd`.
pub fn fd_flags(fd: i32) -> io::Result<i32> {
    // SAFETY: F_GETFD takes no argument.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) } as libc::c_long).map(|v| v as i32)
}

/// read(2) into buf from a raw fd.
pub fn read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a live, writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// memfd_create(name, MFD_CLOEXEC).
pub fn memfd(name: &str) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(name).expect("no NUL in memfd name");
    // SAFETY: c is NUL-terminated.
    let fd = check(unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) } as libc::c_long)?;
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) })
}

/// chdir / chroot in the calling process.
pub fn chdir(path: &[u8]) -> io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::chdir(c.as_ptr()) } as libc::c_long).map(drop)
}
pub fn fchdir(fd: i32) -> io::Result<()> {
    // SAFETY: plain syscall on an integer fd.
    check(unsafe { libc::fchdir(fd) } as libc::c_long).map(drop)
}
pub fn chroot(path: &[u8]) -> io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::chroot(c.as_ptr()) } as libc::c_long).map(drop)
}
/// mkdir(path, mode) and rmdir(path) in the calling process.
pub fn mkdir(path: &[u8], mode: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::mkdir(c.as_ptr(), mode) } as libc::c_long).map(drop)
}
pub fn rmdir(path: &[u8]) -> io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::rmdir(c.as_ptr()) } as libc::c_long).map(drop)
}

/// mkfifo(path, mode) and unlink(path) in the calling process.
pub fn mkfifo(path: &[u8], mode: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::mkfifo(c.as_ptr(), mode) } as libc::c_long).map(drop)
}
pub fn unlink(path: &[u8]) -> io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::unlink(c.as_ptr()) } as libc::c_long).map(drop)
}

/// prctl with integer arguments in the calling process.
pub fn prctl(opt: i32, a: u64) -> io::Result<()> {
    // SAFETY: integer-only prctl options.
    check(unsafe { libc::prctl(opt, a, 0u64, 0u64, 0u64) } as libc::c_long).map(drop)
}

/// Installs `handler` for `sig` in the calling process (plain C handler).
pub fn on_signal(sig: i32, handler: extern "C" fn(i32)) {
    // SAFETY: handler only calls async-signal-safe functions (callers' contract).
    unsafe { libc::signal(sig, handler as usize) };
}

/// Size of the xsave area this kernel exchanges through NT_X86_XSTATE
/// (the standard-format size for the features enabled in XCR0).
pub fn get_xstate_size() -> usize {
    cpuid(0xd, 0).1 as usize
}

/// prctl(PR_SET_NAME): the calling thread's comm.
pub fn set_comm(name: &[u8]) {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name[..n]);
    // SAFETY: b is a NUL-terminated 16-byte buffer.
    unsafe { libc::prctl(libc::PR_SET_NAME, b.as_ptr(), 0u64, 0u64, 0u64) };
}

/// F_GETPIPE_SZ.
pub fn pipe_size(fd: i32) -> io::Result<u32> {
    // SAFETY: integer fcntl.
    check(unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) } as libc::c_long).map(|v| v as u32)
}
/// F_SETPIPE_SZ.
pub fn set_pipe_size(fd: i32, size: u32) -> io::Result<()> {
    // SAFETY: integer fcntl.
    check(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as i32) } as libc::c_long).map(drop)
}
/// tee(2): duplicate up to `len` bytes from pipe `from` into pipe `to` without consuming them.
pub fn tee(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: integer arguments.
    check(unsafe { libc::tee(from, to, len, libc::SPLICE_F_NONBLOCK) } as libc::c_long)
        .map(|v| v as usize)
}

/// The next range holding data in `f` at or after `off` (SEEK_DATA/SEEK_HOLE),
/// or None when only a hole remains before `size`.
pub fn next_data(f: &std::fs::File, off: u64, size: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: lseek on an fd we own; it only moves that file's offset.
    let start = unsafe { libc::lseek64(fd, off as i64, libc::SEEK_DATA) };
    if start < 0 || start as u64 >= size {
        return None;
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek64(fd, start, libc::SEEK_HOLE) };
    let end = if end < 0 {
        size
    } else {
        (end as u64).min(size)
    };
    Some((start as u64, end))
}

/// ftruncate(fd, len).
pub fn ftruncate(fd: i32, len: u64) -> io::Result<()> {
    // SAFETY: integer arguments.
    check(unsafe { libc::ftruncate64(fd, len as i64) } as libc::c_long).map(drop)
}

/// fchown(fd, uid, gid).
pub fn fchown(fd: i32, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: integer arguments.
    check(unsafe { libc::fchown(fd, uid, gid) } as libc::c_long).map(drop)
}

/// fchmod(fd, mode).
pub fn fchmod(fd: i32, mode: u32) -> io::Result<()> {
    // SAFETY: integer arguments.
    check(unsafe { libc::fchmod(fd, mode) } as libc::c_long).map(drop)
}

/// futimens(fd, [atime, mtime]) with (seconds, nanoseconds) each.
pub fn futimens(fd: i32, atime: (i64, u32), mtime: (i64, u32)) -> io::Result<()> {
    let ts = |(sec, nsec): (i64, u32)| libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec as i64,
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: times is an array of two valid timespecs.
    check(unsafe { libc::futimens(fd, times.as_ptr()) } as libc::c_long).map(drop)
}

/// memfd_create(name, MFD_CLOEXEC) as a raw fd >= base.
pub fn memfd_raw(name: &[u8], base: i32) -> io::Result<i32> {
    let c = std::ffi::CString::new(
        name.iter()
            .copied()
            .filter(|&b| b != 0)
            .take(249)
            .collect::<Vec<u8>>(),
    )
    .expect("NULs removed");
    // SAFETY: c is NUL-terminated.
    let fd =
        check(
            unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) }
                as libc::c_long,
        )? as i32;
    let high = dup_above(fd, base);
    close(fd);
    high
}

/// pread(2) into buf.
pub fn pread(fd: i32, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: buf is live and writable for buf.len() bytes.
    check(
        unsafe { libc::pread64(fd, buf.as_mut_ptr().cast(), buf.len(), off as i64) }
            as libc::c_long,
    )
    .map(|v| v as usize)
}

/// pwrite(2) all of buf.
pub fn pwrite_all(fd: i32, buf: &[u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: buf is live for buf.len() bytes.
        let n = check(unsafe {
            libc::pwrite64(
                fd,
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (off + done as u64) as i64,
            )
        } as libc::c_long)?;
        done += n as usize;
    }
    Ok(())
}

/// fchown then fchmod of a raw fd (in that order: chown clears set-id bits).
pub fn fchown_fchmod(fd: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: integer arguments.
    check(unsafe { libc::fchown(fd, uid, gid) } as libc::c_long)?;
    // SAFETY: integer arguments.
    check(unsafe { libc::fchmod(fd, mode) } as libc::c_long).map(drop)
}

/// fcntl(F_GET_SEALS): the seals of a memfd (EINVAL for other files).
pub fn get_seals(f: &std::fs::File) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GET_SEALS takes no argument.
    check(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) } as libc::c_long)
        .map(|v| v as u32)
}

/// fcntl(F_ADD_SEALS) of the seals in `seals` the file lacks (a tmpfs
/// file not made by memfd_create already has F_SEAL_SEAL).
pub fn add_seals(fd: i32, seals: u32) -> io::Result<()> {
    // SAFETY: F_GET_SEALS takes no argument.
    let have = check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) } as libc::c_long)? as u32;
    if seals & !have == 0 {
        return Ok(());
    }
    // SAFETY: F_ADD_SEALS takes an integer.
    check(
        unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, (seals & !have) as libc::c_int) }
            as libc::c_long,
    )
    .map(drop)
}

/// Gives the file open as `fd` (say an O_TMPFILE one) the name `path`:
/// linkat of /proc/self/fd/FD with AT_SYMLINK_FOLLOW.
pub fn link_fd(fd: i32, path: &[u8]) -> io::Result<()> {
    let from = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    let to = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: both are valid NUL-terminated strings.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    } as libc::c_long)
    .map(drop)
}

/// pause(2) forever (signals are blocked by the caller; only ptrace or
/// SIGKILL ends this).
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: plain syscall.
        unsafe { libc::pause() };
    }
}

/// waitid(P_PID, pid, WEXITED | WNOWAIT): waits until a child has exited
/// without reaping it.
pub fn wait_exited_noreap(pid: Pid) -> io::Result<()> {
    // SAFETY: siginfo_t is plain data; zero is valid.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: si is a valid out-pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut si,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Discards every pending instance of `sig` in the calling thread (it must be blocked).
pub fn drain_signal(sig: i32) {
    // SAFETY: sigset_t is plain data; it is initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
    }
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: set and zero are valid; a NULL siginfo pointer is allowed.
    while unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) } == sig {}
}

/// Ends the calling process the way a saved wait status says it ended.
pub fn exit_like(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let _ = prlimit(0, libc::RLIMIT_CORE, Some((0, 0)));
        // SAFETY: resetting to the default action and unblocking only this
        // signal, in a process that exists to die of it.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        exit_now(128 + sig)
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// poll(2) one fd for input, with a timeout in ms. True when readable (or hung up).
pub fn poll_in(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// getpgid(pid).
pub fn getpgid(pid: Pid) -> Pid {
    // SAFETY: plain syscall.
    unsafe { libc::getpgid(pid) }
}

/// Room for fd numbers below `needed` while a restart holds them: the soft
/// RLIMIT_NOFILE raised (and the hard one where allowed: CAP_SYS_RESOURCE,
/// up to fs.nr_open), and put back on drop: the caller's limit is its own.
pub struct NofileAtLeast(Option<(u64, u64)>);

impl NofileAtLeast {
    /// The guard, and the soft limit now in force.
    pub fn raise(needed: u64) -> io::Result<(NofileAtLeast, u64)> {
        let (cur, max) = prlimit(0, libc::RLIMIT_NOFILE, None)?;
        if cur >= needed {
            return Ok((NofileAtLeast(None), cur));
        }
        let old = NofileAtLeast(Some((cur, max)));
        if max < needed {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(max);
            let want = needed.min(nr_open).max(max);
            if prlimit(0, libc::RLIMIT_NOFILE, Some((want, want))).is_ok() {
                return Ok((old, want));
            }
        }
        prlimit(0, libc::RLIMIT_NOFILE, Some((max, max)))?;
        Ok((old, max))
    }
}

impl Drop for NofileAtLeast {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            let _ = prlimit(0, libc::RLIMIT_NOFILE, Some(old));
        }
    }
}

/// A MAP_SHARED|MAP_ANONYMOUS object of `len` bytes, as an fd >= `base`
/// (opened through /proc/self/map_files; the mapping itself is dropped).
pub fn shared_anon_fd(len: u64, base: i32) -> io::Result<i32> {
    // SAFETY: a fresh anonymous mapping, unmapped below before returning.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let a = p as u64;
    let fd = open_raw(
        format!("/proc/self/map_files/{a:x}-{:x}", a + len).as_bytes(),
        libc::O_RDWR | libc::O_CLOEXEC,
        0,
    );
    munmap(a, len as usize);
    let fd = fd?;
    let high = dup_above(fd, base);
    close(fd);
    high
}

/// Blocks (or unblocks) `sigs` in the calling thread.
pub fn block_signals(sigs: &[i32], block: bool) {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t; a NULL old-set pointer is allowed.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(
            if block {
                libc::SIG_BLOCK
            } else {
                libc::SIG_UNBLOCK
            },
            &set,
            std::ptr::null_mut(),
        );
    }
}

/// CRC32C of `len` bytes of file `fd` at page-aligned `off`, read through a
/// shared read-only mapping of the page cache (no copy).
pub fn crc32c_of_range(fd: i32, off: u64, len: usize) -> io::Result<u32> {
    // SAFETY: a fresh read-only mapping of our own file, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            // Not populated: its faults map 16 pages each (fault-around),
            // while MAP_POPULATE marks every page accessed, which contends
            // with the restoring tasks' reads of the same pages (measured:
            // a 1 GiB restore 0.72 -> 0.63 s, 0.69 -> 0.64 s, medians of 8).
            libc::MAP_SHARED,
            fd,
            off as i64,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: p maps `len` readable bytes until the munmap below, and the
    // range is not written meanwhile (its writer has finished).
    let crc = crc32c::crc32c(unsafe { std::slice::from_raw_parts(p as *const u8, len) });
    munmap(p as u64, len);
    Ok(crc)
}

/// process_vm_readv of `buf.len()` bytes at `addr` of process `pid` into
/// `buf`; returns how many were read.
pub fn read_process(pid: Pid, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: buf.len(),
    };
    // SAFETY: `local` is `buf`, writable for its length; the remote range
    // is only read, by the kernel, in the other process.
    check(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)
        .map(|n| n as usize)
}

/// process_vm_readv of the runs (address, length) of process `pid`'s
/// memory, back to back, into `buf`, which is exactly as long as they are.
pub fn read_process_runs(pid: Pid, runs: &[(u64, u64)], buf: &mut [u8]) -> io::Result<()> {
    assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), buf.len() as u64);
    // SAFETY: `buf` is ours, writable for the runs' total length.
    unsafe { transfer_runs(pid, runs, buf.as_mut_ptr() as u64, false) }
}

/// process_vm_readv (`write` false) or process_vm_writev of the runs
/// (address, length) of process `pid`'s memory, back to back, from or to
/// our memory at `local`; IOV_MAX runs per call, and after a short
/// transfer (a page that went away) from where it stopped, so one that
/// makes no progress fails.
///
/// # Safety
/// `local` must be our memory for the runs' total length: writable if
/// read into, readable (or a file mapping, whose faults fail the call) if
/// written from.
unsafe fn transfer_runs(pid: Pid, runs: &[(u64, u64)], local: u64, write: bool) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let (mut run, mut into_run, mut at) = (0, 0u64, 0);
    while run < runs.len() {
        let remote: Vec<libc::iovec> = runs[run..]
            .iter()
            .take(IOV_MAX)
            .enumerate()
            .map(|(i, &(a, l))| {
                let skip = if i == 0 { into_run } else { 0 };
                libc::iovec {
                    iov_base: (a + skip) as *mut _,
                    iov_len: (l - skip) as usize,
                }
            })
            .collect();
        let want: usize = remote.iter().map(|v| v.iov_len).sum();
        let mine = libc::iovec {
            iov_base: (local + at) as *mut _,
            iov_len: want,
        };
        let (m, r, n) = (&mine, remote.as_ptr(), remote.len() as libc::c_ulong);
        // SAFETY: `mine` is within `local` (the caller's promise); the
        // remote ranges are read or written by the kernel, in the other
        // process.
        let got = check(unsafe {
            if write {
                libc::process_vm_writev(pid, m, 1, r, n, 0)
            } else {
                libc::process_vm_readv(pid, m, 1, r, n, 0)
            }
        } as libc::c_long)? as u64;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        at += got;
        let mut left = got + into_run;
        while run < runs.len() && left >= runs[run].1 {
            left -= runs[run].1;
            run += 1;
        }
        into_run = left;
    }
    Ok(())
}

/// A read-only shared mapping of a whole file of ours, for the kernel to
/// copy from (`write_process_runs`); never read through a Rust reference,
/// since the file can change under it.
pub struct FileMap {
    addr: u64,
    len: u64,
}

// SAFETY: the mapping is only an address range handed to the kernel; it
// stays mapped until drop, and nothing is read from it in Rust.
unsafe impl Send for FileMap {}
// SAFETY: as for Send: shared, it is only read, by the kernel.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Maps all of `fd` (not populated: a copy from it faults pages in 16
    /// at a time).
    pub fn new(fd: i32) -> io::Result<FileMap> {
        // SAFETY: stat is plain data; zero is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills the struct it is given.
        check(unsafe { libc::fstat(fd, &mut st) } as libc::c_long)?;
        let len = st.st_size as u64;
        if len == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: a fresh read-only mapping of our own file, unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(FileMap {
            addr: p as u64,
            len,
        })
    }

    /// process_vm_writev of the file's bytes from `off` on into the runs
    /// (address, length) of process `pid`'s memory, back to back.
    pub fn write_process_runs(&self, pid: Pid, off: u64, runs: &[(u64, u64)]) -> io::Result<()> {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        if off.checked_add(total).is_none_or(|end| end > self.len) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: `off..off + total` is within the mapping, readable; a
        // part of it past the file's end now (truncated since) fails the
        // kernel's copy, which a fault there does not survive as a signal.
        unsafe { transfer_runs(pid, runs, self.addr + off, true) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        munmap(self.addr, self.len as usize);
    }
}

/// The page frame number of the kernel's zero page, which untouched memory
/// that was only read maps (needs CAP_SYS_ADMIN to see PFNs; None without).
pub fn zero_page_pfn() -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let a = mmap_anon(0, 4096, libc::PROT_READ).ok()?;
    // SAFETY: reading one byte of our own readable mapping maps the zero page.
    unsafe { std::ptr::read_volatile(a as *const u8) };
    let mut e = [0u8; 8];
    let r = std::fs::File::open("/proc/self/pagemap")
        .and_then(|f| f.read_exact_at(&mut e, a / 4096 * 8));
    munmap(a, 4096);
    r.ok()?;
    let e = u64::from_le_bytes(e);
    let pfn = e & ((1 << 55) - 1);
    (e >> 63 == 1 && pfn != 0).then_some(pfn)
}

/// get_robust_list(tid): (head, len).
pub fn robust_list(tid: Pid) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: both out-pointers are valid for one word each.
    check(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut u64,
        )
    })?;
    Ok((head, len))
}

/// sched_getaffinity(tid): the CPU mask bytes.
pub fn affinity(tid: Pid) -> io::Result<Vec<u8>> {
    let mut mask = vec![0u8; 1024];
    // SAFETY: mask is a writable buffer of mask.len() bytes.
    let n = check(unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            mask.len(),
            mask.as_mut_ptr(),
        )
    })?;
    mask.truncate(n as usize);
    Ok(mask)
}

/// sched_setaffinity(tid, mask).
pub fn set_affinity(tid: Pid, mask: &[u8]) -> io::Result<()> {
    // SAFETY: mask is a readable buffer of mask.len() bytes.
    check(unsafe { libc::syscall(libc::SYS_sched_setaffinity, tid, mask.len(), mask.as_ptr()) })
        .map(drop)
}

/// setpriority(PRIO_PROCESS, tid, nice): one thread's nice value.
pub fn set_nice(tid: Pid, nice: i32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } as libc::c_long)
        .map(drop)
}

/// sched_getscheduler(tid) (with SCHED_RESET_ON_FORK if set) and the
/// real-time priority from sched_getparam(tid).
pub fn sched_policy(tid: Pid) -> io::Result<(u32, u32)> {
    // SAFETY: plain syscall with an integer argument.
    let policy = check(unsafe { libc::sched_getscheduler(tid) } as libc::c_long)?;
    let mut p = libc::sched_param { sched_priority: 0 };
    // SAFETY: p is a valid out-pointer to a sched_param.
    check(unsafe { libc::sched_getparam(tid, &mut p) } as libc::c_long)?;
    Ok((policy as u32, p.sched_priority as u32))
}

/// sched_setscheduler(tid, policy, {priority}); `policy` may carry
/// SCHED_RESET_ON_FORK.
pub fn set_sched_policy(tid: Pid, policy: u32, priority: u32) -> io::Result<()> {
    let p = libc::sched_param {
        sched_priority: priority as i32,
    };
    // SAFETY: p is a valid sched_param for the duration of the call.
    check(unsafe { libc::sched_setscheduler(tid, policy as i32, &p) } as libc::c_long).map(drop)
}

/// Installs `handler` for `sig` in the calling process without SA_RESTART,
/// so that a blocking syscall it interrupts fails with EINTR and the caller
/// notices what the handler recorded.
pub fn on_signal_interrupting(sig: i32, handler: extern "C" fn(i32)) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid start.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as usize;
    sa.sa_flags = 0;
    // SAFETY: sa is initialised; handler only does async-signal-safe work
    // (callers' contract); a NULL old-action pointer is allowed.
    check(unsafe { libc::sigemptyset(&mut sa.sa_mask) } as libc::c_long)?;
    // SAFETY: as above.
    check(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } as libc::c_long).map(drop)
}

/// Effective uid of ckpt.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Nice value of the calling process.
pub fn own_nice() -> i32 {
    // SAFETY: plain syscall; -1 is a valid nice value, so errors read as -1.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// The uid of the process at the other end of a unix socket (SO_PEERCRED),
/// or `None` for any other kind of socket.
pub fn unix_peer_uid(fd: i32) -> Option<u32> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: domain is a valid out-pointer of len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || domain != libc::AF_UNIX {
        return None;
    }
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    const _: () = assert!(std::mem::size_of::<libc::ucred>() == 12);
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred is a valid out-pointer of len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.uid)
}

// Sockets: generic option and address calls (addresses are raw sockaddr
// bytes, as the image keeps them).

/// getsockopt into `buf`; the length the kernel wrote.
pub fn getsockopt_raw(fd: i32, level: i32, opt: i32, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes; the kernel updates len.
    let r = unsafe { libc::getsockopt(fd, level, opt, buf.as_mut_ptr().cast(), &mut len) };
    check(r as libc::c_long)?;
    Ok(len as usize)
}

/// An int socket option.
pub fn getsockopt_int(fd: i32, level: i32, opt: i32) -> io::Result<i32> {
    let mut b = [0u8; 4];
    getsockopt_raw(fd, level, opt, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

pub fn setsockopt_raw(fd: i32, level: i32, opt: i32, val: &[u8]) -> io::Result<()> {
    // SAFETY: val is readable for its length.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    } as libc::c_long)?;
    Ok(())
}

pub fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) -> io::Result<()> {
    setsockopt_raw(fd, level, opt, &v.to_ne_bytes())
}

/// A new socket, close-on-exec.
pub fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<i32> {
    // SAFETY: plain syscall on integers.
    Ok(
        check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) } as libc::c_long)?
            as i32,
    )
}

pub fn bind(fd: i32, addr: &[u8]) -> io::Result<()> {
    // SAFETY: addr is a sockaddr of its length.
    let r = unsafe { libc::bind(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    check(r as libc::c_long)?;
    Ok(())
}

pub fn connect(fd: i32, addr: &[u8]) -> io::Result<()> {
    // SAFETY: addr is a sockaddr of its length.
    let r = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    check(r as libc::c_long)?;
    Ok(())
}

/// getsockname, as raw sockaddr bytes.
pub fn sockname(fd: i32) -> io::Result<Vec<u8>> {
    let mut ss = [0u8; 128];
    let mut len = ss.len() as libc::socklen_t;
    // SAFETY: ss is writable for len bytes.
    check(unsafe { libc::getsockname(fd, ss.as_mut_ptr().cast(), &mut len) } as libc::c_long)?;
    Ok(ss[..(len as usize).min(128)].to_vec())
}

/// getpeername, as raw sockaddr bytes; `None` when not connected.
pub fn peername(fd: i32) -> io::Result<Option<Vec<u8>>> {
    let mut ss = [0u8; 128];
    let mut len = ss.len() as libc::socklen_t;
    // SAFETY: ss is writable for len bytes.
    match check(unsafe { libc::getpeername(fd, ss.as_mut_ptr().cast(), &mut len) } as libc::c_long)
    {
        Ok(_) => Ok(Some(ss[..(len as usize).min(128)].to_vec())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Peeks at the next datagram without waiting (MSG_PEEK|MSG_DONTWAIT|MSG_TRUNC):
/// its full length (bytes copied: up to `buf.len()`) and source address;
/// `None` when the queue is empty.
pub fn recv_peek(fd: i32, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<u8>)>> {
    let mut ss = [0u8; 128];
    let mut len = ss.len() as libc::socklen_t;
    // SAFETY: buf and ss are writable for their lengths.
    let r = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            ss.as_mut_ptr().cast(),
            &mut len,
        )
    };
    match check(r as libc::c_long) {
        Ok(n) => Ok(Some((n as usize, ss[..(len as usize).min(128)].to_vec()))),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// One datagram to `addr`.
pub fn sendto(fd: i32, data: &[u8], addr: &[u8]) -> io::Result<usize> {
    // SAFETY: data and addr are readable for their lengths.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    Ok(check(r as libc::c_long)? as usize)
}

/// SO_MEMINFO: the socket's memory counters (`SK_MEMINFO_*` order; [0] is
/// the receive queue's allocation).
pub fn sock_meminfo(fd: i32) -> io::Result<[u32; 9]> {
    let mut b = [0u8; 36];
    getsockopt_raw(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, &mut b)?;
    let mut m = [0u32; 9];
    for (i, v) in m.iter_mut().enumerate() {
        *v = u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    }
    Ok(m)
}

/// One datagram to `addr` with one control message (`level`, `ty`,
/// `data`), such as IP_PKTINFO choosing the source address.
pub fn sendmsg_cmsg(
    fd: i32,
    payload: &[u8],
    addr: &[u8],
    level: i32,
    ty: i32,
    data: &[u8],
) -> io::Result<usize> {
    const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
    const _: () = assert!(HDR == 16);
    let space = HDR + data.len().next_multiple_of(8);
    let mut control = vec![0u64; space / 8];
    let hdr = libc::cmsghdr {
        cmsg_len: HDR + data.len(),
        cmsg_level: level,
        cmsg_type: ty,
    };
    let bytes: &mut [u8] = bytemuck_u8(&mut control);
    bytes[..8].copy_from_slice(&hdr.cmsg_len.to_ne_bytes());
    bytes[8..12].copy_from_slice(&hdr.cmsg_level.to_ne_bytes());
    bytes[12..16].copy_from_slice(&hdr.cmsg_type.to_ne_bytes());
    bytes[HDR..HDR + data.len()].copy_from_slice(data);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg points at live buffers (payload, addr, control) of the
    // lengths given; the kernel only reads them.
    let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    Ok(check(r as libc::c_long)? as usize)
}

/// sendmsg of `payload` with `fds` (SCM_RIGHTS) on a connected socket.
pub fn send_fds(fd: i32, payload: &[u8], fds: &[i32]) -> io::Result<usize> {
    let data: Vec<u8> = fds.iter().flat_map(|f| f.to_ne_bytes()).collect();
    sendmsg_cmsg(fd, payload, &[], libc::SOL_SOCKET, libc::SCM_RIGHTS, &data)
}

/// recvmsg into `buf`, waiting, with up to `fds.len()` (at most 8)
/// SCM_RIGHTS fds (close-on-exec) into `fds`: (bytes, fds received).
/// Allocates nothing (a forked child may call it).
pub fn recv_fds(fd: i32, buf: &mut [u8], fds: &mut [i32]) -> io::Result<(usize, usize)> {
    const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live, writable buffers of the lengths given.
    let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let n = check(r as libc::c_long)? as usize;
    let bytes = bytemuck_u8(&mut control);
    let mut got = 0;
    if msg.msg_controllen >= HDR {
        let len = usize::from_ne_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        let level = i32::from_ne_bytes(bytes[8..12].try_into().unwrap_or([0; 4]));
        let ty = i32::from_ne_bytes(bytes[12..16].try_into().unwrap_or([0; 4]));
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS && len <= bytes.len() {
            for c in bytes[HDR..len.max(HDR)].chunks_exact(4) {
                let f = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                if got < fds.len() {
                    fds[got] = f;
                    got += 1;
                } else {
                    close(f);
                }
            }
        }
    }
    Ok((n, got))
}

/// A program, its arguments and environment made ready before a fork, so
/// that the child can execve without allocating.
pub struct Exec {
    _strings: Vec<std::ffi::CString>,
    path: *const libc::c_char,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Exec {
    pub fn new(path: &str, args: &[&str], env: &[String]) -> io::Result<Exec> {
        let c = |s: &str| {
            std::ffi::CString::new(s)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in an argument"))
        };
        let mut strings = vec![c(path)?];
        for a in args {
            strings.push(c(a)?);
        }
        for e in env {
            strings.push(c(e)?);
        }
        let ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        let mut argv = ptrs[1..=args.len()].to_vec();
        argv.push(std::ptr::null());
        let mut envp = ptrs[1 + args.len()..].to_vec();
        envp.push(std::ptr::null());
        Ok(Exec {
            path: ptrs[0],
            _strings: strings,
            argv,
            envp,
        })
    }

    /// execve; returns only on failure.
    pub fn exec(&self) -> io::Error {
        // SAFETY: path, argv and envp point into `_strings`, alive as long
        // as self, and both arrays end with a null pointer.
        unsafe { libc::execve(self.path, self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
    }
}

/// The bytes of a u64 buffer (8-byte aligned, as control messages need).
fn bytemuck_u8(v: &mut [u64]) -> &mut [u8] {
    let len = v.len() * 8;
    // SAFETY: u64 has no padding and any byte pattern is valid; the slice
    // covers exactly the buffer and borrows it mutably.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), len) }
}

/// shutdown(2) (`how`: SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2).
pub fn shutdown(fd: i32, how: i32) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    check(unsafe { libc::shutdown(fd, how) } as libc::c_long)?;
    Ok(())
}

/// ioctl(SIOCINQ) (for UDP: the length of the first queued datagram).
pub fn siocinq(fd: i32) -> io::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: n is a valid int out-pointer for SIOCINQ (== FIONREAD).
    check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) } as libc::c_long)?;
    Ok(n)
}

/// The primary group and every group (getgrouplist) of user `uid` from the
/// user database, or `None` when it has no entry.
pub fn user_groups(uid: u32) -> Option<(u32, Vec<u32>)> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data; all-zero is valid.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: pw, buf (buf.len() bytes) and out are valid for the call;
        // the strings pw points to live in buf.
        let r =
            unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 || out.is_null() {
            return None;
        }
        let gid = pw.pw_gid;
        let mut groups = vec![0 as libc::gid_t; 64];
        loop {
            let mut n = groups.len() as libc::c_int;
            // SAFETY: pw_name is a NUL-terminated string in buf (still live);
            // groups has room for n entries, and n says so.
            let r = unsafe { libc::getgrouplist(pw.pw_name, gid, groups.as_mut_ptr(), &mut n) };
            if r >= 0 {
                groups.truncate(n.max(0) as usize);
                return Some((gid, groups));
            }
            if n as usize <= groups.len() || groups.len() > 65536 {
                return Some((gid, vec![gid]));
            }
            groups.resize(n as usize, 0);
        }
    }
}

/// The filesystem identity of a thread: what the kernel checks on open,
/// stat and create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsIds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// setfsuid/setfsgid return the previous id whatever happens; -1 is never
/// set, so it reads the current one.
fn setfsid(nr: libc::c_long, id: u32) -> u32 {
    // SAFETY: integer-only syscall, acting on the calling thread alone.
    unsafe { libc::syscall(nr, id) as u32 }
}

/// The calling thread's supplementary groups (raw syscall: per thread).
fn thread_groups() -> io::Result<Vec<u32>> {
    let mut g = vec![0 as libc::gid_t; 65536];
    // SAFETY: g has room for g.len() gids.
    let n = check(unsafe { libc::syscall(libc::SYS_getgroups, g.len(), g.as_mut_ptr()) })?;
    g.truncate(n as usize);
    Ok(g)
}

/// Sets the calling thread's supplementary groups. The raw syscall, not
/// glibc's setgroups, which changes every thread of the process.
fn set_thread_groups(g: &[u32]) -> io::Result<()> {
    // SAFETY: g is a live array of g.len() gids.
    check(unsafe { libc::syscall(libc::SYS_setgroups, g.len(), g.as_ptr()) }).map(drop)
}

fn get_dumpable() -> libc::c_long {
    // SAFETY: integer-only prctl.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE) as libc::c_long }
}

/// While alive, the calling thread opens and creates files as `FsIds`
/// (fsuid, fsgid, groups); dropping it gives back the previous ones. While
/// fsuid is not 0 the kernel clears the filesystem capabilities
/// (DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER...) from the effective set, and
/// raises them again when fsuid returns to 0. Only this thread changes.
pub struct FsIdsGuard {
    prev: FsIds,
    /// A change of fsuid resets the process's dumpable flag.
    dumpable: libc::c_long,
}

impl FsIdsGuard {
    pub fn enter(ids: &FsIds) -> io::Result<FsIdsGuard> {
        let prev = FsIds {
            uid: setfsid(libc::SYS_setfsuid, u32::MAX),
            gid: setfsid(libc::SYS_setfsgid, u32::MAX),
            groups: thread_groups()?,
        };
        let g = FsIdsGuard {
            prev,
            dumpable: get_dumpable(),
        };
        // Groups and gid first: changing them needs CAP_SETGID, which
        // survives the fsuid change, but do them while all is as before.
        if g.prev.groups != ids.groups {
            set_thread_groups(&ids.groups)?;
        }
        setfsid(libc::SYS_setfsgid, ids.gid);
        setfsid(libc::SYS_setfsuid, ids.uid);
        let now = (
            setfsid(libc::SYS_setfsuid, u32::MAX),
            setfsid(libc::SYS_setfsgid, u32::MAX),
        );
        if now != (ids.uid, ids.gid) {
            // g's drop puts back what did change.
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(g)
    }
}

impl Drop for FsIdsGuard {
    fn drop(&mut self) {
        // fsuid first: back at 0 it brings the fs capabilities back.
        setfsid(libc::SYS_setfsuid, self.prev.uid);
        setfsid(libc::SYS_setfsgid, self.prev.gid);
        if thread_groups().ok().as_ref() != Some(&self.prev.groups) {
            let _ = set_thread_groups(&self.prev.groups);
        }
        if matches!(self.dumpable, 0 | 1) && get_dumpable() != self.dumpable {
            // SAFETY: integer-only prctl.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, self.dumpable) };
        }
    }
}

/// Runs `f` as `ids` (see [`FsIdsGuard`]), or as we are when `None`.
pub fn with_fs_ids<T>(ids: Option<&FsIds>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _g = ids.map(FsIdsGuard::enter).transpose()?;
    f()
}

/// A `Duration` as a kernel timespec.
fn timespec(d: std::time::Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as i64,
    }
}

/// A kernel timespec as a `Duration` (negative fields read as 0).
fn duration(t: &libc::timespec) -> std::time::Duration {
    std::time::Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// clock_gettime(clockid).
pub fn clock_gettime(clockid: i32) -> io::Result<std::time::Duration> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: t is a writable timespec.
    check(unsafe { libc::clock_gettime(clockid, &mut t) } as libc::c_long)?;
    Ok(duration(&t))
}

/// timerfd_create(clockid, TFD_CLOEXEC) as a raw fd.
pub fn timerfd_create(clockid: i32) -> io::Result<i32> {
    // SAFETY: no pointers; returns a new fd or -1.
    let fd = check(unsafe { libc::timerfd_create(clockid, libc::TFD_CLOEXEC) } as libc::c_long)?;
    Ok(fd as i32)
}

/// timerfd_settime(fd, flags, {interval, value}, NULL).
pub fn timerfd_settime(
    fd: i32,
    flags: i32,
    value: std::time::Duration,
    interval: std::time::Duration,
) -> io::Result<()> {
    let t = libc::itimerspec {
        it_interval: timespec(interval),
        it_value: timespec(value),
    };
    // SAFETY: t is a valid itimerspec; the old value is not asked for.
    check(unsafe { libc::timerfd_settime(fd, flags, &t, std::ptr::null_mut()) } as libc::c_long)
        .map(drop)
}

/// timerfd_gettime(fd): (time left, interval). Also counts the expirations
/// of a periodic timer since it last fired into its ticks and re-arms it,
/// as a read would (the kernel does that lazily).
pub fn timerfd_gettime(fd: i32) -> io::Result<(std::time::Duration, std::time::Duration)> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut t = libc::itimerspec {
        it_interval: zero,
        it_value: zero,
    };
    // SAFETY: t is a writable itimerspec.
    check(unsafe { libc::timerfd_gettime(fd, &mut t) } as libc::c_long)?;
    Ok((duration(&t.it_value), duration(&t.it_interval)))
}

/// TFD_IOC_SET_TICKS, `_IOW('T', 0, __u64)` (include/uapi/linux/timerfd.h).
const TFD_IOC_SET_TICKS: libc::c_ulong = (1 << 30) | (8 << 16) | ((b'T' as libc::c_ulong) << 8);

/// ioctl(fd, TFD_IOC_SET_TICKS, &ticks): sets the expirations a read of
/// timerfd `fd` returns (ticks > 0). Exists with CONFIG_CHECKPOINT_RESTORE
/// only (ENOTTY without).
pub fn timerfd_set_ticks(fd: i32, ticks: u64) -> io::Result<()> {
    // SAFETY: the ioctl reads one u64 from the pointer, a live local.
    check(unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, &ticks as *const u64) } as libc::c_long)
        .map(drop)
}

/// signalfd4(-1, &mask, 8, SFD_CLOEXEC) as a raw fd: a new signalfd for
/// the signals of `mask` (bit n-1 for signal n; the kernel's sigset is 8
/// bytes on x86_64).
pub fn signalfd(mask: u64) -> io::Result<i32> {
    // SAFETY: the kernel reads 8 bytes from the pointer, a live local.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            std::mem::size_of::<u64>(),
            libc::SFD_CLOEXEC,
        )
    })?;
    Ok(fd as i32)
}

/// inotify_init1(flags | IN_CLOEXEC) as a raw fd.
pub fn inotify_init1(flags: i32) -> io::Result<i32> {
    // SAFETY: no pointers; returns a new fd or -1.
    check(unsafe { libc::inotify_init1(flags | libc::IN_CLOEXEC) } as libc::c_long)
        .map(|v| v as i32)
}

/// inotify_add_watch(fd, path, mask): the watch descriptor.
pub fn inotify_add_watch(fd: i32, path: &[u8], mask: u32) -> io::Result<i32> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated string.
    check(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) } as libc::c_long)
        .map(|v| v as i32)
}

/// inotify_rm_watch(fd, wd).
pub fn inotify_rm_watch(fd: i32, wd: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::inotify_rm_watch(fd, wd) } as libc::c_long).map(drop)
}

/// ioctl(FIONREAD): bytes ready to be read from `fd`.
pub fn fionread(fd: i32) -> io::Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    check(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) } as libc::c_long)?;
    Ok(n as u32)
}

/// struct file_handle with room for the largest handle (MAX_HANDLE_SZ).
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<FileHandle>() == 136);

/// open_by_handle_at(mount_fd, handle, O_PATH): the inode a file handle
/// names, found on the filesystem of `mount_fd`.
pub fn open_by_handle(
    mount_fd: i32,
    handle_type: i32,
    handle: &[u8],
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut h = FileHandle {
        handle_bytes: handle.len() as u32,
        handle_type,
        f_handle: [0; 128],
    };
    h.f_handle
        .get_mut(..handle.len())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?
        .copy_from_slice(handle);
    // SAFETY: h is a valid struct file_handle whose f_handle holds
    // handle_bytes bytes; the kernel only reads it.
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &mut h as *mut FileHandle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: r is a fresh fd owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// pidfd_open(pid, flags) as a raw fd (flags: PIDFD_NONBLOCK).
pub fn pidfd_open_raw(pid: Pid, flags: u32) -> io::Result<i32> {
    // SAFETY: integer arguments; on success the kernel returns a new fd.
    check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) }).map(|r| r as i32)
}

/// fork(2): 0 in the child, the child's pid in the parent. The child must
/// only make plain syscalls and leave with `exit_now`/`exit_like`.
pub fn fork() -> io::Result<Pid> {
    // SAFETY: callers' children run no Rust runtime code that could depend
    // on other threads' state; they only make syscalls and _exit.
    check(unsafe { libc::fork() } as libc::c_long).map(|r| r as Pid)
}

/// struct pidfd_info, its first version (PIDFD_INFO_SIZE_VER0).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}
const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
/// _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info) of size 64.
const PIDFD_GET_INFO: libc::c_ulong = 0xC040_FF0B;
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// The wait status of the process pidfd `fd` refers to, once it has exited
/// (PIDFD_GET_INFO, Linux 6.15); None while it runs or if the kernel
/// recorded none.
pub fn pidfd_exit_status(fd: i32) -> io::Result<Option<i32>> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..Default::default()
    };
    // SAFETY: info is a live struct pidfd_info of the size the command encodes.
    let r = unsafe { libc::ioctl(fd, PIDFD_GET_INFO, &mut info as *mut PidfdInfo) };
    check(r as libc::c_long)?;
    Ok((info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code))
}

/// unshare(CLONE_FS): the calling thread gets its own cwd and root (so a
/// helper thread can fchdir without moving the rest of ckpt).
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: integer-only syscall affecting the calling thread.
    check(unsafe { libc::unshare(libc::CLONE_FS) } as libc::c_long).map(drop)
}

/// A byte range lock for fcntl: `write` or read, `start`, `len` bytes
/// (0: to the end of the file), l_pid 0 (OFD locks require it).
fn flock_of(write: bool, start: u64, len: u64) -> libc::flock {
    const _: () = assert!(std::mem::size_of::<libc::flock>() == 32);
    libc::flock {
        l_type: if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as i64,
        l_len: len as i64,
        l_pid: 0,
    }
}

/// fcntl(fd, F_SETLK or F_OFD_SETLK) of a read or write lock, not waiting.
pub fn set_lock(fd: i32, cmd: i32, write: bool, start: u64, len: u64) -> io::Result<()> {
    let fl = flock_of(write, start, len);
    // SAFETY: `fl` is a valid struct flock the kernel only reads.
    check(unsafe { libc::fcntl(fd, cmd, &fl as *const libc::flock) } as libc::c_long).map(drop)
}

/// A lock held by someone else, as fcntl(F_GETLK) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConflict {
    pub write: bool,
    pub start: u64,
    pub len: u64,
    /// -1 for an OFD lock.
    pub pid: Pid,
}

/// fcntl(fd, F_GETLK or F_OFD_GETLK): the first lock that would block
/// taking this one, if any.
pub fn get_lock(
    fd: i32,
    cmd: i32,
    write: bool,
    start: u64,
    len: u64,
) -> io::Result<Option<LockConflict>> {
    let mut fl = flock_of(write, start, len);
    // SAFETY: `fl` is a valid struct flock the kernel fills in.
    check(unsafe { libc::fcntl(fd, cmd, &mut fl as *mut libc::flock) } as libc::c_long)?;
    Ok(
        (fl.l_type != libc::F_UNLCK as libc::c_short).then_some(LockConflict {
            write: fl.l_type == libc::F_WRLCK as libc::c_short,
            start: fl.l_start as u64,
            len: fl.l_len as u64,
            pid: fl.l_pid,
        }),
    )
}

/// The bytes of the struct flock `set_lock` passes, for a lock taken by
/// an injected fcntl.
pub fn flock_bytes(write: bool, start: u64, len: u64) -> Vec<u8> {
    let fl = flock_of(write, start, len);
    let mut b = vec![0u8; 32];
    b[0..2].copy_from_slice(&fl.l_type.to_ne_bytes());
    b[2..4].copy_from_slice(&fl.l_whence.to_ne_bytes());
    b[8..16].copy_from_slice(&fl.l_start.to_ne_bytes());
    b[16..24].copy_from_slice(&fl.l_len.to_ne_bytes());
    b[24..28].copy_from_slice(&fl.l_pid.to_ne_bytes());
    b
}

/// flock(fd, op).
pub fn flock(fd: i32, op: i32) -> io::Result<()> {
    // SAFETY: integer-only syscall.
    check(unsafe { libc::flock(fd, op) } as libc::c_long).map(drop)
}

/// (st_dev, st_ino) of an fd.
pub fn fstat_ino(fd: i32) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a valid buffer for a struct stat.
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) } as libc::c_long)?;
    // SAFETY: fstat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

/// waitpid(pid, WNOHANG): 0 while it runs, its pid once reaped.
pub fn wait_nohang(pid: Pid) -> io::Result<Pid> {
    let mut st = 0;
    // SAFETY: st is a valid out-pointer.
    check(unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } as libc::c_long).map(|r| r as Pid)
}

/// Takes ownership of a raw fd this process opened and nothing else owns.
pub fn own_fd(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass a fresh fd (a dup) that no other object owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// A caller's open fd, borrowed for the duration of a C call.
pub fn borrow_fd(fd: i32) -> io::Result<std::os::fd::BorrowedFd<'static>> {
    fd_flags(fd)?;
    // SAFETY: fd is open (checked above); the C caller keeps it open for
    // the call, and the borrow does not outlive it.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// Sets the calling thread's errno (for the C interface).
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

// ---- Sockets (unix sockets and sock_diag) ----

/// getsockopt of a struct timeval option (SO_RCVTIMEO...), in microseconds.
pub fn sockopt_timeval(fd: i32, opt: i32) -> io::Result<u64> {
    const _: () = assert!(std::mem::size_of::<libc::timeval>() == 16);
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv is a valid out-pointer of len bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    check(r as libc::c_long)?;
    Ok(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64)
}

/// setsockopt of a struct timeval option, from microseconds.
pub fn set_sockopt_timeval(fd: i32, opt: i32, us: u64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_usec: (us % 1_000_000) as libc::suseconds_t,
    };
    // SAFETY: tv is a live timeval of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    check(r as libc::c_long).map(drop)
}

/// A sockaddr_un for `name` (sun_path bytes; abstract names start with 0).
fn sockaddr_un(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    const _: () = assert!(std::mem::size_of::<libc::sockaddr_un>() == 110);
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() > a.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok((a, (2 + name.len()) as libc::socklen_t))
}

/// The sun_path bytes of a unix sockaddr of `len` bytes.
fn sun_path(a: &libc::sockaddr_un, len: libc::socklen_t) -> Vec<u8> {
    let n = (len as usize).saturating_sub(2).min(a.sun_path.len());
    let mut v: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
    // A path name may come with its terminating NUL.
    if v.first().is_some_and(|&c| c != 0) {
        if let Some(z) = v.iter().position(|&c| c == 0) {
            v.truncate(z);
        }
    }
    v
}

/// getsockname of a unix socket: its sun_path bytes (empty: unbound).
pub fn unix_sockname(fd: i32) -> io::Result<Vec<u8>> {
    // SAFETY: all zeroes is a valid sockaddr_un.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a is a valid out-buffer of len bytes.
    let r = unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut len) };
    check(r as libc::c_long)?;
    Ok(sun_path(&a, len))
}

/// socketpair(AF_UNIX, type | SOCK_CLOEXEC).
pub fn unix_socketpair(ty: i32) -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    check(
        // SAFETY: fds is a valid out-array of two ints.
        unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }
            as libc::c_long,
    )?;
    Ok((fds[0], fds[1]))
}

/// `unix_socketpair`, owned.
pub fn unix_socketpair_owned(ty: i32) -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let (a, b) = unix_socketpair(ty)?;
    // SAFETY: a and b are fresh fds that nothing else owns.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(a),
            std::os::fd::OwnedFd::from_raw_fd(b),
        )
    })
}

/// bind a unix socket to `name`.
pub fn unix_bind(fd: i32, name: &[u8]) -> io::Result<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: a is a live sockaddr_un of at least len bytes.
    check(unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) } as libc::c_long)
        .map(drop)
}

/// connect a unix socket to `name`.
pub fn unix_connect(fd: i32, name: &[u8]) -> io::Result<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: a is a live sockaddr_un of at least len bytes.
    check(
        unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) } as libc::c_long,
    )
    .map(drop)
}

pub fn listen(fd: i32, backlog: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::listen(fd, backlog) } as libc::c_long).map(drop)
}

/// accept4(SOCK_CLOEXEC), the peer's address not asked for.
pub fn accept(fd: i32) -> io::Result<i32> {
    // SAFETY: null address pointers are allowed.
    check(unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    } as libc::c_long)
    .map(|v| v as i32)
}

/// send(2) of one message (MSG_DONTWAIT | MSG_NOSIGNAL): the bytes sent.
pub fn send_now(fd: i32, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is a live buffer of data.len() bytes.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    check(n as libc::c_long).map(|v| v as usize)
}

/// recv(2) with MSG_DONTWAIT: the bytes received (0: end of stream).
pub fn recv_now(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    check(n as libc::c_long).map(|v| v as usize)
}

/// What one MSG_PEEK of a unix socket saw.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// The message was longer than the buffer (MSG_TRUNC in msg_flags).
    pub truncated: bool,
    /// The sender's address (datagram sockets; empty when unnamed).
    pub addr: Vec<u8>,
    /// Fds passed with SCM_RIGHTS came along (closed again here).
    pub rights: bool,
    /// SCM_CREDENTIALS came along.
    pub creds: bool,
    /// Some other control message, or MSG_CTRUNC.
    pub other_cmsg: bool,
}

/// recvmsg(MSG_PEEK | MSG_DONTWAIT) into `buf`, with room for control
/// messages; fds that SCM_RIGHTS installs in this process are closed.
pub fn peek_msg(fd: i32, buf: &mut [u8]) -> io::Result<Peeked> {
    // SAFETY: all zeroes is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut ctl = [0u64; 128]; // 1 KiB, aligned for cmsghdr
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all zeroes is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&ctl);
    // SAFETY: msg points at live buffers of the sizes it states.
    let n = unsafe {
        libc::recvmsg(
            fd,
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    let n = check(n as libc::c_long)? as usize;
    let mut p = Peeked {
        len: n.min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        addr: sun_path(&addr, msg.msg_namelen),
        other_cmsg: msg.msg_flags & libc::MSG_CTRUNC != 0,
        ..Default::default()
    };
    // SAFETY: msg's control buffer was filled by the kernel; the CMSG
    // macros walk it within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                p.rights = true;
                let data = libc::CMSG_DATA(c);
                let n = (h.cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..n {
                    let fd = std::ptr::read_unaligned(data.cast::<i32>().add(i));
                    libc::close(fd);
                }
            } else if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_CREDENTIALS {
                p.creds = true;
            } else {
                p.other_cmsg = true;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(p)
}

/// A NETLINK_SOCK_DIAG socket.
pub fn sock_diag_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_SOCK_DIAG)?;
    // SAFETY: fd is a new fd we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// send(2) of a whole netlink request to the kernel.
pub fn netlink_send(fd: i32, req: &[u8]) -> io::Result<()> {
    // SAFETY: all zeroes is a valid sockaddr_nl (the kernel: pid 0).
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: req and to are live buffers of the sizes passed.
    let n = unsafe {
        libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    let n = check(n as libc::c_long)? as usize;
    if n != req.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short netlink send",
        ));
    }
    Ok(())
}

/// recv(2) of one netlink datagram (blocking).
pub fn netlink_recv(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a live buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        match check(n as libc::c_long) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|v| v as usize),
        }
    }
}

/// lstat(2): (st_mode, st_ino), or the error.
pub fn lstat_mode_ino(path: &[u8]) -> io::Result<(u32, u64)> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: all zeroes is a valid stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st a valid out-pointer.
    check(unsafe { libc::lstat(c.as_ptr(), &mut st) } as libc::c_long)?;
    Ok((st.st_mode, st.st_ino))
}

/// chmod(2).
pub fn chmod(path: &[u8], mode: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::chmod(c.as_ptr(), mode) } as libc::c_long).map(drop)
}

/// getpeername of a unix socket: the peer's sun_path bytes (ENOTCONN: none).
pub fn unix_peername(fd: i32) -> io::Result<Vec<u8>> {
    // SAFETY: all zeroes is a valid sockaddr_un.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a is a valid out-buffer of len bytes.
    let r = unsafe { libc::getpeername(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut len) };
    check(r as libc::c_long)?;
    Ok(sun_path(&a, len))
}

/// sendto(2) of one message to unix address `name` (MSG_DONTWAIT |
/// MSG_NOSIGNAL): the bytes sent.
pub fn unix_sendto(fd: i32, data: &[u8], name: &[u8]) -> io::Result<usize> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: data and a are live buffers of the sizes passed.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            (&a as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    check(n as libc::c_long).map(|v| v as usize)
}

/// lchown(2).
pub fn lchown(path: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: c is NUL-terminated.
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) } as libc::c_long).map(drop)
}

/// rename(2).
pub fn rename(from: &[u8], to: &[u8]) -> io::Result<()> {
    let nul = |p: &[u8]| {
        std::ffi::CString::new(p)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
    };
    let (a, b) = (nul(from)?, nul(to)?);
    // SAFETY: a and b are NUL-terminated.
    check(unsafe { libc::rename(a.as_ptr(), b.as_ptr()) } as libc::c_long).map(drop)
}

// Sockets (TCP kind): raw socket options, addresses as (family, address
// bytes in network order, port).

/// A sockaddr_in / sockaddr_in6 of (family, address, port), and its length.
fn sockaddr(family: u32, addr: &[u8], port: u16) -> io::Result<(libc::sockaddr_storage, u32)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<u8>();
    match (family as i32, addr.len()) {
        (libc::AF_INET, 4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(addr.try_into().expect("4 bytes")),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { p.cast::<libc::sockaddr_in>().write(sin) };
            Ok((ss, std::mem::size_of::<libc::sockaddr_in>() as u32))
        }
        (libc::AF_INET6, 16) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: port.to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: addr.try_into().expect("16 bytes"),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { p.cast::<libc::sockaddr_in6>().write(sin6) };
            Ok((ss, std::mem::size_of::<libc::sockaddr_in6>() as u32))
        }
        _ => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
    }
}

/// The events poll(2) reports on `fd` now (POLLIN, POLLERR...).
pub fn poll_now(fd: i32, events: i16) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    check(unsafe { libc::poll(&mut p, 1, 0) } as libc::c_long)?;
    Ok(p.revents)
}

/// getsockname (or getpeername when `peer`): (family, address, port).
pub fn sock_name(fd: i32, peer: bool) -> io::Result<(u32, Vec<u8>, u16)> {
    sock_name_how(
        fd,
        if peer { 1 } else { 0 },
        std::mem::size_of::<libc::sockaddr_storage>(),
    )
}

/// The peer's address as SO_PEERNAME gives it: also for a TCP socket
/// whose connection has ended (CLOSE), where getpeername fails.
pub fn sock_peername_opt(fd: i32) -> io::Result<(u32, Vec<u8>, u16)> {
    // (The kernel wants no more room than the address takes.)
    sock_name_how(fd, 2, std::mem::size_of::<libc::sockaddr_in6>()).or_else(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            sock_name_how(fd, 2, std::mem::size_of::<libc::sockaddr_in>())
        } else {
            Err(e)
        }
    })
}

/// `how`: 0 getsockname, 1 getpeername, 2 getsockopt SO_PEERNAME; with
/// room for `room` bytes (at most a sockaddr_storage).
fn sock_name_how(fd: i32, how: u8, room: usize) -> io::Result<(u32, Vec<u8>, u16)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = room.min(std::mem::size_of::<libc::sockaddr_storage>()) as libc::socklen_t;
    let sa = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: sa points to len writable bytes; the kernel updates len.
    let r = unsafe {
        match how {
            1 => libc::getpeername(fd, sa, &mut len),
            2 => libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERNAME, sa.cast(), &mut len),
            _ => libc::getsockname(fd, sa, &mut len),
        }
    };
    check(r as libc::c_long)?;
    let p = (&ss as *const libc::sockaddr_storage).cast::<u8>();
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET).
            let sin = unsafe { p.cast::<libc::sockaddr_in>().read() };
            Ok((
                libc::AF_INET as u32,
                sin.sin_addr.s_addr.to_ne_bytes().to_vec(),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6).
            let sin6 = unsafe { p.cast::<libc::sockaddr_in6>().read() };
            Ok((
                libc::AF_INET6 as u32,
                sin6.sin6_addr.s6_addr.to_vec(),
                u16::from_be(sin6.sin6_port),
            ))
        }
        f => Ok((f as u32, Vec::new(), 0)),
    }
}

/// bind(fd, (family, addr, port)).
pub fn sock_bind(fd: i32, family: u32, addr: &[u8], port: u16) -> io::Result<()> {
    let (ss, len) = sockaddr(family, addr, port)?;
    // SAFETY: ss holds a valid sockaddr of len bytes.
    let r = unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    check(r as libc::c_long).map(drop)
}

/// connect(fd, (family, addr, port)).
pub fn sock_connect(fd: i32, family: u32, addr: &[u8], port: u16) -> io::Result<()> {
    let (ss, len) = sockaddr(family, addr, port)?;
    // SAFETY: ss holds a valid sockaddr of len bytes.
    let r = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    check(r as libc::c_long).map(drop)
}

/// sendto(fd, data, (family, addr, port)) without waiting.
pub fn sock_sendto(fd: i32, data: &[u8], family: u32, addr: &[u8], port: u16) -> io::Result<usize> {
    let (ss, len) = sockaddr(family, addr, port)?;
    // SAFETY: data is readable for its length; ss holds a valid sockaddr of len bytes.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    check(r as libc::c_long).map(|r| r as usize)
}

/// recv(fd, buf, flags).
pub fn recv(fd: i32, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() writable bytes.
    let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    check(r as libc::c_long).map(|r| r as usize)
}

/// send(fd, buf, flags).
pub fn send(fd: i32, buf: &[u8], flags: i32) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes, only read.
    let r = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    check(r as libc::c_long).map(|r| r as usize)
}

/// An ioctl returning an int through its pointer (SIOCINQ, SIOCOUTQ...).
pub fn ioctl_int(fd: i32, req: u64) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: v is a valid int the kernel writes.
    let r = unsafe { libc::ioctl(fd, req as _, &mut v) };
    check(r as libc::c_long).map(|_| v)
}

/// connect(fd, AF_UNSPEC): dissolves a TCP socket's connection (in repair
/// mode without sending anything).
pub fn sock_disconnect(fd: i32) -> io::Result<()> {
    // SAFETY: all-zero is a valid sockaddr; family AF_UNSPEC.
    let sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: sa is a valid sockaddr of its size.
    let r = unsafe {
        libc::connect(
            fd,
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    check(r as libc::c_long).map(drop)
}

/// Frees the pages of `fd` (a memfd) in `off..off + len`, keeping its size.
pub fn punch_hole(fd: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: no pointers.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    check(r as libc::c_long).map(drop)
}

/// Waits until `fd` is readable (or hung up): `Ok(true)`; or until `stop`
/// is readable first: `Ok(false)`.
pub fn readable_unless(fd: i32, stop: i32) -> io::Result<bool> {
    let mut p = [
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: p is an array of two valid pollfds.
        let r = unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if p[0].revents != 0 {
            return Ok(false);
        }
        if p[1].revents != 0 {
            return Ok(true);
        }
    }
}

/// `struct pm_scan_arg` of linux/fs.h (Linux 6.7).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// `struct page_region` of linux/fs.h: pages `start..end` (bytes), all in
/// the categories `categories` (masked by the scan's return mask).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);

/// PAGEMAP_SCAN page categories.
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// Which pages a `pagemap_scan` reports: those in at least one of the
/// `anyof` categories and in none of `none_of`; regions are split where
/// the categories in `report` change.
#[derive(Debug, Clone, Copy)]
pub struct ScanFilter {
    pub anyof: u64,
    pub none_of: u64,
    pub report: u64,
}

/// Appends one PAGEMAP_SCAN call's `regions` to `out`. A call that filled
/// its buffer may end (walk_end) before regions it reported, which the next
/// call reports again (seen on 6.18 with 20,000 mappings, ZDTM's maps06:
/// the image then had runs twice and was refused at restart): what lies
/// below the last end is dropped.
fn append_regions(out: &mut Vec<PageRegion>, regions: &[PageRegion]) {
    for r in regions {
        let last = out.last().map_or(0, |l| l.end);
        if r.end > last {
            out.push(PageRegion {
                start: r.start.max(last),
                ..*r
            });
        }
    }
}

/// The regions of `start..end` whose pages pass `filter`, through the
/// PAGEMAP_SCAN ioctl on an open /proc/PID/pagemap: the kernel walks the
/// page tables and skips what is empty, instead of returning one entry per
/// page. `Err` with ENOTTY or EINVAL on kernels without it (before 6.7).
pub fn pagemap_scan(
    pm: &std::fs::File,
    start: u64,
    end: u64,
    filter: ScanFilter,
) -> io::Result<Vec<PageRegion>> {
    // _IOWR('f', 16, struct pm_scan_arg)
    const PAGEMAP_SCAN: u64 = (3 << 30) | (96 << 16) | ((b'f' as u64) << 8) | 16;
    let mut out = Vec::new();
    let mut buf = vec![PageRegion::default(); 4096];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: 96,
            start: at,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_inverted: filter.none_of,
            category_mask: filter.none_of,
            category_anyof_mask: filter.anyof,
            return_mask: filter.report,
            ..Default::default()
        };
        // SAFETY: arg is a valid pm_scan_arg whose vec points to buf's
        // vec_len writable page_regions, both alive across the call.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(pm),
                PAGEMAP_SCAN as libc::c_ulong,
                &mut arg as *mut PmScanArg,
            )
        };
        let n = check(r as libc::c_long)? as usize;
        append_regions(&mut out, &buf[..n.min(buf.len())]);
        if arg.walk_end <= at {
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        at = arg.walk_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of our own memory read back to back, across more runs than
    /// one call takes; a run that is not mapped fails the read.
    #[test]
    fn process_runs_read_back_to_back() {
        let me = std::process::id() as Pid;
        let mem: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let base = mem.as_ptr() as u64;
        // 1500 runs of 2 bytes, every other pair, backwards.
        let runs: Vec<(u64, u64)> = (0..1500u64).rev().map(|i| (base + i * 2, 2)).collect();
        let mut buf = vec![0u8; 3000];
        read_process_runs(me, &runs, &mut buf).unwrap();
        let want: Vec<u8> = (0..1500usize)
            .rev()
            .flat_map(|i| [mem[i * 2], mem[i * 2 + 1]])
            .collect();
        assert_eq!(buf, want);
        let mut one = [0u8; 8];
        assert!(read_process_runs(me, &[(base, 4), (4096, 4)], &mut one).is_err());
    }

    /// A file's bytes from an offset go into runs of our memory; a range
    /// past the file's end is refused before any copy.
    #[test]
    fn file_map_writes_runs_from_an_offset() {
        let path = std::env::temp_dir().join(format!("ckpt-filemap-{}", std::process::id()));
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let map = FileMap::new(std::os::fd::AsRawFd::as_raw_fd(&f)).unwrap();
        let mut dst = vec![0u8; 300];
        let base = dst.as_mut_ptr() as u64;
        let me = std::process::id() as Pid;
        map.write_process_runs(me, 5000, &[(base + 200, 100), (base, 150)])
            .unwrap();
        assert_eq!(&dst[200..300], &data[5000..5100]);
        assert_eq!(&dst[..150], &data[5100..5250]);
        assert!(dst[150..200].iter().all(|&b| b == 0));
        assert!(map.write_process_runs(me, 8000, &[(base, 300)]).is_err());
    }

    fn r(start: u64, end: u64, categories: u64) -> PageRegion {
        PageRegion {
            start,
            end,
            categories,
        }
    }

    /// Regions a scan call reports again after a full buffer are dropped,
    /// one it reports again in part is cut to what is new: the runs stay
    /// in order and apart.
    #[test]
    fn regions_reported_again_are_dropped() {
        let mut out = vec![r(0x1000, 0x2000, 0), r(0x5000, 0x8000, 4)];
        append_regions(
            &mut out,
            &[
                r(0x1000, 0x2000, 0),
                r(0x5000, 0x8000, 4),
                r(0x9000, 0xa000, 0),
            ],
        );
        append_regions(&mut out, &[r(0x9000, 0xc000, 0), r(0xd000, 0xe000, 2)]);
        assert_eq!(
            out,
            [
                r(0x1000, 0x2000, 0),
                r(0x5000, 0x8000, 4),
                r(0x9000, 0xa000, 0),
                r(0xa000, 0xc000, 0),
                r(0xd000, 0xe000, 2),
            ]
        );
    }
}
