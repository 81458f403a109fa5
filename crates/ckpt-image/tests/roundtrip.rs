//! Round-trip, mutation and refusal tests of the image writer and reader.
//!
//! (a) Random images written with `ImageWriter` read back record for record,
//!     page data page-aligned in the stream.
//! (b) Mutated images (truncation, bit flips, overwritten and inserted bytes,
//!     hostile length fields) never panic, are always refused, and never make
//!     the reader allocate more than `MAX_RECORD` bytes at once.
//! (c) The reader's refusals: empty input, not an image, an error record,
//!     data after the tail, a wrong revision.
//!
//! Case counts are modest so the crate's tests stay fast in debug builds;
//! `PROPTEST_CASES=N` overrides them for a longer run.

use ckpt_image::*;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------
// Allocation tracking

/// The system allocator, remembering per thread the largest single
/// allocation requested (proptest runs every case on the test's own thread).
struct PeakAlloc;

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = PEAK.try_with(|p| {
        if size > p.get() {
            p.set(size)
        }
    });
}

// SAFETY: every method forwards to `System` with its arguments unchanged;
// `note` only touches a `const`-initialised thread-local and never allocates.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (every allocation goes
        // through this type) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, and
        // `ptr` was allocated by `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Runs `f`; returns its result and the largest single allocation it made.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    let r = f();
    (r, PEAK.with(|p| p.get()))
}

#[test]
fn peak_alloc_sees_allocations() {
    let (v, peak) = peak_alloc(|| vec![0u8; 3 << 20]);
    assert_eq!(v.len(), 3 << 20);
    assert!(peak >= 3 << 20, "tracker saw only {peak} bytes");
}

// ---------------------------------------------------------------------------
// Helpers

fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        // Regression files would land in the source tree; a failure prints
        // its minimal input anyway.
        failure_persistence: None,
        ..base
    }
}

fn head() -> Head {
    Head {
        magic: HEAD_MAGIC,
        revision: FORMAT_REVISION,
        flags: 0,
        time_ns: 1_700_000_000_000_000_000,
        arch: ARCH_X86_64,
        page_size: PAGE_SIZE as u32,
        task_comm_len: 16,
        nsig: 64,
        siginfo_size: 128,
        kernel_release: "6.8.0-test".into(),
        kernel_version: "#1 SMP PREEMPT_DYNAMIC".into(),
        machine: "x86_64".into(),
        hostname: "testhost".into(),
        writer: "ckpt 0.1.0".into(),
    }
}

/// One step of a generated image.
#[derive(Debug, Clone)]
enum Item {
    Rec(AnyRecord),
    Pages { addr: u64, data: Vec<u8> },
}

fn write_rec<W: io::Write>(w: &mut ImageWriter<W>, r: &AnyRecord) -> io::Result<()> {
    w.write_any(r)
}

fn build(head: &Head, items: &[Item]) -> Vec<u8> {
    let mut w = ImageWriter::new(Vec::new());
    w.write(head).unwrap();
    for it in items {
        match it {
            Item::Rec(r) => write_rec(&mut w, r).unwrap(),
            Item::Pages { addr, data } => w.write_pages(*addr, data).unwrap(),
        }
    }
    w.finish().unwrap()
}

/// `pages` pages of pseudo-random bytes (splitmix64 of `seed`).
fn page_bytes(seed: u64, pages: usize) -> Vec<u8> {
    let n = pages * PAGE_SIZE as usize;
    let mut s = seed;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v
}

/// Reads records until the end or an error, decoding each one (the result
/// of decoding does not matter here, only that nothing panics). Returns the
/// number of records of a valid image.
fn read_all(img: &[u8]) -> Result<usize, ImageError> {
    let mut rd = ImageReader::new(img);
    let mut n = 0usize;
    loop {
        match rd.next_record()? {
            Some(r) => {
                let _ = r.decode_any();
                n += 1;
                // Every record takes at least 8 bytes of the stream.
                assert!(n <= img.len() / 8 + 1, "reader does not advance");
            }
            None => return Ok(n),
        }
    }
}

/// `read_all` that also checks the reader's single allocations stay within
/// `MAX_RECORD` and that the error's message can be formatted.
fn read_bounded(img: &[u8]) -> Result<usize, ImageError> {
    let (r, peak) = peak_alloc(|| {
        let r = read_all(img);
        if let Err(e) = &r {
            let _ = e.to_string();
        }
        r
    });
    assert!(
        peak as u64 <= MAX_RECORD,
        "reader allocated {peak} bytes at once (limit {MAX_RECORD}): {r:?}"
    );
    r
}

/// Record headers (type, offset, len) of a valid image.
fn layout(img: &[u8]) -> Vec<(u32, u64, u64)> {
    let mut rd = ImageReader::new(img);
    let mut v = Vec::new();
    while let Some(r) = rd.next_record().unwrap() {
        v.push((r.rtype, r.offset, r.len));
    }
    v
}

fn put_u32(img: &mut [u8], at: u64, v: u32) {
    img[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

/// Offset of the tail record in a valid image (it is the last 32 bytes).
const TAIL_LEN: usize = 32;

fn sig(signo: u32) -> SigInfo {
    let mut raw = vec![0u8; 128];
    raw[..4].copy_from_slice(&signo.to_le_bytes());
    SigInfo {
        signo,
        code: -6,
        raw: Bytes(raw),
    }
}

/// A valid image with every record type, in the order ckpt writes them.
fn sample_image() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let recs = vec![
            AnyRecord::ArchX86_64(ArchX86_64 {
                xcr0: 0x7,
                xsave_size: 832,
                cpuid_1_ecx: 0x7ffa_fbff,
                cpuid_1_edx: 0xbfeb_fbff,
                cpuid_7_ebx: 0x029c_67af,
                cpuid_7_ecx: 0x4000_0000,
                cpuid_7_edx: 0xbc00_0400,
                components: vec![XComponent {
                    feature: 2,
                    offset: 576,
                    size: 256,
                }],
            }),
            AnyRecord::Process(Process {
                pid: 100,
                ppid: 1,
                pgid: 100,
                sid: 100,
                nr_threads: 1,
                comm: "sleeper".into(),
                exe: "/usr/bin/sleeper".into(),
                cwd: "/tmp".into(),
                root: "/".into(),
                umask: 0o022,
                personality: 0,
                dumpable: 1,
                child_subreaper: 0,
                pdeathsig: 0,
                state: PROC_ZOMBIE,
                exit_status: 9,
                oom_score_adj: -500,
            }),
            AnyRecord::Creds(Creds {
                uid: 1000,
                euid: 1000,
                suid: 1000,
                fsuid: 1000,
                gid: 1000,
                egid: 1000,
                sgid: 1000,
                fsgid: 1000,
                groups: vec![4, 24, 1000],
                cap_bnd: 0x1ff_ffff_ffff,
                ..Default::default()
            }),
            AnyRecord::Rlimits(Rlimits {
                limits: (0..16)
                    .map(|r| Rlimit {
                        resource: r,
                        cur: u64::MAX,
                        max: u64::MAX,
                    })
                    .collect(),
            }),
            AnyRecord::SigActions(SigActions {
                actions: vec![SigAction {
                    signo: 10,
                    handler: 0x401000,
                    flags: 0x0400_0000,
                    restorer: 0x401100,
                    mask: 0,
                }],
            }),
            AnyRecord::Itimers(Itimers {
                timers: vec![Itimer {
                    which: 0,
                    interval_us: 0,
                    value_us: 500_000,
                }],
            }),
            AnyRecord::SharedPending(SharedPending {
                signals: vec![sig(10)],
            }),
            AnyRecord::File(File {
                id: 1,
                kind: FILE_UNLINKED,
                flags: 2,
                pos: 5,
                mode: 0o100600,
                rdev: 0,
                size: 11,
                path: "/tmp/scratch (deleted)".into(),
                content: Bytes(b"hello world".to_vec()),
                obj: 0,
            }),
            AnyRecord::FileAttr(FileAttr {
                file_id: 1,
                uid: 1000,
                gid: 100,
                atime_sec: -1,
                atime_nsec: 999_999_999,
                mtime_sec: 123456,
                mtime_nsec: 0,
            }),
            AnyRecord::FileOwner(FileOwner {
                file_id: 1,
                owner_type: 1,
                owner: 42,
                signum: 29,
            }),
            AnyRecord::Pipe(Pipe {
                id: 1,
                size: 65536,
                ino: 4242,
                data: Bytes(b"in flight".to_vec()),
            }),
            AnyRecord::Shmem(Shmem {
                id: 2,
                kind: SHMEM_MEMFD,
                size: 8192,
                name: "memfd:x".into(),
            }),
            AnyRecord::Shmem(Shmem {
                id: 3,
                kind: SHMEM_GHOST,
                size: 1 << 20,
                name: "/tmp/ghost".into(),
            }),
            AnyRecord::ShmemAttrs(ShmemAttrs {
                id: 3,
                mode: 0o640,
                uid: 1000,
                gid: 100,
                seals: 0,
                atime_sec: 1_700_000_000,
                atime_nsec: 5,
                mtime_sec: -1,
                mtime_nsec: 999_999_999,
            }),
            AnyRecord::Fd(Fd {
                fd: 0,
                file_id: 1,
                cloexec: false,
            }),
            AnyRecord::Fd(Fd {
                fd: 3,
                file_id: 1,
                cloexec: true,
            }),
            AnyRecord::FilesShared(FilesShared { parent: 41 }),
            AnyRecord::CwdRemoved(CwdRemoved {
                mode: 0o40700,
                uid: 1,
                gid: 2,
            }),
            AnyRecord::Mm(Mm {
                start_code: 0x400000,
                end_code: 0x402000,
                start_stack: 0x7ffd_0000_0000,
                auxv: Bytes(vec![6, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0]),
                ..Default::default()
            }),
            AnyRecord::MmState(MmState {
                thp_disable: 1,
                membarrier: 1 << 4,
            }),
            AnyRecord::CowShared(CowShared {
                addr: 0x7f00_0000_0000,
                nr_pages: 3,
            }),
            AnyRecord::Vma(Vma {
                start: 0x400000,
                end: 0x402000,
                prot: 5,
                flags: 0,
                kind: VMA_FILE,
                pgoff: 0,
                dev: 0x803,
                ino: 1234,
                path: "/usr/bin/sleeper".into(),
                obj: 0,
            }),
            AnyRecord::Vma(Vma {
                start: 0x7ffd_0000_0000,
                end: 0x7ffd_0000_1000,
                prot: 3,
                flags: VMAF_GROWSDOWN,
                kind: VMA_STACK,
                ..Default::default()
            }),
            AnyRecord::Thread(Thread {
                tid: 100,
                sigmask: 1 << 9,
                pending: vec![sig(12)],
                ..Default::default()
            }),
            AnyRecord::X86Regs(X86Regs {
                tid: 100,
                rip: 0x401234,
                rsp: 0x7ffd_0000_0f00,
                cs: 0x33,
                ss: 0x2b,
                eflags: 0x246,
                ..Default::default()
            }),
            AnyRecord::X86Xstate(X86Xstate {
                tid: 100,
                area: Bytes((0..832u32).map(|i| i as u8).collect()),
            }),
            AnyRecord::X86DebugRegs(X86DebugRegs {
                tid: 100,
                dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            }),
        ];
        let mut items: Vec<Item> = recs.into_iter().map(Item::Rec).collect();
        items.push(Item::Pages {
            addr: 0x400000,
            data: page_bytes(1, 2),
        });
        items.push(Item::Pages {
            addr: 0x7ffd_0000_0000,
            data: page_bytes(2, 1),
        });
        build(&head(), &items)
    })
}

// ---------------------------------------------------------------------------
// (a) Round trip

fn text() -> impl Strategy<Value = Text> {
    vec(1u8..=255, 0..24).prop_map(Text)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes)
}

fn siginfo() -> impl Strategy<Value = SigInfo> {
    (any::<u32>(), any::<i32>(), vec(any::<u8>(), 128)).prop_map(|(signo, code, raw)| SigInfo {
        signo,
        code,
        raw: Bytes(raw),
    })
}

fn head_strategy() -> impl Strategy<Value = Head> {
    (
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<[u32; 3]>()),
        (text(), text(), text(), text(), text()),
    )
        .prop_map(
            |(
                (flags, time_ns, arch, [task_comm_len, nsig, siginfo_size]),
                (kernel_release, kernel_version, machine, hostname, writer),
            )| Head {
                magic: HEAD_MAGIC,
                revision: FORMAT_REVISION,
                flags,
                time_ns,
                arch,
                page_size: PAGE_SIZE as u32,
                task_comm_len,
                nsig,
                siginfo_size,
                kernel_release,
                kernel_version,
                machine,
                hostname,
                writer,
            },
        )
}

fn process() -> impl Strategy<Value = AnyRecord> {
    (
        any::<[i32; 4]>(),
        any::<u32>(),
        (text(), text(), text(), text()),
        any::<[u32; 5]>(),
    )
        .prop_map(
            |(
                [pid, ppid, pgid, sid],
                nr_threads,
                (comm, exe, cwd, root),
                [umask, personality, dumpable, child_subreaper, pdeathsig],
            )| {
                AnyRecord::Process(Process {
                    pid,
                    ppid,
                    pgid,
                    sid,
                    nr_threads,
                    comm,
                    exe,
                    cwd,
                    root,
                    umask,
                    personality,
                    dumpable,
                    child_subreaper,
                    pdeathsig,
                    state: umask % 2,
                    exit_status: pid,
                    oom_score_adj: ppid % 1001,
                })
            },
        )
}

fn creds() -> impl Strategy<Value = AnyRecord> {
    (
        any::<[u32; 8]>(),
        vec(any::<u32>(), 0..8),
        any::<[u64; 5]>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                [uid, euid, suid, fsuid, gid, egid, sgid, fsgid],
                groups,
                [cap_inh, cap_prm, cap_eff, cap_bnd, cap_amb],
                no_new_privs,
            )| {
                AnyRecord::Creds(Creds {
                    uid,
                    euid,
                    suid,
                    fsuid,
                    gid,
                    egid,
                    sgid,
                    fsgid,
                    groups,
                    cap_inh,
                    cap_prm,
                    cap_eff,
                    cap_bnd,
                    cap_amb,
                    no_new_privs,
                })
            },
        )
}

fn rlimits() -> impl Strategy<Value = AnyRecord> {
    vec(
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(resource, cur, max)| Rlimit {
            resource,
            cur,
            max,
        }),
        0..17,
    )
    .prop_map(|limits| AnyRecord::Rlimits(Rlimits { limits }))
}

fn sigactions() -> impl Strategy<Value = AnyRecord> {
    vec(
        (any::<u32>(), any::<[u64; 4]>()).prop_map(|(signo, [handler, flags, restorer, mask])| {
            SigAction {
                signo,
                handler,
                flags,
                restorer,
                mask,
            }
        }),
        0..8,
    )
    .prop_map(|actions| AnyRecord::SigActions(SigActions { actions }))
}

fn itimers() -> impl Strategy<Value = AnyRecord> {
    vec(
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(which, interval_us, value_us)| {
            Itimer {
                which,
                interval_us,
                value_us,
            }
        }),
        0..4,
    )
    .prop_map(|timers| AnyRecord::Itimers(Itimers { timers }))
}

fn shared_pending() -> impl Strategy<Value = AnyRecord> {
    vec(siginfo(), 0..4).prop_map(|signals| AnyRecord::SharedPending(SharedPending { signals }))
}

fn mm() -> impl Strategy<Value = AnyRecord> {
    (any::<[u64; 11]>(), bytes(400)).prop_map(
        |(
            [start_code, end_code, start_data, end_data, start_brk, brk, start_stack, arg_start, arg_end, env_start, env_end],
            auxv,
        )| {
            AnyRecord::Mm(Mm {
                start_code,
                end_code,
                start_data,
                end_data,
                start_brk,
                brk,
                start_stack,
                arg_start,
                arg_end,
                env_start,
                env_end,
                auxv,
            })
        },
    )
}

fn vma() -> impl Strategy<Value = AnyRecord> {
    (
        any::<[u64; 2]>(),
        any::<[u32; 3]>(),
        any::<[u64; 3]>(),
        text(),
    )
        .prop_map(
            |([start, end], [prot, flags, kind], [pgoff, dev, ino], path)| {
                AnyRecord::Vma(Vma {
                    start,
                    end,
                    prot,
                    flags,
                    kind,
                    pgoff,
                    dev,
                    ino,
                    path,
                    obj: kind % 3,
                })
            },
        )
}

fn file() -> impl Strategy<Value = AnyRecord> {
    (
        any::<[u32; 3]>(),
        any::<u64>(),
        any::<u32>(),
        any::<[u64; 2]>(),
        text(),
        bytes(512),
    )
        .prop_map(
            |([id, kind, flags], pos, mode, [rdev, size], path, content)| {
                AnyRecord::File(File {
                    id,
                    kind,
                    flags,
                    pos,
                    mode,
                    rdev,
                    size,
                    path,
                    content,
                    obj: flags % 5,
                })
            },
        )
}

fn fd() -> impl Strategy<Value = AnyRecord> {
    (any::<u32>(), any::<u32>(), any::<bool>()).prop_map(|(fd, file_id, cloexec)| {
        AnyRecord::Fd(Fd {
            fd,
            file_id,
            cloexec,
        })
    })
}

fn thread() -> impl Strategy<Value = AnyRecord> {
    (
        any::<i32>(),
        any::<[u64; 4]>(),
        any::<u32>(),
        any::<u64>(),
        any::<[u32; 2]>(),
        vec(siginfo(), 0..4),
    )
        .prop_map(
            |(
                tid,
                [sigmask, clear_child_tid, altstack_sp, altstack_size],
                altstack_flags,
                rseq_addr,
                [rseq_len, rseq_sig],
                pending,
            )| {
                AnyRecord::Thread(Thread {
                    tid,
                    sigmask,
                    clear_child_tid,
                    altstack_sp,
                    altstack_size,
                    altstack_flags,
                    rseq_addr,
                    rseq_len,
                    rseq_sig,
                    pending,
                    robust_list: clear_child_tid ^ altstack_sp,
                    robust_len: 24,
                    nice: (altstack_flags % 40) as i32 - 20,
                    affinity: Bytes(sigmask.to_le_bytes().to_vec()),
                    sched_policy: rseq_len % 7,
                    sched_priority: rseq_sig % 100,
                })
            },
        )
}

fn x86_regs() -> impl Strategy<Value = AnyRecord> {
    (any::<i32>(), any::<[u64; 27]>()).prop_map(
        |(
            tid,
            [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs],
        )| {
            AnyRecord::X86Regs(X86Regs {
                tid,
                r15,
                r14,
                r13,
                r12,
                rbp,
                rbx,
                r11,
                r10,
                r9,
                r8,
                rax,
                rcx,
                rdx,
                rsi,
                rdi,
                orig_rax,
                rip,
                cs,
                eflags,
                rsp,
                ss,
                fs_base,
                gs_base,
                ds,
                es,
                fs,
                gs,
            })
        },
    )
}

fn x86_xstate() -> impl Strategy<Value = AnyRecord> {
    (any::<i32>(), bytes(1100))
        .prop_map(|(tid, area)| AnyRecord::X86Xstate(X86Xstate { tid, area }))
}

fn x86_debugregs() -> impl Strategy<Value = AnyRecord> {
    (any::<i32>(), any::<[u64; 8]>())
        .prop_map(|(tid, dr)| AnyRecord::X86DebugRegs(X86DebugRegs { tid, dr }))
}

fn arch() -> impl Strategy<Value = AnyRecord> {
    (
        any::<u64>(),
        any::<[u32; 6]>(),
        vec(any::<[u32; 3]>(), 0..8),
    )
        .prop_map(|(xcr0, [xsave_size, c1c, c1d, c7b, c7c, c7d], comps)| {
            AnyRecord::ArchX86_64(ArchX86_64 {
                xcr0,
                xsave_size,
                cpuid_1_ecx: c1c,
                cpuid_1_edx: c1d,
                cpuid_7_ebx: c7b,
                cpuid_7_ecx: c7c,
                cpuid_7_edx: c7d,
                components: comps
                    .into_iter()
                    .map(|[feature, offset, size]| XComponent {
                        feature,
                        offset,
                        size,
                    })
                    .collect(),
            })
        })
}

fn pages() -> impl Strategy<Value = Item> {
    // 1..=5 pages at a page-aligned address well below overflow.
    (1usize..=5, 0u64..(1 << 35), any::<u64>()).prop_map(|(n, page, seed)| Item::Pages {
        addr: page * PAGE_SIZE,
        data: page_bytes(seed, n),
    })
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        3 => process().prop_map(Item::Rec).boxed(),
        3 => vma().prop_map(Item::Rec).boxed(),
        3 => file().prop_map(Item::Rec).boxed(),
        3 => fd().prop_map(Item::Rec).boxed(),
        3 => thread().prop_map(Item::Rec).boxed(),
        3 => x86_regs().prop_map(Item::Rec).boxed(),
        3 => x86_xstate().prop_map(Item::Rec).boxed(),
        3 => rlimits().prop_map(Item::Rec).boxed(),
        4 => pages().boxed(),
        1 => arch().prop_map(Item::Rec).boxed(),
        1 => creds().prop_map(Item::Rec).boxed(),
        1 => sigactions().prop_map(Item::Rec).boxed(),
        1 => itimers().prop_map(Item::Rec).boxed(),
        1 => shared_pending().prop_map(Item::Rec).boxed(),
        1 => mm().prop_map(Item::Rec).boxed(),
        1 => x86_debugregs().prop_map(Item::Rec).boxed(),
        1 => ends().prop_map(Item::Rec).boxed(),
    ]
}

fn ends() -> impl Strategy<Value = AnyRecord> {
    (any::<i32>(), any::<[u32; 4]>(), any::<u64>(), any::<bool>()).prop_map(
        |(pid, [a, b, c, d], n, which)| {
            if which {
                AnyRecord::ProcessEnd(ProcessEnd {
                    pid,
                    nr_threads: a,
                    nr_fds: b,
                    nr_vmas: c,
                    nr_pages: n,
                })
            } else {
                AnyRecord::ImageEnd(ImageEnd {
                    nr_processes: a,
                    nr_files: b,
                    nr_pipes: c,
                    nr_objects: a ^ d,
                    nr_shmems: d,
                    nr_shmem_pages: n,
                })
            }
        },
    )
}

/// A `Read` that hands out at most `step` bytes per call and fails every
/// fifth call with `Interrupted`, as pipes and signals do.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls == 5 {
            self.calls = 0;
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn check_roundtrip(head: &Head, items: &[Item]) -> Result<(), TestCaseError> {
    let img = build(head, items);
    prop_assert_eq!(img.len() % 8, 0);
    let mut rd = ImageReader::new(&img[..]);
    let mut seen = Vec::new();

    let r = rd.next_record().unwrap().expect("head record");
    prop_assert_eq!(r.offset, 0);
    prop_assert_eq!(r.decode_any().unwrap(), AnyRecord::Head(head.clone()));
    seen.push(format!("{r:?}"));

    for (i, it) in items.iter().enumerate() {
        let r = match rd.next_record() {
            Ok(Some(r)) => r,
            other => return Err(TestCaseError::fail(format!("item {i}: {other:?}"))),
        };
        prop_assert_eq!(r.offset % 8, 0, "item {} starts unaligned", i);
        match (it, &r.body) {
            (Item::Rec(want), Body::Meta(_)) => {
                prop_assert_eq!(&r.decode_any().unwrap(), want, "item {}", i);
            }
            (Item::Pages { addr, data }, Body::Pages { hdr, data_offset }) => {
                let want = PagesHdr {
                    addr: *addr,
                    nr_pages: (data.len() as u64 / PAGE_SIZE) as u32,
                    flags: 0,
                };
                prop_assert_eq!(*hdr, want);
                prop_assert_eq!(r.decode_any().unwrap(), AnyRecord::Pages(want));
                prop_assert_eq!(data_offset % PAGE_SIZE, 0);
                prop_assert_eq!(r.offset + r.len, data_offset + data.len() as u64);
                let at = *data_offset as usize;
                prop_assert!(
                    img[at..at + data.len()] == data[..],
                    "page data of item {}",
                    i
                );
            }
            _ => return Err(TestCaseError::fail(format!("item {i} read back as {r:?}"))),
        }
        seen.push(format!("{r:?}"));
    }

    let r = rd.next_record().unwrap().expect("tail record");
    prop_assert_eq!(r.offset as usize, img.len() - TAIL_LEN);
    prop_assert_eq!(r.offset + r.len, img.len() as u64);
    prop_assert_eq!(
        r.decode_any().unwrap(),
        AnyRecord::Tail(Tail {
            magic: TAIL_MAGIC,
            records: items.len() as u64 + 1,
            crc32c: crc32c::crc32c(&img[..r.offset as usize]),
            pad: 0,
        })
    );
    seen.push(format!("{r:?}"));
    prop_assert!(rd.next_record().unwrap().is_none());
    prop_assert!(rd.next_record().unwrap().is_none());

    // The same records come out of a stream that delivers a few bytes at a time.
    let mut rd = ImageReader::new(Trickle {
        data: &img,
        step: 7,
        calls: 0,
    });
    let mut again = Vec::new();
    while let Some(r) = rd.next_record().unwrap() {
        again.push(format!("{r:?}"));
    }
    prop_assert_eq!(seen, again);
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn written_images_read_back(head in head_strategy(), items in vec(item(), 0..24)) {
        check_roundtrip(&head, &items)?;
    }
}

#[test]
fn sample_image_reads_back() {
    let img = sample_image();
    let n = read_all(img).unwrap();
    let l = layout(img);
    assert_eq!(n, l.len());
    assert_eq!(l.first().unwrap().0, T_HEAD);
    assert_eq!(l.last().unwrap().0, T_TAIL);
    assert_eq!(l.iter().filter(|r| r.0 == T_PAGES).count(), 2);
}

#[test]
fn longest_text_is_accepted_and_one_more_byte_is_not() {
    let mut v = Vma {
        path: Text(vec![b'a'; codec::MAX_TEXT]),
        ..Default::default()
    };
    let items = [Item::Rec(AnyRecord::Vma(v.clone()))];
    let img = build(&head(), &items);
    let mut rd = ImageReader::new(&img[..]);
    rd.next_record().unwrap();
    let r = rd.next_record().unwrap().unwrap();
    assert_eq!(r.decode_any().unwrap(), AnyRecord::Vma(v.clone()));

    // The writer does not police text lengths; the reader's decoder does.
    v.path.0.push(b'a');
    let img = build(&head(), &[Item::Rec(AnyRecord::Vma(v))]);
    let mut rd = ImageReader::new(&img[..]);
    rd.next_record().unwrap();
    let r = rd.next_record().unwrap().unwrap();
    let e = r.decode_any().unwrap_err().to_string();
    assert!(e.contains("exceeds the limit"), "{e}");
}

// ---------------------------------------------------------------------------
// (b) Mutations

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn truncated_images_are_refused(cut in 0..sample_image().len()) {
        let r = read_bounded(&sample_image()[..cut]);
        if cut == 0 {
            prop_assert!(matches!(r, Err(ImageError::Empty)), "{:?}", r);
        } else {
            prop_assert!(matches!(r, Err(ImageError::Truncated { .. })), "{:?}", r);
        }
    }

    /// Up to 3 distinct flipped bits anywhere: CRC32C detects every error of
    /// at most 3 bits in a message of this size, including in page data, and
    /// the tail's own fields are checked individually.
    #[test]
    fn flipped_bits_are_refused(bits in btree_set(0..sample_image().len() * 8, 1..=3)) {
        let mut img = sample_image().to_vec();
        for b in &bits {
            img[b / 8] ^= 1 << (b % 8);
        }
        let r = read_bounded(&img);
        prop_assert!(r.is_err(), "flipping bits {:?} went unnoticed", bits);
    }

    /// 1..=4 consecutive bytes replaced by different values: a burst of at
    /// most 32 bits, which CRC32C always detects.
    #[test]
    fn overwritten_bytes_are_refused(
        pos in 0..sample_image().len(),
        xor in vec(1u8..=255, 1..=4),
    ) {
        let mut img = sample_image().to_vec();
        for (b, x) in img[pos..].iter_mut().zip(&xor) {
            *b ^= x;
        }
        let r = read_bounded(&img);
        prop_assert!(r.is_err(), "overwriting at {} went unnoticed", pos);
    }

    #[test]
    fn inserted_bytes_are_refused(
        pos in 0..=sample_image().len(),
        ins in vec(any::<u8>(), 1..=16),
    ) {
        let mut img = sample_image().to_vec();
        img.splice(pos..pos, ins.iter().copied());
        let r = read_bounded(&img);
        prop_assert!(r.is_err(), "inserting {:?} at {} went unnoticed", ins, pos);
    }

    /// Random writes of random bytes: no panic, no outsized allocation.
    #[test]
    fn scribbled_images_do_not_panic(
        writes in vec((0..sample_image().len(), any::<u8>()), 1..=8),
    ) {
        let mut img = sample_image().to_vec();
        for &(pos, v) in &writes {
            img[pos] = v;
        }
        let _ = read_bounded(&img);
    }
}

/// Offsets of a valid image that are not deep inside page data or the zero
/// padding before it: all metadata bytes, plus the first and last bytes of
/// each page and of each padding run.
fn metadata_offsets(img: &[u8]) -> Vec<usize> {
    let mut skip = Vec::new();
    for (rtype, off, len) in layout(img) {
        if rtype == T_PAGES {
            let (off, end) = (off as usize, (off + len) as usize);
            let data = align_up(off as u64 + HDR_LEN + PAGES_HDR_LEN, PAGE_SIZE) as usize;
            skip.push(off + 24 + 8..data - 8);
            for p in (data..end).step_by(PAGE_SIZE as usize) {
                skip.push(p + 2..p + PAGE_SIZE as usize - 2);
            }
        }
    }
    (0..img.len())
        .filter(|i| !skip.iter().any(|r| r.contains(i)))
        .collect()
}

#[test]
fn every_truncation_outside_page_data_is_refused() {
    let img = sample_image();
    for cut in metadata_offsets(img) {
        let r = read_bounded(&img[..cut]);
        assert!(
            matches!(
                r,
                Err(ImageError::Truncated { .. }) | Err(ImageError::Empty)
            ),
            "cut at {cut}: {r:?}"
        );
    }
}

#[test]
fn every_changed_byte_outside_page_data_is_refused() {
    let img = sample_image();
    for (i, at) in metadata_offsets(img).into_iter().enumerate() {
        let x = [0x01, 0x80, 0xff, 0x5a][i % 4];
        let mut m = img.to_vec();
        m[at] ^= x;
        let r = read_bounded(&m);
        assert!(r.is_err(), "byte {at} ^ {x:#x} went unnoticed");
    }
}

#[test]
fn every_bit_flip_in_head_and_tail_is_refused() {
    let img = sample_image();
    let l = layout(img);
    let head = 0..l[0].2 as usize;
    let tail = img.len() - TAIL_LEN..img.len();
    for byte in head.chain(tail) {
        for bit in 0..8 {
            let mut m = img.to_vec();
            m[byte] ^= 1 << bit;
            let r = read_bounded(&m);
            assert!(
                r.is_err(),
                "flipping bit {bit} of byte {byte} went unnoticed"
            );
        }
    }
}

#[test]
fn page_data_corruption_is_a_checksum_error() {
    let img = sample_image();
    let mut rd = ImageReader::new(img);
    let mut offsets = Vec::new();
    while let Some(r) = rd.next_record().unwrap() {
        if let Body::Pages { data_offset, hdr } = r.body {
            offsets.push(data_offset);
            offsets.push(data_offset + hdr.nr_pages as u64 * PAGE_SIZE - 1);
        }
    }
    assert_eq!(offsets.len(), 4);
    for at in offsets {
        let mut m = img.to_vec();
        m[at as usize] ^= 0x10;
        let r = read_bounded(&m);
        assert!(matches!(r, Err(ImageError::Checksum { .. })), "{r:?}");
    }
}

#[test]
fn tail_fields_are_all_checked() {
    let img = sample_image();
    let t = img.len() - TAIL_LEN;
    // magic, record count, checksum, padding
    for (field, what) in [
        (t + 8, "bad tail magic"),
        (t + 16, "tail counts"),
        (t + 24, "checksum mismatch"),
        (t + 28, "tail padding"),
    ] {
        let mut m = img.to_vec();
        m[field] ^= 1;
        let e = read_bounded(&m).unwrap_err().to_string();
        assert!(e.contains(what), "byte {field}: {e}");
    }
}

/// Every record's `len`, and a page record's page count, set to hostile
/// values: each is an error found before any buffer of that size exists.
#[test]
fn hostile_lengths_are_refused_without_allocating() {
    let img = sample_image();
    let small = 1 << 20;
    for &(rtype, off, len) in &layout(img) {
        let mut bad = vec![
            0,
            1,
            7,
            len as u32 + 8,
            0x8000_0000,
            (MAX_RECORD + HDR_LEN + 1) as u32,
            u32::MAX,
        ];
        if len > 8 {
            bad.push(len as u32 - 8);
        }
        for v in bad {
            let mut m = img.to_vec();
            put_u32(&mut m, off + 4, v);
            let (r, peak) = peak_alloc(|| read_all(&m));
            assert!(
                r.is_err(),
                "{} record len {v:#x} accepted",
                type_name(rtype)
            );
            assert!(
                peak < small,
                "{} record len {v:#x}: {peak}-byte allocation",
                type_name(rtype)
            );
            if v == u32::MAX {
                let e = r.unwrap_err().to_string();
                let want = if rtype == T_PAGES {
                    "does not match"
                } else {
                    "exceeds the limit"
                };
                assert!(e.contains(want), "{} record: {e}", type_name(rtype));
            }
        }
        if rtype == T_PAGES {
            let nr_pages = off + HDR_LEN + 8;
            for v in [0, MAX_PAGES_PER_RECORD as u32 + 1, u32::MAX] {
                let mut m = img.to_vec();
                put_u32(&mut m, nr_pages, v);
                let (r, peak) = peak_alloc(|| read_all(&m));
                let e = r.unwrap_err().to_string();
                assert!(e.contains("pages in one record"), "nr_pages {v:#x}: {e}");
                assert!(peak < small, "nr_pages {v:#x}: {peak}-byte allocation");
            }
        }
    }
}

/// A 4 GiB length with endless data behind it is refused on sight: the reader
/// neither allocates nor reads that much.
#[test]
fn huge_length_with_endless_input_is_refused() {
    let img = sample_image();
    let l = layout(img);
    let second = l[1].1 as usize;
    let mut prefix = img[..second + 8].to_vec();
    put_u32(&mut prefix, second as u64 + 4, u32::MAX);
    let (r, peak) = peak_alloc(|| {
        let mut rd = ImageReader::new(io::Read::chain(&prefix[..], io::repeat(0)));
        rd.next_record().unwrap();
        let r = rd.next_record();
        (r.map(|_| ()), rd.offset())
    });
    let (r, offset) = r;
    assert!(matches!(r, Err(ImageError::Corrupt { .. })), "{r:?}");
    assert_eq!(offset, second as u64 + 8);
    assert!(peak < 1 << 20, "{peak}-byte allocation");
}

// ---------------------------------------------------------------------------
// (c) Refusals

#[test]
fn empty_input_is_empty() {
    let r = ImageReader::new(&[][..]).next_record();
    assert!(matches!(r, Err(ImageError::Empty)), "{r:?}");
    let r = ImageReader::new(io::empty()).next_record();
    assert!(matches!(r, Err(ImageError::Empty)), "{r:?}");
}

#[test]
fn other_files_are_not_images() {
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(64, 0);
    let cases: [&[u8]; 4] = [
        &elf,
        b"#!/bin/sh\necho hello\n",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
        &[0u8; 4096],
    ];
    for c in cases {
        let r = ImageReader::new(c).next_record();
        assert!(matches!(r, Err(ImageError::NotAnImage(_))), "{r:?}");
    }
}

#[test]
fn head_with_bad_magic_is_not_an_image() {
    let h = Head {
        magic: HEAD_MAGIC ^ 1,
        ..head()
    };
    let img = build(&h, &[]);
    let r = ImageReader::new(&img[..]).next_record();
    assert!(matches!(r, Err(ImageError::NotAnImage(_))), "{r:?}");
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn garbage_is_not_an_image(mut g in vec(any::<u8>(), 8..512)) {
        if g[..4] == T_HEAD.to_le_bytes() {
            g[0] = 0;
        }
        let r = read_bounded(&g);
        prop_assert!(matches!(r, Err(ImageError::NotAnImage(_))), "{:?}", r);
    }

    #[test]
    fn garbage_after_a_head_is_refused(g in vec(any::<u8>(), 0..512)) {
        let mut img = build(&head(), &[]);
        img.truncate(img.len() - TAIL_LEN);
        img.extend_from_slice(&g);
        prop_assert!(read_bounded(&img).is_err());
    }
}

#[test]
fn error_record_stops_the_reader_with_its_message() {
    let msg = "cannot seize pid 42: Operation not permitted";
    let mut w = ImageWriter::new(Vec::new());
    w.write(&head()).unwrap();
    w.write(&Process {
        pid: 42,
        ..Default::default()
    })
    .unwrap();
    let err_off = w.offset();
    w.write_error(msg).unwrap();
    // A checkpoint that failed may or may not have closed the image.
    let unfinished = w.get_ref().clone();
    let finished = w.finish().unwrap();
    for img in [unfinished, finished] {
        let mut rd = ImageReader::new(&img[..]);
        assert!(rd.next_record().unwrap().is_some());
        assert!(rd.next_record().unwrap().is_some());
        match rd.next_record() {
            Err(ImageError::ErrorRecord { offset, message }) => {
                assert_eq!(offset, err_off);
                assert_eq!(message, msg);
            }
            r => panic!("{r:?}"),
        }
    }
}

#[test]
fn error_message_is_cleaned_and_bounded() {
    let long = "x\0y".repeat(3000);
    let mut w = ImageWriter::new(Vec::new());
    w.write(&head()).unwrap();
    w.write_error(&long).unwrap();
    let img = w.finish().unwrap();
    match read_all(&img) {
        Err(ImageError::ErrorRecord { offset, message }) => {
            assert!(offset > 0);
            assert_eq!(message.len(), codec::MAX_TEXT);
            assert!(message.bytes().all(|b| b == b'x' || b == b'y'));
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn data_after_the_tail_is_refused() {
    let img = sample_image();
    for extra in [&[0u8][..], &[0u8; 8], img] {
        let mut m = img.to_vec();
        m.extend_from_slice(extra);
        let e = read_bounded(&m).unwrap_err();
        assert!(
            matches!(&e, ImageError::Corrupt { what, .. } if what.contains("data follows the tail")),
            "{e:?}"
        );
    }
}

#[test]
fn other_revisions_are_refused() {
    for rev in [0, FORMAT_REVISION + 1, u32::MAX] {
        let h = Head {
            revision: rev,
            ..head()
        };
        let img = build(&h, &[]);
        let r = read_all(&img);
        assert!(
            matches!(r, Err(ImageError::Revision { found }) if found == rev),
            "{r:?}"
        );
    }
}

#[test]
fn other_page_sizes_are_refused() {
    let h = Head {
        page_size: 16384,
        ..head()
    };
    let e = read_all(&build(&h, &[])).unwrap_err().to_string();
    assert!(e.contains("page size 16384"), "{e}");
}

#[test]
fn a_second_head_is_refused() {
    let img = build(&head(), &[Item::Rec(AnyRecord::Head(head()))]);
    let e = read_all(&img).unwrap_err().to_string();
    assert!(e.contains("second head"), "{e}");
}

#[test]
fn the_reader_stays_done_after_the_tail() {
    let img = build(&head(), &[]);
    let mut rd = ImageReader::new(&img[..]);
    assert_eq!(rd.next_record().unwrap().unwrap().rtype, T_HEAD);
    assert_eq!(rd.next_record().unwrap().unwrap().rtype, T_TAIL);
    for _ in 0..3 {
        assert!(rd.next_record().unwrap().is_none());
    }
    assert_eq!(rd.offset(), img.len() as u64);
}

/// Page data placed in the stream by someone else (as a checkpointed task
/// writing its own pages does) reads back like `write_pages` data, with a
/// valid checksum.
#[test]
fn external_page_data_round_trips() {
    let mut w = ImageWriter::new(io::Cursor::new(Vec::new()));
    w.write(&Head {
        magic: HEAD_MAGIC,
        revision: FORMAT_REVISION,
        page_size: 4096,
        ..Default::default()
    })
    .unwrap();
    let data: Vec<u8> = (0..3 * 4096).map(|i| (i * 7 % 251) as u8).collect();
    let off = w.begin_external_pages(0x7000, 3, 0).unwrap();
    assert_eq!(off % 4096, 0);
    {
        let c = w.get_mut();
        let v = c.get_mut();
        v.resize(off as usize, 0);
        v.extend_from_slice(&data);
        c.set_position(off + data.len() as u64);
    }
    w.end_external_pages(data.len() as u64, crc32c::crc32c(&data));
    let img = w.finish().unwrap().into_inner();
    let mut rd = ImageReader::new(&img[..]);
    let mut pages = Vec::new();
    while let Some(r) = rd.next_record().unwrap() {
        if let Body::Pages { hdr, data_offset } = r.body {
            pages.push((hdr.addr, hdr.nr_pages, data_offset));
        }
    }
    assert_eq!(pages, vec![(0x7000, 3, off)]);
    assert_eq!(&img[off as usize..off as usize + data.len()], &data[..]);
}
