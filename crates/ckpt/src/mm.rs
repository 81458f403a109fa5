//! The address space: mappings, page contents, mm fields. Checkpoint reads
//! /proc maps + pagemap and saves only pages that exist and are not clean
//! copies of a file; restore rebuilds every mapping from outside with
//! injected syscalls and has the task read its pages straight from the image.

use crate::checkpoint::Sink;
use crate::error::{Ctx, Error, Result};
use crate::model::{ProcessImage, ShmemImage};
use crate::procfs::{self, MapEntry, PM_FILE, PM_PRESENT, PM_SWAP};
use crate::remote::{Call, Remote};
use crate::sys::Pid;
use crate::task::Scratch;
use ckpt_image::*;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;
/// Pages read from the task per chunk when saving memory.
const CHUNK_PAGES: u64 = 1024;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

fn strip_deleted(p: &[u8]) -> (&[u8], bool) {
    match p.strip_suffix(b" (deleted)") {
        Some(s) => (s, true),
        None => (p, false),
    }
}

/// Largest amount of data (holes not counted) of an unlinked file that is
/// copied into an image.
pub const MAX_GHOST_DATA: u64 = 64 << 20;

/// One shared memory object being saved.
pub struct ShmObj {
    pub dev: u64,
    pub ino: u64,
    pub shmem: Shmem,
    /// A /proc path that opens it (a map_files or fd link).
    pub source: String,
    pub attrs: ShmemAttrs,
}

/// Shared memory objects (shared anonymous regions, memfds) and unlinked
/// files of a whole tree, by (dev, ino), with a place to read each one's
/// content from.
#[derive(Default)]
pub struct ShmemTable {
    pub objs: Vec<ShmObj>,
    ids: crate::ids::IdSpace,
}

fn stat_source(source: &str) -> Result<std::fs::Metadata> {
    std::fs::metadata(source).map_err(|e| Error::Sys {
        pid: 0,
        what: format!("stat {source}"),
        source: e,
    })
}

/// Bytes of data (holes not counted) in the first `size` bytes of `f`.
fn data_bytes(f: &std::fs::File, size: u64) -> u64 {
    let (mut off, mut n) = (0, 0);
    while let Some((a, b)) = crate::sys::next_data(f, off, size) {
        n += b - a;
        off = b;
    }
    n
}

impl ShmemTable {
    /// An empty table drawing object ids from `ids`.
    pub fn new(ids: crate::ids::IdSpace) -> ShmemTable {
        ShmemTable {
            objs: Vec::new(),
            ids,
        }
    }

    /// The id of the object (dev, ino), adding it if new. `source` is a
    /// /proc path that opens it (a map_files or fd link).
    pub fn id(
        &mut self,
        dev: u64,
        ino: u64,
        kind: u32,
        name: &[u8],
        source: String,
    ) -> Result<u32> {
        if let Some(o) = self.objs.iter().find(|o| o.dev == dev && o.ino == ino) {
            return Ok(o.shmem.id);
        }
        let meta = stat_source(&source)?;
        let id = self.ids.next().0;
        use std::os::unix::fs::MetadataExt;
        let seals = std::fs::File::open(&source)
            .ok()
            .and_then(|f| crate::sys::get_seals(&f).ok())
            .unwrap_or(0);
        let attrs = ShmemAttrs {
            id,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            seals,
            atime_sec: meta.atime(),
            atime_nsec: meta.atime_nsec() as u32,
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
        };
        self.objs.push(ShmObj {
            dev,
            ino,
            shmem: Shmem {
                id,
                kind,
                size: meta.len(),
                name: crate::task::text(name),
            },
            source,
            attrs,
        });
        Ok(id)
    }

    /// The id of the unlinked ("ghost") regular file (dev, ino) that had
    /// `path`, opened through `source`, adding it if new. Refuses files
    /// that are not regular or hold more data than an image takes.
    pub fn ghost(
        &mut self,
        unsupported: &dyn Fn(&str) -> Error,
        dev: u64,
        ino: u64,
        path: &[u8],
        source: String,
    ) -> Result<u32> {
        if let Some(o) = self.objs.iter().find(|o| o.dev == dev && o.ino == ino) {
            return Ok(o.shmem.id);
        }
        let meta = stat_source(&source)?;
        if !meta.is_file() {
            return Err(unsupported("an unlinked file that is not a regular file"));
        }
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() > 0 {
            // A copy would no longer be the file its other names reach.
            return Err(unsupported(&format!(
                "the file was unlinked from this name but still has {} other link(s); ckpt cannot find them to reopen it",
                meta.nlink()
            )));
        }
        let f = std::fs::File::open(&source).map_err(|e| Error::Sys {
            pid: 0,
            what: format!("open {source}"),
            source: e,
        })?;
        let data = data_bytes(&f, meta.len());
        if data > MAX_GHOST_DATA {
            return Err(unsupported(&format!(
                "unlinked file holds {data} bytes of data, more than the {} MiB ckpt copies into an image",
                MAX_GHOST_DATA >> 20
            )));
        }
        self.id(dev, ino, SHMEM_GHOST, path, source)
    }

    /// The page plans of each object: its ranges that hold data (holes
    /// are found with SEEK_DATA/SEEK_HOLE), in pieces of at most
    /// `BATCH_BUF`, one run per plan.
    pub fn plan(&self) -> Result<Vec<Vec<(u64, u64)>>> {
        let mut out = Vec::with_capacity(self.objs.len());
        for o in &self.objs {
            let (shm, source) = (&o.shmem, &o.source);
            let f = open_source(source)?;
            let mut pieces = Vec::new();
            let mut off = 0u64;
            let size = crate::align_up(shm.size);
            while off < size {
                let Some((start, end)) = crate::sys::next_data(&f, off, shm.size) else {
                    break;
                };
                let mut a = start & !(PAGE - 1);
                let end = crate::align_up(end).min(size);
                while a < end {
                    let n = (end - a).min(BATCH_BUF);
                    pieces.push((a, n));
                    a += n;
                }
                off = end;
            }
            out.push(pieces);
        }
        Ok(out)
    }

    /// Writes each object's records and its page plans (`plans`, from
    /// `plan`); returns its pages.
    pub fn write_meta<W: Write>(
        &self,
        w: &mut ImageWriter<W>,
        plans: &[Vec<(u64, u64)>],
    ) -> Result<u64> {
        let mut pages = 0;
        for (o, pieces) in self.objs.iter().zip(plans) {
            w.write(&o.shmem).map_err(Error::Write)?;
            w.write(&o.attrs).map_err(Error::Write)?;
            for &(addr, len) in pieces {
                let runs = vec![IndexedRun {
                    addr,
                    nr_pages: (len / PAGE) as u32,
                }];
                w.write(&PagePlan { flags: 0, runs })
                    .map_err(Error::Write)?;
                pages += len / PAGE;
            }
        }
        Ok(pages)
    }

    /// Writes the page records of each object's plans.
    pub fn write_pages<S: Sink>(
        &self,
        w: &mut ImageWriter<S>,
        plans: &[Vec<(u64, u64)>],
        compression: Compression,
    ) -> Result<()> {
        for (o, pieces) in self.objs.iter().zip(plans) {
            let (shm, source) = (&o.shmem, &o.source);
            let f = open_source(source)?;
            for &(a, n) in pieces {
                let mut buf = vec![0u8; n as usize];
                // The last page may extend past the end of the file: it
                // reads as zeros there.
                let avail = shm.size.saturating_sub(a).min(n) as usize;
                f.read_exact_at(&mut buf[..avail], a)
                    .map_err(|e| Error::Sys {
                        pid: 0,
                        what: format!("read {source}"),
                        source: e,
                    })?;
                if compression == Compression::None {
                    w.write_pages_flags(a, &buf, PAGES_SHMEM)
                } else {
                    w.write(&PagesZ {
                        addr: a,
                        nr_pages: (n / PAGE) as u32,
                        flags: PAGES_SHMEM,
                        data: Bytes(compression.compress(&buf)),
                    })
                }
                .map_err(Error::Write)?;
            }
        }
        Ok(())
    }
}

/// A shared memory object's data, opened through its source path.
fn open_source(source: &str) -> Result<std::fs::File> {
    std::fs::File::open(source).map_err(|e| Error::Sys {
        pid: 0,
        what: format!("open {source}"),
        source: e,
    })
}

/// smaps VmFlags kept as `VMAF_*` flags; each comes back by mmap flags or
/// madvise.
const VMFLAGS: &[(&[u8; 2], u32)] = &[
    (b"gd", VMAF_GROWSDOWN),
    (b"dc", VMAF_DONTFORK),
    (b"lo", VMAF_LOCKED),
    (b"nr", VMAF_NORESERVE),
    (b"dp", VMAF_DROPPABLE),
    (b"sr", VMAF_SEQUENTIAL),
    (b"rr", VMAF_RANDOM),
    (b"dd", VMAF_DONTDUMP),
    (b"mg", VMAF_MERGEABLE),
    (b"hg", VMAF_HUGEPAGE),
    (b"nh", VMAF_NOHUGEPAGE),
    (b"wf", VMAF_WIPEONFORK),
];

/// The madvise advice that sets each `VMAF_*` advice flag again.
const ADVICE: &[(u32, i32, &str)] = &[
    (VMAF_DONTFORK, libc::MADV_DONTFORK, "MADV_DONTFORK"),
    (VMAF_SEQUENTIAL, libc::MADV_SEQUENTIAL, "MADV_SEQUENTIAL"),
    (VMAF_RANDOM, libc::MADV_RANDOM, "MADV_RANDOM"),
    (VMAF_DONTDUMP, libc::MADV_DONTDUMP, "MADV_DONTDUMP"),
    (VMAF_MERGEABLE, libc::MADV_MERGEABLE, "MADV_MERGEABLE"),
    (VMAF_HUGEPAGE, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"),
    (VMAF_NOHUGEPAGE, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"),
    (VMAF_WIPEONFORK, libc::MADV_WIPEONFORK, "MADV_WIPEONFORK"),
];

/// mmap's MAP_DROPPABLE (Linux 6.11; not in every libc yet).
const MAP_DROPPABLE: u64 = 0x08;

/// Classifies one mapping; errors for mappings not supported yet.
pub fn vma_of(pid: Pid, comm: &str, m: &MapEntry, shm: &mut ShmemTable) -> Result<Vma> {
    let (path, deleted) = strip_deleted(&m.path);
    let unsupported = |reason: &str| Error::Unsupported {
        pid,
        comm: comm.into(),
        object: format!(
            "mapping {:#x}-{:#x} ({})",
            m.start,
            m.end,
            ckpt_image::escape(&m.path)
        ),
        reason: reason.into(),
    };
    if m.has_flag(b"ht") {
        return Err(unsupported("hugetlb mappings are not supported yet"));
    }
    let map_files = || format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let mut obj = 0;
    let kind = match path {
        b"[vdso]" => VMA_VDSO,
        b"[vvar]" => VMA_VVAR,
        b"[vvar_vclock]" => VMA_VVAR_VCLOCK,
        b"[vsyscall]" => VMA_VSYSCALL,
        b"[heap]" => VMA_HEAP,
        b"[stack]" => VMA_STACK,
        p if p.starts_with(b"/SYSV") => {
            return Err(unsupported(
                "SysV shared memory segments are not supported yet",
            ))
        }
        // Shared anonymous memory and memfds, mapped shared or private (a
        // private mapping of such an object sees the object's pages until
        // it writes its own copy).
        p if (p.starts_with(b"/dev/zero") && (m.shared || deleted))
            || p.starts_with(b"/memfd:")
            || (p.starts_with(b"[anon_shmem")) =>
        {
            let k = if p.starts_with(b"/memfd:") {
                SHMEM_MEMFD
            } else {
                SHMEM_ANON
            };
            // A memfd keeps its name (memfd_create adds "memfd:" again).
            let name = p.strip_prefix(b"/memfd:").unwrap_or(p);
            obj = shm.id(m.dev, m.ino, k, name, map_files())?;
            VMA_SHMEM
        }
        p if p.starts_with(b"[anon:") || p.is_empty() => VMA_ANON,
        // An unlinked file: its content is saved once as a ghost object,
        // which the mapping maps again (so pages never touched, and writes
        // through other mappings or fds, stay shared with it).
        p if p.starts_with(b"/") && m.ino != 0 && deleted => {
            obj = shm.ghost(&unsupported, m.dev, m.ino, p, map_files())?;
            VMA_FILE
        }
        p if p.starts_with(b"/") && m.ino != 0 => VMA_FILE,
        _ => {
            return Err(unsupported(
                "unknown special mappings are not supported yet",
            ))
        }
    };
    let mut flags = 0;
    if m.shared {
        flags |= VMAF_SHARED;
        if m.has_flag(b"mw") {
            flags |= VMAF_MAYWRITE;
        }
    }
    for (f, bit) in VMFLAGS {
        if m.has_flag(f) {
            flags |= bit;
        }
    }
    if deleted && kind == VMA_FILE {
        flags |= VMAF_DELETED;
    }
    let prot = (m.read as u32 * libc::PROT_READ as u32)
        | (m.write as u32 * libc::PROT_WRITE as u32)
        | (m.exec as u32 * libc::PROT_EXEC as u32);
    Ok(Vma {
        start: m.start,
        end: m.end,
        prot,
        flags,
        kind,
        pgoff: m.offset,
        dev: m.dev,
        ino: m.ino,
        path: crate::task::text(path),
        obj,
    })
}

/// Whether the mapping's content comes from an object or file (so only
/// its copied-on-write pages are saved), rather than all from the image.
fn backed(v: &Vma) -> bool {
    match v.kind {
        VMA_SHMEM => true,
        VMA_FILE => v.flags & VMAF_DELETED == 0 || v.obj != 0,
        _ => false,
    }
}

/// Whether a page of a private, non-special mapping must be saved, from
/// its pagemap entry.
fn page_needed(v: &Vma, pm: u64) -> bool {
    if pm & (PM_PRESENT | PM_SWAP) == 0 {
        return false;
    }
    // A private file (or memfd) mapping: only copied-on-write pages are
    // anonymous; the rest are the file's pages and come back from it.
    !backed(v) || pm & PM_FILE == 0
}

/// Private mappings whose (anonymous) pages a child may share with its
/// parent and get back shared through fork: anonymous ones, and private
/// mappings of a file still there (their copied-on-write pages). Not
/// locked ones (mlock would break the sharing at once), nor those fork
/// does not copy as they are.
fn cow_eligible(v: &Vma) -> bool {
    let file = v.kind == VMA_FILE && v.flags & VMAF_DELETED == 0 && v.obj == 0;
    (matches!(v.kind, VMA_ANON | VMA_HEAP) || file)
        && v.flags
            & (VMAF_SHARED
                | VMAF_GROWSDOWN
                | VMAF_DONTFORK
                | VMAF_WIPEONFORK
                | VMAF_LOCKED
                | VMAF_DROPPABLE)
            == 0
}

/// The pages of `child` that are still its parent's very pages at the same
/// address (same page frame in both pagemaps), in mappings both have with
/// the same bounds. Needs root for page frame numbers; without them it
/// finds none.
pub fn cow_shared(
    child: Pid,
    cvmas: &[Vma],
    parent: Pid,
    pvmas: &[Vma],
    zero_pfn: Option<u64>,
) -> Result<Vec<CowShared>> {
    let open = |pid: Pid| {
        std::fs::File::open(format!("/proc/{pid}/pagemap")).ctx(pid, || "open pagemap".into())
    };
    let (cpm, ppm) = (open(child)?, open(parent)?);
    let mut out: Vec<CowShared> = Vec::new();
    for v in cvmas.iter().filter(|v| cow_eligible(v)) {
        if !pvmas.iter().any(|p| same_mapping(p, v) && cow_eligible(p)) {
            continue;
        }
        // In a file mapping only anonymous pages are shared copy-on-write;
        // the file's own pages come back from the page cache anyway.
        let file = v.kind == VMA_FILE;
        let mut addr = v.start;
        while addr < v.end {
            let end = (addr + CHUNK_PAGES * PAGE).min(v.end);
            let c = procfs::pagemap(&cpm, addr, end).ctx(child, || "read pagemap".into())?;
            let p = procfs::pagemap(&ppm, addr, end).ctx(parent, || "read pagemap".into())?;
            for (i, (&c, &p)) in c.iter().zip(&p).enumerate() {
                let pfn = c & PFN_MASK;
                let same = c & PM_PRESENT != 0
                    && p & PM_PRESENT != 0
                    && !(file && (c | p) & PM_FILE != 0)
                    && pfn != 0
                    && pfn == p & PFN_MASK
                    && zero_pfn != Some(pfn);
                if !same {
                    continue;
                }
                let a = addr + i as u64 * PAGE;
                match out.last_mut() {
                    Some(r) if r.addr + r.nr_pages * PAGE == a => r.nr_pages += 1,
                    _ => out.push(CowShared {
                        addr: a,
                        nr_pages: 1,
                    }),
                }
            }
            addr = end;
        }
    }
    Ok(out)
}

/// Whether `a` and `b` (of a parent and a child) are the same mapping as
/// fork copied it: same bounds, and for a file the same file and offset.
fn same_mapping(a: &Vma, b: &Vma) -> bool {
    a.start == b.start
        && a.end == b.end
        && a.kind == b.kind
        && (a.kind != VMA_FILE || (a.path == b.path && a.pgoff == b.pgoff))
}

/// Finds, for every live process whose parent is in the tree, the pages it
/// still shares with that parent (see `cow_shared`).
pub fn find_cow(images: &mut [ProcessImage], zero_pfn: Option<u64>) -> Result<()> {
    for i in 0..images.len() {
        if images[i].is_zombie() {
            continue;
        }
        let ppid = images[i].process.ppid;
        let Some(j) = images
            .iter()
            .position(|q| q.pid() == ppid && !q.is_zombie() && q.pid() != images[i].pid())
        else {
            continue;
        };
        let cow = cow_shared(
            images[i].pid(),
            &images[i].vmas,
            ppid,
            &images[j].vmas,
            zero_pfn,
        )?;
        images[i].cow = cow;
    }
    Ok(())
}

/// Runs in restored process `p` before it forks its children: maps and
/// fills, at their addresses, its private anonymous mappings whose pages a
/// child shares, so that the children inherit them through fork and share
/// them again. Best effort: a mapping that collides with the restorer's own
/// memory, or any failure, leaves that mapping to the usual restore (its
/// pages are in every process's own page data too).
pub fn premap_cow(processes: &[ProcessImage], p: &ProcessImage, img_fd: i32) -> Vec<u64> {
    let mut done_maps = Vec::new();
    for v in premap_candidates(processes, p) {
        let len = v.end - v.start;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mapped = if v.kind == VMA_FILE {
            // Privately, so the pages written below are copies of the
            // file's, as they were; the rest reads through to the file.
            crate::sys::open_raw(&v.path.0, libc::O_RDONLY | libc::O_CLOEXEC, 0).and_then(|fd| {
                let m = crate::sys::mmap_file_private(v.start, len as usize, rw, fd, v.pgoff);
                crate::sys::close(fd);
                m
            })
        } else {
            crate::sys::mmap_anon(v.start, len as usize, rw)
        };
        let Ok(a) = mapped else {
            continue;
        };
        let filled = (|| -> std::io::Result<()> {
            for run in p
                .pages
                .iter()
                .filter(|r| v.start <= r.addr && r.addr < v.end)
            {
                let total = run.nr_pages * PAGE;
                let mut done = 0;
                while done < total {
                    let n = crate::sys::pread_own(
                        img_fd,
                        run.addr + done,
                        (total - done) as usize,
                        run.data_offset + done,
                    )?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    done += n as u64;
                }
            }
            Ok(())
        })();
        if filled.is_ok() {
            done_maps.push(a);
        } else {
            crate::sys::munmap(a, len as usize);
        }
    }
    done_maps
}

/// The mappings of `p` that restart premaps before forking its children
/// (`premap_cow`): private ones a child shares pages of copy-on-write, at
/// most 128 (they are reported on one status line, which must stay one
/// atomic pipe write). Checkpoint puts their pages first (`PLAN_EARLY`).
pub fn premap_candidates<'a>(processes: &[ProcessImage], p: &'a ProcessImage) -> Vec<&'a Vma> {
    const MAX_PREMAPS: usize = 128;
    let kids: Vec<&ProcessImage> = processes
        .iter()
        .filter(|c| c.process.ppid == p.pid() && c.pid() != p.pid() && !c.is_zombie())
        .collect();
    if kids.is_empty() {
        return Vec::new();
    }
    p.vmas
        .iter()
        .filter(|v| {
            cow_eligible(v)
                && kids.iter().any(|c| {
                    c.vmas.iter().any(|cv| same_mapping(cv, v))
                        && c.cow.iter().any(|r| {
                            overlaps((r.addr, r.addr + r.nr_pages * PAGE), (v.start, v.end))
                        })
                })
        })
        .take(MAX_PREMAPS)
        .collect()
}

/// Subtracts `holes` from the ranges `runs` (both as (start, end)).
fn subtract(runs: &[(u64, u64)], holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut a, b) in runs {
        let mut hs: Vec<&(u64, u64)> = holes.iter().filter(|h| overlaps(**h, (a, b))).collect();
        hs.sort();
        for h in hs {
            if h.0 > a {
                out.push((a, h.0.min(b)));
            }
            a = a.max(h.1);
            if a >= b {
                break;
            }
        }
        if a < b {
            out.push((a, b));
        }
    }
    out
}

/// Saved page statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PageStats {
    pub pages: u64,
    pub zero_skipped: u64,
}

/// One copy per page: the frozen task itself writes its pages into the
/// image file (an fd it opened on ckpt's image through /proc), straight
/// from its memory to the page cache, many runs per injected `pwritev`;
/// ckpt only writes the record headers and checksums the data through a
/// read-only mapping of the file.
pub struct Direct<'a> {
    pub remote: &'a mut Remote,
    /// Scratch memory in the task, for the iovecs.
    pub scratch: Scratch<'a>,
    /// The image, as an fd number in the task.
    pub tracee_fd: u64,
    /// The image, as an fd of ours (opened read-write, for the checksum).
    pub image_fd: i32,
    /// (start, end) of memory the kernel writes while the task runs its
    /// injected calls: each thread's rseq area (cpu_id, mm_cid...).
    pub kernel_written: Vec<(u64, u64)>,
}

const PFN_MASK: u64 = (1 << 55) - 1;
/// Runs of one indexed page record (its index stays a small record).
const BATCH_RUNS: usize = 4096;
/// iovecs per injected `pwritev`/`preadv`: what the scratch data page holds.
const IOVS_PER_CALL: usize = 256;
/// Bytes of a batch the task writes: small enough that ckpt checksums one
/// while the task writes the next, big enough for few calls.
const TASK_BATCH: u64 = 64 << 20;
/// Bytes ckpt buffers for a batch it reads itself (not written by the task).
const BATCH_BUF: u64 = 16 << 20;

/// The runs of one page plan (one record of the page section) and who
/// writes them: the task (`Direct`) or ckpt.
#[derive(Default, Debug, Clone)]
pub struct Batch {
    pub runs: Vec<(u64, u64)>,
    pub pages: u64,
    pub by_task: bool,
    /// Read by restart before any process is rebuilt (`PLAN_EARLY`).
    pub early: bool,
    /// Start of the mapping the last run is in.
    vma: u64,
}

impl Batch {
    /// Whether a run of `len` bytes, written the `by_task` way, fits.
    fn fits(&self, len: u64, by_task: bool, early: bool) -> bool {
        self.runs.is_empty()
            || (self.by_task == by_task
                && self.early == early
                && self.runs.len() < BATCH_RUNS
                && self.pages + len / PAGE <= MAX_PAGES_PER_RECORD
                && (self.pages * PAGE) + len <= if by_task { TASK_BATCH } else { BATCH_BUF })
    }

    /// Adds a run of mapping `vma` (runs of two mappings stay apart even
    /// when adjacent: restart checks each lies inside one).
    fn push(&mut self, vma: u64, addr: u64, len: u64, by_task: bool, early: bool) {
        self.by_task = by_task;
        self.early = early;
        match self.runs.last_mut() {
            Some(r) if r.0 + r.1 == addr && self.vma == vma => r.1 += len,
            _ => self.runs.push((addr, len)),
        }
        self.vma = vma;
        self.pages += len / PAGE;
    }

    /// The plan record announcing this batch.
    pub fn plan(&self) -> PagePlan {
        PagePlan {
            flags: if self.early { PLAN_EARLY } else { 0 },
            runs: self
                .runs
                .iter()
                .map(|&(addr, len)| IndexedRun {
                    addr,
                    nr_pages: (len / PAGE) as u32,
                })
                .collect(),
        }
    }
}

/// Address ranges (start, end), sorted.
pub type Ranges = Vec<(u64, u64)>;

/// How the pages of a process will be written, decided before any is.
pub struct PagePolicy<'a> {
    /// The task may write readable mappings' pages itself (the image is a
    /// file it can write to).
    pub by_task: bool,
    /// PFN of the zero page: present pages that map it hold only zeros.
    pub zero_pfn: Option<u64>,
    /// Mappings whose pages go first (`premap_candidates`).
    pub early: &'a [&'a Vma],
}

/// Plans the pages of every mapping that must be saved, in batches of one
/// page record each; nothing is written. Anonymous pages that hold only
/// zeros are skipped (a fresh mapping reads as zeros anyway): by the zero
/// page's frame number when it is known, else by content.
pub fn plan_pages(
    p: &ProcessImage,
    present: &[(u64, u64)],
    policy: &PagePolicy,
) -> Result<(Vec<Batch>, PageStats)> {
    let (pid, vmas) = (p.pid(), &p.vmas);
    let pm =
        std::fs::File::open(format!("/proc/{pid}/pagemap")).ctx(pid, || "open pagemap".into())?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ctx(pid, || "open mem".into())?;
    let mut stats = PageStats::default();
    let mut buf = Vec::new();
    let mut batches = Vec::new();
    let mut batch = Batch::default();
    // Mappings with no resident or swapped page (huge PROT_NONE
    // reservations, untouched heaps) are not scanned at all: `present`,
    // sorted, are the ranges smaps gave resident or swapped pages when the
    // mappings were read (the process is frozen since).
    let has_pages = |v: &Vma| {
        let i = present.partition_point(|&(_, end)| end <= v.start);
        present.get(i).is_some_and(|&(start, _)| start < v.end)
    };
    // (In pieces of at most BATCH_BUF, so no run is more than a batch.)
    let mut add = |batch: &mut Batch, v: &Vma, a: u64, len: u64, by_task: bool, early: bool| {
        let mut at = a;
        while at < a + len {
            let l = (a + len - at).min(BATCH_BUF);
            if !batch.fits(l, by_task, early) {
                batches.push(std::mem::take(batch));
            }
            batch.push(v.start, at, l, by_task, early);
            at += l;
        }
    };
    let saved = |v: &&Vma| {
        // Shared mappings' data lives in their file or shmem object.
        // Droppable memory may be dropped by the kernel at any time: it is
        // not saved, so it comes back empty, as after such a drop.
        !is_special(v.kind) && v.flags & (VMAF_SHARED | VMAF_DROPPABLE) == 0 && has_pages(v)
    };
    // Where the kernel has PAGEMAP_SCAN (6.7), a scan of the address
    // space gives the runs of pages there are, with what kind each is,
    // without an entry per page (and without privilege for the zero
    // page); else pagemap is read page by page. The walk of the page
    // tables is the cost (a sparse 64 GiB mapping has 16M entries): two
    // threads walk half the mapped bytes each.
    let saved_vmas: Vec<&Vma> = vmas.iter().filter(saved).collect();
    let scanned = scan_regions(&pm, &saved_vmas);
    for v in vmas.iter().filter(saved) {
        // A zero page over a file's data is data; over anonymous memory it
        // is what a fresh mapping reads anyway.
        let skip_zero = !backed(v);
        // The task cannot write from memory it cannot read (PROT_NONE...).
        let by_task = policy.by_task && v.prot & libc::PROT_READ as u32 != 0;
        let early = policy.early.iter().any(|e| e.start == v.start);
        if let Some(regions) = &scanned {
            let i = regions.partition_point(|r| r.end <= v.start);
            for r in regions[i..].iter().take_while(|r| r.start < v.end) {
                let (a, b) = (r.start.max(v.start), r.end.min(v.end));
                // A private file mapping: only copied-on-write (anonymous)
                // pages are saved; the rest come back from the file.
                if backed(v) && r.categories & crate::sys::PAGE_IS_FILE != 0 {
                    continue;
                }
                if skip_zero && r.categories & crate::sys::PAGE_IS_PFNZERO != 0 {
                    stats.zero_skipped += (b - a) / PAGE;
                    continue;
                }
                add(&mut batch, v, a, b - a, by_task, early);
                stats.pages += (b - a) / PAGE;
            }
            continue;
        }
        let zero_pfn = policy.zero_pfn.filter(|_| skip_zero);
        // Without the zero page's frame number, ckpt looks at what it writes.
        let by_content = skip_zero && zero_pfn.is_none() && !by_task;
        let needed = |e: u64| page_needed(v, e) && zero_pfn != Some(e & PFN_MASK);
        let mut addr = v.start;
        while addr < v.end {
            let end = (addr + CHUNK_PAGES * PAGE).min(v.end);
            let entries = procfs::pagemap(&pm, addr, end)
                .ctx(pid, || format!("read pagemap at {addr:#x}"))?;
            let mut i = 0;
            while i < entries.len() {
                if !needed(entries[i]) {
                    if page_needed(v, entries[i]) {
                        stats.zero_skipped += 1;
                    }
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j < entries.len() && needed(entries[j]) {
                    j += 1;
                }
                let a = addr + i as u64 * PAGE;
                let len = (j - i) as u64 * PAGE;
                if by_content {
                    buf.resize(len as usize, 0);
                    mem.read_exact_at(&mut buf, a)
                        .ctx(pid, || format!("read memory {a:#x}..{:#x}", a + len))?;
                    for (s, e) in nonzero_runs(&buf, true, &mut stats) {
                        let l = (e - s) as u64;
                        add(&mut batch, v, a + s as u64, l, false, early);
                        stats.pages += l / PAGE;
                    }
                } else {
                    add(&mut batch, v, a, len, by_task, early);
                    stats.pages += len / PAGE;
                }
                i = j;
            }
            addr = end;
        }
    }
    if !batch.runs.is_empty() {
        batches.push(batch);
    }
    // Restart refuses a record whose runs go back or overlap: better a
    // failed checkpoint, the process left running, than an image lost.
    for b in &batches {
        if let Some(w) = b.runs.windows(2).find(|w| w[1].0 < w[0].0 + w[0].1) {
            return Err(Error::Refused(format!(
                "process {pid}: its pages at {:#x} were planned out of order (a ckpt bug: \
                 please report it; the process was left as it was)",
                w[1].0
            )));
        }
    }
    Ok((batches, stats))
}

/// One PAGEMAP_SCAN call: the range `start..end` and whether it reports
/// PAGE_IS_FILE, which costs the kernel a lookup of every present page
/// (on 1 GiB of anonymous memory, 4-5 ms without it, 17-27 ms with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ScanJob {
    start: u64,
    end: u64,
    file: bool,
}

/// A mapping this large gets a call of its own when it does not need what
/// its neighbours need; smaller ones join their neighbours' call, so that
/// 10,000 small mappings still cost a few calls, not 10,000.
const SCAN_JOB_ALONE: u64 = 2 << 20;

/// The scan calls for `vmas` (sorted `(start, end, backed)`): only the
/// pages of backed mappings need PAGE_IS_FILE (their file pages are not
/// saved), only those of the others need PAGE_IS_PFNZERO, which is cheap
/// and so always asked.
fn scan_jobs(vmas: &[(u64, u64, bool)]) -> Vec<ScanJob> {
    let mut jobs: Vec<ScanJob> = Vec::new();
    // Whether the last job's `file` was set by a mapping that needs it so
    // (not only small anonymous mappings, for which either will do).
    let mut decided = false;
    for &(start, end, backed) in vmas {
        let need = match (backed, end - start >= SCAN_JOB_ALONE) {
            (true, _) => Some(true),
            (false, true) => Some(false),
            (false, false) => None,
        };
        match jobs.last_mut() {
            Some(j) if !decided || need.is_none_or(|f| f == j.file) => {
                j.end = end;
                if let Some(f) = need {
                    j.file = f;
                    decided = true;
                }
            }
            _ => {
                jobs.push(ScanJob {
                    start,
                    end,
                    file: need.unwrap_or(false),
                });
                decided = need.is_some();
            }
        }
    }
    jobs
}

/// The regions of `vmas` (sorted) that hold pages (present or swapped),
/// with PAGE_IS_PFNZERO, and PAGE_IS_FILE where a backed mapping needs it
/// (`scan_jobs`); by PAGEMAP_SCAN, in two halves by mapped size at once
/// when there is much; `None` where the kernel lacks it.
fn scan_regions(pm: &std::fs::File, vmas: &[&Vma]) -> Option<Vec<crate::sys::PageRegion>> {
    use crate::sys::{ScanFilter, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
    if crate::test_hooks::get().no_pagemap_scan {
        return None;
    }
    let (lo, hi) = (vmas.first()?.start, vmas.last()?.end);
    let spans: Vec<(u64, u64, bool)> = vmas.iter().map(|v| (v.start, v.end, backed(v))).collect();
    let mut jobs = scan_jobs(&spans);
    let total: u64 = vmas.iter().map(|v| v.end - v.start).sum();
    // The address below which half the mapped bytes lie.
    let mut below = 0;
    let mut mid = hi;
    for v in vmas {
        let len = v.end - v.start;
        if below + len >= total / 2 {
            mid = (v.start + (total / 2 - below)) & !(PAGE - 1);
            break;
        }
        below += len;
    }
    let run = |jobs: &[ScanJob]| -> Option<Vec<crate::sys::PageRegion>> {
        let mut out = Vec::new();
        for j in jobs {
            let filter = ScanFilter {
                anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                none_of: 0,
                report: PAGE_IS_PFNZERO | if j.file { PAGE_IS_FILE } else { 0 },
            };
            out.extend(crate::sys::pagemap_scan(pm, j.start, j.end, filter).ok()?);
        }
        Some(out)
    };
    if total < (1 << 30) || mid <= lo || mid >= hi {
        return run(&jobs);
    }
    // The job holding `mid` is cut there; each thread takes one side.
    if let Some(i) = jobs.iter().position(|j| j.start < mid && mid < j.end) {
        let upper = ScanJob {
            start: mid,
            ..jobs[i]
        };
        jobs[i].end = mid;
        jobs.insert(i + 1, upper);
    }
    let split = jobs.partition_point(|j| j.end <= mid);
    let (low, high) = jobs.split_at(split);
    let (a, b) = std::thread::scope(|sc| {
        let upper = sc.spawn(|| run(high));
        (run(low), upper.join())
    });
    let mut out = a?;
    out.extend(b.ok()??);
    Some(out)
}

/// How page data goes into the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    /// Its `COMPRESS_*` value in the image.
    pub fn code(self) -> u32 {
        match self {
            Compression::None => COMPRESS_NONE,
            Compression::Lz4 => COMPRESS_LZ4,
            Compression::Zstd => COMPRESS_ZSTD,
        }
    }

    /// Compresses `data` (whole pages).
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Lz4 => lz4_flex::block::compress(data),
            // Level 1: throughput first, as for lz4.
            Compression::Zstd => zstd::bulk::compress(data, 1).expect("zstd compresses to memory"),
        }
    }
}

/// Decompresses the page data of a `pages-z` record into `out`, which must
/// come out exactly full.
pub fn decompress(code: u32, data: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let n = match code {
        COMPRESS_LZ4 => {
            lz4_flex::block::decompress_into(data, out).map_err(|e| format!("lz4: {e}"))?
        }
        COMPRESS_ZSTD => {
            zstd::bulk::decompress_to_buffer(data, out).map_err(|e| format!("zstd: {e}"))?
        }
        c => return Err(format!("unknown compression {c}")),
    };
    if n != out.len() {
        return Err(format!("decompressed to {n} bytes, not {}", out.len()));
    }
    Ok(())
}

/// Writes the page records of `batches` (planned by `plan_pages`); with
/// `direct`, the batches planned so are written by the task itself.
pub fn write_batches<S: Sink>(
    pid: Pid,
    batches: &[&Batch],
    w: &mut ImageWriter<S>,
    mut direct: Option<&mut Direct>,
    compression: Compression,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ctx(pid, || "open mem".into())?;
    let read = |b: &Batch, buf: &mut Vec<u8>| -> Result<()> {
        buf.clear();
        for &(a, l) in &b.runs {
            let at = buf.len();
            buf.resize(at + l as usize, 0);
            mem.read_exact_at(&mut buf[at..], a)
                .ctx(pid, || format!("read memory {a:#x}..{:#x}", a + l))?;
        }
        Ok(())
    };
    if compression != Compression::None {
        // Compression is the slow part: a few batches at once, one thread
        // each, written in order.
        let lanes = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let mut bufs = vec![Vec::new(); lanes];
        for group in batches.chunks(lanes) {
            for (b, buf) in group.iter().zip(bufs.iter_mut()) {
                read(b, buf)?;
            }
            let packed: Vec<Vec<u8>> = std::thread::scope(|sc| {
                let jobs: Vec<_> = bufs[..group.len()]
                    .iter()
                    .map(|buf| sc.spawn(move || compression.compress(buf)))
                    .collect();
                jobs.into_iter()
                    .map(|j| j.join().expect("compression does not panic"))
                    .collect()
            });
            for (b, data) in group.iter().zip(packed) {
                let z = PagesZ {
                    addr: b.runs[0].0,
                    nr_pages: b.pages as u32,
                    flags: 0,
                    data: Bytes(data),
                };
                w.write(&z).map_err(Error::Write)?;
                progress(b.pages * PAGE)?;
            }
        }
        return Ok(());
    }
    // Runs of batches the task writes, and runs of those ckpt copies.
    let has_task = direct.is_some();
    let task_writes = |b: &Batch| has_task && b.by_task;
    let mut i = 0;
    while i < batches.len() {
        let by_task = task_writes(batches[i]);
        let n = batches[i..]
            .iter()
            .take_while(|b| task_writes(b) == by_task)
            .count();
        let these = &batches[i..i + n];
        match direct.as_deref_mut() {
            Some(d) if by_task => write_by_task(w, d, these, progress)?,
            _ => write_read_ahead(pid, &mem, these, w, progress)?,
        }
        i += n;
    }
    Ok(())
}

/// Writes the page records of `batches` from ckpt's copy of the memory,
/// which a thread reads (`/proc/PID/mem`, which reads any mapping) a piece
/// of up to 4 MiB ahead of the writes: into a pipe, ckpt's two copies
/// (out of the process, into the pipe) then run on two cores at once.
fn write_read_ahead<S: Sink>(
    pid: Pid,
    mem: &std::fs::File,
    batches: &[&Batch],
    w: &mut ImageWriter<S>,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    use std::sync::mpsc;
    let plan: Vec<Vec<Vec<(u64, u64)>>> =
        batches.iter().map(|b| pieces(&b.runs, LANE_BUF)).collect();
    // Two buffers go round: one read into while the other is written.
    let (full_tx, full) = mpsc::sync_channel::<Result<(Vec<u8>, usize)>>(1);
    let (empty, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..2 {
        let _ = empty.send(vec![0u8; LANE_BUF as usize]);
    }
    let read = |runs: &[(u64, u64)], buf: &mut [u8]| -> Result<usize> {
        let mut at = 0;
        for &(a, l) in runs {
            mem.read_exact_at(&mut buf[at..at + l as usize], a)
                .ctx(pid, || format!("read memory {a:#x}..{:#x}", a + l))?;
            at += l as usize;
        }
        Ok(at)
    };
    std::thread::scope(|sc| {
        let plan = &plan;
        sc.spawn(move || {
            // (Ends when the writer is gone: a failed write.)
            for piece in plan.iter().flatten() {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let r = read(piece, &mut buf).map(|n| (buf, n));
                if full_tx.send(r).is_err() {
                    return;
                }
            }
        });
        let written = (|| -> Result<()> {
            for (b, pieces) in batches.iter().zip(plan) {
                w.begin_pages(b.runs[0].0, b.pages, 0)
                    .map_err(Error::Write)?;
                for _ in pieces {
                    let (buf, n) = full
                        .recv()
                        .map_err(|_| Error::Refused("the memory reading thread ended".into()))??;
                    w.page_data(&buf[..n]).map_err(Error::Write)?;
                    let _ = empty.send(buf);
                }
                w.end_pages();
                progress(b.pages * PAGE)?;
            }
            Ok(())
        })();
        drop((full, empty));
        written
    })
}

/// Records at least this long are checksummed by a thread while the task
/// writes them; shorter ones cost less than starting a thread.
const OVERLAPPED_CRC: u64 = 4 << 20;

/// Writes `batches` into the image file, one page record each: their
/// data goes at offsets laid out in advance, and the record headers, which
/// carry nothing of the checksums, go in last. Much data is copied by
/// ckpt's threads, one per core (`write_in_lanes`): one writer to tmpfs is
/// bound by one core's copy, and two copies on two cores outrun one on one
/// (1 GiB on 2 cores: 0.30-0.35 s against 0.34-0.41 s). Otherwise the task
/// writes its own memory, one copy, while ckpt checksums it
/// (`write_by_task_alone`).
///
/// The checksum is of the task's memory (`crc32c_of_memory`), not of the
/// file: the pages saved are private ones of a frozen tree, which nothing
/// changes meanwhile, and reading them from the page cache just written
/// contends with the task's writes there (LRU and page-cache locks). But a
/// record holding memory the kernel writes as the task runs (its rseq
/// areas, `Direct::kernel_written`) is checksummed from the file, after
/// the task wrote it: the file has what was written. (Lanes checksum the
/// buffer they write, and the task does not run meanwhile.)
fn write_by_task<S: Sink>(
    w: &mut ImageWriter<S>,
    d: &mut Direct,
    batches: &[&Batch],
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    // (header offset, data offset, data length) of each record.
    let mut at = w.offset();
    let layout: Vec<(u64, u64, u64)> = batches
        .iter()
        .map(|b| {
            let data = align_up(at + HDR_LEN + PAGES_HDR_LEN, PAGE_SIZE);
            let len = b.pages * PAGE;
            let hdr = at;
            at = data + len;
            (hdr, data, len)
        })
        .collect();
    w.get_mut().flush().map_err(Error::Write)?;
    let pid = d.remote.tid();
    let fd = d.image_fd;
    let lanes = writer_lanes(layout.iter().map(|l| l.2).sum());
    let crcs = if lanes > 1 {
        write_in_lanes(pid, fd, batches, &layout, lanes, progress)?
    } else {
        write_by_task_alone(d, batches, &layout, progress)?
    };
    for ((b, &(hdr, _, len)), crc) in batches.iter().zip(&layout).zip(crcs) {
        w.get_mut().seek_to(hdr).map_err(Error::Write)?;
        w.begin_pages(b.runs[0].0, b.pages, 0)
            .map_err(Error::Write)?;
        w.end_external_pages(len, crc);
    }
    let end = w.offset();
    w.get_mut().seek_to(end).map_err(Error::Write)
}

/// Bytes a writer lane copies at a time: small enough to stay in the
/// cache between its read, its checksum and its write.
const LANE_BUF: u64 = 4 << 20;
/// Page data from which ckpt writes in lanes: less costs more in threads
/// than it saves.
const LANES_FROM: u64 = 32 << 20;

/// How many lanes write `len` bytes of page data: one per core, up to 4
/// (one writer to tmpfs is bound by one core's copy), or 1 for the task
/// alone.
fn writer_lanes(len: u64) -> usize {
    if len < LANES_FROM {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Writes the records' page data (at `layout`'s offsets) from ckpt, in
/// `lanes` threads, the calling one among them (it alone reports
/// progress): each claims the next record, and copies it a piece at a
/// time from the task's memory into a buffer, checksums it there and
/// writes it. Returns each record's checksum, of what was written.
fn write_in_lanes(
    pid: Pid,
    fd: i32,
    batches: &[&Batch],
    layout: &[(u64, u64, u64)],
    lanes: usize,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<Vec<u32>> {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
    let next = AtomicUsize::new(0);
    let written = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let lane = |tick: &mut dyn FnMut() -> Result<()>| -> Result<Vec<(usize, u32)>> {
        let mut buf = vec![0u8; LANE_BUF as usize];
        let mut sums = Vec::new();
        loop {
            let i = next.fetch_add(1, Relaxed);
            if i >= batches.len() || stop.load(Relaxed) {
                return Ok(sums);
            }
            let (mut crc, mut off) = (0, layout[i].1);
            for piece in pieces(&batches[i].runs, LANE_BUF) {
                let buf = &mut buf[..piece.iter().map(|r| r.1).sum::<u64>() as usize];
                crate::sys::read_process_runs(pid, &piece, buf)
                    .ctx(pid, || format!("read memory at {:#x}", piece[0].0))?;
                crc = crc32c::crc32c_append(crc, buf);
                crate::sys::pwrite_all(fd, buf, off).map_err(Error::Write)?;
                off += buf.len() as u64;
                written.fetch_add(buf.len() as u64, Relaxed);
                tick()?;
            }
            sums.push((i, crc));
        }
    };
    let stopping = |r: Result<Vec<(usize, u32)>>| {
        if r.is_err() {
            stop.store(true, Relaxed);
        }
        r
    };
    let mut reported = 0;
    let mut report = |now: u64| -> Result<()> {
        let r = progress(now - reported);
        reported = now;
        r
    };
    let results = std::thread::scope(|sc| {
        let others: Vec<_> = (1..lanes)
            .map(|_| sc.spawn(|| stopping(lane(&mut || Ok(())))))
            .collect();
        let mut results = vec![stopping(lane(&mut || report(written.load(Relaxed))))];
        for t in others {
            results.push(t.join().unwrap_or_else(|_| {
                Err(Error::Write(std::io::Error::other("writer lane panicked")))
            }));
        }
        results
    });
    let mut crcs = vec![0; batches.len()];
    for r in results {
        for (i, crc) in r? {
            crcs[i] = crc;
        }
    }
    report(written.load(Relaxed))?;
    Ok(crcs)
}

/// `runs` cut into pieces of at most `max` bytes each, in order.
fn pieces(runs: &[(u64, u64)], max: u64) -> Vec<Vec<(u64, u64)>> {
    let mut out = vec![Vec::new()];
    let mut room = max;
    for &(mut a, mut l) in runs {
        while l > 0 {
            if room == 0 {
                out.push(Vec::new());
                room = max;
            }
            let n = l.min(room);
            out.last_mut().expect("never empty").push((a, n));
            (a, l, room) = (a + n, l - n, room - n);
        }
    }
    out
}

/// Has the task write the records' page data (at `layout`'s offsets),
/// one after the other, each checksummed by a thread of ckpt meanwhile.
fn write_by_task_alone(
    d: &mut Direct,
    batches: &[&Batch],
    layout: &[(u64, u64, u64)],
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<Vec<u32>> {
    let pid = d.remote.tid();
    let fd = d.image_fd;
    std::thread::scope(|sc| -> Result<Vec<u32>> {
        let mut sums = Vec::with_capacity(batches.len());
        for (b, &(_, data, len)) in batches.iter().zip(layout) {
            let runs = &b.runs;
            let from_file = runs
                .iter()
                .any(|&(a, l)| d.kernel_written.iter().any(|&k| overlaps((a, a + l), k)));
            let sum = move || crc32c_of_memory(pid, runs);
            let of_memory = (!from_file).then(|| {
                if len >= OVERLAPPED_CRC {
                    Err(sc.spawn(sum))
                } else {
                    Ok(sum())
                }
            });
            taking_back_write_signals(d, |d| write_runs(d, runs, data))?;
            sums.push(
                of_memory
                    .unwrap_or_else(|| Ok(crate::sys::crc32c_of_range(fd, data, len as usize))),
            );
            progress(len)?;
        }
        sums.into_iter()
            .map(|s| {
                match s {
                    Ok(done) => done,
                    Err(t) => t
                        .join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("checksum thread panicked"))),
                }
                .ctx(pid, || "checksum a page record".into())
            })
            .collect()
    })
}

/// CRC32C of the runs (address, length) of process `pid`'s memory, back
/// to back, read into a buffer that stays in the cache.
fn crc32c_of_memory(pid: Pid, runs: &[(u64, u64)]) -> std::io::Result<u32> {
    const BUF: u64 = 1 << 20;
    let mut buf = vec![0u8; BUF as usize];
    let mut crc = 0;
    for piece in pieces(runs, BUF) {
        let buf = &mut buf[..piece.iter().map(|r| r.1).sum::<u64>() as usize];
        crate::sys::read_process_runs(pid, &piece, buf)?;
        crc = crc32c::crc32c_append(crc, buf);
    }
    Ok(crc)
}

/// Runs the task's writes `f`. A write that fails with EPIPE or EFBIG (a
/// file too big for its filesystem or the task's RLIMIT_FSIZE) also raised
/// SIGPIPE or SIGXFSZ in the task, blocked meanwhile: it is taken back
/// (unless one was pending already), or the process would die of it once
/// released.
fn taking_back_write_signals(
    d: &mut Direct,
    f: impl FnOnce(&mut Direct) -> Result<()>,
) -> Result<()> {
    let pid = d.remote.tid();
    // (Unknown: as if pending, so nothing of the process's is taken.)
    let before = procfs::status(pid).map_or(u64::MAX, |s| {
        s.hex_opt("ShdPnd").unwrap_or(u64::MAX) | s.hex_opt("SigPnd").unwrap_or(u64::MAX)
    });
    let r = f(d);
    let sig = match &r {
        Err(Error::Sys { source, .. }) => match source.raw_os_error() {
            Some(libc::EPIPE) => libc::SIGPIPE,
            Some(libc::EFBIG) => libc::SIGXFSZ,
            _ => return r,
        },
        _ => return r,
    };
    let bit = 1u64 << (sig - 1);
    if before & bit == 0 {
        let mut b = bit.to_le_bytes().to_vec();
        b.extend_from_slice(&[0u8; 24]); // (pad, then a zero timeout)
        d.scratch.write(0, &b)?;
        let s = d.scratch.addr;
        d.remote
            .syscall(libc::SYS_rt_sigtimedwait, &[s, 0, s + 16, 8])?;
    }
    r
}

/// The iovecs of `runs` (address, length) as the kernel lays them out.
fn iovecs(runs: &[(u64, u64)]) -> Vec<u8> {
    runs.iter()
        .flat_map(|&(a, l)| a.to_le_bytes().into_iter().chain(l.to_le_bytes()))
        .collect()
}

/// Has the task write the runs back to back into the image file from
/// `off`, 256 runs per `pwritev`; what a short write left, run by run.
fn write_runs(d: &mut Direct, runs: &[(u64, u64)], off: u64) -> Result<()> {
    let mut at = off;
    for chunk in runs.chunks(IOVS_PER_CALL) {
        d.scratch.write(0, &iovecs(chunk))?;
        let (fd, iov, cnt) = (d.tracee_fd, d.scratch.addr, chunk.len() as u64);
        let n = d
            .remote
            .call("pwritev(image)", libc::SYS_pwritev, &[fd, iov, cnt, at, 0])?;
        let mut left = n;
        for &(a, l) in chunk {
            let mut done = left.min(l);
            left -= done;
            while done < l {
                let k = d.remote.call(
                    "pwrite64(image)",
                    libc::SYS_pwrite64,
                    &[fd, a + done, l - done, at + done],
                )?;
                if k == 0 {
                    return Err(Error::Write(std::io::ErrorKind::WriteZero.into()));
                }
                done += k;
            }
            at += l;
        }
    }
    Ok(())
}

/// The (start, end) byte ranges of `data` (whole pages) to save: all of
/// it, or with `skip_zero` its pages that are not all zeros.
fn nonzero_runs(data: &[u8], skip_zero: bool, stats: &mut PageStats) -> Vec<(usize, usize)> {
    if !skip_zero {
        return vec![(0, data.len())];
    }
    let pages: Vec<&[u8]> = data.chunks(PAGE as usize).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < pages.len() {
        if pages[i].iter().all(|&b| b == 0) {
            stats.zero_skipped += 1;
            i += 1;
            continue;
        }
        let mut j = i;
        while j < pages.len() && !pages[j].iter().all(|&b| b == 0) {
            j += 1;
        }
        out.push((i * PAGE as usize, j * PAGE as usize));
        i = j;
    }
    out
}

/// mm fields for PR_SET_MM_MAP.
pub fn dump_mm(pid: Pid, st: &procfs::Stat, brk: u64) -> Result<Mm> {
    Ok(Mm {
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk,
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
        auxv: Bytes(procfs::read_bytes(pid, "auxv").ctx(pid, || "read auxv".into())?),
    })
}

const PR_SET_THP_DISABLE: u64 = 41;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_GET_MDWE: u64 = 66;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// MEMBARRIER_CMD_REGISTER_{GLOBAL_EXPEDITED, PRIVATE_EXPEDITED,
/// PRIVATE_EXPEDITED_SYNC_CORE, PRIVATE_EXPEDITED_RSEQ}.
const MEMBARRIER_REGISTER_CMDS: [u32; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];

/// Per-mm state only the task itself can read: THP-disable and membarrier
/// registrations (by injected prctl and membarrier).
pub fn dump_mm_state(r: &mut Remote, comm: &str) -> Result<MmState> {
    let thp = r.call(
        "prctl(PR_GET_THP_DISABLE)",
        libc::SYS_prctl,
        &[PR_GET_THP_DISABLE, 0, 0, 0, 0],
    )? as u32;
    // Memory-deny-write-execute (systemd's MemoryDenyWriteExecute= sets
    // it) would be lost at restart: refused until restored. (Before Linux
    // 6.3 the call fails with EINVAL, and no process has it.)
    let mdwe = r.syscall(libc::SYS_prctl, &[PR_GET_MDWE, 0, 0, 0, 0])?;
    if mdwe > 0 {
        return Err(Error::Unsupported {
            pid: r.tid(),
            comm: comm.into(),
            object: format!("its memory-deny-write-execute setting (PR_SET_MDWE, {mdwe:#x})"),
            reason: "restart cannot set it again yet".into(),
        });
    }
    let regs = r.syscall(
        libc::SYS_membarrier,
        &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0],
    )?;
    let membarrier = if regs >= 0 {
        regs as u32
    } else if regs == -(libc::EINVAL as i64) {
        // Before Linux 6.3 registrations cannot be read. Only refuse a
        // process that could have made any.
        let supported = r.syscall(libc::SYS_membarrier, &[0, 0, 0])?;
        if supported > 0 && supported as u32 & MEMBARRIER_REGISTER_CMDS.iter().sum::<u32>() != 0 {
            return Err(Error::Unsupported {
                pid: r.tid(),
                comm: comm.into(),
                object: "membarrier registrations".into(),
                reason: "this kernel cannot report them (MEMBARRIER_CMD_GET_REGISTRATIONS needs Linux 6.3)".into(),
            });
        }
        0
    } else {
        0
    };
    if membarrier & !MEMBARRIER_REGISTER_CMDS.iter().sum::<u32>() != 0 {
        return Err(Error::Unsupported {
            pid: r.tid(),
            comm: comm.into(),
            object: format!("membarrier registrations {membarrier:#x}"),
            reason: "unknown registration kinds".into(),
        });
    }
    Ok(MmState {
        thp_disable: thp,
        membarrier,
    })
}

/// Sets THP-disable (always: the restorer's own setting was inherited) and
/// makes the saved membarrier registrations again.
fn restore_mm_state(r: &mut Remote, st: &MmState) -> Result<()> {
    let on = (st.thp_disable & 1) as u64;
    let how = (st.thp_disable & !1) as u64;
    r.call(
        "prctl(PR_SET_THP_DISABLE)",
        libc::SYS_prctl,
        &[PR_SET_THP_DISABLE, on, how, 0, 0],
    )?;
    for cmd in MEMBARRIER_REGISTER_CMDS {
        if st.membarrier & cmd != 0 {
            r.call(
                &format!("membarrier(register {cmd:#x})"),
                libc::SYS_membarrier,
                &[cmd as u64, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// The kind of a special mapping by its /proc name.
pub fn kind_of_special(path: &[u8]) -> Option<u32> {
    match path {
        b"[vdso]" => Some(VMA_VDSO),
        b"[vvar]" => Some(VMA_VVAR),
        b"[vvar_vclock]" => Some(VMA_VVAR_VCLOCK),
        b"[vsyscall]" => Some(VMA_VSYSCALL),
        _ => None,
    }
}

/// vDSO, vvar and vsyscall: the kernel's, never saved, moved or skipped.
pub fn is_special(kind: u32) -> bool {
    matches!(kind, VMA_VDSO | VMA_VVAR | VMA_VVAR_VCLOCK | VMA_VSYSCALL)
}

/// Writes a NUL-terminated path into scratch and opens it in the task.
fn remote_open(r: &mut Remote, s: &Scratch, path: &[u8], flags: i32) -> Result<u64> {
    let mut p = path.to_vec();
    p.push(0);
    if p.len() > 4096 {
        return Err(Error::Refused(format!(
            "path too long: {}",
            ckpt_image::escape(path)
        )));
    }
    s.write(0, &p)?;
    r.call(
        &format!("open {}", ckpt_image::escape(path)),
        libc::SYS_openat,
        &[
            libc::AT_FDCWD as i64 as u64,
            s.addr,
            (flags | libc::O_CLOEXEC) as u64,
            0,
        ],
    )
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Moves the task's own [vvar]/[vvar_vclock]/[vdso] to where the image had
/// them (the kernel follows a moved vDSO, so signal return and vsyscalls work).
fn move_vdso(
    r: &mut Remote,
    cur: &[MapEntry],
    p: &ProcessImage,
    (code, s, room): (u64, &Scratch, u64),
) -> Result<()> {
    const MREMAP_MAYMOVE: u64 = 1;
    const MREMAP_FIXED: u64 = 2;
    let mut moves: Vec<(u64, u64, u64)> = Vec::new(); // (current, target, len)
    for kind in [VMA_VVAR, VMA_VVAR_VCLOCK, VMA_VDSO] {
        let c = cur.iter().find(|m| kind_of_special(&m.path) == Some(kind));
        let t = p.vmas.iter().find(|v| v.kind == kind);
        match (c, t) {
            (Some(c), Some(t)) => moves.push((c.start, t.start, c.size())),
            // The image had none (unmapped by the program): drop ours.
            (Some(c), None) => {
                r.call("munmap", libc::SYS_munmap, &[c.start, c.size()])?;
            }
            _ => {}
        }
    }
    moves.retain(|m| m.0 != m.1);
    let clash = moves.iter().any(|a| {
        moves
            .iter()
            .any(|b| overlaps((a.0, a.0 + a.2), (b.1, b.1 + b.2)))
    });
    if clash {
        // Park the block elsewhere first so no move lands on a piece not yet moved.
        let total: u64 = moves.iter().map(|m| m.2).sum();
        let tmp = r.call(
            "mmap",
            libc::SYS_mmap,
            &[
                0,
                total,
                libc::PROT_NONE as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        if moves
            .iter()
            .any(|m| overlaps((tmp, tmp + total), (m.1, m.1 + m.2)))
        {
            return Err(Error::Refused(
                "cannot find a free place to move the vDSO through".into(),
            ));
        }
        let mut off = 0;
        for m in moves.iter_mut() {
            r.call(
                "mremap(vdso)",
                libc::SYS_mremap,
                &[m.0, m.2, m.2, MREMAP_MAYMOVE | MREMAP_FIXED, tmp + off],
            )?;
            m.0 = tmp + off;
            off += m.2;
        }
    }
    let moves: Vec<Call> = moves
        .iter()
        .map(|&(from, to, len)| Call {
            name: "mremap(vdso)".into(),
            nr: libc::SYS_mremap,
            args: [from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to, 0],
        })
        .collect();
    r.call_many(code, s, room, &moves)
}

/// Creates a saved shared memory object (or unlinked file) in the
/// restorer, filled with its saved pages, as an fd >= `base` for the tree
/// to inherit and map.
/// An unlinked file is created, and every object's owner and mode set, as
/// `fs` (see `trust`): an image may only make files its owner could.
pub fn create_shmem(
    s: &ShmemImage,
    img_fd: i32,
    store: &dyn crate::pagestore::Wait,
    base: i32,
    fs: Option<&crate::sys::FsIds>,
) -> Result<i32> {
    let me = std::process::id() as Pid;
    let io = |what: String| {
        move |e| Error::Sys {
            pid: me,
            what,
            source: e,
        }
    };
    let id = s.shmem.id;
    let fd = match s.shmem.kind {
        // A real shared anonymous object (it shows as /dev/zero in maps),
        // reached through map_files so others can map it.
        SHMEM_ANON => crate::sys::shared_anon_fd(crate::align_up(s.shmem.size.max(1)), base)
            .map_err(io("create shared anonymous memory".into()))?,
        SHMEM_GHOST => create_ghost(s, base, fs)?,
        _ => {
            let fd =
                crate::sys::memfd_raw(&s.shmem.name.0, base).map_err(io("memfd_create".into()))?;
            crate::sys::ftruncate(fd, s.shmem.size)
                .map_err(io(format!("size shared memory object {id}")))?;
            fd
        }
    };
    let fill = || -> Result<()> {
        let mut buf = Vec::new();
        for r in &s.pages {
            buf.resize((r.nr_pages * PAGE) as usize, 0);
            store.wait(r.data_offset + r.nr_pages * PAGE)?;
            let mut got = 0;
            while got < buf.len() {
                let n = crate::sys::pread(img_fd, &mut buf[got..], r.data_offset + got as u64)
                    .map_err(io("read shared memory pages".into()))?;
                if n == 0 {
                    return Err(Error::Refused(
                        "image ends inside shared memory pages".into(),
                    ));
                }
                got += n;
            }
            crate::sys::pwrite_all(fd, &buf, r.addr)
                .map_err(io(format!("fill shared memory object {id}")))?;
        }
        // Whole pages were written: cut an unlinked file back to its size.
        if s.shmem.kind == SHMEM_GHOST {
            crate::sys::ftruncate(fd, s.shmem.size)
                .map_err(io(format!("size unlinked file {}", s.shmem.name)))?;
        }
        if let (Some(a), SHMEM_MEMFD | SHMEM_GHOST) = (&s.attrs, s.shmem.kind) {
            crate::sys::with_fs_ids(fs, || crate::sys::fchown_fchmod(fd, a.uid, a.gid, a.mode))
                .map_err(io(format!("set owner and mode of {}", s.shmem.name)))?;
            // Times last: writing the content set them.
            crate::sys::futimens(fd, (a.atime_sec, a.atime_nsec), (a.mtime_sec, a.mtime_nsec))
                .map_err(io(format!("set the times of {}", s.shmem.name)))?;
            if a.seals != 0 {
                crate::sys::add_seals(fd, a.seals)
                    .map_err(io(format!("seal memfd {}", s.shmem.name)))?;
            }
        }
        Ok(())
    };
    fill().inspect_err(|_| crate::sys::close(fd))?;
    Ok(fd)
}

/// An unlinked file again: a new file in the directory it was in (so on
/// the same filesystem; mode and owner are set by the caller), briefly linked at its
/// old name when that is free so that /proc shows the same "PATH
/// (deleted)", then unlinked. Holes stay holes: only data is written.
fn create_ghost(s: &ShmemImage, base: i32, fs: Option<&crate::sys::FsIds>) -> Result<i32> {
    let path = &s.shmem.name.0;
    let me = std::process::id() as Pid;
    let dir = match path.iter().rposition(|&c| c == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(i) => path[..i].to_vec(),
    };
    let fd = crate::sys::with_fs_ids(fs, || {
        crate::sys::open_raw(&dir, libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o600)
    })
    .map_err(|e| Error::Sys {
        pid: me,
        what: format!(
            "create the unlinked file {} again in {} (the directory must exist, on a filesystem with O_TMPFILE)",
            s.shmem.name,
            ckpt_image::escape(&dir)
        ),
        source: e,
    })?;
    let set = || -> Result<i32> {
        if crate::sys::with_fs_ids(fs, || crate::sys::link_fd(fd, path)).is_ok() {
            let _ = crate::sys::with_fs_ids(fs, || {
                std::fs::remove_file(std::ffi::OsStr::from_bytes(path))
            });
        }
        crate::sys::dup_above(fd, base).map_err(|e| Error::Sys {
            pid: me,
            what: "dup unlinked file".into(),
            source: e,
        })
    };
    let high = set();
    crate::sys::close(fd);
    high
}

/// Where `remote::BATCH_CODE` lies in the restore trampoline (after its
/// `syscall` instruction, in its first page; the rest is scratch).
pub const BATCH_CODE_AT: u64 = 64;

/// What a restored process inherited from the restorer for its rebuild.
#[derive(Clone, Copy)]
pub struct Inherited<'a> {
    /// The trampoline mapping (a `syscall` instruction, then scratch).
    pub tramp: u64,
    pub tramp_len: u64,
    /// The image file (or spool), for the task to read its pages from.
    pub img_fd: i32,
    /// When those pages are there.
    pub store: &'a dyn crate::pagestore::Wait,
    /// The image file mapped in ckpt, for ckpt's threads to copy pages
    /// from (none for a stream).
    pub image_map: Option<&'a crate::sys::FileMap>,
    /// The fd of each shared memory object, by id.
    pub shmem_fd: &'a dyn Fn(u32) -> Option<i32>,
    /// (pid, start) of the mappings this process or its parent premapped
    /// before forking (`premap_cow`).
    pub premapped: &'a [(Pid, u64)],
}

/// A premapped copy-on-write region the process keeps (see `premap_cow`).
struct Premap {
    start: u64,
    end: u64,
    /// Mapped by this very process (all its pages are in place), rather
    /// than inherited from its parent (only the shared pages are).
    own: bool,
}

/// The premapped regions of `cur` that are right for `p`: its own, or its
/// parent's where it shares pages with the parent. Any other (say the
/// grandparent's) is unmapped like everything else.
fn kept_premaps(p: &ProcessImage, cur: &[MapEntry], premapped: &[(Pid, u64)]) -> Vec<Premap> {
    let mut out = Vec::new();
    for m in cur {
        let Some(&(owner, _)) = premapped.iter().find(|x| x.1 == m.start) else {
            continue;
        };
        let same = p
            .vmas
            .iter()
            .any(|v| v.start == m.start && v.end == m.end && cow_eligible(v));
        let own = owner == p.pid();
        let shares = p
            .cow
            .iter()
            .any(|c| overlaps((c.addr, c.addr + c.nr_pages * PAGE), (m.start, m.end)));
        if same && (own || (owner == p.process.ppid && shares)) {
            out.push(Premap {
                start: m.start,
                end: m.end,
                own,
            });
        }
    }
    out
}

/// Where calls of one kind go to the task in batches
/// (`Remote::call_many`): the loop in the trampoline, unless the task
/// ignores SIGTRAP, which the loop's end would reset (then 0: one by one).
pub fn batch_code(p: &ProcessImage, tramp: u64) -> u64 {
    let ignores_trap = p
        .sigactions
        .actions
        .iter()
        .any(|a| a.signo == libc::SIGTRAP as u32 && a.handler == libc::SIG_IGN as u64);
    if ignores_trap {
        0
    } else {
        tramp + BATCH_CODE_AT
    }
}

/// The munmaps that drop what a restore child inherited from the restorer
/// (`cur`: its mappings now): all but the trampoline, the kernel's special
/// mappings and the premapped copy-on-write areas it keeps. They go in
/// runs of mappings with nothing to keep in between: one munmap over a
/// run (holes included) costs far less than one per mapping (a TLB flush
/// each).
/// `premapped` and the trampoline: as in `Inherited`.
pub fn unmap_inherited(
    p: &ProcessImage,
    cur: &[MapEntry],
    premapped: &[(Pid, u64)],
    (tramp, tramp_len): (u64, u64),
) -> Vec<Call> {
    let premaps = kept_premaps(p, cur, premapped);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut extends = false;
    for m in cur {
        let keep = (m.start >= tramp && m.end <= tramp + tramp_len)
            || kind_of_special(&m.path).is_some()
            || premaps.iter().any(|k| k.start == m.start);
        match runs.last_mut() {
            _ if keep => {}
            Some(run) if extends => run.1 = m.end,
            _ => runs.push((m.start, m.end)),
        }
        extends = !keep;
    }
    runs.iter()
        .map(|&(start, end)| Call {
            name: format!("munmap {start:#x}-{end:#x}"),
            nr: libc::SYS_munmap,
            args: [start, end - start, 0, 0, 0, 0],
        })
        .collect()
}

/// Replaces the task's address space with the image's: unmaps everything
/// but the trampoline and the vDSO, moves the vDSO, maps every saved
/// mapping, has the task read its pages from the image fd, restores
/// protections, and sets the mm fields with PR_SET_MM_MAP.
pub fn replace_address_space(
    r: &mut Remote,
    s: &Scratch,
    p: &ProcessImage,
    from: &Inherited,
    progress: &mut dyn FnMut(u64),
) -> Result<Option<MapEntry>> {
    let Inherited {
        tramp,
        tramp_len,
        store,
        shmem_fd,
        premapped,
        ..
    } = *from;
    let pid = r.tid();
    let cur = procfs::map_ranges(pid).ctx(pid, || "read maps".into())?;
    let premaps = kept_premaps(p, &cur, premapped);
    let code = batch_code(p, tramp);
    let room = tramp_len - PAGE;
    // (Nothing left when restart had them unmapped already: see
    // `Build::start_unmaps`.)
    let unmaps = unmap_inherited(p, &cur, premapped, (tramp, tramp_len));
    r.call_many(code, s, room, &unmaps)?;
    move_vdso(r, &cur, p, (code, s, room))?;
    let vdso = cur
        .iter()
        .find(|m| kind_of_special(&m.path) == Some(VMA_VDSO))
        .zip(p.vmas.iter().find(|v| v.kind == VMA_VDSO))
        .map(|(c, t)| MapEntry {
            start: t.start,
            end: t.start + c.size(),
            ..c.clone()
        });

    const EXEC: u64 = libc::PROT_EXEC as u64;
    let mut opened: Vec<(Vec<u8>, i32, u64)> = Vec::new();
    let mut widened = Vec::new();
    let mut maps = Vec::new();
    // The page runs, sorted, to find a mapping's by binary search.
    let mut spans: Vec<(u64, u64)> = p
        .pages
        .iter()
        .map(|r| (r.addr, r.addr + r.nr_pages * PAGE))
        .collect();
    spans.sort_unstable();
    for v in p.vmas.iter().filter(|v| !is_special(v.kind)) {
        let len = v.end - v.start;
        if premaps.iter().any(|k| k.start == v.start) {
            // Mapped read-write and (partly) filled before the fork.
            if v.prot != (libc::PROT_READ | libc::PROT_WRITE) as u32 {
                widened.push(v);
            }
            continue;
        }
        let i = spans.partition_point(|s| s.1 <= v.start);
        let fill = spans.get(i).is_some_and(|&s| overlaps(s, (v.start, v.end)));
        let mut prot = v.prot as u64;
        let widen = fill && v.prot & libc::PROT_WRITE as u32 == 0;
        if widen {
            prot |= libc::PROT_WRITE as u64;
            widened.push(v);
        }
        let shared = v.flags & VMAF_SHARED != 0;
        let droppable = v.flags & VMAF_DROPPABLE != 0;
        let mut flags = libc::MAP_FIXED as u64
            | if shared {
                libc::MAP_SHARED as u64
            } else if droppable {
                MAP_DROPPABLE
            } else {
                libc::MAP_PRIVATE as u64
            };
        if v.flags & VMAF_GROWSDOWN != 0 {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        if v.flags & VMAF_NORESERVE != 0 {
            flags |= libc::MAP_NORESERVE as u64;
        }
        // A shared mapping may become writable (mprotect) only if its file
        // was opened for writing: open it the same way again.
        let writable =
            shared && (v.flags & VMAF_MAYWRITE != 0 || v.prot & libc::PROT_WRITE as u32 != 0);
        let mode = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let (fd, off) = if v.obj != 0 && (v.kind == VMA_SHMEM || v.kind == VMA_FILE) {
            let fd = shmem_fd(v.obj).ok_or_else(|| {
                Error::Refused(format!(
                    "mapping {:#x} names a missing shared memory object {}",
                    v.start, v.obj
                ))
            })?;
            if shared && !writable {
                // Our copy of the object is read-write; the task's file was not.
                let path = format!("/proc/self/fd/{fd}").into_bytes();
                let ro = match opened.iter().find(|o| o.0 == path && o.1 == mode) {
                    Some(o) => o.2,
                    None => {
                        let ro = remote_open(r, s, &path, mode)?;
                        opened.push((path, mode, ro));
                        ro
                    }
                };
                (ro, v.pgoff)
            } else {
                (fd as u64, v.pgoff)
            }
        } else if v.kind == VMA_FILE && v.flags & VMAF_DELETED == 0 {
            let fd = match opened.iter().find(|o| o.0 == v.path.0 && o.1 == mode) {
                Some(o) => o.2,
                None => {
                    let fd = remote_open(r, s, &v.path.0, mode)?;
                    opened.push((v.path.0.clone(), mode, fd));
                    fd
                }
            };
            (fd, v.pgoff)
        } else {
            flags |= libc::MAP_ANONYMOUS as u64;
            (u64::MAX, 0)
        };
        if widen && flags & libc::MAP_ANONYMOUS as u64 != 0 && prot & EXEC == 0 {
            // Writable only for its pages, it would merge with a writable
            // neighbour, and its protection put back would then split the
            // merged mapping, which costs more than all the rest of its
            // restore (10,000 mappings: 30 ms). Executable meanwhile, it
            // stays apart; the task runs none of its code before then.
            // (Writable and executable memory is what the trampoline is
            // too: where it is denied, restart cannot run at all.)
            prot |= EXEC;
        }
        // (MAP_FIXED: it lands at v.start or fails.)
        maps.push(Call {
            name: format!("mmap {:#x}-{:#x}", v.start, v.end),
            nr: libc::SYS_mmap,
            args: [v.start, len, prot, flags, fd, off],
        });
    }
    r.call_many(code, s, room, &maps)?;
    // The files mapped are closed with the calls after the pages are in.
    let closes: Vec<Call> = opened
        .iter()
        .map(|&(_, _, fd)| Call {
            name: format!("close {fd}"),
            nr: libc::SYS_close,
            args: [fd, 0, 0, 0, 0, 0],
        })
        .collect();
    // Pages still shared with the parent are in place already; so are all
    // the pages of a mapping this process premapped itself.
    let cow: Vec<(u64, u64)> = p
        .cow
        .iter()
        .map(|c| (c.addr, c.addr + c.nr_pages * PAGE))
        .collect();
    let own_premapped: Vec<(u64, u64)> = premaps
        .iter()
        .filter(|k| k.own)
        .map(|k| (k.start, k.end))
        .collect();
    let runs: Vec<(u64, u64)> = p
        .pages
        .iter()
        .map(|r| (r.addr, r.addr + r.nr_pages * PAGE))
        .collect();
    let mut in_place = own_premapped.clone();
    in_place.extend(subtract(&cow, &own_premapped).iter().filter(|c| {
        premaps
            .iter()
            .any(|k| !k.own && k.start <= c.0 && c.1 <= k.end)
    }));
    // One copy per page: the task reads its own pages from the image file,
    // many runs per `preadv` where their data lies back to back.
    // (In reads of at most BATCH_BUF: a streamed image's data arrives as
    // it is read, and what was read is dropped from the spool.)
    let mut pieces: Vec<(u64, u64, u64)> = Vec::new(); // (addr, len, file offset)
                                                       // (file offset, len) of page data not read, its pages in place already.
    let mut unread: Vec<(u64, u64)> = Vec::new();
    for run in &p.pages {
        let span = (run.addr, run.addr + run.nr_pages * PAGE);
        let read = subtract(&[span], &in_place);
        for (a, b) in subtract(&[span], &read) {
            unread.push((run.data_offset + (a - run.addr), b - a));
        }
        for (a, b) in read {
            let mut at = a;
            while at < b {
                let l = (b - at).min(BATCH_BUF);
                pieces.push((at, l, run.data_offset + (at - run.addr)));
                at += l;
            }
        }
    }
    read_pieces(r, s, (code, room), &pieces, from, progress)?;
    // Unread data goes from the spool too, once it has come (punched
    // before, it would stay when it arrives).
    for &(off, l) in &unread {
        store.wait(off + l)?;
        store.release(off, l);
    }
    // An inherited premap holds the parent's pages: where this process had
    // none of its own (nor shared ones), it must read zeros.
    let mut zeroed = Vec::new();
    for k in premaps.iter().filter(|k| !k.own) {
        let mut have = runs.clone();
        have.extend_from_slice(&cow);
        for (a, b) in subtract(&[(k.start, k.end)], &have) {
            zeroed.push(Call {
                name: format!("madvise(MADV_DONTNEED) on {a:#x}-{b:#x}"),
                nr: libc::SYS_madvise,
                args: [a, b - a, libc::MADV_DONTNEED as u64, 0, 0, 0],
            });
        }
    }
    r.call_many(code, s, room, &zeroed)?;
    // Names of anonymous mappings (prctl PR_SET_VMA_ANON_NAME, on kernels
    // that have them).
    for v in p.vmas.iter().filter(|v| v.kind == VMA_ANON) {
        let Some(name) = v
            .path
            .0
            .strip_prefix(b"[anon:")
            .and_then(|n| n.strip_suffix(b"]"))
        else {
            continue;
        };
        let mut z = name.to_vec();
        z.push(0);
        s.write(0, &z)?;
        let arg = s.addr;
        r.call(
            "prctl(PR_SET_VMA_ANON_NAME)",
            libc::SYS_prctl,
            &[
                crate::sys::PR_SET_VMA as u64,
                crate::sys::PR_SET_VMA_ANON_NAME,
                v.start,
                v.end - v.start,
                arg,
            ],
        )?;
    }
    let mut after: Vec<Call> = widened
        .iter()
        .map(|v| Call {
            name: format!("mprotect {:#x}-{:#x}", v.start, v.end),
            nr: libc::SYS_mprotect,
            args: [v.start, v.end - v.start, v.prot as u64, 0, 0, 0],
        })
        .collect();
    for v in p.vmas.iter().filter(|v| !is_special(v.kind)) {
        for &(bit, advice, name) in ADVICE {
            if v.flags & bit != 0 {
                after.push(Call {
                    name: format!("madvise({name}) on {:#x}-{:#x}", v.start, v.end),
                    nr: libc::SYS_madvise,
                    args: [v.start, v.end - v.start, advice as u64, 0, 0, 0],
                });
            }
        }
    }
    after.extend(closes);
    r.call_many(code, s, room, &after)?;
    for v in p.vmas.iter().filter(|v| !is_special(v.kind)) {
        let len = v.end - v.start;
        // Locked memory may exceed what RLIMIT_MEMLOCK allows the restorer:
        // the mapping is then restored unlocked, and said so.
        if v.flags & VMAF_LOCKED != 0 && r.syscall(libc::SYS_mlock, &[v.start, len])? < 0 {
            tracing::warn!(
                "pid {pid}: mapping {:#x}-{:#x} restored without mlock",
                v.start,
                v.end
            );
        }
    }
    set_mm_map(r, s, p)?;
    restore_mm_state(r, &p.mm_state)?;
    Ok(vdso)
}

/// Bytes of page data from which a thread of ckpt copies part of a
/// process's pages beside the task (`read_pieces`).
const HELPED_FROM: u64 = 32 << 20;

/// Fills the task's memory: `pieces` (address, length, image offset),
/// in groups read by one `preadv` each (runs whose data lies back to back,
/// up to 256 runs or 16 MiB). From an image file, for 32 MiB of page data
/// or more, with a core to spare, a thread of ckpt takes groups too, the
/// next one free as the task does, and copies each from a mapping of the
/// file (`FileMap`, `process_vm_writev`: one copy too): one reader on one
/// core is bound by its copy.
fn read_pieces(
    r: &mut Remote,
    s: &Scratch,
    (code, room): (u64, u64),
    pieces: &[(u64, u64, u64)],
    from: &Inherited,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let (img_fd, store) = (from.img_fd, from.store);
    let mut groups = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let mut j = i + 1;
        let mut bytes = pieces[i].1;
        while j < pieces.len()
            && j - i < IOVS_PER_CALL
            && bytes + pieces[j].1 <= BATCH_BUF
            && pieces[j].2 == pieces[j - 1].2 + pieces[j - 1].1
        {
            bytes += pieces[j].1;
            j += 1;
        }
        groups.push(&pieces[i..j]);
        i = j;
    }
    let total: u64 = pieces.iter().map(|p| p.1).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // (One thread per core beside the task, up to 3.)
    let helpers = match from.image_map {
        Some(map) if total >= HELPED_FROM => vec![map; (cores - 1).min(3)],
        _ => Vec::new(),
    };
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
    let pid = r.tid();
    let (next, stop, helped) = (
        &AtomicUsize::new(0),
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    );
    let groups = &groups;
    let help = move |map: &crate::sys::FileMap| -> Result<()> {
        while let Some(&group) = groups.get(next.fetch_add(1, Relaxed)) {
            if stop.load(Relaxed) {
                break;
            }
            let last = group[group.len() - 1];
            store.wait(last.2 + last.1)?;
            let runs: Vec<(u64, u64)> = group.iter().map(|&(a, l, _)| (a, l)).collect();
            map.write_process_runs(pid, group[0].2, &runs)
                .ctx(pid, || {
                    format!("write the pages at {:#x} from the image", group[0].0)
                })?;
            helped.fetch_add(runs.iter().map(|r| r.1).sum(), Relaxed);
        }
        Ok(())
    };
    std::thread::scope(|sc| {
        let helping: Vec<_> = helpers
            .into_iter()
            .map(|map| {
                sc.spawn(move || {
                    let r = help(map);
                    stop.fetch_or(r.is_err(), Relaxed);
                    r
                })
            })
            .collect();
        let mut reported = 0;
        let mut report_helped = |progress: &mut dyn FnMut(u64)| {
            let now = helped.load(Relaxed);
            progress(now - reported);
            reported = now;
        };
        let mine = (|| -> Result<()> {
            // Each group's memory is populated first (MADV_POPULATE_WRITE, in one
            // batch of calls): faulting pages in one by one from inside preadv's
            // copy costs far more (1 GiB: 0.78 s read into unpopulated memory,
            // 0.62 s populated then read; 10,000 one-page mappings: 50 ms -> 35).
            // Best effort: where it fails (a kernel before 5.14), reads fault.
            let mut populate = code != 0;
            while let Some(&group) = groups.get(next.fetch_add(1, Relaxed)) {
                if stop.load(Relaxed) {
                    break;
                }
                let last = group[group.len() - 1];
                store.wait(last.2 + last.1)?;
                if populate {
                    let fill = populate_calls(group);
                    if !fill.is_empty() {
                        populate = r.call_many(code, s, room, &fill).is_ok();
                    }
                }
                let got = if group.len() == 1 {
                    0
                } else {
                    let runs: Vec<(u64, u64)> = group.iter().map(|&(a, l, _)| (a, l)).collect();
                    s.write(0, &iovecs(&runs))?;
                    r.call(
                        "preadv(image)",
                        libc::SYS_preadv,
                        &[img_fd as u64, s.addr, group.len() as u64, group[0].2, 0],
                    )?
                };
                progress(got);
                // What one call did not read (a single run, or a short read).
                let mut left = got;
                for &(a, l, off) in group {
                    let skip = left.min(l);
                    left -= skip;
                    let mut done = skip;
                    while done < l {
                        let n = r.call(
                            "pread64(image)",
                            libc::SYS_pread64,
                            &[img_fd as u64, a + done, l - done, off + done],
                        )?;
                        if n == 0 {
                            return Err(Error::Refused(format!(
                                "image ends inside the page data for {a:#x}"
                            )));
                        }
                        done += n;
                        progress(n);
                    }
                }
                for &(_, l, off) in group {
                    store.release(off, l);
                }
                report_helped(progress);
            }
            Ok(())
        })();
        stop.fetch_or(mine.is_err(), Relaxed);
        let theirs = helping.into_iter().try_for_each(|t| {
            t.join()
                .unwrap_or_else(|_| Err(Error::Refused("a page copying thread panicked".into())))
        });
        report_helped(progress);
        mine.and(theirs)
    })
}

/// Pages below which a run of memory is not populated before its read:
/// one call per scattered page costs more than its fault (64 GiB with one
/// page in 512 written: restore 0.17 s -> 0.22 s when populated).
const POPULATE_MIN: u64 = 16 * PAGE;

/// MADV_POPULATE_WRITE over the memory of `pieces` (addr, len, file
/// offset), one call per run of adjacent addresses of `POPULATE_MIN` or
/// more.
fn populate_calls(pieces: &[(u64, u64, u64)]) -> Vec<Call> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &(a, l, _) in pieces {
        match ranges.last_mut() {
            Some(r) if r.1 == a => r.1 += l,
            _ => ranges.push((a, a + l)),
        }
    }
    ranges
        .into_iter()
        .filter(|(a, b)| b - a >= POPULATE_MIN)
        .map(|(a, b)| Call {
            name: format!("madvise(MADV_POPULATE_WRITE) on {a:#x}-{b:#x}"),
            nr: libc::SYS_madvise,
            args: [a, b - a, libc::MADV_POPULATE_WRITE as u64, 0, 0, 0],
        })
        .collect()
}

fn set_mm_map(r: &mut Remote, s: &Scratch, p: &ProcessImage) -> Result<()> {
    let m = &p.mm;
    let auxv = &m.auxv.0;
    if auxv.len() > 4096 || !auxv.len().is_multiple_of(8) {
        return Err(Error::Refused(format!(
            "auxv of {} bytes in image is invalid",
            auxv.len()
        )));
    }
    let exe_fd = if p.process.exe.0.is_empty() {
        None
    } else {
        remote_open(r, s, &p.process.exe.0, libc::O_RDONLY).ok()
    };
    let build = |exe: u32| {
        let mut b = Vec::with_capacity(104 + auxv.len());
        for v in [
            m.start_code,
            m.end_code,
            m.start_data,
            m.end_data,
            m.start_brk,
            m.brk,
            m.start_stack,
            m.arg_start,
            m.arg_end,
            m.env_start,
            m.env_end,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(s.addr + 104).to_le_bytes());
        b.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        b.extend_from_slice(&exe.to_le_bytes());
        debug_assert_eq!(b.len(), 104);
        b.extend_from_slice(auxv);
        b
    };
    let mut result = Err(Error::Refused("PR_SET_MM_MAP not attempted".into()));
    for exe in [exe_fd.map(|f| f as u32), None] {
        if exe.is_none() && result.is_ok() {
            break;
        }
        s.write(0, &build(exe.unwrap_or(u32::MAX)))?;
        result = r.call(
            "prctl(PR_SET_MM_MAP)",
            libc::SYS_prctl,
            &[PR_SET_MM, PR_SET_MM_MAP, s.addr, 104, 0],
        );
        if result.is_ok() {
            break;
        }
        if exe.is_some() {
            tracing::warn!(
                "PR_SET_MM_MAP with the executable failed; /proc/PID/exe will name ckpt"
            );
        }
    }
    if let Some(fd) = exe_fd {
        r.call("close", libc::SYS_close, &[fd])?;
    }
    result.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    /// Pieces hold at most the size given, cut runs where it falls, and
    /// put back together are the runs.
    #[test]
    fn pieces_cut_runs_at_the_size() {
        let runs = [(0x1000, 3 * PAGE), (0x10_0000, PAGE), (0x20_0000, 6 * PAGE)];
        let p = pieces(&runs, 4 * PAGE);
        assert_eq!(
            p,
            [
                vec![(0x1000, 3 * PAGE), (0x10_0000, PAGE)],
                vec![(0x20_0000, 4 * PAGE)],
                vec![(0x20_0000 + 4 * PAGE, 2 * PAGE)],
            ]
        );
        assert_eq!(pieces(&[(0, 4 * PAGE)], 4 * PAGE), [vec![(0, 4 * PAGE)]]);
    }

    /// Two lanes copy the runs of many records out of a process's memory
    /// (ours) into the file at the offsets given, and each checksum is of
    /// its record's bytes.
    #[test]
    fn lanes_write_every_record_at_its_offset() {
        let mem: Vec<u8> = (0..40 * PAGE as usize)
            .map(|i| (i * 7 / 4096 + i) as u8)
            .collect();
        let base = mem.as_ptr() as u64;
        let batches: Vec<Batch> = (0..10)
            .map(|i| Batch {
                // Two runs a record, out of order in memory.
                runs: vec![
                    (base + (39 - i) * PAGE, PAGE),
                    (base + i * 2 * PAGE, 2 * PAGE),
                ],
                pages: 3,
                by_task: true,
                early: false,
                vma: base,
            })
            .collect();
        let refs: Vec<&Batch> = batches.iter().collect();
        let layout: Vec<(u64, u64, u64)> =
            (0..10).map(|i| (0, (9 - i) * 4 * PAGE, 3 * PAGE)).collect();
        let f = tempfile_rw();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let pid = std::process::id() as Pid;
        let mut reported = 0;
        let crcs = write_in_lanes(pid, fd, &refs, &layout, 2, &mut |n| {
            reported += n;
            Ok(())
        })
        .unwrap();
        assert_eq!(reported, 30 * PAGE);
        let file = std::fs::read(format!("/proc/self/fd/{fd}")).unwrap();
        for (i, b) in batches.iter().enumerate() {
            let want: Vec<u8> = b
                .runs
                .iter()
                .flat_map(|&(a, l)| mem[(a - base) as usize..(a - base + l) as usize].to_vec())
                .collect();
            let at = layout[i].1 as usize;
            assert_eq!(&file[at..at + want.len()], &want[..], "record {i}");
            assert_eq!(crcs[i], crc32c::crc32c(&want), "checksum of record {i}");
        }
    }

    /// A lane that cannot read the memory fails the whole write, with the
    /// address, and the progress callback's error stops it.
    #[test]
    fn lanes_fail_on_unreadable_memory_and_on_cancel() {
        let f = tempfile_rw();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let pid = std::process::id() as Pid;
        let mem = vec![1u8; 8 * PAGE as usize];
        let good = Batch {
            runs: vec![(mem.as_ptr() as u64, 8 * PAGE)],
            pages: 8,
            by_task: true,
            early: false,
            vma: 0,
        };
        let bad = Batch {
            runs: vec![(PAGE, PAGE)],
            pages: 1,
            ..good.clone()
        };
        let layout = [(0, 0, 8 * PAGE), (0, 8 * PAGE, PAGE)];
        let e = write_in_lanes(pid, fd, &[&good, &bad], &layout, 2, &mut |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0x1000"), "{e}");
        let e = write_in_lanes(pid, fd, &[&good, &good], &layout, 2, &mut |_| {
            Err(Error::Interrupted)
        });
        assert!(matches!(e, Err(Error::Interrupted)), "{e:?}");
    }

    /// An unlinked file open read-write, for the lanes to write into.
    fn tempfile_rw() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "ckpt-lanes-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn job(start: u64, end: u64, file: bool) -> ScanJob {
        ScanJob { start, end, file }
    }

    /// Large anonymous mappings are scanned without PAGE_IS_FILE, backed
    /// ones with it; small anonymous ones ride along with whatever is next
    /// to them, so many small mappings make one call.
    #[test]
    fn scan_jobs_ask_file_pages_only_for_backed_mappings() {
        assert_eq!(scan_jobs(&[]), []);
        // Small ones alone: one call, without file pages.
        let small: Vec<_> = (0..100)
            .map(|i| (i * 2 * PAGE, i * 2 * PAGE + PAGE, false))
            .collect();
        assert_eq!(scan_jobs(&small), [job(0, 199 * PAGE, false)]);
        // Binary (backed), heap and small anon, a large anon, a library.
        let vmas = [
            (0x1000, 0x5000, true),
            (0x5000, 0x6000, false),
            (0x10_0000, 0x10_0000 + 64 * M, false),
            (0x10_0000 + 64 * M, 0x10_0000 + 65 * M, false),
            (0x8000_0000, 0x8000_0000 + 4 * M, true),
            (0x9000_0000, 0x9000_0000 + PAGE, false),
        ];
        assert_eq!(
            scan_jobs(&vmas),
            [
                job(0x1000, 0x6000, true),
                job(0x10_0000, 0x10_0000 + 65 * M, false),
                job(0x8000_0000, 0x9000_0000 + PAGE, true),
            ]
        );
        // Every backed mapping is in a call that reports file pages.
        for &(s, e, backed) in &vmas {
            let j = scan_jobs(&vmas)
                .into_iter()
                .find(|j| j.start <= s && e <= j.end);
            assert!(j.is_some_and(|j| j.file || !backed), "{s:#x}..{e:#x}");
        }
    }

    /// Adjacent pieces (one-page mappings side by side) make one populate
    /// call; scattered pages and short runs make none.
    #[test]
    fn populate_calls_cover_long_runs_only() {
        let side_by_side: Vec<_> = (0..256)
            .map(|i| (0x10000 + i * PAGE, PAGE, i * PAGE))
            .collect();
        let calls = populate_calls(&side_by_side);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].nr, libc::SYS_madvise);
        assert_eq!(
            calls[0].args[..3],
            [0x10000, 256 * PAGE, libc::MADV_POPULATE_WRITE as u64]
        );
        let scattered: Vec<_> = (0..256).map(|i| (i * 512 * PAGE, PAGE, i * PAGE)).collect();
        assert!(populate_calls(&scattered).is_empty());
        let mixed = [
            (0, POPULATE_MIN - PAGE, 0),
            (M, POPULATE_MIN, 0),
            (M + POPULATE_MIN, PAGE, 0),
        ];
        let calls = populate_calls(&mixed);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].args[..2], [M, POPULATE_MIN + PAGE]);
    }
}
