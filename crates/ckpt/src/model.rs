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
    pub fds: Vec<Fd>,
    /// Set when the fd table is the parent's.
    pub files_shared: Option<FilesShared>,
    pub mm: Mm,
    pub vmas: Vec<Vma>,
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
    pub pages: Vec<PageRun>,
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
    pub shmems: Vec<ShmemImage>,
    pub processes: Vec<ProcessImage>,
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
        for f in &self.fds {
            w.write(f)?;
        }
        if let Some(s) = &self.files_shared {
            w.write(s)?;
        }
        w.write(&self.mm)?;
        for v in &self.vmas {
            w.write(v)?;
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
    Error::Image(ImageError::Corrupt {
        offset: r.offset,
        record: format!("{} record", type_name(r.rtype)),
        what: "record out of place (no process, thread or object record before it)".into(),
    })
}

impl Image {
    /// Reads and checks a whole image (including its checksum) into memory;
    /// page data is only located, not loaded.
    pub fn read<R: Read>(input: R) -> Result<Image> {
        let mut rd = ImageReader::new(input);
        let mut img = Image::default();
        let mut have_arch = false;
        while let Some(r) = rd.next_record()? {
            match r.rtype {
                T_HEAD => img.head = r.decode()?,
                T_ARCH_X86_64 => {
                    img.arch = r.decode()?;
                    have_arch = true;
                }
                T_PROCESS => img.processes.push(ProcessImage {
                    process: r.decode()?,
                    ..Default::default()
                }),
                T_FILE => img.files.push(r.decode()?),
                T_FILE_ATTR => img.file_attrs.push(r.decode()?),
                T_FILE_OWNER => img.file_owners.push(r.decode()?),
                T_PIPE => img.pipes.push(r.decode()?),
                T_SHMEM => img.shmems.push(ShmemImage {
                    shmem: r.decode()?,
                    pages: Vec::new(),
                }),
                T_TAIL => {}
                T_PAGES => {
                    let Body::Pages { hdr, data_offset } = r.body else {
                        return Err(misplaced(&r));
                    };
                    let run = PageRun {
                        addr: hdr.addr,
                        nr_pages: hdr.nr_pages as u64,
                        data_offset,
                    };
                    if hdr.flags & PAGES_SHMEM != 0 {
                        img.shmems
                            .last_mut()
                            .ok_or_else(|| misplaced(&r))?
                            .pages
                            .push(run);
                    } else {
                        img.processes
                            .last_mut()
                            .ok_or_else(|| misplaced(&r))?
                            .pages
                            .push(run);
                    }
                }
                _ => {
                    let p = img.processes.last_mut().ok_or_else(|| misplaced(&r))?;
                    match r.rtype {
                        T_CREDS => p.creds = r.decode()?,
                        T_CWD_REMOVED => p.cwd_removed = Some(r.decode()?),
                        T_RLIMITS => p.rlimits = r.decode()?,
                        T_SIGACTIONS => p.sigactions = r.decode()?,
                        T_ITIMERS => p.itimers = r.decode()?,
                        T_SHARED_PENDING => p.shared_pending = r.decode()?,
                        T_FD => p.fds.push(r.decode()?),
                        T_FILES_SHARED => p.files_shared = Some(r.decode()?),
                        T_MM => p.mm = r.decode()?,
                        T_VMA => p.vmas.push(r.decode()?),
                        T_THREAD => p.threads.push(ThreadImage {
                            thread: r.decode()?,
                            ..Default::default()
                        }),
                        T_X86_REGS | T_X86_XSTATE | T_X86_DEBUGREGS => {
                            let t = p.threads.last_mut().ok_or_else(|| misplaced(&r))?;
                            match r.rtype {
                                T_X86_REGS => t.regs = r.decode()?,
                                T_X86_XSTATE => t.xstate = r.decode()?,
                                _ => t.debug = r.decode()?,
                            }
                        }
                        _ => {
                            return Err(Error::Image(ImageError::Corrupt {
                                offset: r.offset,
                                record: format!("record type {}", r.rtype),
                                what: "unknown record type; the image was written by a newer ckpt"
                                    .into(),
                            }))
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
        Ok(img)
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
