//! Record types. Each is plain data: a struct of explicitly sized fields,
//! encoded in declaration order. New state gets a new record type rather than
//! a changed layout (see docs/image-format.md for the table).

use crate::codec::{Bytes, Dec, DecodeError, Enc, Field, Text};
use serde::Serialize;

/// A record kind with a fixed type number and an encoding.
pub trait Record: Sized {
    const TYPE: u32;
    const NAME: &'static str;
    fn encode(&self, e: &mut Enc);
    fn decode(d: &mut Dec<'_>) -> Result<Self, DecodeError>;
}

/// Declares a plain-data struct whose fields are encoded in order.
macro_rules! fields {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl Field for $name {
            const MIN_SIZE: usize = 0 $(+ <$t as Field>::MIN_SIZE)*;
            fn put(&self, e: &mut Enc) { $(self.$f.put(e);)* }
            fn get(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
                Ok(Self { $($f: <$t as Field>::get(d)?),* })
            }
        }
    };
}

/// Declares a record: a `fields!` struct with a type number.
macro_rules! record {
    ($(#[$m:meta])* $name:ident = $ty:expr, $tname:literal { $($body:tt)* }) => {
        fields!($(#[$m])* $name { $($body)* });
        impl Record for $name {
            const TYPE: u32 = $ty;
            const NAME: &'static str = $tname;
            fn encode(&self, e: &mut Enc) { Field::put(self, e) }
            fn decode(d: &mut Dec<'_>) -> Result<Self, DecodeError> {
                let r = <Self as Field>::get(d)?;
                d.finish()?;
                Ok(r)
            }
        }
    };
}

mod objects;
pub use objects::*;

/// Type bit: a reader that does not know the record may skip it (the
/// writer marked it as something an older reader can do without). An
/// unknown record without the bit makes the image unreadable.
pub const T_OPTIONAL: u32 = 0x8000_0000;

pub const T_HEAD: u32 = 1;
pub const T_ARCH_X86_64: u32 = 2;
pub const T_PROCESS: u32 = 100;
pub const T_CREDS: u32 = 101;
pub const T_RLIMITS: u32 = 102;
pub const T_SIGACTIONS: u32 = 103;
pub const T_ITIMERS: u32 = 104;
pub const T_SHARED_PENDING: u32 = 105;
pub const T_CGROUPS: u32 = 106;
pub const T_MM: u32 = 110;
pub const T_VMA: u32 = 111;
/// Page data; not a `Record` because its payload is streamed, see `reader::Body::Pages`.
pub const T_PAGES: u32 = 112;
pub const T_FILE: u32 = 120;
pub const T_FD: u32 = 121;
pub const T_PIPE: u32 = 122;
pub const T_SHMEM: u32 = 123;
pub const T_SHMEM_ATTRS: u32 = 124;
pub const T_MM_STATE: u32 = 113;
pub const T_COW_SHARED: u32 = 114;
pub const T_PAGE_INDEX: u32 = 115;
pub const T_PAGE_PLAN: u32 = 116;
pub const T_META_END: u32 = 117;
pub const T_PAGES_Z: u32 = 118;
pub const T_FILE_ATTR: u32 = 125;
pub const T_FILES_SHARED: u32 = 126;
pub const T_FILE_OWNER: u32 = 127;
pub const T_CWD_REMOVED: u32 = 128;
pub const T_THREAD: u32 = 200;
pub const T_X86_REGS: u32 = 201;
pub const T_X86_XSTATE: u32 = 202;
pub const T_X86_DEBUGREGS: u32 = 203;
pub const T_PROCESS_END: u32 = 299;
pub const T_IMAGE_END: u32 = 9000;
pub const T_TAIL: u32 = 9001;
pub const T_ERROR: u32 = 9999;

/// Architecture ids of the head record.
pub const ARCH_X86_64: u32 = 1;

record!(
    /// Opens every image: what wrote it, where, when.
    Head = T_HEAD, "head" {
        magic: u64,
        revision: u32,
        /// Checkpoint flags (`FLAG_*`).
        flags: u32,
        /// Wall-clock time of the checkpoint, ns since the epoch.
        time_ns: u64,
        arch: u32,
        page_size: u32,
        /// Kernel constants the image depends on.
        task_comm_len: u32,
        nsig: u32,
        siginfo_size: u32,
        kernel_release: Text,
        kernel_version: Text,
        machine: Text,
        hostname: Text,
        /// The ckpt version that wrote the image.
        writer: Text,
    }
);

/// Head flag: the tree was left running after the checkpoint.
pub const FLAG_LEAVE_RUNNING: u32 = 1;

fields!(
    /// Where one xsave component lives in the saved xsave area.
    XComponent { feature: u32, offset: u32, size: u32 }
);

record!(
    /// What the image needs of the CPU: the xsave layout and feature bits.
    ArchX86_64 = T_ARCH_X86_64, "arch-x86_64" {
        /// XCR0 of the checkpointed tasks: the xstate features in the image.
        xcr0: u64,
        /// Size of each saved xsave area (NT_X86_XSTATE).
        xsave_size: u32,
        cpuid_1_ecx: u32,
        cpuid_1_edx: u32,
        cpuid_7_ebx: u32,
        cpuid_7_ecx: u32,
        cpuid_7_edx: u32,
        components: Vec<XComponent>,
    }
);

record!(
    /// One process: ids, names and per-process scalars. The records that
    /// follow it, up to the next `Process`, belong to it.
    Process = T_PROCESS, "process" {
        pid: i32,
        ppid: i32,
        pgid: i32,
        sid: i32,
        nr_threads: u32,
        comm: Text,
        exe: Text,
        cwd: Text,
        root: Text,
        umask: u32,
        personality: u32,
        /// prctl(PR_GET_DUMPABLE), PR_GET_CHILD_SUBREAPER, PR_GET_PDEATHSIG
        dumpable: u32,
        child_subreaper: u32,
        pdeathsig: u32,
        /// PROC_ALIVE, PROC_ZOMBIE or PROC_STOPPED.
        state: u32,
        /// For a zombie or a stopped process: its wait status as waitpid
        /// reports it (exit code or signal; for a stop, 0x7f | signal << 8).
        exit_status: i32,
        /// /proc/PID/oom_score_adj.
        oom_score_adj: i32,
    }
);

/// Process states.
pub const PROC_ALIVE: u32 = 0;
/// Exited but not reaped: restored as a zombie child of its parent.
pub const PROC_ZOMBIE: u32 = 1;
/// In a group stop (SIGSTOP, SIGTSTP...): restored stopped by the same signal.
pub const PROC_STOPPED: u32 = 2;

record!(
    /// The process's working directory (`Process.cwd`) was removed:
    /// restart recreates it with this mode and owner, enters it and
    /// removes it again. Absent when the cwd exists.
    CwdRemoved = T_CWD_REMOVED, "cwd-removed" { mode: u32, uid: u32, gid: u32 }
);

record!(
    /// Credentials. Restore only ever lowers privileges to these.
    Creds = T_CREDS, "creds" {
        uid: u32, euid: u32, suid: u32, fsuid: u32,
        gid: u32, egid: u32, sgid: u32, fsgid: u32,
        groups: Vec<u32>,
        cap_inh: u64, cap_prm: u64, cap_eff: u64, cap_bnd: u64, cap_amb: u64,
        no_new_privs: u32,
    }
);

fields!(Rlimit {
    resource: u32,
    cur: u64,
    max: u64
});
record!(Rlimits = T_RLIMITS, "rlimits" { limits: Vec<Rlimit> });

fields!(
    /// A kernel sigaction (not glibc's): handler, flags, restorer, mask.
    SigAction { signo: u32, handler: u64, flags: u64, restorer: u64, mask: u64 }
);
record!(
    /// Every signal whose disposition is not SIG_DFL with no flags.
    SigActions = T_SIGACTIONS, "sigactions" { actions: Vec<SigAction> }
);

fields!(
    /// One interval timer (`which` = ITIMER_REAL/VIRTUAL/PROF), in microseconds.
    Itimer { which: u32, interval_us: u64, value_us: u64 }
);
record!(Itimers = T_ITIMERS, "itimers" { timers: Vec<Itimer> });

fields!(
    /// A queued signal: its number and the raw 128-byte siginfo (user ABI).
    SigInfo { signo: u32, code: i32, raw: Bytes }
);
record!(
    /// The process-wide (shared) pending signal queue, oldest first.
    SharedPending = T_SHARED_PENDING, "shared-pending" { signals: Vec<SigInfo> }
);

record!(
    /// Cgroup membership: /proc/PID/cgroup as read (`id:controllers:path`
    /// lines), restored by path in every hierarchy.
    Cgroups = T_CGROUPS, "cgroups" { membership: Text }
);

record!(
    /// mm_struct fields for PR_SET_MM_MAP, and the raw auxv.
    Mm = T_MM, "mm" {
        start_code: u64, end_code: u64, start_data: u64, end_data: u64,
        start_brk: u64, brk: u64, start_stack: u64,
        arg_start: u64, arg_end: u64, env_start: u64, env_end: u64,
        auxv: Bytes,
    }
);

/// VMA kinds.
pub const VMA_ANON: u32 = 0;
pub const VMA_FILE: u32 = 1;
pub const VMA_HEAP: u32 = 2;
pub const VMA_STACK: u32 = 3;
pub const VMA_VDSO: u32 = 4;
pub const VMA_VVAR: u32 = 5;
pub const VMA_VVAR_VCLOCK: u32 = 6;
pub const VMA_VSYSCALL: u32 = 7;
/// A mapping of a shared memory object (`obj`): shared anonymous or memfd.
pub const VMA_SHMEM: u32 = 8;

/// VMA flags (ours, not the kernel's VM_*).
pub const VMAF_SHARED: u32 = 1;
pub const VMAF_GROWSDOWN: u32 = 2;
/// The file behind a file mapping was deleted; its data is in the pages.
pub const VMAF_DELETED: u32 = 4;
/// madvise(MADV_DONTFORK) / VM_DONTCOPY.
pub const VMAF_DONTFORK: u32 = 8;
pub const VMAF_LOCKED: u32 = 16;
/// MAP_NORESERVE (VM_NORESERVE, smaps "nr").
pub const VMAF_NORESERVE: u32 = 32;
/// MAP_DROPPABLE (smaps "dp"): its content is not saved, as the kernel may
/// drop it at any time anyway.
pub const VMAF_DROPPABLE: u32 = 64;
/// madvise advice: MADV_SEQUENTIAL ("sr"), MADV_RANDOM ("rr"),
/// MADV_DONTDUMP ("dd"), MADV_MERGEABLE ("mg"), MADV_HUGEPAGE ("hg"),
/// MADV_NOHUGEPAGE ("nh"), MADV_WIPEONFORK ("wf").
pub const VMAF_SEQUENTIAL: u32 = 128;
pub const VMAF_RANDOM: u32 = 256;
pub const VMAF_DONTDUMP: u32 = 512;
pub const VMAF_MERGEABLE: u32 = 1024;
pub const VMAF_HUGEPAGE: u32 = 2048;
pub const VMAF_NOHUGEPAGE: u32 = 4096;
pub const VMAF_WIPEONFORK: u32 = 8192;
/// A shared mapping whose file was opened for writing (VM_MAYWRITE, smaps
/// "mw"): it can be mprotect'ed writable, so it is restored from a file
/// opened read-write; without the flag, from one opened read-only.
pub const VMAF_MAYWRITE: u32 = 16384;
/// Every flag bit this format defines.
pub const VMAF_ALL: u32 = (VMAF_MAYWRITE << 1) - 1;

record!(
    /// One mapping of the address space.
    Vma = T_VMA, "vma" {
        start: u64,
        end: u64,
        /// PROT_READ/WRITE/EXEC bits.
        prot: u32,
        flags: u32,
        kind: u32,
        /// Offset into the mapped file, in bytes.
        pgoff: u64,
        dev: u64,
        ino: u64,
        path: Text,
        /// Shared memory object (`Shmem` id) behind a shared anonymous or
        /// memfd mapping (private or shared), or the `SHMEM_GHOST` object
        /// behind a mapping of an unlinked file (`VMA_FILE` with
        /// `VMAF_DELETED`); 0 for none.
        obj: u32,
    }
);

/// Open file description kinds.
pub const FILE_REGULAR: u32 = 0;
pub const FILE_DIR: u32 = 1;
pub const FILE_CHR: u32 = 2;
/// A regular file that was unlinked while open: its content, mode, owner
/// and times are the `SHMEM_GHOST` object `obj` and its `shmem-attrs` (or,
/// when `obj` is 0, in `content`: images before ghost objects).
pub const FILE_UNLINKED: u32 = 3;
/// One end of a pipe (`obj` = the `Pipe` id).
pub const FILE_PIPE: u32 = 4;
/// A named pipe opened by path (`obj` = the `Pipe` id holding its buffer).
pub const FILE_FIFO: u32 = 5;
/// A memfd (`obj` = the `Shmem` id holding its content).
pub const FILE_MEMFD: u32 = 6;
/// A file under /proc/PID of a process of the image: reopened by the
/// process that holds it once PID exists again.
pub const FILE_PROC: u32 = 7;
/// A directory removed while open (`path` without " (deleted)", `mode`;
/// owner and times in a `FileAttr`): recreated for a moment at restart.
pub const FILE_DIR_REMOVED: u32 = 8;
/// A FIFO whose path was removed while open (`obj` = its `Pipe`; `path`
/// without " (deleted)"; owner in a `FileAttr` of the first description):
/// made again at its path for a moment at restart.
pub const FILE_FIFO_REMOVED: u32 = 9;

/// A short name of each `File` kind, for `inspect`.
pub fn file_kind_name(k: u32) -> &'static str {
    const NAMES: [&str; 10] = [
        "regular",
        "dir",
        "chr",
        "unlinked",
        "pipe",
        "fifo",
        "memfd",
        "proc",
        "removed-dir",
        "removed-fifo",
    ];
    NAMES
        .get(k as usize)
        .copied()
        .or_else(|| objects::file_kind_name(k))
        .unwrap_or("unknown")
}

record!(
    /// An open file description, possibly shared by several fds.
    File = T_FILE, "file" {
        id: u32,
        kind: u32,
        /// Status flags as in fcntl(F_GETFL), plus the access mode.
        flags: u32,
        pos: u64,
        mode: u32,
        rdev: u64,
        size: u64,
        path: Text,
        content: Bytes,
        /// `Pipe` or `Shmem` id for pipes, FIFOs and memfds; for an unlinked
        /// file, the `File` that recreates its inode (0: this one); else 0.
        obj: u32,
    }
);

record!(
    /// Owner and times of the unlinked file (`File` kind `FILE_UNLINKED`)
    /// `file_id` creates: a recreated file gets them back, since nobody
    /// could otherwise (its path is gone).
    FileAttr = T_FILE_ATTR, "file-attr" {
        file_id: u32,
        uid: u32,
        gid: u32,
        atime_sec: i64,
        atime_nsec: u32,
        mtime_sec: i64,
        mtime_nsec: u32,
    }
);

record!(
    /// Who gets SIGIO/SIGURG for an open file description (F_SETOWN_EX:
    /// `owner_type` F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2, `owner`
    /// a pid or group of the image) and which signal (F_SETSIG, 0 for
    /// SIGIO). Only for descriptions with an owner or a signal.
    FileOwner = T_FILE_OWNER, "file-owner" {
        file_id: u32,
        owner_type: u32,
        owner: i32,
        signum: u32,
    }
);

record!(
    /// A pipe (or FIFO) buffer: its size and the bytes in flight. `ino` is
    /// the pipe's inode: if a process outside the tree still holds the
    /// pipe at restart, the restored ends reconnect to it.
    Pipe = T_PIPE, "pipe" { id: u32, size: u32, ino: u64, data: Bytes }
);

/// Shared memory object kinds.
pub const SHMEM_ANON: u32 = 0;
pub const SHMEM_MEMFD: u32 = 1;
/// A regular file unlinked while open or mapped ("ghost"): `name` is the
/// path it had. Its holes stay holes (only data ranges have page records).
pub const SHMEM_GHOST: u32 = 2;

record!(
    /// A shared memory object (MAP_SHARED|MAP_ANONYMOUS region or memfd).
    /// Page records with `PAGES_SHMEM` that follow hold its content, their
    /// address being the offset in the object.
    Shmem = T_SHMEM, "shmem" { id: u32, kind: u32, size: u64, name: Text }
);

record!(
    /// Mode, owner, seals (F_GET_SEALS; 0 for objects that have none) and
    /// access and modification times of the preceding `Shmem` object `id`.
    ShmemAttrs = T_SHMEM_ATTRS, "shmem-attrs" {
        id: u32, mode: u32, uid: u32, gid: u32, seals: u32,
        atime_sec: i64, atime_nsec: u32, mtime_sec: i64, mtime_nsec: u32,
    }
);

record!(
    /// Per-mm state set by prctl/membarrier, not visible in /proc.
    MmState = T_MM_STATE, "mm-state" {
        /// prctl(PR_GET_THP_DISABLE): 0, or 1 plus PR_THP_DISABLE_* flags.
        thp_disable: u32,
        /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS): the
        /// MEMBARRIER_CMD_REGISTER_* commands the process made.
        membarrier: u32,
    }
);

record!(
    /// Pages of this process that were the very pages of its parent at the
    /// same address (copy-on-write after fork, written by neither). They are
    /// saved with the process's pages too; restart shares them again when it
    /// can map the parent's copy before forking.
    CowShared = T_COW_SHARED, "cow-shared" { addr: u64, nr_pages: u64 }
);

fields!(
    /// One run of pages in an indexed `pages` record.
    IndexedRun { addr: u64, nr_pages: u32 }
);

record!(
    /// The runs of pages the next `pages` record holds back to back (its
    /// `addr` and `nr_pages` are the first run's address and the total), so
    /// scattered pages cost one record header, not a header page each.
    /// Runs are in ascending address order and do not overlap.
    PageIndex = T_PAGE_INDEX, "page-index" { runs: Vec<IndexedRun> }
);

/// Page record flag: the pages belong to the preceding `Shmem` object.
pub const PAGES_SHMEM: u32 = 1;

record!(
    /// Announces, in the metadata, one record of the page section that
    /// follows the `meta-end` record: the runs it holds back to back, in
    /// ascending address order without overlap, for the shmem object or
    /// process it appears under. A reader knows every page's place before
    /// any page arrives, so a streamed image is restored as it is read.
    /// The section holds the plans' records in this order: shmem objects',
    /// then those flagged `PLAN_EARLY`, then the rest, each group in the
    /// order of the plans.
    PagePlan = T_PAGE_PLAN, "page-plan" { flags: u32, runs: Vec<IndexedRun> }
);

/// Page plan flag: pages restart reads before it rebuilds any process
/// (a parent's mappings its children share copy-on-write, premapped
/// before they are forked).
pub const PLAN_EARLY: u32 = 1;

/// Page compression of an image (`MetaEnd::compression`).
pub const COMPRESS_NONE: u32 = 0;
pub const COMPRESS_LZ4: u32 = 1;
pub const COMPRESS_ZSTD: u32 = 2;

record!(
    /// Ends the metadata: `crc32c` covers every byte before this record,
    /// so a reader of a stream trusts the metadata before the pages
    /// arrive (the tail still covers the whole image). The page section
    /// of `nr_plans` records follows, `pages` records, or `pages-z`
    /// records when `compression` is not `COMPRESS_NONE`.
    MetaEnd = T_META_END, "meta-end" { crc32c: u32, nr_plans: u32, compression: u32 }
);

record!(
    /// Compressed page data of one page plan: `nr_pages` pages from
    /// `addr`, with the flags of a `pages` record, `data` compressed with
    /// the image's algorithm (LZ4 block, or one zstd frame).
    PagesZ = T_PAGES_Z, "pages-z" { addr: u64, nr_pages: u32, flags: u32, data: Bytes }
);

record!(
    /// One fd of the process, naming its open file description.
    Fd = T_FD, "fd" { fd: u32, file_id: u32, cloexec: bool }
);

record!(
    /// The process shares its fd table with its parent (`clone(CLONE_FILES)`
    /// without `CLONE_VM`): restart creates it that way, and its `fd`
    /// records are its parent's. Absent for a process with its own table.
    FilesShared = T_FILES_SHARED, "files-shared" { parent: i32 }
);

record!(
    /// Per-thread state that is not architecture specific.
    Thread = T_THREAD, "thread" {
        tid: i32,
        sigmask: u64,
        clear_child_tid: u64,
        altstack_sp: u64,
        altstack_size: u64,
        altstack_flags: u32,
        rseq_addr: u64,
        rseq_len: u32,
        rseq_sig: u32,
        pending: Vec<SigInfo>,
        /// set_robust_list head and length (glibc's robust mutex list).
        robust_list: u64,
        robust_len: u64,
        /// Nice value (-20..19).
        nice: i32,
        /// CPU affinity mask as sched_getaffinity returns it.
        affinity: Bytes,
        /// sched_getscheduler (SCHED_OTHER/BATCH/IDLE/FIFO/RR, with
        /// SCHED_RESET_ON_FORK) and the real-time priority.
        sched_policy: u32,
        sched_priority: u32,
    }
);

record!(
    /// x86_64 general registers (user_regs_struct order, one u64 each).
    X86Regs = T_X86_REGS, "x86-regs" {
        tid: i32,
        r15: u64, r14: u64, r13: u64, r12: u64, rbp: u64, rbx: u64,
        r11: u64, r10: u64, r9: u64, r8: u64, rax: u64, rcx: u64, rdx: u64,
        rsi: u64, rdi: u64, orig_rax: u64, rip: u64, cs: u64, eflags: u64,
        rsp: u64, ss: u64, fs_base: u64, gs_base: u64,
        ds: u64, es: u64, fs: u64, gs: u64,
    }
);

record!(
    /// The thread's xsave area as NT_X86_XSTATE gives it (architectural XSAVE layout).
    X86Xstate = T_X86_XSTATE, "x86-xstate" { tid: i32, area: Bytes }
);

record!(
    /// Debug registers dr0..dr7 (dr4/dr5 unused, kept for indexing).
    X86DebugRegs = T_X86_DEBUGREGS, "x86-debugregs" { tid: i32, dr: [u64; 8] }
);

record!(
    /// Closes one process: how many of each record it has, so that a
    /// reader can tell a complete process from one cut short or edited.
    ProcessEnd = T_PROCESS_END, "process-end" {
        pid: i32,
        nr_threads: u32,
        nr_fds: u32,
        nr_vmas: u32,
        nr_pages: u64,
    }
);

record!(
    /// The last record before the tail: how many processes and shared
    /// objects the image holds, so that one cut at a record boundary (and
    /// given a fresh tail) is refused.
    ImageEnd = T_IMAGE_END, "image-end" {
        nr_processes: u32,
        nr_files: u32,
        nr_pipes: u32,
        nr_objects: u32,
        nr_shmems: u32,
        nr_shmem_pages: u64,
    }
);

record!(
    /// Closes the image: record count and CRC32C of every byte before it.
    Tail = T_TAIL, "tail" { magic: u64, records: u64, crc32c: u32, pad: u32 }
);

record!(
    /// A checkpoint failed: why. A reader reports it and stops.
    ErrorRec = T_ERROR, "error" { message: Text }
);

/// Header fields of a page-data record (the page data follows, page-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PagesHdr {
    pub addr: u64,
    pub nr_pages: u32,
    pub flags: u32,
}
/// Size of `PagesHdr` on disk.
pub const PAGES_HDR_LEN: u64 = 16;

/// Any decoded record, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AnyRecord {
    Head(Head),
    ArchX86_64(ArchX86_64),
    Process(Process),
    CwdRemoved(CwdRemoved),
    Creds(Creds),
    Rlimits(Rlimits),
    SigActions(SigActions),
    Itimers(Itimers),
    SharedPending(SharedPending),
    Cgroups(Cgroups),
    Mm(Mm),
    Vma(Vma),
    Pages(PagesHdr),
    File(File),
    FileAttr(FileAttr),
    FileOwner(FileOwner),
    Fd(Fd),
    FilesShared(FilesShared),
    Pipe(Pipe),
    Eventfd(Eventfd),
    UdpSk(UdpSk),
    UdpQueue(UdpQueue),
    NetlinkSk(NetlinkSk),
    UnixSk(UnixSk),
    UnixQueue(UnixQueue),
    Epoll(Epoll),
    EpollWatch(EpollWatch),
    Timerfd(Timerfd),
    Signalfd(Signalfd),
    Inotify(Inotify),
    InotifyWatch(InotifyWatch),
    Pidfd(Pidfd),
    TcpSk(TcpSk),
    TcpQueue(TcpQueue),
    TcpRepair(TcpRepair),
    FileLock(FileLock),
    PosixTimer(PosixTimer),
    Shmem(Shmem),
    ShmemAttrs(ShmemAttrs),
    MmState(MmState),
    CowShared(CowShared),
    PageIndex(PageIndex),
    PagePlan(PagePlan),
    MetaEnd(MetaEnd),
    PagesZ(PagesZ),
    Thread(Thread),
    X86Regs(X86Regs),
    X86Xstate(X86Xstate),
    X86DebugRegs(X86DebugRegs),
    ProcessEnd(ProcessEnd),
    ImageEnd(ImageEnd),
    Tail(Tail),
    Error(ErrorRec),
    /// A record this reader does not know, marked `T_OPTIONAL` by its writer.
    Skipped(Skipped),
}

/// What is known of a skipped optional record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub rtype: u32,
    /// Payload length.
    pub len: u32,
}

macro_rules! dispatch {
    ($($v:ident => $t:ty),* $(,)?) => {
        /// Human name of a record type (for messages and `inspect`).
        pub fn type_name(t: u32) -> &'static str {
            match t {
                $(<$t>::TYPE => <$t>::NAME,)*
                T_PAGES => "pages",
                _ => "unknown",
            }
        }
        /// Decodes a metadata payload of type `t`. `None` for unknown types.
        pub fn decode_any(t: u32, payload: &[u8]) -> Option<Result<AnyRecord, DecodeError>> {
            let mut d = Dec::new(payload);
            match t {
                $(<$t>::TYPE => Some(<$t>::decode(&mut d).map(AnyRecord::$v)),)*
                _ => None,
            }
        }
        impl AnyRecord {
            /// The record's type number (`T_PAGES` for page headers, the
            /// skipped type for a skipped record).
            pub fn rtype(&self) -> u32 {
                match self {
                    $(AnyRecord::$v(_) => <$t>::TYPE,)*
                    AnyRecord::Pages(_) => T_PAGES,
                    AnyRecord::Skipped(k) => k.rtype,
                }
            }
            /// The record itself, to downcast to its type.
            pub fn as_any(&self) -> &dyn std::any::Any {
                match self {
                    $(AnyRecord::$v(x) => x,)*
                    AnyRecord::Pages(x) => x,
                    AnyRecord::Skipped(x) => x,
                }
            }
        }
        $(impl From<$t> for AnyRecord {
            fn from(r: $t) -> AnyRecord { AnyRecord::$v(r) }
        })*
        /// The type and encoded payload of a metadata record; `None` for
        /// page headers, whose data is written with `write_pages`.
        pub fn encode_any(r: &AnyRecord) -> Option<(u32, Vec<u8>)> {
            let mut e = Enc::default();
            let t = match r {
                $(AnyRecord::$v(x) => { x.encode(&mut e); <$t>::TYPE })*
                AnyRecord::Pages(_) | AnyRecord::Skipped(_) => return None,
            };
            Some((t, e.buf))
        }
    };
}

dispatch!(
    Head => Head,
    ArchX86_64 => ArchX86_64,
    Process => Process,
    CwdRemoved => CwdRemoved,
    Creds => Creds,
    Rlimits => Rlimits,
    SigActions => SigActions,
    Itimers => Itimers,
    SharedPending => SharedPending,
    Cgroups => Cgroups,
    Mm => Mm,
    Vma => Vma,
    File => File,
    FileAttr => FileAttr,
    FileOwner => FileOwner,
    Fd => Fd,
    FilesShared => FilesShared,
    Pipe => Pipe,
    Eventfd => Eventfd,
    UdpSk => UdpSk,
    UdpQueue => UdpQueue,
    NetlinkSk => NetlinkSk,
    UnixSk => UnixSk,
    UnixQueue => UnixQueue,
    Epoll => Epoll,
    EpollWatch => EpollWatch,
    Timerfd => Timerfd,
    Signalfd => Signalfd,
    Inotify => Inotify,
    InotifyWatch => InotifyWatch,
    Pidfd => Pidfd,
    TcpSk => TcpSk,
    TcpQueue => TcpQueue,
    TcpRepair => TcpRepair,
    FileLock => FileLock,
    PosixTimer => PosixTimer,
    Shmem => Shmem,
    ShmemAttrs => ShmemAttrs,
    MmState => MmState,
    CowShared => CowShared,
    PageIndex => PageIndex,
    PagePlan => PagePlan,
    MetaEnd => MetaEnd,
    PagesZ => PagesZ,
    Thread => Thread,
    X86Regs => X86Regs,
    X86Xstate => X86Xstate,
    X86DebugRegs => X86DebugRegs,
    ProcessEnd => ProcessEnd,
    ImageEnd => ImageEnd,
    Tail => Tail,
    Error => ErrorRec,
);
