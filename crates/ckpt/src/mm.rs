//! The address space: mappings, page contents, mm fields. Checkpoint reads
//! /proc maps + pagemap and saves only pages that exist and are not clean
//! copies of a file; restore rebuilds every mapping from outside with
//! injected syscalls and has the task read its pages straight from the image.

use crate::checkpoint::Sink;
use crate::error::{Ctx, Error, Result};
use crate::model::ProcessImage;
use crate::procfs::{self, MapEntry, PM_FILE, PM_PRESENT, PM_SWAP};
use crate::remote::Remote;
use crate::sys::Pid;
use crate::task::Scratch;
use ckpt_image::*;
use std::io::Write;
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

/// Shared memory objects (shared anonymous regions, memfds) of a whole
/// tree, by (dev, ino), with a place to read each one's content from.
#[derive(Default)]
pub struct ShmemTable {
    pub objs: Vec<(u64, u64, Shmem, String)>,
}

impl ShmemTable {
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
        if let Some(o) = self.objs.iter().find(|o| o.0 == dev && o.1 == ino) {
            return Ok(o.2.id);
        }
        let size = std::fs::metadata(&source)
            .map(|m| std::os::unix::fs::MetadataExt::size(&m))
            .map_err(|e| Error::Sys {
                pid: 0,
                what: format!("stat {source}"),
                source: e,
            })?;
        let id = self.objs.len() as u32 + 1;
        self.objs.push((
            dev,
            ino,
            Shmem {
                id,
                kind,
                size,
                name: crate::task::text(name),
            },
            source,
        ));
        Ok(id)
    }

    /// Writes each object and its data pages (only the ranges that hold
    /// data: holes are found with SEEK_DATA/SEEK_HOLE).
    pub fn dump<W: Write>(&self, w: &mut ImageWriter<W>) -> Result<u64> {
        let mut pages = 0;
        for (_, _, shm, source) in &self.objs {
            w.write(shm).map_err(Error::Write)?;
            let f = std::fs::File::open(source).map_err(|e| Error::Sys {
                pid: 0,
                what: format!("open {source}"),
                source: e,
            })?;
            let mut off = 0u64;
            let size = crate::align_up(shm.size);
            while off < size {
                let Some((start, end)) = crate::sys::next_data(&f, off, size) else {
                    break;
                };
                let mut a = start & !(PAGE - 1);
                let end = crate::align_up(end).min(size);
                while a < end {
                    let n = (end - a).min(CHUNK_PAGES * PAGE);
                    let mut buf = vec![0u8; n as usize];
                    f.read_exact_at(&mut buf, a).map_err(|e| Error::Sys {
                        pid: 0,
                        what: format!("read {source}"),
                        source: e,
                    })?;
                    w.write_pages_flags(a, &buf, PAGES_SHMEM)
                        .map_err(Error::Write)?;
                    pages += n / PAGE;
                    a += n;
                }
                off = end;
            }
        }
        Ok(pages)
    }
}

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
            String::from_utf8_lossy(&m.path)
        ),
        reason: reason.into(),
    };
    let mut obj = 0;
    let kind =
        match path {
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
            p if (p.starts_with(b"/dev/zero") && m.shared)
                || p.starts_with(b"/memfd:")
                || (p.starts_with(b"[anon_shmem")) =>
            {
                let k = if p.starts_with(b"/memfd:") {
                    SHMEM_MEMFD
                } else {
                    SHMEM_ANON
                };
                let source = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                // A memfd keeps its name (memfd_create adds "memfd:" again).
                let name = p.strip_prefix(b"/memfd:").unwrap_or(p);
                obj = shm.id(m.dev, m.ino, k, name, source)?;
                VMA_SHMEM
            }
            p if p.starts_with(b"[anon:") || p.is_empty() => VMA_ANON,
            p if p.starts_with(b"/") && m.ino != 0 && !(m.shared && deleted) => VMA_FILE,
            _ => return Err(unsupported(
                "deleted shared file mappings and unknown special mappings are not supported yet",
            )),
        };
    let mut flags = 0;
    if m.shared {
        flags |= VMAF_SHARED;
    }
    if m.has_flag(b"gd") {
        flags |= VMAF_GROWSDOWN;
    }
    if deleted && kind == VMA_FILE {
        flags |= VMAF_DELETED;
    }
    if m.has_flag(b"dc") {
        flags |= VMAF_DONTFORK;
    }
    if m.has_flag(b"lo") {
        flags |= VMAF_LOCKED;
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

/// Whether a page of a private, non-special mapping must be saved, from
/// its pagemap entry.
fn page_needed(v: &Vma, pm: u64) -> bool {
    if pm & (PM_PRESENT | PM_SWAP) == 0 {
        return false;
    }
    match v.kind {
        // A private file (or memfd) mapping: only copied-on-write pages are
        // anonymous; the rest are the file's pages and come back from it.
        VMA_FILE | VMA_SHMEM if v.flags & VMAF_DELETED == 0 => pm & PM_FILE == 0,
        _ => true,
    }
}

/// Saved page statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PageStats {
    pub pages: u64,
    pub zero_skipped: u64,
}

/// One copy per page: the frozen task itself `pwrite`s its pages into the
/// image file (an fd it opened on ckpt's image through /proc), straight
/// from its memory to the page cache; ckpt only writes the record headers
/// and checksums the data through a read-only mapping of the file.
pub struct Direct<'a> {
    pub remote: &'a mut Remote,
    /// The image, as an fd number in the task.
    pub tracee_fd: u64,
    /// The image, as an fd of ours (opened read-write, for the checksum).
    pub image_fd: i32,
    /// PFN of the zero page: present pages that map it hold only zeros.
    pub zero_pfn: Option<u64>,
}

const PFN_MASK: u64 = (1 << 55) - 1;

/// Writes the pages of every mapping that must be saved. Anonymous pages
/// that hold only zeros are skipped: a fresh mapping reads as zeros anyway.
/// With `direct`, readable mappings are written by the task itself.
pub fn dump_pages<S: Sink>(
    pid: Pid,
    vmas: &[Vma],
    w: &mut ImageWriter<S>,
    mut direct: Option<&mut Direct>,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<PageStats> {
    let pm =
        std::fs::File::open(format!("/proc/{pid}/pagemap")).ctx(pid, || "open pagemap".into())?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ctx(pid, || "open mem".into())?;
    let mut stats = PageStats::default();
    let mut buf = Vec::new();
    // Mappings with no resident or swapped page (huge PROT_NONE
    // reservations, untouched heaps) are not scanned at all.
    // (A mapping may have merged with a neighbour since it was recorded,
    // e.g. with a scratch page of ours: overlap is what counts.)
    let present: Vec<(u64, u64)> = procfs::maps(pid)
        .ctx(pid, || "read /proc smaps".into())?
        .iter()
        .filter(|m| m.present_kb > 0)
        .map(|m| (m.start, m.end))
        .collect();
    let has_pages = |v: &Vma| {
        let i = present.partition_point(|&(_, end)| end <= v.start);
        present.get(i).is_some_and(|&(start, _)| start < v.end)
    };
    for v in vmas {
        // Shared mappings' data lives in their file or shmem object.
        if is_special(v.kind) || v.flags & VMAF_SHARED != 0 || !has_pages(v) {
            continue;
        }
        let skip_zero = !matches!(v.kind, VMA_FILE | VMA_SHMEM) || v.flags & VMAF_DELETED != 0;
        // The task cannot write from memory it cannot read (PROT_NONE...).
        let by_task = v.prot & libc::PROT_READ as u32 != 0;
        let zero_pfn = direct
            .as_ref()
            .and_then(|d| d.zero_pfn)
            .filter(|_| skip_zero && by_task);
        let needed = |e: u64| page_needed(v, e) && zero_pfn != Some(e & PFN_MASK);
        let mut addr = v.start;
        while addr < v.end {
            let end = (addr + CHUNK_PAGES * PAGE).min(v.end);
            let entries = procfs::pagemap(&pm, addr, end)
                .ctx(pid, || format!("read pagemap at {addr:#x}"))?;
            let mut i = 0;
            while i < entries.len() {
                if !needed(entries[i]) {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j < entries.len() && needed(entries[j]) {
                    j += 1;
                }
                let a = addr + i as u64 * PAGE;
                let len = (j - i) as u64 * PAGE;
                match direct.as_deref_mut() {
                    Some(d) if by_task => {
                        write_by_task(w, d, a, len)?;
                        stats.pages += len / PAGE;
                    }
                    _ => {
                        buf.resize(len as usize, 0);
                        mem.read_exact_at(&mut buf, a)
                            .ctx(pid, || format!("read memory {a:#x}..{:#x}", a + len))?;
                        write_run(w, a, &buf, skip_zero, &mut stats)?;
                    }
                }
                progress(len)?;
                i = j;
            }
            addr = end;
        }
    }
    Ok(stats)
}

/// Has the task write `len` bytes of its memory at `addr` as one page record.
fn write_by_task<S: Sink>(
    w: &mut ImageWriter<S>,
    d: &mut Direct,
    addr: u64,
    len: u64,
) -> Result<()> {
    let off = w
        .begin_external_pages(addr, len / PAGE, 0)
        .map_err(Error::Write)?;
    let mut done = 0;
    while done < len {
        let n = d.remote.call(
            "pwrite64(image)",
            libc::SYS_pwrite64,
            &[d.tracee_fd, addr + done, len - done, off + done],
        )?;
        if n == 0 {
            return Err(Error::Write(std::io::ErrorKind::WriteZero.into()));
        }
        done += n;
    }
    let crc = crate::sys::crc32c_of_range(d.image_fd, off, len as usize).map_err(Error::Write)?;
    w.end_external_pages(len, crc);
    let pos = w.offset();
    w.get_mut().seek_to(pos).map_err(Error::Write)
}

fn write_run<W: Write>(
    w: &mut ImageWriter<W>,
    addr: u64,
    data: &[u8],
    skip_zero: bool,
    stats: &mut PageStats,
) -> Result<()> {
    if !skip_zero {
        stats.pages += data.len() as u64 / PAGE;
        return w.write_pages(addr, data).map_err(Error::Write);
    }
    let pages: Vec<&[u8]> = data.chunks(PAGE as usize).collect();
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
        let s = i * PAGE as usize;
        let e = j * PAGE as usize;
        w.write_pages(addr + s as u64, &data[s..e])
            .map_err(Error::Write)?;
        stats.pages += (j - i) as u64;
        i = j;
    }
    Ok(())
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
            String::from_utf8_lossy(path)
        )));
    }
    s.write(0, &p)?;
    r.call(
        &format!("open {}", String::from_utf8_lossy(path)),
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
fn move_vdso(r: &mut Remote, cur: &[MapEntry], p: &ProcessImage) -> Result<()> {
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
    for (from, to, len) in moves {
        r.call(
            "mremap(vdso)",
            libc::SYS_mremap,
            &[from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to],
        )?;
    }
    Ok(())
}

/// What a restored process inherited from the restorer for its rebuild.
#[derive(Clone, Copy)]
pub struct Inherited<'a> {
    /// The trampoline mapping (a `syscall` instruction, then scratch).
    pub tramp: u64,
    pub tramp_len: u64,
    /// The image file, for the task to read its pages from.
    pub img_fd: i32,
    /// The fd of each shared memory object, by id.
    pub shmem_fd: &'a dyn Fn(u32) -> Option<i32>,
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
) -> Result<()> {
    let Inherited {
        tramp,
        tramp_len,
        img_fd,
        shmem_fd,
    } = *from;
    let pid = r.tid();
    let cur = procfs::maps(pid).ctx(pid, || "read maps".into())?;
    for m in &cur {
        if (m.start >= tramp && m.end <= tramp + tramp_len) || kind_of_special(&m.path).is_some() {
            continue;
        }
        r.call("munmap", libc::SYS_munmap, &[m.start, m.size()])?;
    }
    move_vdso(r, &cur, p)?;

    let mut opened: Vec<(Vec<u8>, i32, u64)> = Vec::new();
    let mut widened = Vec::new();
    for v in p.vmas.iter().filter(|v| !is_special(v.kind)) {
        let len = v.end - v.start;
        let fill = p
            .pages
            .iter()
            .any(|run| overlaps((run.addr, run.addr + run.nr_pages * PAGE), (v.start, v.end)));
        let mut prot = v.prot as u64;
        if fill && v.prot & libc::PROT_WRITE as u32 == 0 {
            prot |= libc::PROT_WRITE as u64;
            widened.push(v);
        }
        let shared = v.flags & VMAF_SHARED != 0;
        let mut flags = libc::MAP_FIXED as u64
            | if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            } as u64;
        if v.flags & VMAF_GROWSDOWN != 0 {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        let (fd, off) = if v.kind == VMA_SHMEM {
            let fd = shmem_fd(v.obj).ok_or_else(|| {
                Error::Refused(format!(
                    "mapping {:#x} names a missing shared memory object {}",
                    v.start, v.obj
                ))
            })?;
            (fd as u64, v.pgoff)
        } else if v.kind == VMA_FILE && v.flags & VMAF_DELETED == 0 {
            let mode = if shared && v.prot & libc::PROT_WRITE as u32 != 0 {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
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
        let a = r.call(
            "mmap",
            libc::SYS_mmap,
            &[v.start, len, prot, flags, fd, off],
        )?;
        if a != v.start {
            return Err(Error::Refused(format!(
                "mapping {:#x} landed at {a:#x}",
                v.start
            )));
        }
    }
    for (_, _, fd) in opened {
        r.call("close", libc::SYS_close, &[fd])?;
    }
    // One copy per page: the task reads its own pages from the image file.
    for run in &p.pages {
        let mut done = 0;
        let total = run.nr_pages * PAGE;
        while done < total {
            let n = r.call(
                "pread64(image)",
                libc::SYS_pread64,
                &[
                    img_fd as u64,
                    run.addr + done,
                    total - done,
                    run.data_offset + done,
                ],
            )?;
            if n == 0 {
                return Err(Error::Refused(format!(
                    "image ends inside the page data for {:#x}",
                    run.addr
                )));
            }
            done += n;
            progress(n);
        }
    }
    for v in widened {
        r.call(
            "mprotect",
            libc::SYS_mprotect,
            &[v.start, v.end - v.start, v.prot as u64],
        )?;
    }
    for v in p.vmas.iter().filter(|v| !is_special(v.kind)) {
        let len = v.end - v.start;
        if v.flags & VMAF_DONTFORK != 0 {
            r.call(
                "madvise(MADV_DONTFORK)",
                libc::SYS_madvise,
                &[v.start, len, libc::MADV_DONTFORK as u64],
            )?;
        }
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
    set_mm_map(r, s, p)
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
