//! `ckpt inspect`: every record of an image, and a summary.

use anyhow::Result;
use ckpt_image::{AnyRecord, ImageReader, Vma};
use serde::Serialize;
use std::io::Read;

#[derive(Serialize)]
struct Entry {
    offset: u64,
    len: u64,
    #[serde(rename = "type")]
    rtype: u32,
    name: &'static str,
    record: AnyRecord,
}

#[derive(Serialize, Default)]
struct Summary {
    processes: Vec<ProcSummary>,
    threads: usize,
    mappings: usize,
    pages: u64,
    page_bytes: u64,
    files: usize,
    fds: usize,
    records: usize,
    complete: bool,
}

#[derive(Serialize)]
struct ProcSummary {
    pid: i32,
    comm: String,
}

#[derive(Serialize)]
struct Report {
    records: Vec<Entry>,
    summary: Summary,
    error: Option<String>,
}

fn prot(v: &Vma) -> String {
    let b = |m: u32, c: char| if v.prot & m != 0 { c } else { '-' };
    format!(
        "{}{}{}{}",
        b(libc::PROT_READ as u32, 'r'),
        b(libc::PROT_WRITE as u32, 'w'),
        b(libc::PROT_EXEC as u32, 'x'),
        if v.flags & ckpt_image::VMAF_SHARED != 0 {
            's'
        } else {
            'p'
        }
    )
}

fn detail(r: &AnyRecord) -> String {
    match r {
        AnyRecord::Head(h) => format!(
            "{}, kernel {} {}, host {}",
            h.writer, h.kernel_release, h.machine, h.hostname
        ),
        AnyRecord::ArchX86_64(a) => format!(
            "xcr0 {:#x} ({}), xsave {} bytes",
            a.xcr0,
            ckpt::arch::feature_names(a.xcr0),
            a.xsave_size
        ),
        AnyRecord::Process(p) if p.state == ckpt_image::PROC_ZOMBIE => format!(
            "pid {} ({}) ppid {} pgid {} sid {} zombie, wait status {:#x}",
            p.pid, p.comm, p.ppid, p.pgid, p.sid, p.exit_status
        ),
        AnyRecord::Process(p) => format!(
            "pid {} ({}) ppid {} pgid {} sid {} exe {}",
            p.pid, p.comm, p.ppid, p.pgid, p.sid, p.exe
        ),
        AnyRecord::Pipe(p) => format!(
            "pipe {} size {}, {} bytes in flight",
            p.id,
            p.size,
            p.data.0.len()
        ),
        AnyRecord::Shmem(m) => format!(
            "shmem {} {} {} ({} bytes)",
            m.id,
            match m.kind {
                ckpt_image::SHMEM_MEMFD => "memfd",
                ckpt_image::SHMEM_GHOST => "unlinked file",
                _ => "shared anonymous",
            },
            m.name,
            m.size
        ),
        AnyRecord::ShmemAttrs(a) => format!(
            "shmem {} mode {:o} uid {} gid {} seals {:#x}",
            a.id, a.mode, a.uid, a.gid, a.seals
        ),
        AnyRecord::MmState(m) => format!(
            "thp-disable {}, membarrier registrations {:#x}",
            m.thp_disable, m.membarrier
        ),
        AnyRecord::Vma(v) => format!("{:#x}-{:#x} {} {}", v.start, v.end, prot(v), v.path),
        AnyRecord::Pages(p) if p.flags & ckpt_image::PAGES_SHMEM != 0 => {
            format!("shmem offset {:#x}: {} pages", p.addr, p.nr_pages)
        }
        AnyRecord::Pages(p) => format!("{:#x}: {} pages", p.addr, p.nr_pages),
        AnyRecord::PageIndex(i) => {
            let last = i.runs.last().map(|r| r.addr + r.nr_pages as u64 * 4096);
            format!(
                "{} runs of pages from {:#x} to {:#x} in the next pages record",
                i.runs.len(),
                i.runs.first().map_or(0, |r| r.addr),
                last.unwrap_or(0)
            )
        }
        AnyRecord::PagePlan(i) => {
            let last = i.runs.last().map(|r| r.addr + r.nr_pages as u64 * 4096);
            let pages: u64 = i.runs.iter().map(|r| r.nr_pages as u64).sum();
            format!(
                "{pages} pages in {} runs from {:#x} to {:#x}, in the page section{}",
                i.runs.len(),
                i.runs.first().map_or(0, |r| r.addr),
                last.unwrap_or(0),
                if i.flags & ckpt_image::PLAN_EARLY != 0 { " (early)" } else { "" }
            )
        }
        AnyRecord::MetaEnd(m) => format!(
            "metadata checksum {:#010x}; {} page records follow{}",
            m.crc32c,
            m.nr_plans,
            match m.compression {
                ckpt_image::COMPRESS_LZ4 => ", lz4-compressed",
                ckpt_image::COMPRESS_ZSTD => ", zstd-compressed",
                _ => "",
            }
        ),
        AnyRecord::PagesZ(z) => format!(
            "{}{:#x}: {} pages in {} bytes",
            if z.flags & ckpt_image::PAGES_SHMEM != 0 { "shmem offset " } else { "" },
            z.addr,
            z.nr_pages,
            z.data.0.len()
        ),
        AnyRecord::File(f) => format!(
            "file {} {} {} pos {}",
            f.id,
            ckpt_image::file_kind_name(f.kind),
            f.path,
            f.pos
        ),
        AnyRecord::Fd(f) => format!(
            "fd {} -> file {}{}",
            f.fd,
            f.file_id,
            if f.cloexec { " cloexec" } else { "" }
        ),
        AnyRecord::FileAttr(a) => format!(
            "file {} owner {}:{} mtime {}.{:09}",
            a.file_id, a.uid, a.gid, a.mtime_sec, a.mtime_nsec
        ),
        AnyRecord::FileOwner(o) => format!(
            "file {} owner {} (type {}) signal {}",
            o.file_id, o.owner, o.owner_type, o.signum
        ),
        AnyRecord::FilesShared(s) => format!("fd table of pid {}", s.parent),
        AnyRecord::CwdRemoved(c) => format!("mode {:o} owner {}:{}", c.mode, c.uid, c.gid),
        AnyRecord::Thread(t) => format!("tid {} sigmask {:#x}", t.tid, t.sigmask),
        AnyRecord::X86Regs(x) => format!("tid {} rip {:#x} rsp {:#x}", x.tid, x.rip, x.rsp),
        AnyRecord::X86Xstate(x) => format!("tid {} {} bytes", x.tid, x.area.0.len()),
        AnyRecord::Error(e) => e.message.to_string(),
        AnyRecord::Tail(t) => format!("{} records, crc32c {:#010x}", t.records, t.crc32c),
        AnyRecord::Cgroups(c) => c.membership.to_string(),
        AnyRecord::ProcessEnd(e) => format!(
            "pid {}: {} thread(s), {} fd(s), {} mapping(s), {} page(s)",
            e.pid, e.nr_threads, e.nr_fds, e.nr_vmas, e.nr_pages
        ),
        AnyRecord::ImageEnd(e) => format!(
            "{} process(es), {} file(s), {} pipe(s), {} kind object(s), {} shmem object(s) with {} page(s)",
            e.nr_processes, e.nr_files, e.nr_pipes, e.nr_objects, e.nr_shmems, e.nr_shmem_pages
        ),
        AnyRecord::Skipped(k) => format!("type {:#x}, {} bytes, skipped (optional)", k.rtype, k.len),
        // Records of kinds: their fields, as `name value` pairs.
        r if ckpt_image::is_object_record(r.rtype()) || ckpt_image::is_process_kind_record(r.rtype()) => fields(r),
        _ => String::new(),
    }
}

/// A record's fields as "name value" pairs, for records without a
/// hand-written line (escaped: fields may hold image text).
fn fields(r: &AnyRecord) -> String {
    let v = serde_json::to_value(r).unwrap_or_default();
    let Some(m) = v.as_object() else {
        return String::new();
    };
    m.iter()
        .filter(|(k, _)| *k != "kind")
        .map(|(k, v)| format!("{k} {}", ckpt_image::escape(v.to_string().as_bytes())))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run<R: Read>(input: R, json: bool) -> Result<u8> {
    let mut rd = ImageReader::new(std::io::BufReader::with_capacity(1 << 20, input));
    let mut rep = Report {
        records: Vec::new(),
        summary: Summary::default(),
        error: None,
    };
    loop {
        match rd.next_record() {
            Ok(None) => {
                rep.summary.complete = true;
                break;
            }
            Ok(Some(raw)) => {
                let record = match raw.decode_any() {
                    Ok(r) => r,
                    Err(e) => {
                        rep.error = Some(e.to_string());
                        break;
                    }
                };
                let s = &mut rep.summary;
                match &record {
                    AnyRecord::Process(p) => s.processes.push(ProcSummary {
                        pid: p.pid,
                        comm: p.comm.to_string(),
                    }),
                    AnyRecord::Thread(_) => s.threads += 1,
                    AnyRecord::Vma(_) => s.mappings += 1,
                    AnyRecord::Pages(p) => {
                        s.pages += p.nr_pages as u64;
                        s.page_bytes += p.nr_pages as u64 * 4096;
                    }
                    AnyRecord::PagesZ(p) => {
                        s.pages += p.nr_pages as u64;
                        s.page_bytes += p.nr_pages as u64 * 4096;
                    }
                    AnyRecord::File(_) => s.files += 1,
                    AnyRecord::Fd(_) => s.fds += 1,
                    _ => {}
                }
                s.records += 1;
                rep.records.push(Entry {
                    offset: raw.offset,
                    len: raw.len,
                    rtype: raw.rtype,
                    name: ckpt_image::type_name(raw.rtype),
                    record,
                });
            }
            Err(e) => {
                rep.error = Some(e.to_string());
                break;
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!("{:>12} {:>10}  {:<16} DETAIL", "OFFSET", "SIZE", "TYPE");
        for e in &rep.records {
            println!(
                "{:>12} {:>10}  {:<16} {}",
                e.offset,
                e.len,
                e.name,
                detail(&e.record)
            );
        }
        let s = &rep.summary;
        let procs: Vec<String> = s
            .processes
            .iter()
            .map(|p| format!("{} ({})", p.pid, p.comm))
            .collect();
        println!(
            "\n{} process(es) [{}], {} thread(s), {} mapping(s), {} page(s) ({} KiB), {} file(s), {} fd(s); {}",
            s.processes.len(),
            procs.join(", "),
            s.threads,
            s.mappings,
            s.pages,
            s.page_bytes / 1024,
            s.files,
            s.fds,
            if s.complete { "image complete, checksum ok" } else { "image INCOMPLETE" }
        );
    }
    if let Some(e) = &rep.error {
        eprintln!("ckpt: inspect: {e}");
        return Ok(1);
    }
    Ok(0)
}
