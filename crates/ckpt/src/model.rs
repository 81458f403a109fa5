//! The in-memory form of an image: plain records grouped per process and
//! thread, and the objects processes share (open files, pipes, shared
//! memory). Checkpoint fills one and writes it; restart reads and validates
//! one completely before creating anything.

use crate::error::{Error, Result};
use ckpt_image::*;
use std::io::{Read, Write};

/// One thread's saved state.
#[derive(Debug, Clone, Default)]
pub struct ThreadImage {
    pub thread: Thread,
    pub regs: X86Regs,
    pub xstate: X86Xstate,
    pub debug: X86DebugRegs,
}

/// A run of saved pages and where its data lies in the image stream.
#[derive(Debug, Clone, Copy)]
pub struct PageRun {
    /// Virtual address (process pages) or offset in the object (shmem pages).
    pub addr: u64,
    pub nr_pages: u64,
    pub data_offset: u64,
}

/// One process's saved state. A zombie has only `process`.
#[derive(Debug, Clone, Default)]
pub struct ProcessImage {
    pub process: Process,
    /// Set when the working directory was removed.
    pub cwd_removed: Option<CwdRemoved>,
    pub creds: Creds,
    pub rlimits: Rlimits,
    pub sigactions: SigActions,
    pub itimers: Itimers,
    pub shared_pending: SharedPending,
    pub cgroups: Cgroups,
    pub fds: Vec<Fd>,
    /// Set when the fd table is the parent's.
    pub files_shared: Option<FilesShared>,
    pub mm: Mm,
    pub mm_state: MmState,
    pub vmas: Vec<Vma>,
    /// Page ranges still shared copy-on-write with the parent.
    pub cow: Vec<CowShared>,
    /// Records of per-process kinds (`is_process_kind_record`), in order;
    /// each kind reads its own.
    pub extra: Vec<AnyRecord>,
    pub threads: Vec<ThreadImage>,
    pub pages: Vec<PageRun>,
}

impl ProcessImage {
    pub fn is_zombie(&self) -> bool {
        self.process.state == PROC_ZOMBIE
    }
    pub fn pid(&self) -> i32 {
        self.process.pid
    }
}

/// A shared memory object and its saved pages.
#[derive(Debug, Clone, Default)]
pub struct ShmemImage {
    pub shmem: Shmem,
    /// Mode, owner and seals.
    pub attrs: Option<ShmemAttrs>,
    pub pages: Vec<PageRun>,
}

/// Whose pages a page plan holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanOwner {
    /// Index in `Image::shmems`.
    Shmem(usize),
    /// Index in `Image::processes`.
    Process(usize),
}

/// One record of the page section, announced by a `page-plan` record.
#[derive(Debug, Clone)]
pub struct Plan {
    pub owner: PlanOwner,
    pub flags: u32,
    pub addr: u64,
    pub nr_pages: u64,
    /// Where its runs are in the owner's `pages`.
    pub first_run: usize,
    pub nr_runs: usize,
    /// Where its data goes: the stream offset of an uncompressed record's
    /// data, or for a compressed image the offset in the decoded pages.
    pub data_offset: u64,
}

/// The page section that follows the metadata of an image written with
/// page plans (see `ckpt_image::MetaEnd`).
#[derive(Debug, Clone, Default)]
pub struct PageSection {
    pub compression: u32,
    /// In the order of the section.
    pub plans: Vec<Plan>,
    /// Bytes of the decoded pages (compressed image), or the stream offset
    /// where the section ends (uncompressed).
    pub end: u64,
}

/// A whole image. Processes come parents first (pre-order from the root).
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub head: Head,
    pub arch: ArchX86_64,
    pub files: Vec<File>,
    pub file_attrs: Vec<FileAttr>,
    pub file_owners: Vec<FileOwner>,
    pub pipes: Vec<Pipe>,
    /// Records of fd kinds about shared objects (`is_object_record`), in
    /// order; each kind reads its own (see `files::kind`).
    pub objects: Vec<AnyRecord>,
    pub shmems: Vec<ShmemImage>,
    pub processes: Vec<ProcessImage>,
    /// Set for images whose pages follow all the metadata.
    pub section: Option<PageSection>,
}

impl ProcessImage {
    /// Writes every metadata record of the process (pages are written by the caller).
    pub fn write_meta<W: Write>(&self, w: &mut ImageWriter<W>) -> std::io::Result<()> {
        w.write(&self.process)?;
        if self.is_zombie() {
            return Ok(());
        }
        if let Some(c) = &self.cwd_removed {
            w.write(c)?;
        }
        w.write(&self.creds)?;
        w.write(&self.rlimits)?;
        w.write(&self.sigactions)?;
        w.write(&self.itimers)?;
        w.write(&self.shared_pending)?;
        w.write(&self.cgroups)?;
        for f in &self.fds {
            w.write(f)?;
        }
        if let Some(s) = &self.files_shared {
            w.write(s)?;
        }
        for x in &self.extra {
            w.write_any(x)?;
        }
        w.write(&self.mm)?;
        w.write(&self.mm_state)?;
        for v in &self.vmas {
            w.write(v)?;
        }
        for c in &self.cow {
            w.write(c)?;
        }
        for t in &self.threads {
            w.write(&t.thread)?;
            w.write(&t.regs)?;
            w.write(&t.xstate)?;
            w.write(&t.debug)?;
        }
        Ok(())
    }
}

fn misplaced(r: &RawRecord) -> Error {
    corrupt(
        r,
        "record out of place (no process, thread or object record before it)".into(),
    )
}

fn corrupt(r: &RawRecord, what: String) -> Error {
    Error::Image(ImageError::Corrupt {
        offset: r.offset,
        record: format!("{} record", type_name(r.rtype)),
        what,
    })
}

/// Per-process records a live process has exactly once; a zombie has none.
const SINGLETONS: [u32; 8] = [
    T_CREDS,
    T_RLIMITS,
    T_SIGACTIONS,
    T_ITIMERS,
    T_SHARED_PENDING,
    T_CGROUPS,
    T_MM,
    T_MM_STATE,
];
/// Per-process records a live process may have, at most once.
const OPTIONALS: [u32; 2] = [T_CWD_REMOVED, T_FILES_SHARED];
/// Per-thread records every thread has exactly once.
const THREAD_RECORDS: [u32; 3] = [T_X86_REGS, T_X86_XSTATE, T_X86_DEBUGREGS];

/// Bookkeeping for the structural checks while an image is read: which
/// records the process being read has had so far.
#[derive(Default)]
struct Assembly {
    /// A process record was read and its process-end not yet.
    open: bool,
    /// Bit i: SINGLETONS[i] seen for the open process.
    singles: u32,
    /// Bit i: OPTIONALS[i] seen for the open process.
    optionals: u32,
    /// Per thread of the open process, bit i: THREAD_RECORDS[i] seen.
    threads: Vec<u32>,
    /// The image-end record was read: only the tail may follow.
    ended: bool,
    /// A page index read, whose `pages` record must come next.
    index: Option<(PageIndex, u64)>,
}

/// The runs an indexed `pages` record `all` holds, checked against it: they
/// start at its address, ascend without overlap and add up to its pages.
fn indexed_runs(index: &[IndexedRun], all: &PageRun) -> std::result::Result<Vec<PageRun>, String> {
    let mut out = Vec::with_capacity(index.len());
    let (mut data, mut next_free, mut total) = (all.data_offset, 0u64, 0u64);
    for (i, r) in index.iter().enumerate() {
        let n = r.nr_pages as u64;
        let end = r.addr.checked_add(n * PAGE_SIZE);
        if n == 0 || !r.addr.is_multiple_of(PAGE_SIZE) || end.is_none() {
            return Err(format!(
                "page index run {i} ({:#x}, {n} pages) is malformed",
                r.addr
            ));
        }
        if (i == 0 && r.addr != all.addr) || r.addr < next_free {
            return Err(format!(
                "page index run {i} at {:#x} is out of order or overlaps the one before",
                r.addr
            ));
        }
        total += n;
        if total > all.nr_pages {
            return Err(format!(
                "the page index holds more pages than its pages record ({})",
                all.nr_pages
            ));
        }
        out.push(PageRun {
            addr: r.addr,
            nr_pages: n,
            data_offset: data,
        });
        data += n * PAGE_SIZE;
        next_free = end.unwrap_or(u64::MAX);
    }
    if total != all.nr_pages {
        return Err(format!(
            "the page index holds {total} pages, its pages record {}",
            all.nr_pages
        ));
    }
    Ok(out)
}

fn mark(seen: &mut u32, kinds: &[u32], r: &RawRecord) -> Result<()> {
    let bit = 1
        << kinds
            .iter()
            .position(|&k| k == r.rtype)
            .expect("known kind");
    if *seen & bit != 0 {
        return Err(corrupt(
            r,
            "a second record of this kind for the same process or thread".into(),
        ));
    }
    *seen |= bit;
    Ok(())
}

impl Image {
    /// Reads and checks a whole image (including its checksum) into memory;
    /// page data is only located, not loaded. Structure is checked as it is
    /// read: objects before processes, every process closed by a
    /// process-end whose counts match what it holds, each per-process and
    /// per-thread record exactly once, and an image-end whose counts match,
    /// so an image cut short or with records removed is refused even when
    /// its checksum was made to fit.
    pub fn read<R: Read>(input: R) -> Result<Image> {
        Self::read_from(ImageReader::new(input))
    }

    /// `read` from a reader set up by the caller (e.g. with
    /// `ImageReader::with_page_data`).
    pub fn read_from<R: Read>(rd: ImageReader<R>) -> Result<Image> {
        let (img, mut rd, complete) = Self::read_meta(rd)?;
        if !complete {
            img.read_pages(&mut rd, |_, _| Ok(()))?;
        }
        Ok(img)
    }

    /// Reads an image's metadata, checked as `read` does: all of an image
    /// without a page section (then `true`), else up to its `meta-end`
    /// record, whose checksum vouches for everything before it; the page
    /// section is then read with `read_pages`.
    pub fn read_meta<R: Read>(mut rd: ImageReader<R>) -> Result<(Image, ImageReader<R>, bool)> {
        let mut img = Image::default();
        let mut plans: Vec<Plan> = Vec::new();
        let mut inline_pages = false;
        let mut have_arch = false;
        let mut asm = Assembly::default();
        let mut image_end: Option<(ImageEnd, RawRecord)> = None;
        while let Some(r) = rd.next_record()? {
            if r.rtype & T_OPTIONAL != 0 && type_name(r.rtype) == "unknown" {
                continue; // its writer said we may do without it
            }
            if asm.ended && r.rtype != T_TAIL {
                return Err(corrupt(&r, "record after the image-end record".into()));
            }
            let objects_allowed = img.processes.is_empty();
            if let Some((_, at)) = &asm.index {
                if r.rtype != T_PAGES {
                    return Err(corrupt(
                        &r,
                        format!(
                            "the page index at offset {at} is not followed by its pages record \
                             (image cut short or records reordered)"
                        ),
                    ));
                }
            }
            if (r.rtype == T_PAGES && !plans.is_empty()) || (r.rtype == T_PAGE_PLAN && inline_pages)
            {
                return Err(corrupt(
                    &r,
                    "page data inside the metadata of an image with page plans".into(),
                ));
            }
            match r.rtype {
                T_PAGE_INDEX => {
                    if !asm.open {
                        return Err(misplaced(&r));
                    }
                    asm.index = Some((r.decode()?, r.offset));
                }
                T_PAGE_PLAN => {
                    let plan: PagePlan = r.decode()?;
                    let owner = if asm.open {
                        let i = img.processes.len() - 1;
                        if img.processes[i].is_zombie() {
                            return Err(corrupt(&r, "page data for a zombie".into()));
                        }
                        PlanOwner::Process(i)
                    } else if objects_allowed && !img.shmems.is_empty() {
                        PlanOwner::Shmem(img.shmems.len() - 1)
                    } else {
                        return Err(misplaced(&r));
                    };
                    let early_ok = matches!(owner, PlanOwner::Process(_));
                    if plan.flags & !PLAN_EARLY != 0 || (plan.flags & PLAN_EARLY != 0 && !early_ok)
                    {
                        return Err(corrupt(&r, format!("unknown plan flags {:#x}", plan.flags)));
                    }
                    let total = plan
                        .runs
                        .iter()
                        .try_fold(0u64, |t, x| t.checked_add(x.nr_pages as u64))
                        .filter(|&t| t > 0 && t <= MAX_PAGES_PER_RECORD)
                        .ok_or_else(|| {
                            corrupt(&r, format!("a plan holds 1..={MAX_PAGES_PER_RECORD} pages"))
                        })?;
                    let all = PageRun {
                        addr: plan.runs[0].addr,
                        nr_pages: total,
                        data_offset: 0,
                    };
                    let runs = indexed_runs(&plan.runs, &all).map_err(|e| corrupt(&r, e))?;
                    let pages = match owner {
                        PlanOwner::Shmem(i) => &mut img.shmems[i].pages,
                        PlanOwner::Process(i) => &mut img.processes[i].pages,
                    };
                    plans.push(Plan {
                        owner,
                        flags: plan.flags,
                        addr: all.addr,
                        nr_pages: total,
                        first_run: pages.len(),
                        nr_runs: runs.len(),
                        data_offset: 0,
                    });
                    pages.extend(runs);
                }
                T_META_END => {
                    if asm.open {
                        return Err(corrupt(&r, "the metadata ends inside a process".into()));
                    }
                    let m: MetaEnd = r.decode()?;
                    if m.nr_plans as usize != plans.len() {
                        return Err(corrupt(
                            &r,
                            format!(
                                "it counts {} page plans, the image has {}",
                                m.nr_plans,
                                plans.len()
                            ),
                        ));
                    }
                    if !matches!(m.compression, COMPRESS_NONE | COMPRESS_LZ4 | COMPRESS_ZSTD) {
                        return Err(corrupt(
                            &r,
                            format!("unknown page compression {}", m.compression),
                        ));
                    }
                    if !have_arch {
                        break;
                    }
                    img.section = Some(img.lay_out(plans, m.compression, rd.offset()));
                    return Ok((img, rd, false));
                }
                T_HEAD => img.head = r.decode()?,
                T_ARCH_X86_64 => {
                    if have_arch {
                        return Err(corrupt(&r, "a second arch record".into()));
                    }
                    img.arch = r.decode()?;
                    have_arch = true;
                }
                T_PROCESS => {
                    if asm.open {
                        let last = img.processes.last().map(|p| p.pid()).unwrap_or(0);
                        return Err(corrupt(
                            &r,
                            format!("pid {last} has no process-end record before the next process (records removed?)"),
                        ));
                    }
                    asm = Assembly {
                        open: true,
                        ..Default::default()
                    };
                    img.processes.push(ProcessImage {
                        process: r.decode()?,
                        ..Default::default()
                    })
                }
                t if (matches!(
                    t,
                    T_FILE | T_PIPE | T_SHMEM | T_SHMEM_ATTRS | T_FILE_ATTR | T_FILE_OWNER
                ) || is_object_record(t))
                    && !objects_allowed =>
                {
                    return Err(corrupt(
                        &r,
                        "shared object record after the first process".into(),
                    ))
                }
                T_FILE => img.files.push(r.decode()?),
                T_FILE_ATTR => img.file_attrs.push(r.decode()?),
                T_FILE_OWNER => img.file_owners.push(r.decode()?),
                T_PIPE => img.pipes.push(r.decode()?),
                t if is_object_record(t) => img.objects.push(r.decode_any()?),
                T_SHMEM => img.shmems.push(ShmemImage {
                    shmem: r.decode()?,
                    attrs: None,
                    pages: Vec::new(),
                }),
                T_SHMEM_ATTRS => {
                    let g: ShmemAttrs = r.decode()?;
                    match img.shmems.last_mut() {
                        Some(s) if s.shmem.id == g.id => s.attrs = Some(g),
                        _ => return Err(misplaced(&r)),
                    }
                }
                T_TAIL => {}
                T_IMAGE_END => {
                    if asm.open {
                        return Err(corrupt(
                            &r,
                            "the last process has no process-end record".into(),
                        ));
                    }
                    asm.ended = true;
                    image_end = Some((r.decode()?, r));
                }
                T_PAGES => {
                    let Body::Pages { hdr, data_offset } = r.body else {
                        return Err(misplaced(&r));
                    };
                    let run = PageRun {
                        addr: hdr.addr,
                        nr_pages: hdr.nr_pages as u64,
                        data_offset,
                    };
                    if let Some((index, _)) = asm.index.take() {
                        if hdr.flags & PAGES_SHMEM != 0 {
                            return Err(misplaced(&r));
                        }
                        let p = img.processes.last_mut().filter(|_| asm.open);
                        let p = p.ok_or_else(|| misplaced(&r))?;
                        if p.is_zombie() {
                            return Err(corrupt(&r, "page data for a zombie".into()));
                        }
                        let runs = indexed_runs(&index.runs, &run).map_err(|e| corrupt(&r, e))?;
                        p.pages.extend(runs);
                        continue;
                    }
                    inline_pages = true;
                    if hdr.flags & PAGES_SHMEM != 0 {
                        if !objects_allowed {
                            return Err(misplaced(&r));
                        }
                        img.shmems
                            .last_mut()
                            .ok_or_else(|| misplaced(&r))?
                            .pages
                            .push(run);
                    } else {
                        let p = img.processes.last_mut().filter(|_| asm.open);
                        let p = p.ok_or_else(|| misplaced(&r))?;
                        if p.is_zombie() {
                            return Err(corrupt(&r, "page data for a zombie".into()));
                        }
                        p.pages.push(run);
                    }
                }
                T_PROCESS_END => {
                    let end: ProcessEnd = r.decode()?;
                    let p = img.processes.last().filter(|_| asm.open);
                    let p = p.ok_or_else(|| misplaced(&r))?;
                    check_process_end(p, &end, &asm).map_err(|what| corrupt(&r, what))?;
                    asm.open = false;
                }
                _ => {
                    let p = img.processes.last_mut().filter(|_| asm.open);
                    let p = p.ok_or_else(|| misplaced(&r))?;
                    if p.is_zombie() {
                        return Err(corrupt(
                            &r,
                            format!(
                                "pid {} is a zombie and can have no {} record",
                                p.pid(),
                                type_name(r.rtype)
                            ),
                        ));
                    }
                    match r.rtype {
                        T_CREDS | T_RLIMITS | T_SIGACTIONS | T_ITIMERS | T_SHARED_PENDING
                        | T_CGROUPS | T_MM | T_MM_STATE => mark(&mut asm.singles, &SINGLETONS, &r)?,
                        T_CWD_REMOVED | T_FILES_SHARED => mark(&mut asm.optionals, &OPTIONALS, &r)?,
                        _ => {}
                    }
                    match r.rtype {
                        T_CREDS => p.creds = r.decode()?,
                        T_CWD_REMOVED => p.cwd_removed = Some(r.decode()?),
                        T_RLIMITS => p.rlimits = r.decode()?,
                        T_SIGACTIONS => p.sigactions = r.decode()?,
                        T_ITIMERS => p.itimers = r.decode()?,
                        T_SHARED_PENDING => p.shared_pending = r.decode()?,
                        T_CGROUPS => p.cgroups = r.decode()?,
                        T_FD => p.fds.push(r.decode()?),
                        T_FILES_SHARED => p.files_shared = Some(r.decode()?),
                        T_MM => p.mm = r.decode()?,
                        T_MM_STATE => p.mm_state = r.decode()?,
                        T_VMA => p.vmas.push(r.decode()?),
                        T_COW_SHARED => p.cow.push(r.decode()?),
                        t if is_process_kind_record(t) => p.extra.push(r.decode_any()?),
                        T_THREAD => {
                            asm.threads.push(0);
                            p.threads.push(ThreadImage {
                                thread: r.decode()?,
                                ..Default::default()
                            })
                        }
                        T_X86_REGS | T_X86_XSTATE | T_X86_DEBUGREGS => {
                            let t = p.threads.last_mut().ok_or_else(|| misplaced(&r))?;
                            let seen = asm.threads.last_mut().expect("one per thread");
                            mark(seen, &THREAD_RECORDS, &r)?;
                            match r.rtype {
                                T_X86_REGS => t.regs = r.decode()?,
                                T_X86_XSTATE => t.xstate = r.decode()?,
                                _ => t.debug = r.decode()?,
                            }
                        }
                        _ => {
                            return Err(corrupt(
                                &r,
                                format!(
                                    "unknown record type {}; the image was written by a newer ckpt",
                                    r.rtype
                                ),
                            ))
                        }
                    }
                }
            }
        }
        if !have_arch {
            return Err(Error::Refused(
                "image has no x86_64 arch record; it was not written on x86_64".into(),
            ));
        }
        if asm.open {
            let last = img.processes.last().map(|p| p.pid()).unwrap_or(0);
            return Err(Error::Refused(format!(
                "pid {last} has no process-end record: the image was cut short"
            )));
        }
        let Some((end, r)) = image_end else {
            return Err(Error::Refused(
                "the image has no image-end record: it was cut short (or written by an older ckpt)"
                    .into(),
            ));
        };
        img.check_image_end(&end, &r)?;
        Ok((img, rd, true))
    }

    /// Checks the image-end record's counts against what was read.
    fn check_image_end(&self, end: &ImageEnd, r: &RawRecord) -> Result<()> {
        let shmem_pages: u64 = self
            .shmems
            .iter()
            .flat_map(|s| &s.pages)
            .map(|r| r.nr_pages)
            .sum();
        let counted = (
            self.processes.len() as u32,
            self.files.len() as u32,
            self.pipes.len() as u32,
            self.objects.len() as u32,
            self.shmems.len() as u32,
            shmem_pages,
        );
        let said = (
            end.nr_processes,
            end.nr_files,
            end.nr_pipes,
            end.nr_objects,
            end.nr_shmems,
            end.nr_shmem_pages,
        );
        if counted != said {
            return Err(corrupt(
                r,
                format!("the image holds (processes, files, pipes, kind objects, shmem objects, shmem pages) {counted:?} but its image-end record says {said:?}"),
            ));
        }
        Ok(())
    }

    /// Puts `plans` in the order of the page section (shmem objects',
    /// early ones, the rest) and gives each, and each of its runs, the
    /// offset of its data: in the stream, whose section starts at `start`,
    /// or in the decoded pages of a compressed image.
    fn lay_out(&mut self, plans: Vec<Plan>, compression: u32, start: u64) -> PageSection {
        let rank = |p: &Plan| match p.owner {
            PlanOwner::Shmem(_) => 0,
            PlanOwner::Process(_) if p.flags & PLAN_EARLY != 0 => 1,
            PlanOwner::Process(_) => 2,
        };
        let mut plans = plans;
        plans.sort_by_key(rank);
        let mut pos = if compression == COMPRESS_NONE {
            start
        } else {
            0
        };
        for p in &mut plans {
            let data = if compression == COMPRESS_NONE {
                align_up(pos + HDR_LEN + PAGES_HDR_LEN, PAGE_SIZE)
            } else {
                pos
            };
            p.data_offset = data;
            let runs = match p.owner {
                PlanOwner::Shmem(i) => &mut self.shmems[i].pages,
                PlanOwner::Process(i) => &mut self.processes[i].pages,
            };
            for run in &mut runs[p.first_run..p.first_run + p.nr_runs] {
                run.data_offset += data;
            }
            pos = data + p.nr_pages * PAGE_SIZE;
        }
        PageSection {
            compression,
            plans,
            end: pos,
        }
    }

    /// Reads the page section of an image read by `read_meta`, through its
    /// tail: each record must be the next plan's, which `f` is given with
    /// the record's compressed data (`None`: uncompressed, its data read
    /// by the reader already, see `ImageReader::with_page_data`).
    pub fn read_pages<R: Read>(
        &self,
        rd: &mut ImageReader<R>,
        mut f: impl FnMut(&Plan, Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        let section = self.section.as_ref().expect("an image with a page section");
        let mut next = section.plans.iter();
        let mut ended = false;
        while let Some(r) = rd.next_record()? {
            if r.rtype & T_OPTIONAL != 0 && type_name(r.rtype) == "unknown" {
                continue;
            }
            if ended && r.rtype != T_TAIL {
                return Err(corrupt(&r, "record after the image-end record".into()));
            }
            let shmem_flag = |p: &Plan| match p.owner {
                PlanOwner::Shmem(_) => PAGES_SHMEM,
                PlanOwner::Process(_) => 0,
            };
            match r.rtype {
                T_PAGES | T_PAGES_Z => {
                    let plan = next.next().ok_or_else(|| {
                        corrupt(&r, "more page records than the image has page plans".into())
                    })?;
                    let z = (r.rtype == T_PAGES_Z)
                        .then(|| r.decode::<PagesZ>())
                        .transpose()?;
                    let (addr, nr_pages, flags, offset) = match (&r.body, &z) {
                        (Body::Pages { hdr, data_offset }, None) => {
                            (hdr.addr, hdr.nr_pages, hdr.flags, *data_offset)
                        }
                        (_, Some(z)) => (z.addr, z.nr_pages, z.flags, plan.data_offset),
                        _ => return Err(misplaced(&r)),
                    };
                    if z.is_some() != (section.compression != COMPRESS_NONE) {
                        return Err(corrupt(
                            &r,
                            "page data compressed otherwise than the image says".into(),
                        ));
                    }
                    let said = (addr, nr_pages as u64, flags, offset);
                    let planned = (plan.addr, plan.nr_pages, shmem_flag(plan), plan.data_offset);
                    if said != planned {
                        return Err(corrupt(
                            &r,
                            format!(
                                "(address, pages, flags, data offset) {said:?} differ from its plan's {planned:?} (records reordered?)"
                            ),
                        ));
                    }
                    f(plan, z.as_ref().map(|z| z.data.0.as_slice()))?;
                }
                T_IMAGE_END => {
                    if next.len() > 0 {
                        return Err(corrupt(
                            &r,
                            format!("{} planned page records are missing", next.len()),
                        ));
                    }
                    self.check_image_end(&r.decode()?, &r)?;
                    ended = true;
                }
                T_TAIL => {}
                _ => {
                    return Err(corrupt(
                        &r,
                        "a metadata record inside the page section".into(),
                    ))
                }
            }
        }
        if !ended {
            return Err(Error::Refused(
                "the image has no image-end record: it was cut short".into(),
            ));
        }
        Ok(())
    }

    /// The process whose fd table `p` uses: itself, or the nearest
    /// ancestor that does not share its parent's table.
    pub fn table_owner<'a>(&'a self, mut p: &'a ProcessImage) -> &'a ProcessImage {
        while p.files_shared.is_some() {
            match self.process(p.process.ppid) {
                Some(q) => p = q,
                None => break,
            }
        }
        p
    }

    /// The saved process with this pid.
    pub fn process(&self, pid: i32) -> Option<&ProcessImage> {
        self.processes.iter().find(|p| p.pid() == pid)
    }
}

/// Checks a process-end record against the process it closes.
fn check_process_end(p: &ProcessImage, end: &ProcessEnd, asm: &Assembly) -> Result<(), String> {
    let pid = p.pid();
    if end.pid != pid {
        return Err(format!(
            "it closes pid {} but the open process is pid {pid}",
            end.pid
        ));
    }
    let pages: u64 = p.pages.iter().map(|r| r.nr_pages).sum();
    let counted = (
        p.threads.len() as u32,
        p.fds.len() as u32,
        p.vmas.len() as u32,
        pages,
    );
    let said = (end.nr_threads, end.nr_fds, end.nr_vmas, end.nr_pages);
    if counted != said {
        return Err(format!(
            "pid {pid} has (threads, fds, mappings, pages) {counted:?} but its process-end record says {said:?} (records removed or added?)"
        ));
    }
    if p.is_zombie() {
        return Ok(());
    }
    if asm.singles != (1 << SINGLETONS.len()) - 1 {
        let missing: Vec<&str> = SINGLETONS
            .iter()
            .enumerate()
            .filter(|(i, _)| asm.singles & (1 << i) == 0)
            .map(|(_, &t)| type_name(t))
            .collect();
        return Err(format!(
            "pid {pid} lacks its {} record(s)",
            missing.join(", ")
        ));
    }
    if p.threads.len() as u32 != p.process.nr_threads {
        return Err(format!(
            "pid {pid} has {} thread records but its process record says {} threads",
            p.threads.len(),
            p.process.nr_threads
        ));
    }
    for (t, &seen) in p.threads.iter().zip(&asm.threads) {
        if seen != (1 << THREAD_RECORDS.len()) - 1 {
            return Err(format!(
                "thread {} of pid {pid} lacks some of its register records",
                t.thread.tid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of an image with one live process (one thread, one page) and
    /// one zombie child, in the order ckpt writes them.
    fn records() -> Vec<AnyRecord> {
        let live = Process {
            pid: 100,
            nr_threads: 1,
            ..Default::default()
        };
        let zombie = Process {
            pid: 101,
            ppid: 100,
            state: PROC_ZOMBIE,
            ..Default::default()
        };
        vec![
            AnyRecord::Head(crate::head(0)),
            AnyRecord::ArchX86_64(ArchX86_64::default()),
            AnyRecord::Process(live),
            AnyRecord::Creds(Creds::default()),
            AnyRecord::Rlimits(Rlimits::default()),
            AnyRecord::SigActions(SigActions::default()),
            AnyRecord::Itimers(Itimers::default()),
            AnyRecord::SharedPending(SharedPending::default()),
            AnyRecord::Cgroups(Cgroups::default()),
            AnyRecord::Mm(Mm::default()),
            AnyRecord::MmState(MmState::default()),
            AnyRecord::Vma(Vma::default()),
            AnyRecord::Thread(Thread {
                tid: 100,
                ..Default::default()
            }),
            AnyRecord::X86Regs(X86Regs::default()),
            AnyRecord::X86Xstate(X86Xstate::default()),
            AnyRecord::X86DebugRegs(X86DebugRegs::default()),
            AnyRecord::Pages(PagesHdr {
                addr: 0x1000,
                nr_pages: 1,
                flags: 0,
            }),
            AnyRecord::ProcessEnd(ProcessEnd {
                pid: 100,
                nr_threads: 1,
                nr_fds: 0,
                nr_vmas: 1,
                nr_pages: 1,
            }),
            AnyRecord::Process(zombie),
            AnyRecord::ProcessEnd(ProcessEnd {
                pid: 101,
                ..Default::default()
            }),
            AnyRecord::ImageEnd(ImageEnd {
                nr_processes: 2,
                ..Default::default()
            }),
        ]
    }

    fn image(recs: &[AnyRecord]) -> Vec<u8> {
        let mut w = ImageWriter::new(Vec::new());
        for r in recs {
            match r {
                // Pages hold their address's low byte.
                AnyRecord::Pages(p) => w.write_pages(
                    p.addr,
                    &vec![(p.addr >> 12) as u8; 4096 * p.nr_pages as usize],
                ),
                // A checksum of 1 stands for a wrong one; others are computed.
                AnyRecord::MetaEnd(m) if m.crc32c != 1 => w.write(&MetaEnd {
                    crc32c: w.crc(),
                    ..m.clone()
                }),
                r => w.write_any(r),
            }
            .unwrap();
        }
        w.finish().unwrap()
    }

    fn refusal(recs: &[AnyRecord]) -> String {
        match Image::read(&image(recs)[..]) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// `records()` with a page section: two plans for the live process, the
    /// second early, so its record comes first.
    fn planned() -> Vec<AnyRecord> {
        let mut r = records();
        let pages = r
            .iter()
            .position(|x| matches!(x, AnyRecord::Pages(_)))
            .unwrap();
        let run = |addr, nr_pages| IndexedRun { addr, nr_pages };
        r[pages] = AnyRecord::PagePlan(PagePlan {
            flags: 0,
            runs: vec![run(0x1000, 1), run(0x3000, 2)],
        });
        r.insert(
            pages + 1,
            AnyRecord::PagePlan(PagePlan {
                flags: PLAN_EARLY,
                runs: vec![run(0x8000, 1)],
            }),
        );
        if let AnyRecord::ProcessEnd(e) = &mut r[pages + 2] {
            e.nr_pages = 4;
        }
        let end = r.pop().unwrap();
        r.push(AnyRecord::MetaEnd(MetaEnd {
            crc32c: 0,
            nr_plans: 2,
            compression: COMPRESS_NONE,
        }));
        let hdr = |addr, nr_pages| {
            AnyRecord::Pages(PagesHdr {
                addr,
                nr_pages,
                flags: 0,
            })
        };
        r.push(hdr(0x8000, 1));
        r.push(hdr(0x1000, 3));
        r.push(end);
        r
    }

    #[test]
    fn a_page_section_is_laid_out_as_planned() {
        let bytes = image(&planned());
        let img = Image::read(&bytes[..]).unwrap();
        let p = &img.processes[0];
        assert_eq!(p.pages.len(), 3);
        // The early record's data first in the stream, then the other's.
        let byte = |off: u64| bytes[off as usize];
        assert_eq!(byte(p.pages[2].data_offset), 0x08);
        assert_eq!(byte(p.pages[0].data_offset), 0x01);
        assert_eq!(p.pages[1].data_offset, p.pages[0].data_offset + 4096);
        assert!(p.pages[2].data_offset < p.pages[0].data_offset);
        // Metadata alone, then the section plan by plan.
        let (img, mut rd, complete) = Image::read_meta(ImageReader::new(&bytes[..])).unwrap();
        assert!(!complete);
        let mut seen = Vec::new();
        img.read_pages(&mut rd, |plan, z| {
            assert!(z.is_none());
            seen.push(plan.addr);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [0x8000, 0x1000]);
    }

    #[test]
    fn page_section_flaws_are_refused() {
        let base = planned();
        let n = base.len();
        let mut swapped = base.clone();
        swapped.swap(n - 3, n - 2);
        assert!(
            refusal(&swapped).contains("differ from its plan"),
            "{}",
            refusal(&swapped)
        );
        let mut missing = base.clone();
        missing.remove(n - 2);
        assert!(
            refusal(&missing).contains("missing"),
            "{}",
            refusal(&missing)
        );
        let mut extra = base.clone();
        extra.insert(
            n - 1,
            AnyRecord::Pages(PagesHdr {
                addr: 0x9000,
                nr_pages: 1,
                flags: 0,
            }),
        );
        assert!(refusal(&extra).contains("more page records"));
        let mut meta_late = base.clone();
        meta_late.insert(n - 1, AnyRecord::Vma(Vma::default()));
        assert!(refusal(&meta_late).contains("inside the page section"));
        let with_meta_end = |crc32c, nr_plans| {
            let mut r = base.clone();
            r[n - 4] = AnyRecord::MetaEnd(MetaEnd {
                crc32c,
                nr_plans,
                compression: COMPRESS_NONE,
            });
            r
        };
        // (A checksum of 1 is written as it is, a wrong one.)
        assert!(refusal(&with_meta_end(1, 2)).contains("checksum mismatch"));
        assert!(refusal(&with_meta_end(0, 3)).contains("page plans"));
        let mut squeezed = base.clone();
        let plan = squeezed
            .iter()
            .position(|x| matches!(x, AnyRecord::PagePlan(_)))
            .unwrap();
        squeezed[plan] = AnyRecord::PagePlan(PagePlan {
            flags: 0,
            runs: vec![
                IndexedRun {
                    addr: 0x3000,
                    nr_pages: 1,
                },
                IndexedRun {
                    addr: 0x1000,
                    nr_pages: 2,
                },
            ],
        });
        assert!(refusal(&squeezed).contains("out of order"));
    }

    #[test]
    fn a_complete_image_is_assembled() {
        let img = Image::read(&image(&records())[..]).unwrap();
        assert_eq!(img.processes.len(), 2);
        assert_eq!(img.processes[0].threads.len(), 1);
        assert_eq!(img.processes[0].pages.len(), 1);
        assert!(img.processes[1].is_zombie());
    }

    #[test]
    fn structural_flaws_are_refused() {
        let base = records();
        let without = |i: usize| {
            let mut r = base.clone();
            r.remove(i);
            r
        };
        let pos = |f: &dyn Fn(&AnyRecord) -> bool| base.iter().position(f).unwrap();
        // Cut short: no image-end, or the last process left open.
        assert!(refusal(&base[..base.len() - 1]).contains("cut short"));
        assert!(refusal(&base[..base.len() - 2]).contains("process-end"));
        // A singleton or a register record missing.
        let creds = pos(&|r| matches!(r, AnyRecord::Creds(_)));
        assert!(refusal(&without(creds)).contains("lacks its creds"));
        let regs = pos(&|r| matches!(r, AnyRecord::X86Regs(_)));
        assert!(refusal(&without(regs)).contains("register records"));
        // A record twice.
        let mut twice = base.clone();
        twice.insert(creds, AnyRecord::Creds(Creds::default()));
        assert!(refusal(&twice).contains("a second record"));
        // A thread or a page run removed: the counts no longer match.
        let mut no_thread = base.clone();
        no_thread.drain(regs - 1..regs + 3);
        assert!(refusal(&no_thread).contains("process-end record says"));
        let pages = pos(&|r| matches!(r, AnyRecord::Pages(_)));
        assert!(refusal(&without(pages)).contains("process-end record says"));
        // A process removed with its end: the image-end count no longer matches.
        let mut no_zombie = base.clone();
        no_zombie.drain(base.len() - 3..base.len() - 1);
        assert!(refusal(&no_zombie).contains("image-end record says"));
        // Records out of place.
        let mut late_file = base.clone();
        late_file.insert(base.len() - 1, AnyRecord::File(File::default()));
        assert!(refusal(&late_file).contains("after the first process"));
        let mut after_end = base.clone();
        after_end.push(AnyRecord::Vma(Vma::default()));
        assert!(refusal(&after_end).contains("after the image-end"));
        let mut zombie_creds = base.clone();
        zombie_creds.insert(base.len() - 2, AnyRecord::Creds(Creds::default()));
        assert!(refusal(&zombie_creds).contains("zombie"));
    }

    #[test]
    fn page_index_runs_must_fit_their_record() {
        let run = |addr, nr_pages| IndexedRun { addr, nr_pages };
        let all = PageRun {
            addr: 0x10000,
            nr_pages: 3,
            data_offset: 8192,
        };
        let ok = PageIndex {
            runs: vec![run(0x10000, 1), run(0x20000, 2)],
        };
        let runs = indexed_runs(&ok.runs, &all).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[1].addr, runs[1].nr_pages, runs[1].data_offset),
            (0x20000, 2, 12288)
        );
        for bad in [
            vec![run(0x11000, 1), run(0x20000, 2)], // first run not at the record's addr
            vec![run(0x10000, 2), run(0x11000, 1)], // overlap
            vec![run(0x10000, 1), run(0x20000, 1)], // fewer pages
            vec![run(0x10000, 1), run(0x20000, 3)], // more pages
            vec![run(0x10000, 1), run(0x20001, 2)], // not aligned
            vec![run(0x10000, 3), run(0x20000, 0)], // empty run
            vec![run(0x10000, 1), run(!0xfff, 2)],  // wraps
        ] {
            assert!(indexed_runs(&bad, &all).is_err(), "{bad:?}");
        }
    }
}
