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
use crate::pagestore::{self, Checked, InPlace, Spool};
use crate::procfs;
use crate::remote::Remote;
use crate::sys::{self, Pid};
use crate::task::{self, Scratch};
use crate::trust;
use ckpt_image::*;
use std::collections::HashMap;
use std::io::Seek;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

/// What the caller of a restart asks for.
#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// A pipe the tree held only as stdin, stdout or stderr, whose other
    /// end is gone (the harness that captured a job's output has exited),
    /// is the caller's own fd of that number in the restored tree, as for
    /// a job the caller started; without it, a pipe nobody reads or writes
    /// (where the next write dies of SIGPIPE).
    pub inherit_stdio: bool,
}

const PAGE: u64 = 4096;
/// Trampoline: one page of code (a `syscall` instruction) and two of scratch.
const TRAMP_PAGES: u64 = 3;
const TRAMP_LEN: u64 = TRAMP_PAGES * PAGE;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// Restarts the image read from `input` (a file, pipe or socket) and
/// returns the restored root's pid once the tree runs on its own.
///
/// The restored root is a child of the calling process: reap it with
/// `waitpid` (or let SIGCHLD be ignored). The caller's process-wide state
/// is left as it was: no signal handler or mask is changed; the soft
/// RLIMIT_NOFILE is raised for the duration of the call only when the
/// image's fds need it. Needs root (pids are chosen with clone3).
///
/// The image's metadata is checked whole before anything is created. From
/// a regular file, the tasks then read their pages from it while a thread
/// of the call checks its page section; from a pipe or socket, a thread
/// reads the pages into the processes as they arrive (holding a bounded
/// part of the image). Either way the tree runs only once the whole image
/// is read and its checksum is right.
///
/// ```no_run
/// let image = std::fs::File::open("job.img")?;
/// let mut log = ckpt::Log::default();
/// let pid = ckpt::restart(image, &ckpt::RestartOptions::default(), &mut log)?;
/// println!("restored as pid {pid}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn restart(
    input: impl std::os::fd::AsFd + std::io::Read,
    opts: &RestartOptions,
    log: &mut Log,
) -> Result<Pid> {
    // Who could have written the image decides how far it is believed: see
    // `trust`. Found on the input itself.
    let mut input = std::fs::File::from(input.as_fd().try_clone_to_owned().map_err(|e| {
        Error::Image(ImageError::Io {
            offset: 0,
            source: e,
        })
    })?);
    let me = trust::Restorer::current();
    let owner = trust::owner_of(&input, me.euid);
    let io = |e| {
        Error::Image(ImageError::Io {
            offset: 0,
            source: e,
        })
    };
    let in_place =
        input.metadata().map_err(io)?.is_file() && input.stream_position().ok() == Some(0);
    if in_place {
        // Metadata checked whole before anything is created; page data
        // in place, checked while it is restored.
        let (img, rd, complete) = Image::read_meta(page_data_in_place(&input))?;
        let _nofile = grow_fd_table(&img, input.as_raw_fd());
        let compressed = img
            .section
            .as_ref()
            .is_some_and(|s| s.compression != COMPRESS_NONE);
        if !compressed {
            if complete {
                return restart_image(&img, &input, &InPlace, owner, &me, opts, log);
            }
            let checked = Checked::default();
            let run = || restart_image(&img, &input, &checked, owner, &me, opts, log);
            return pagestore::with_checked(&checked, &img, rd, run);
        }
        let spool = Spool::new().map_err(io)?;
        let run = || restart_image(&img, spool.file(), &spool, owner, &me, opts, log);
        return pagestore::with_spool(&spool, &img, rd, run);
    }
    // A stream: restored as it is read.
    let input_fd = input.as_raw_fd();
    let spool = Spool::new().map_err(io)?;
    let rd = ckpt_image::ImageReader::new(std::io::BufReader::with_capacity(
        1 << 20,
        spool.abortable(input),
    ))
    .with_page_data(spool.page_data_hook());
    let (img, rd, complete) = Image::read_meta(rd)?;
    let _nofile = grow_fd_table(&img, input_fd);
    if complete {
        return refuse(
            "the image has its pages amid its metadata (written by an older ckpt): restart it \
             from a file, not a stream"
                .into(),
        );
    }
    let run = || restart_image(&img, spool.file(), &spool, owner, &me, opts, log);
    pagestore::with_spool(&spool, &img, rd, run)
}

/// Restarts `img`, whose page data is in `pages` as `store` says.
fn restart_image(
    img: &Image,
    pages: &std::fs::File,
    store: &dyn pagestore::Wait,
    owner: trust::Owner,
    me: &trust::Restorer,
    opts: &RestartOptions,
    log: &mut Log,
) -> Result<Pid> {
    // Piped from a checkpoint on this host, the tree still runs: it is
    // killed once its image is complete, so the image is read whole first.
    let ids: Vec<Pid> = img
        .processes
        .iter()
        .flat_map(|p| &p.threads)
        .map(|t| t.thread.tid)
        .collect();
    if store.streamed()
        && ids
            .iter()
            .any(|&t| procfs::exists(t) && procfs::dying_parent(t).is_none())
    {
        log.info(
            0,
            img.processes[0].pid(),
            &img.processes[0].process.comm.to_string(),
            "restart: the image's pids are in use here (a checkpoint on this host still \
             writing?): reading the whole image before restoring",
        );
        store.read_all()?;
        procfs::wait_gone(&ids, std::time::Duration::from_secs(10));
    }
    let trust = trust::Trust::decide(me.euid, owner);
    trust::validate(img, &trust, me)?;
    // A restorer that is not root opens everything as itself (the owner,
    // as validated) already, and may not switch groups.
    let fs = trust.fs_ids().filter(|_| me.euid == 0);
    validate(img, Mode::Restart, fs.as_ref(), log)?;
    let root = img.processes[0].pid();
    let comm = img.processes[0].process.comm.to_string();
    if let trust::Trust::Unauthenticated(o) = &trust {
        log.info(
            0,
            root,
            &comm,
            &format!(
                "restart: {}: credentials limited to uid {}, image paths opened as uid {}",
                o.source, o.uid, o.uid
            ),
        );
    }
    log.info(
        0,
        root,
        &comm,
        &format!(
            "restart: image valid, creating {} processes",
            img.processes.len()
        ),
    );
    let mut b = Build::prepare(img, pages, store, fs, opts.inherit_stdio)?;
    store.before_fork()?;
    let spawned = b.spawn(img);
    store.after_fork();
    spawned?;
    // Into their cgroups before their memory is rebuilt (and charged).
    let cg = crate::cgroup::Host::read();
    for p in img.processes.iter().filter(|p| !p.is_zombie()) {
        let plan = crate::cgroup::plan(&cg, p.pid(), &p.cgroups.membership.lossy())?;
        crate::cgroup::join(p.pid(), &plan)?;
    }
    for &g in &b.pgid_helpers {
        let _ = sys::kill(g, libc::SIGKILL);
    }
    // Test hook: prove that a restart failing once processes exist leaves
    // nothing behind.
    if crate::test_hooks::get().fail_after_spawn {
        return refuse(
            "failure injected after the processes were created (CKPT_TEST_FAIL_AFTER_SPAWN)".into(),
        );
    }
    let total: u64 = img
        .processes
        .iter()
        .flat_map(|p| p.pages.iter())
        .map(|r| r.nr_pages * PAGE)
        .sum();
    let mut restored = 0u64;
    let mut progress = |n: u64| {
        restored += n;
        log.progress("restoring memory", restored, total);
    };
    let held = std::cell::Cell::new(None);
    // Nothing runs before the whole image is read and its checksum right.
    let mut ready = |b: &Build| -> Result<()> {
        store.finish()?;
        held.set(store.held_at_most());
        files::resume(img)?;
        b.before_release(img)
    };
    let lanes = rebuild_lanes(img, store);
    let rebuilt = if lanes > 1 {
        b.rebuild_in_lanes(img, store, lanes, &mut progress, &mut ready)
    } else {
        b.rebuild_in_turn(img, store, &mut progress, &mut ready)
    };
    if let Err((e, pid)) = rebuilt {
        let comm = img.process(pid).map(|p| p.process.comm.to_string());
        log.error(&e, 0, pid, comm.as_deref().unwrap_or(""));
        return Err(e);
    }
    if let Some(held) = held.get() {
        log.info(
            0,
            root,
            &comm,
            &format!(
                "restart: page data read as it came, at most {} KiB of it held at once",
                held >> 10
            ),
        );
    }
    log.info(0, root, &comm, "restart: process tree running");
    Ok(root)
}

/// A reader of image file `file` that checksums page data where it lies
/// (a mapping of the file) instead of copying it out.
fn page_data_in_place(
    file: &std::fs::File,
) -> ckpt_image::ImageReader<std::io::BufReader<&std::fs::File>> {
    let fd = file.as_raw_fd();
    ckpt_image::ImageReader::new(std::io::BufReader::with_capacity(1 << 20, file)).with_page_data(
        Box::new(
            move |input: &mut std::io::BufReader<&std::fs::File>, off, len| {
                // Never map past the end (a read there would be SIGBUS).
                let size = input.get_ref().metadata()?.len();
                if off.checked_add(len).is_none_or(|end| end > size) {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let crc = sys::crc32c_of_range(fd, off, len as usize)?;
                input.seek_relative(len as i64)?;
                Ok(crc)
            },
        ),
    )
}

/// A tree being built. Dropping it before `release` kills every process
/// it created, so a failed restart leaves nothing behind.
struct Build {
    /// The filesystem ids image paths are opened with (unauthenticated
    /// image: its owner's), `None` for ckpt's own.
    fs: Option<sys::FsIds>,
    /// Our fd limit, raised for as long as the restart holds descriptions.
    _nofile: sys::NofileAtLeast,
    opened: files::Opened,
    shmem_fds: Vec<(u32, i32)>,
    img_fd: i32,
    status: (i32, i32),
    tramp: u64,
    created: Vec<Pid>,
    /// Temporary leaders of process groups whose leader is gone.
    pgid_helpers: Vec<Pid>,
    /// Seized tasks (every thread of every live process).
    traced: Vec<Pid>,
    released: bool,
    /// (pid, start) of each mapping a process premapped for its children
    /// to inherit copy-on-write (see `mm::premap_cow`).
    premapped: Vec<(Pid, u64)>,
    /// (live pid, the pid whose fd table it uses), in image order.
    tables: Vec<(Pid, Pid)>,
    /// Signal owners to set, each with the process that sets it: the
    /// first live one holding the file.
    owners: Vec<(Pid, FileOwner)>,
    /// (path, fd) of each recreated removed working directory.
    removed_cwds: Vec<(Vec<u8>, i32)>,
    /// The image file mapped, for ckpt's threads to copy pages from (not
    /// a stream's spool, which fills and empties as it goes).
    image_map: Option<sys::FileMap>,
}

/// How many threads rebuild the processes: four per core, up to 8, and
/// at most one per process; one for a stream, whose pages come in image
/// order, and which holds only a window of them. A rebuild waits mostly
/// for its processes' stops, not for a core: a 64-process tree restarted
/// on 2 cores in 86 ms from one thread (median of 8), 74 from 2, 58 from
/// 4, 51 from 8, 52 from 16.
fn rebuild_lanes(img: &Image, store: &dyn pagestore::Wait) -> usize {
    if store.streamed() {
        return 1;
    }
    let live = img.processes.iter().filter(|p| !p.is_zombie()).count();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).min(8).min(live)
}

/// Chooses where the trampoline goes: free in this process (every restored
/// process is a copy of it) and clear of every mapping of the image.
fn map_trampoline(img: &Image) -> Result<u64> {
    let clear = |a: u64| {
        img.processes
            .iter()
            .flat_map(|p| p.vmas.iter())
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
            // The loop that runs batches of calls (`Remote::call_many`).
            sys::poke_own(a + crate::mm::BATCH_CODE_AT, &crate::remote::BATCH_CODE);
            return Ok(a);
        }
        sys::munmap(a, TRAMP_LEN as usize);
    }
    refuse("cannot find room for the restore trampoline outside the image's mappings".into())
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Sys {
        pid: std::process::id() as Pid,
        what,
        source: e,
    }
}

/// The fds the restorer holds: the image's fd numbers go up to `max_fd`;
/// what the restorer opens for the tree lies from `base` up to `needed`.
struct FdRoom {
    max_fd: i32,
    base: i32,
    needed: u64,
}

impl FdRoom {
    fn of(img: &Image) -> FdRoom {
        let max_fd = img
            .processes
            .iter()
            .flat_map(|p| p.fds.iter())
            .map(|f| f.fd as i32)
            .max()
            .unwrap_or(2);
        let base = max_fd.max(2) + 1;
        // The restorer holds the descriptions without a slot (`files::slots`)
        // above the image's fd numbers (a pipe twice), plus a few of its own.
        let slotted = files::slots(img, base).len();
        let held = img.files.len() - slotted.min(img.files.len())
            + img.pipes.len() * 2
            + img.shmems.len()
            + 64;
        FdRoom {
            max_fd,
            base,
            needed: base as u64 + held as u64,
        }
    }
}

/// Grows ckpt's fd table to what restoring `img` needs while ckpt has one
/// thread: the kernel grows a table shared by threads only after an RCU
/// grace period (`expand_fdtable`), 12-20 ms on these machines, once per
/// doubling. Best effort: returns the guard of the raised fd limit.
fn grow_fd_table(img: &Image, any_fd: i32) -> Option<sys::NofileAtLeast> {
    let needed = FdRoom::of(img).needed;
    let (guard, limit) = sys::NofileAtLeast::raise(needed).ok()?;
    let top = needed.min(limit).saturating_sub(1) as i32;
    if let Ok(fd) = sys::dup_above(any_fd, top) {
        sys::close(fd);
    }
    Some(guard)
}

impl Build {
    /// Opens every shared object (files, pipes, shared memory) in ckpt, at
    /// fds above every fd number of the image, for the tree to inherit.
    fn prepare(
        img: &Image,
        file: &std::fs::File,
        store: &dyn pagestore::Wait,
        fs: Option<sys::FsIds>,
        inherit_stdio: bool,
    ) -> Result<Build> {
        let FdRoom {
            max_fd,
            base,
            needed,
        } = FdRoom::of(img);
        let (nofile, limit) =
            sys::NofileAtLeast::raise(needed).map_err(io_err("getrlimit(RLIMIT_NOFILE)".into()))?;
        if limit < needed {
            return Err(Error::Refused(format!(
                "the image uses fd numbers up to {max_fd} and {} open files; restoring them needs \
                 an fd limit of {needed}, but the hard limit (ulimit -Hn) is {limit}: raise it, \
                 or restart as root",
                img.files.len()
            )));
        }
        let img_fd =
            sys::dup_above(file.as_raw_fd(), base).map_err(io_err("dup image fd".into()))?;
        let mut b = Build {
            fs,
            _nofile: nofile,
            opened: files::Opened::new(Vec::new(), Vec::new(), base),
            shmem_fds: Vec::new(),
            img_fd,
            status: (-1, -1),
            tramp: 0,
            created: Vec::new(),
            pgid_helpers: group_helpers(img),
            traced: Vec::new(),
            released: false,
            premapped: Vec::new(),
            tables: img
                .processes
                .iter()
                .filter(|p| !p.is_zombie())
                .map(|p| (p.pid(), img.table_owner(p).pid()))
                .collect(),
            owners: img
                .file_owners
                .iter()
                .filter_map(|o| {
                    let holder = img
                        .processes
                        .iter()
                        .filter(|p| !p.is_zombie())
                        .find(|p| p.fds.iter().any(|d| d.file_id == o.file_id))?;
                    Some((holder.pid(), o.clone()))
                })
                .collect(),
            removed_cwds: Vec::new(),
            image_map: (!store.streamed())
                .then(|| sys::FileMap::new(file.as_raw_fd()).ok())
                .flatten(),
        };
        b.recreate_removed_cwds(img, base)?;
        for s in &img.shmems {
            let fd = crate::mm::create_shmem(s, img_fd, store, base, b.fs.as_ref())?;
            b.shmem_fds.push((s.shmem.id, fd));
        }
        let shm = b.shmem_fds.clone();
        // An error opening a file names the first process holding it.
        let user_of = |id: u32| {
            img.processes
                .iter()
                .find(|p| p.fds.iter().any(|d| d.file_id == id))
                .map_or(0, |p| p.pid())
        };
        b.opened = files::open_all(&files::OpenArgs {
            img,
            removed_dirs: &b.removed_cwds,
            shmem_fd: &|id| shm.iter().find(|x| x.0 == id).map(|x| x.1),
            base,
            fs: b.fs.as_ref(),
            user_of: &user_of,
            inherit_stdio,
        })?;
        let (r, w) = sys::pipe().map_err(io_err("pipe".into()))?;
        let w2 = sys::dup_above(w, base).map_err(io_err("dup".into()))?;
        sys::close(w);
        b.status = (r, w2);
        b.tramp = map_trampoline(img)?;
        Ok(b)
    }

    /// Sets the signal owner and signal of the descriptions this process
    /// is the first to hold, from inside it and with its credentials just
    /// restored: the kernel records the setter's uid and euid with the
    /// owner and checks them when it sends the signal. (The original
    /// setter's own credentials are not visible from outside; those of
    /// the process holding the file are what a process usually had.)
    fn restore_owners(&self, r: &mut Remote, s: &Scratch, p: &ProcessImage) -> Result<()> {
        for (_, o) in self.owners.iter().filter(|o| o.0 == p.pid()) {
            let Some(d) = p.fds.iter().find(|d| d.file_id == o.file_id) else {
                continue;
            };
            let fd = d.fd as u64;
            r.call(
                "fcntl(F_SETSIG)",
                libc::SYS_fcntl,
                &[fd, sys::F_SETSIG as u64, o.signum as u64],
            )?;
            if o.owner != 0 {
                let mut ex = o.owner_type.to_le_bytes().to_vec();
                ex.extend_from_slice(&o.owner.to_le_bytes());
                s.write(0, &ex)?;
                r.call(
                    "fcntl(F_SETOWN_EX)",
                    libc::SYS_fcntl,
                    &[fd, sys::F_SETOWN_EX as u64, s.addr],
                )?;
            }
        }
        Ok(())
    }

    /// The pid whose fd table live process `pid` uses.
    fn table_owner(&self, pid: Pid) -> Pid {
        self.tables.iter().find(|t| t.0 == pid).map_or(pid, |t| t.1)
    }

    /// The live processes using the same fd table as `pid`, in image order.
    fn table_members(&self, pid: Pid) -> Vec<Pid> {
        let owner = self.table_owner(pid);
        self.tables
            .iter()
            .filter(|t| t.1 == owner)
            .map(|t| t.0)
            .collect()
    }

    /// fds a restored process keeps until its restore is complete.
    fn keep(&self) -> Vec<i32> {
        let mut k = vec![self.img_fd, self.status.1];
        k.extend(self.shmem_fds.iter().map(|x| x.1));
        k.extend(self.removed_cwds.iter().map(|x| x.1));
        k
    }

    /// Recreates each removed working directory for a moment: created,
    /// given its mode and owner, opened (processes enter it by fd) and
    /// removed again, so it is as removed as it was. Processes that were
    /// in a removed directory of one name share one again.
    fn recreate_removed_cwds(&mut self, img: &Image, base: i32) -> Result<()> {
        // (path, mode, uid, gid, whose): removed cwds, then removed
        // directories open as fds.
        let mut dirs: Vec<(&[u8], u32, u32, u32, String)> = Vec::new();
        for p in &img.processes {
            if let Some(c) = &p.cwd_removed {
                let whose = format!("cwd {} of pid {}", p.process.cwd, p.pid());
                dirs.push((&p.process.cwd.0, c.mode, c.uid, c.gid, whose));
            }
        }
        for (f, uid, gid) in files::removed_dirs(img) {
            dirs.push((&f.path.0, f.mode, uid, gid, format!("directory {}", f.path)));
        }
        for (path, mode, uid, gid, whose) in dirs {
            if self.removed_cwds.iter().any(|d| d.0 == path) {
                continue;
            }
            let what = |w: &str| format!("{w} removed {whose}");
            // As the image's owner (see `trust`), like every path it names.
            let fs = self.fs.as_ref();
            sys::with_fs_ids(fs, || sys::mkdir(path, 0o700)).map_err(io_err(what("recreate")))?;
            let opened = sys::with_fs_ids(fs, || {
                sys::open_raw(
                    path,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    0,
                )
            })
            .and_then(|fd| {
                let high = sys::dup_above(fd, base);
                sys::close(fd);
                high
            });
            let fd = match opened {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = sys::with_fs_ids(fs, || sys::rmdir(path));
                    return Err(io_err(what("open"))(e));
                }
            };
            self.removed_cwds.push((path.to_vec(), fd));
            let set = sys::with_fs_ids(fs, || {
                sys::fchown(fd, uid, gid).and_then(|_| sys::fchmod(fd, mode & 0o7777))
            });
            let removed = sys::with_fs_ids(fs, || sys::rmdir(path));
            set.map_err(io_err(what("set mode and owner of")))?;
            removed.map_err(io_err(what("remove")))?;
        }
        Ok(())
    }

    /// Creates the tree: ckpt forks the root, each process forks its own
    /// children (so parent links come back) and sets itself up, then
    /// reports on the status pipe and waits to be seized.
    fn spawn(&mut self, img: &Image) -> Result<()> {
        let root = &img.processes[0];
        match sys::fork_with_pid(root.pid()) {
            Ok(0) => {
                sys::close(self.status.0);
                self.become_process(img, root, false)
            }
            Ok(_) => self.created.push(root.pid()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return refuse(format!(
                    "pid {} was taken by another process just now; retry the restart",
                    root.pid()
                ))
            }
            Err(e) => {
                return Err(Error::Sys {
                    pid: root.pid(),
                    what: "clone3 with set_tid (needs root)".into(),
                    source: e,
                })
            }
        }
        // Our copies of what the tree inherited are no longer needed.
        sys::munmap(self.tramp, TRAMP_LEN as usize);
        sys::close(self.status.1);
        for fd in self
            .opened
            .all()
            .chain(self.shmem_fds.iter().map(|x| x.1))
            .chain(self.removed_cwds.iter().map(|x| x.1))
        {
            sys::close(fd);
        }
        sys::close(self.img_fd);
        self.created
            .extend(img.processes[1..].iter().map(|p| p.pid()));
        self.created.extend(self.pgid_helpers.iter().copied());
        let live = img.processes.iter().filter(|p| !p.is_zombie()).count();
        let mut ok = 0;
        let mut text = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while ok < live {
            if std::time::Instant::now() > deadline {
                return refuse("the restored processes did not report ready within 60 s".into());
            }
            if !sys::poll_in(self.status.0, 100) {
                continue;
            }
            let mut buf = [0u8; 4096];
            let n =
                sys::read(self.status.0, &mut buf).map_err(io_err("read status pipe".into()))?;
            if n == 0 {
                return refuse("a restored process died while setting itself up".into());
            }
            text.extend_from_slice(&buf[..n]);
            while let Some(i) = text.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = text.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if let Some(rest) = line.strip_prefix("ok ") {
                    let mut words = rest.split(' ');
                    let who = words.next().and_then(|w| w.parse::<Pid>().ok());
                    if let Some(who) = who {
                        self.premapped.extend(
                            words.filter_map(|w| u64::from_str_radix(w, 16).ok().map(|a| (who, a))),
                        );
                    }
                    ok += 1;
                } else {
                    return refuse(format!(
                        "setting up the restored process failed: {}",
                        line.trim_start_matches("err ")
                    ));
                }
            }
        }
        sys::close(self.status.0);
        Ok(())
    }

    /// Runs in a new child: becomes the saved process `p` as far as can be
    /// done from inside (session, children, fds, cwd, dispositions), then
    /// reports and waits to be seized. Never returns.
    /// `via_helper`: forked by a session helper that exits at once, so the
    /// parent-death signal would kill it; such a process relies on
    /// PTRACE_O_EXITKILL alone once seized.
    fn become_process(&self, img: &Image, p: &ProcessImage, via_helper: bool) -> ! {
        let pid = p.pid();
        let mut premapped = Vec::new();
        let res = (|| -> std::result::Result<(), String> {
            sys::block_all_signals();
            // If ckpt dies before the restore completes, the half-built tree dies too.
            if !via_helper {
                sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as u64)
                    .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
            }
            set_ids(p);
            if pid == img.processes[0].pid() {
                // Groups whose leader is gone: a helper with the leader's
                // pid holds each group while the members join it.
                for &g in &self.pgid_helpers {
                    match sys::fork_with_pid(g) {
                        Ok(0) => {
                            let _ = sys::setpgid(0, 0);
                            sys::pause_forever()
                        }
                        // Also from here, as shells do: the group must exist
                        // before any member is forked to join it.
                        Ok(_) => {
                            let _ = sys::setpgid(g, g);
                        }
                        Err(e) => return Err(format!("create group helper {g}: {e}")),
                    }
                }
            }
            // Memory children share copy-on-write is mapped before they fork.
            // (Its pages are in place even from a stream: they come first,
            // and the restorer forks only once they are in, see
            // `Wait::before_fork`; this forked copy must not wait on the
            // spool, whose thread it does not have.)
            premapped = crate::mm::premap_cow(&img.processes, p, self.img_fd);
            let mut zombies = Vec::new();
            let kids: Vec<&ProcessImage> = img
                .processes
                .iter()
                .filter(|c| c.process.ppid == pid && c.pid() != pid)
                .collect();
            // Children in a session whose leader is gone: they were
            // reparented to this subreaper after their session leader died.
            // A helper with the leader's pid opens the session and forks
            // them; when it exits they come back to us, as they were.
            let orphan_sid = |c: &ProcessImage| {
                p.process.child_subreaper != 0
                    && c.process.sid != p.process.sid
                    && c.process.sid != c.pid()
                    && img.process(c.process.sid).is_none()
            };
            if kids.iter().any(|c| orphan_sid(c)) {
                sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1)
                    .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
            }
            let mut sessions: Vec<Pid> = kids
                .iter()
                .filter(|c| orphan_sid(c))
                .map(|c| c.process.sid)
                .collect();
            sessions.sort_unstable();
            sessions.dedup();
            let helped = !sessions.is_empty();
            for sid in sessions {
                match sys::fork_with_pid(sid) {
                    Ok(0) => {
                        let _ = sys::setsid();
                        for c in kids
                            .iter()
                            .filter(|c| orphan_sid(c) && c.process.sid == sid)
                        {
                            match sys::fork_with_pid(c.pid()) {
                                Ok(0) if c.is_zombie() => {
                                    set_ids(c);
                                    sys::exit_like(c.process.exit_status)
                                }
                                Ok(0) if c.files_shared.is_some() => sys::exit_now(1),
                                Ok(0) => self.become_process(img, c, true),
                                Ok(_) => {}
                                Err(_) => sys::exit_now(1),
                            }
                        }
                        sys::exit_now(0)
                    }
                    Ok(_) => {
                        let (_, st) = sys::wait(sid, 0)
                            .map_err(|e| format!("wait for session helper {sid}: {e}"))?;
                        if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
                            return Err(format!(
                                "session helper {sid} could not create its members"
                            ));
                        }
                    }
                    Err(e) => return Err(format!("create session helper {sid}: {e}")),
                }
                zombies.extend(
                    kids.iter()
                        .filter(|c| orphan_sid(c) && c.process.sid == sid && c.is_zombie())
                        .map(|c| c.pid()),
                );
            }
            for c in kids.iter().filter(|c| !orphan_sid(c)) {
                let flags = if c.files_shared.is_some() {
                    libc::CLONE_FILES as u64
                } else {
                    0
                };
                match sys::fork_with_pid_flags(c.pid(), flags) {
                    Ok(0) if c.is_zombie() => {
                        set_ids(c);
                        sys::exit_like(c.process.exit_status)
                    }
                    Ok(0) => self.become_process(img, c, false),
                    Ok(_) if c.is_zombie() => zombies.push(c.pid()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("create child {}: {e}", c.pid())),
                }
            }
            for z in &zombies {
                sys::wait_exited_noreap(*z).map_err(|e| format!("wait for zombie {z}: {e}"))?;
            }
            if !zombies.is_empty() || helped {
                // Their SIGCHLD was not pending in the saved process.
                sys::drain_signal(libc::SIGCHLD);
            }
            // A process sharing its parent's fd table finds its fds there.
            if p.files_shared.is_none() {
                let shared = self.table_members(pid).len() > 1;
                files::install(img, p, &self.opened, &self.keep(), shared)?;
            }
            for k in crate::process_kind::PROCESS_KINDS {
                k.restore_in_process(img, p)
                    .map_err(|e| format!("{}: {e}", k.name()))?;
            }
            // The cwd is a path in our root (and need not lie under the
            // process's root); the chroot comes in `rebuild`, once the
            // mapped files are open, and leaves the cwd where it is.
            let fs = self.fs.as_ref();
            let who = fs.map(|f| format!(" as uid {}", f.uid)).unwrap_or_default();
            let cwd = &p.process.cwd;
            match self.removed_cwds.iter().find(|d| d.0 == cwd.0) {
                Some(d) if p.cwd_removed.is_some() => {
                    sys::fchdir(d.1).map_err(|e| format!("enter recreated cwd {cwd}: {e}"))?
                }
                _ => sys::with_fs_ids(fs, || sys::chdir(&cwd.0))
                    .map_err(|e| format!("chdir {cwd}{who}: {e}"))?,
            }
            sys::umask(p.process.umask);
            sys::set_comm(&p.process.comm.0);
            sys::personality(p.process.personality).map_err(|e| format!("personality: {e}"))?;
            task::restore_sigactions(&p.sigactions).map_err(|e| format!("rt_sigaction: {e}"))?;
            Ok(())
        })();
        match res {
            Ok(()) => {
                // The mappings premapped for the children travel with "ok".
                let cow: String = premapped.iter().map(|a| format!(" {a:x}")).collect();
                let _ = sys::write_all(self.status.1, format!("ok {pid}{cow}\n").as_bytes());
                sys::pause_forever()
            }
            Err(m) => {
                let m = m.replace('\n', " ");
                let _ = sys::write_all(self.status.1, format!("err pid {pid}: {m}\n").as_bytes());
                sys::exit_now(1)
            }
        }
    }

    /// Seizes process `pid` (from this thread, its tracer from now on) and
    /// waits for it to stop.
    fn seize(pid: Pid, traced: &mut Vec<Pid>) -> Result<()> {
        sys::seize(
            pid,
            libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACECLONE | crate::freeze::TRACE_OPTIONS,
        )
        .ctx(pid, || "PTRACE_SEIZE of a restored process".into())?;
        traced.push(pid);
        sys::interrupt(pid).ctx(pid, || "PTRACE_INTERRUPT".into())?;
        crate::freeze::wait_for_stop(pid).map(drop)
    }

    /// Rebuilds the processes one after the other, from this thread.
    fn rebuild_in_turn(
        &mut self,
        img: &Image,
        store: &dyn pagestore::Wait,
        progress: &mut dyn FnMut(u64),
        ready: &mut dyn FnMut(&Self) -> Result<()>,
    ) -> std::result::Result<(), (Error, Pid)> {
        let live: Vec<&ProcessImage> = img.processes.iter().filter(|p| !p.is_zombie()).collect();
        let mut traced = std::mem::take(&mut self.traced);
        let r = self.rebuild_unit(&live, store, &mut traced, progress);
        self.traced = traced;
        r?;
        let root = img.processes[0].pid();
        ready(self).map_err(|e| (e, root))?;
        self.release().map_err(|e| (e, root))
    }

    /// Seizes the processes of `unit`, has them all start dropping what
    /// they inherited, and rebuilds them in turn. On an error, the pid of
    /// the process it is about.
    fn rebuild_unit(
        &self,
        unit: &[&ProcessImage],
        store: &dyn pagestore::Wait,
        traced: &mut Vec<Pid>,
        progress: &mut dyn FnMut(u64),
    ) -> std::result::Result<(), (Error, Pid)> {
        for p in unit {
            Self::seize(p.pid(), traced).map_err(|e| (e, p.pid()))?;
        }
        let mut started = self.start_unmaps(unit)?;
        for p in unit {
            let unmapping = started.remove(&p.pid());
            self.rebuild(p, store, unmapping, traced, progress)
                .map_err(|e| (e, p.pid()))?;
        }
        Ok(())
    }

    /// Rebuilds the processes in `lanes` threads at once, each the tracer
    /// of the processes it rebuilds (the kernel takes ptrace requests from
    /// the tracer thread only): a lane takes the next unit of processes
    /// (those sharing an fd table, in image order: the last of them closes
    /// what the others needed) and rebuilds it (`rebuild_unit`). Once all
    /// are rebuilt, `ready` runs here, then each lane lets its processes
    /// go. After a failure anywhere, the lanes end instead, and the
    /// processes they traced die with them (PTRACE_O_EXITKILL).
    fn rebuild_in_lanes(
        &mut self,
        img: &Image,
        store: &dyn pagestore::Wait,
        lanes: usize,
        progress: &mut dyn FnMut(u64),
        ready: &mut dyn FnMut(&Self) -> Result<()>,
    ) -> std::result::Result<(), (Error, Pid)> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
        use std::sync::{mpsc, Condvar, Mutex};
        type Outcome = std::result::Result<(), (Error, Pid)>;
        enum Msg {
            Progress(u64),
            Rebuilt(Outcome),
            Released(Outcome),
        }
        let units = self.units(img);
        let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
        // Whether the lanes let their processes go (`Some(true)`) or end.
        let verdict = (Mutex::new(None::<bool>), Condvar::new());
        let root = img.processes[0].pid();
        let this = &*self;
        let lane = |tx: mpsc::Sender<Msg>| {
            let mut traced = Vec::new();
            let mut report = |n| drop(tx.send(Msg::Progress(n)));
            // (A panic is an error like any other here: the others wait.)
            let rebuilt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                while let Some(unit) = units.get(next.fetch_add(1, Relaxed)) {
                    if failed.load(Relaxed) {
                        break;
                    }
                    this.rebuild_unit(unit, store, &mut traced, &mut report)?;
                }
                Ok(())
            }))
            .unwrap_or_else(|_| Err((Error::Refused("a rebuilding thread panicked".into()), root)));
            let ok = rebuilt.is_ok();
            failed.fetch_or(!ok, Relaxed);
            let _ = tx.send(Msg::Rebuilt(rebuilt));
            let mut go = verdict.0.lock().unwrap_or_else(|e| e.into_inner());
            while go.is_none() {
                go = verdict.1.wait(go).unwrap_or_else(|e| e.into_inner());
            }
            if go.unwrap_or(false) && ok {
                let released = traced.iter().try_for_each(|&t| {
                    sys::detach(t, 0)
                        .ctx(t, || "PTRACE_DETACH".into())
                        .map_err(|e| (e, t))
                });
                let _ = tx.send(Msg::Released(released));
            }
        };
        let outcome = std::thread::scope(|sc| {
            let (tx, rx) = mpsc::channel();
            for _ in 0..lanes {
                let tx = tx.clone();
                sc.spawn(|| lane(tx));
            }
            drop(tx);
            let mut outcome = Ok(());
            let mut rebuilt = 0;
            while rebuilt < lanes {
                match rx.recv() {
                    Ok(Msg::Progress(n)) => progress(n),
                    Ok(Msg::Rebuilt(r)) => {
                        rebuilt += 1;
                        outcome = outcome.and(r);
                    }
                    // (Every lane reports its rebuild before anything else.)
                    Ok(Msg::Released(_)) | Err(_) => {
                        let e = Error::Refused("a rebuilding thread ended early".into());
                        outcome = outcome.and(Err((e, root)));
                        break;
                    }
                }
            }
            outcome = outcome.and_then(|()| ready(this).map_err(|e| (e, root)));
            *verdict.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome.is_ok());
            verdict.1.notify_all();
            // Each lane that lets its processes go says so, then ends.
            for m in rx {
                if let Msg::Released(r) = m {
                    outcome = outcome.and(r);
                }
            }
            outcome
        });
        self.released = outcome.is_ok();
        outcome
    }

    /// The live processes in units one lane rebuilds in turn: those
    /// sharing an fd table, in image order.
    fn units<'a>(&self, img: &'a Image) -> Vec<Vec<&'a ProcessImage>> {
        let mut units: Vec<(Pid, Vec<&ProcessImage>)> = Vec::new();
        for p in img.processes.iter().filter(|p| !p.is_zombie()) {
            let owner = self.table_owner(p.pid());
            match units.iter_mut().find(|u| u.0 == owner) {
                Some(u) => u.1.push(p),
                None => units.push((owner, vec![p])),
            }
        }
        units.into_iter().map(|u| u.1).collect()
    }

    /// Has every (seized) process of `unit` drop what it inherited from us
    /// (and our rseq registration) at once, before they are rebuilt one
    /// by one: the unmapping, which costs the tasks more than anything else
    /// in a small process, then runs on every core while we rebuild the
    /// first ones. A process that ignores SIGTRAP (no batch loop) or keeps
    /// too many premapped areas does it in `rebuild`.
    fn start_unmaps(
        &self,
        unit: &[&ProcessImage],
    ) -> std::result::Result<HashMap<Pid, crate::remote::Started>, (Error, Pid)> {
        let mut started = HashMap::new();
        for p in unit {
            let pid = p.pid();
            let start = || -> Result<Option<crate::remote::Started>> {
                let code = crate::mm::batch_code(p, self.tramp);
                if code == 0 {
                    return Ok(None);
                }
                let cur = procfs::map_ranges(pid).ctx(pid, || "read maps".into())?;
                let premapped = self.premapped_for(p);
                let mut calls = Vec::new();
                if let Some(c) = rseq_unregister(pid) {
                    calls.push(c);
                }
                calls.extend(crate::mm::unmap_inherited(
                    p,
                    &cur,
                    &premapped,
                    (self.tramp, TRAMP_LEN),
                ));
                if calls.len() > crate::remote::batch_capacity(TRAMP_LEN - PAGE) {
                    return Ok(None);
                }
                let mem = procfs::mem(pid).ctx(pid, || "open /proc mem".into())?;
                let s = Scratch {
                    addr: self.tramp + PAGE,
                    mem: &mem,
                    pid,
                };
                let r = Remote::new(pid, self.tramp)?;
                r.start_many(code, &s, calls).map(Some)
            };
            if let Some(st) = start().map_err(|e| (e, pid))? {
                started.insert(pid, st);
            }
        }
        Ok(started)
    }

    /// (pid, start) of the premapped areas `p` may keep: its own and its
    /// parent's.
    fn premapped_for(&self, p: &ProcessImage) -> Vec<(Pid, u64)> {
        self.premapped
            .iter()
            .copied()
            .filter(|&(who, _)| who == p.pid() || who == p.process.ppid)
            .collect()
    }

    /// Replaces the address space of a seized process and sets all its
    /// state from outside; its threads are created here too. `unmapping`:
    /// what `start_unmaps` started in it.
    fn rebuild(
        &self,
        p: &ProcessImage,
        store: &dyn pagestore::Wait,
        unmapping: Option<crate::remote::Started>,
        traced: &mut Vec<Pid>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let pid = p.pid();
        let mem = procfs::mem(pid).ctx(pid, || "open /proc mem".into())?;
        let s = Scratch {
            addr: self.tramp + PAGE,
            mem: &mem,
            pid,
        };
        let mut r = match unmapping {
            Some(started) => started.finish(&s)?,
            None => Remote::new(pid, self.tramp)?,
        };
        let code = crate::mm::batch_code(p, self.tramp);

        // The process inherited our rseq registration: drop it before the
        // memory it points to is replaced (unless `start_unmaps` did).
        if let Some(c) = rseq_unregister(pid) {
            r.call(&c.name, c.nr, &c.args)?;
        }
        // Mapped files and the executable are opened by the task itself:
        // as the owner of an unauthenticated image.
        if let Some(ids) = &self.fs {
            crate::creds::enter_fs(&mut r, &s, ids)?;
        }
        let shm = self.shmem_fds.clone();
        let shmem_fd = move |id: u32| shm.iter().find(|x| x.0 == id).map(|x| x.1);
        let premapped = self.premapped_for(p);
        let from = crate::mm::Inherited {
            premapped: &premapped,
            tramp: self.tramp,
            tramp_len: TRAMP_LEN,
            img_fd: self.img_fd,
            store,
            image_map: self.image_map.as_ref(),
            shmem_fd: &shmem_fd,
        };
        let vdso = crate::mm::replace_address_space(&mut r, &s, p, &from, progress)?;
        if crate::test_hooks::get().fail_rebuild == Some(pid) {
            return refuse(format!(
                "failure injected in the rebuild of pid {pid} (CKPT_TEST_FAIL_REBUILD)"
            ));
        }

        // Process groups whose leader was created after this process.
        if sys::getpgid(pid) != p.process.pgid && p.process.pgid > 0 {
            let _ = r.call("setpgid", libc::SYS_setpgid, &[0, p.process.pgid as u64]);
        }

        let main = &p.threads[0];
        let mut cloned = Vec::new();
        for t in &p.threads[1..] {
            let tid = Self::clone_thread(&mut r, &s, t.thread.tid, traced)?;
            cloned.push(Remote::new(tid, self.tramp)?);
        }
        let mut others = set_up_threads(p, &s, code, cloned)?;
        if p.process.root.0 != b"/" {
            // Its path is in our root, like every path of the image.
            let mut path = p.process.root.0.clone();
            path.push(0);
            s.write(0, &path)?;
            r.call("chroot", libc::SYS_chroot, &[s.addr])?;
        }
        task::restore_thread(&mut r, &s, &main.thread, code)?;
        task::restore_rlimits(&mut r, &s, &p.rlimits)?;
        if p.process.dumpable == 2 {
            crate::creds::prime_suid_dumpable(&mut r)?;
        }
        // Credentials are per thread: the threads were cloned with ours,
        // which none has changed yet (read once for all).
        let cur = crate::creds::current(pid)?;
        for tr in others.iter_mut() {
            crate::creds::restore(tr, &s, &cur, &p.creds)?;
        }
        crate::creds::restore(&mut r, &s, &cur, &p.creds)?;
        self.restore_owners(&mut r, &s, p)?;
        task::restore_itimers(&mut r, &s, &p.itimers)?;
        for k in crate::process_kind::PROCESS_KINDS {
            k.restore(&mut r, &s, p)?;
        }
        if p.pid() == self.created[0] && !self.pgid_helpers.is_empty() {
            self.reap_group_helpers(&mut r, &s)?;
        }
        let shared = crate::process_kind::pending_left(p, None, &p.shared_pending.signals);
        task::restore_pending(&mut r, &s, pid, None, &shared)?;
        let left = crate::process_kind::pending_left(p, Some(pid), &main.thread.pending);
        task::restore_pending(&mut r, &s, pid, Some(pid), &left)?;
        // The last calls of one batch: the parent-death signal (after the
        // credentials, whose change clears it), and the fds it inherited
        // but does not hold.
        let call = crate::remote::Call::new;
        let pdeathsig = p.process.pdeathsig as u64;
        let mut last = vec![call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            &[libc::PR_SET_PDEATHSIG as u64, pdeathsig, 0],
        )];
        if p.process.child_subreaper != 0 {
            last.push(call(
                "prctl(PR_SET_CHILD_SUBREAPER)",
                libc::SYS_prctl,
                &[libc::PR_SET_CHILD_SUBREAPER as u64, 1],
            ));
        }
        let members = self.table_members(pid);
        if members.len() == 1 {
            for fd in self.keep() {
                if !p.fds.iter().any(|d| d.fd as i32 == fd) {
                    last.push(call("close", libc::SYS_close, &[fd as u64]));
                }
            }
        } else if members.last() == Some(&pid) {
            // The last process of a shared fd table to be rebuilt closes
            // what the others still needed (the image, the descriptions
            // they forked children with): every fd above the image's.
            last.push(call(
                "close_range",
                libc::SYS_close_range,
                &[self.opened.base as u64, u32::MAX as u64, 0],
            ));
        }
        r.call_many(code, &s, TRAMP_LEN - PAGE, &last)?;
        // After the credentials, whose change reset it.
        crate::creds::restore_dumpable(&mut r, p.process.dumpable)?;

        // The last injected call unmaps the trampoline, so it must run from
        // the restored vDSO's syscall instruction. Where the vDSO was
        // moved to is known: reading the mappings again to find it took
        // 4-6 ms with 10,000 of them.
        let ip = match vdso {
            Some(v) => find_syscall_insn(pid, std::slice::from_ref(&v))?,
            None => {
                let maps = procfs::map_ranges(pid).ctx(pid, || "read maps".into())?;
                find_syscall_insn(pid, &maps)?
            }
        };
        r.set_syscall_ip(ip);
        r.call("munmap", libc::SYS_munmap, &[self.tramp, TRAMP_LEN])?;
        r.disarm();
        for tr in others {
            tr.disarm();
        }
        // Each thread's round trip through the kernel (`settle`) overlaps
        // the others': 128 threads one after the other took 8 ms.
        let mut settling = Vec::new();
        for t in &p.threads {
            if let Some(regs) = set_final_state(t)? {
                settling.push((t.thread.tid, regs));
            }
        }
        for (tid, regs) in &settling {
            crate::remote::finish_settling(*tid, regs)?;
        }
        task::restore_scheduling(p)?;
        Ok(())
    }

    /// Creates thread `tid` in the process by an injected clone3; it is
    /// auto-attached (PTRACE_O_TRACECLONE) and stopped before it runs.
    fn clone_thread(r: &mut Remote, s: &Scratch, tid: Pid, traced: &mut Vec<Pid>) -> Result<Pid> {
        const CLONE_ARGS: u64 = 0x800;
        const SET_TID: u64 = 0xa00;
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal,
        // stack, stack_size, tls, set_tid, set_tid_size, cgroup.
        let args = [flags, 0, 0, 0, 0, 0, 0, 0, s.addr + SET_TID, 1, 0];
        let b: Vec<u8> = args.iter().flat_map(|v| v.to_le_bytes()).collect();
        s.write(CLONE_ARGS, &b)?;
        s.write(SET_TID, &tid.to_le_bytes())?;
        let got = r.call(
            "clone3(thread)",
            libc::SYS_clone3,
            &[s.addr + CLONE_ARGS, 88],
        )? as Pid;
        if got != tid {
            return refuse(format!("thread created with id {got}, wanted {tid}"));
        }
        traced.push(tid);
        crate::freeze::wait_for_stop(tid)?;
        Ok(tid)
    }

    /// The root reaps the (killed) group helpers and forgets the SIGCHLD
    /// they raised: the saved process had neither.
    fn reap_group_helpers(&self, r: &mut Remote, s: &Scratch) -> Result<()> {
        for &g in &self.pgid_helpers {
            r.call(
                "wait4(group helper)",
                libc::SYS_wait4,
                &[g as u64, 0, libc::__WALL as u64, 0],
            )?;
        }
        let set = 1u64 << (libc::SIGCHLD - 1);
        s.write(0, &set.to_le_bytes())?;
        s.write(8, &[0u8; 16])?;
        while r.syscall(libc::SYS_rt_sigtimedwait, &[s.addr, 0, s.addr + 8, 8])? > 0 {}
        Ok(())
    }

    /// What goes just before the processes are let go: the stopped ones
    /// are stopped again.
    fn before_release(&self, img: &Image) -> Result<()> {
        // A process that was stopped gets its stop signal queued while it is
        // still traced: it re-enters the group stop before running any code
        // (its parent sees the stop, as before the checkpoint).
        for p in img
            .processes
            .iter()
            .filter(|p| p.process.state == PROC_STOPPED)
        {
            let sig = (p.process.exit_status >> 8) & 0x7f;
            sys::kill(p.pid(), sig).ctx(p.pid(), || format!("stop it again with signal {sig}"))?;
        }
        crate::checkpoint::signal_before_release_for_tests(img.processes[0].pid());
        Ok(())
    }

    /// Lets every process run on its own (rebuilt by this thread).
    fn release(&mut self) -> Result<()> {
        for &t in &self.traced {
            sys::detach(t, 0).ctx(t, || "PTRACE_DETACH".into())?;
        }
        self.released = true;
        Ok(())
    }

    /// Kills everything created so far (a failed restart).
    fn kill_all(&mut self) {
        for &p in self.created.iter().rev() {
            let _ = sys::kill(p, libc::SIGKILL);
        }
        // A traced task that dies waits for its tracer (us) to see it
        // before its parent can; threads before their leaders.
        for &t in self.traced.iter().rev() {
            let _ = sys::wait(t, 0);
        }
        if let Some(&root) = self.created.first() {
            let _ = sys::wait(root, 0);
        }
        // Descendants are reaped by init once their parents are gone.
        procfs::wait_gone(&self.created, std::time::Duration::from_secs(5));
    }
}

/// The call that drops the rseq registration `pid` has (ours, inherited),
/// if any.
fn rseq_unregister(pid: Pid) -> Option<crate::remote::Call> {
    let (addr, len, sig) = sys::rseq_config(pid).ok()?;
    (addr != 0).then(|| {
        crate::remote::Call::new(
            "rseq(unregister)",
            libc::SYS_rseq,
            &[addr, len as u64, RSEQ_FLAG_UNREGISTER, sig as u64],
        )
    })
}

/// Process groups of the tree whose leader is not in the image and that a
/// helper can recreate: only inside a session the root leads (setpgid
/// cannot cross sessions), and only when the leader's pid is free.
fn group_helpers(img: &Image) -> Vec<Pid> {
    let root = &img.processes[0];
    if root.process.sid != root.pid() {
        return Vec::new();
    }
    let mut v: Vec<Pid> = img
        .processes
        .iter()
        .filter(|p| p.process.sid == root.pid())
        .map(|p| p.process.pgid)
        .filter(|&g| g > 1 && img.process(g).is_none() && !procfs::exists(g))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Sets ids the process can set itself right after fork: a session or
/// group it leads, or an existing group it belongs to.
fn set_ids(p: &ProcessImage) {
    let pid = p.pid();
    if p.process.sid == pid {
        let _ = sys::setsid();
    } else if p.process.pgid == pid {
        let _ = sys::setpgid(0, 0);
    } else if p.process.pgid > 0 && procfs::exists(p.process.pgid) {
        let _ = sys::setpgid(0, p.process.pgid);
    }
}

/// Threads set up at once, not one after the other.
const SETUP_WAVE: usize = 8;
/// Scratch bytes of each thread of a wave (its calls' table).
const SETUP_SLOT: u64 = 512;

/// Sets up the new threads (`cloned`, of `p.threads[1..]`): their
/// `task::thread_setup` calls, and their pending signals. A wave of
/// threads runs its calls at once, each from its own slot of the scratch
/// memory, so their round trips overlap (without the batch loop, one
/// after the other).
fn set_up_threads(
    p: &ProcessImage,
    s: &Scratch,
    code: u64,
    cloned: Vec<Remote>,
) -> Result<Vec<Remote>> {
    const _: () = assert!(
        SETUP_SLOT * (SETUP_WAVE as u64 - 1) + task::THREAD_STACK_T_AT + 24 <= TRAMP_LEN - PAGE
    );
    let pid = p.pid();
    let mut done = Vec::with_capacity(cloned.len());
    let mut cloned = cloned.into_iter();
    for wave in p.threads[1..].chunks(SETUP_WAVE) {
        let slot = |k: usize| Scratch {
            addr: s.addr + k as u64 * SETUP_SLOT,
            mem: s.mem,
            pid: s.pid,
        };
        let mut started = Vec::with_capacity(wave.len());
        for (k, t) in wave.iter().enumerate() {
            let mut tr = cloned.next().expect("one Remote per thread");
            if code == 0 {
                task::restore_thread(&mut tr, s, &t.thread, code)?;
                done.push(tr);
                continue;
            }
            let calls = task::thread_setup(&slot(k), &t.thread)?;
            started.push((k, tr.start_many(code, &slot(k), calls)?));
        }
        for (k, st) in started {
            done.push(st.finish(&slot(k))?);
        }
        let from = done.len() - wave.len();
        for (tr, t) in done[from..].iter_mut().zip(wave) {
            let left = crate::process_kind::pending_left(p, Some(t.thread.tid), &t.thread.pending);
            task::restore_pending(tr, s, pid, Some(t.thread.tid), &left)?;
        }
    }
    Ok(done)
}

/// Registers, xsave state, debug registers and signal mask of one thread,
/// last of all, just before it is released; returns the registers
/// `remote::finish_settling` sets once the thread has stopped again, if
/// it was in a syscall (see `remote::settle`).
fn set_final_state(t: &crate::model::ThreadImage) -> Result<Option<sys::Regs>> {
    let tid = t.thread.tid;
    let saved = arch::record_to_regs(&t.regs);
    let mut regs = saved;
    arch::restart_fixup(&mut regs, false);
    sys::set_regs(tid, &regs).ctx(tid, || "PTRACE_SETREGS".into())?;
    sys::set_xstate(tid, &t.xstate.area.0).ctx(tid, || "set xsave state".into())?;
    for i in [0usize, 1, 2, 3, 6, 7] {
        if t.debug.dr[i] != 0 {
            sys::set_debugreg(tid, i, t.debug.dr[i]).ctx(tid, || format!("set dr{i}"))?;
        }
    }
    sys::set_sigmask(tid, t.thread.sigmask).ctx(tid, || "PTRACE_SETSIGMASK".into())?;
    // A syscall the checkpoint interrupted: the kernel re-runs it when the
    // thread resumes, or fails it with EINTR if a handled signal comes
    // first (one sent right after the restart), as it would have. (The
    // registers returned go in once the thread has stopped again.)
    crate::remote::start_settling(tid, &saved, false)
}

impl Drop for Build {
    fn drop(&mut self) {
        if !self.released {
            self.kill_all();
        }
    }
}

fn refuse<T>(msg: String) -> Result<T> {
    Err(Error::Refused(msg))
}

/// Who asks `validate`: restart also checks that the image's pids are free
/// here; checkpoint (whose processes still hold them) checks every other
/// rule before the original is killed, so that an image restart would
/// refuse is never the only copy of a process.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Checkpoint,
    Restart,
}

/// The rules an image must meet to be restarted on this machine, checked
/// at checkpoint before the tree is killed (see `Mode`).
pub fn check_restorable(img: &Image) -> Result<()> {
    validate(img, Mode::Checkpoint, None, &mut Log::default())
}

/// Everything that can be checked before a process is created.
/// `fs`: the filesystem ids paths of the image are looked at with.
fn validate(img: &Image, mode: Mode, fs: Option<&sys::FsIds>, log: &mut Log) -> Result<()> {
    let here = crate::head(0);
    if img.head.arch != ARCH_X86_64 || img.head.machine.0 != here.machine.0 {
        return refuse(format!(
            "image was written on {} (arch id {}); this machine is {}",
            img.head.machine, img.head.arch, here.machine
        ));
    }
    if img.head.kernel_release.0 != here.kernel_release.0 {
        let note = format!(
            "image written on kernel {}, restarting on {}",
            img.head.kernel_release, here.kernel_release
        );
        tracing::warn!("{note}");
        log.info(0, 0, "", &note);
    }
    arch::validate_arch(&img.arch)?;
    let Some(root) = img.processes.first() else {
        return refuse("image holds no process".into());
    };
    if root.is_zombie() {
        return refuse(format!(
            "pid {}: the image's root process is a zombie",
            root.pid()
        ));
    }
    let mut tids = std::collections::HashSet::new();
    for t in img.processes.iter().flat_map(|p| &p.threads) {
        if !tids.insert(t.thread.tid) {
            return refuse(format!(
                "thread id {} appears twice in the image",
                t.thread.tid
            ));
        }
    }
    if mode == Mode::Restart {
        // The checkpointed tree may still be dying, or waiting to be reaped
        // by its parent (checkpoint does not wait for that); so may its
        // zombies (no threads), orphaned to pid 1 by the killed parent.
        let ids: Vec<Pid> = tids
            .iter()
            .copied()
            .chain(img.processes.iter().map(|p| p.pid()))
            .collect();
        // (15 s: a busy pid 1 that is no init system of the usual kind
        // took more than 5 s to reap a killed tree's orphans under load.)
        procfs::wait_dying_reaped(&ids, std::time::Duration::from_secs(15));
    }
    let cg = crate::cgroup::Host::read();
    for (i, p) in img.processes.iter().enumerate() {
        let pid = p.pid();
        if img.processes[..i].iter().any(|q| q.pid() == pid) {
            return refuse(format!("pid {pid} appears twice in the image"));
        }
        if i > 0 {
            // Parents come before their children, and only live ones have children.
            match img.processes[..i]
                .iter()
                .find(|q| q.pid() == p.process.ppid)
            {
                Some(q) if !q.is_zombie() => {}
                _ => {
                    return refuse(format!(
                        "pid {pid}: its parent {} is not a live process earlier in the image",
                        p.process.ppid
                    ))
                }
            }
        }
        validate_process(img, p, mode, fs, &cg)?;
        if !p.is_zombie() {
            for k in crate::process_kind::PROCESS_KINDS {
                k.validate(img, p)
                    .or_else(|e| refuse(format!("pid {}: {}: {e}", p.pid(), k.name())))?;
            }
        }
        // A session whose leader is gone is reopened by a helper with the
        // leader's pid (see `become_process`).
        let sid = p.process.sid;
        let restart = mode == Mode::Restart;
        if restart && sid != pid && img.process(sid).is_none() && procfs::exists(sid) && i > 0 {
            let parent = img.process(p.process.ppid);
            if parent.is_some_and(|q| q.process.child_subreaper != 0 && q.process.sid != sid) {
                return refuse(format!(
                    "pid {pid} belongs to session {sid}, whose leader is gone; recreating that session needs pid {sid}, which is in use"
                ));
            }
        }
    }
    validate_objects(img, fs)
}

fn validate_process(
    img: &Image,
    p: &ProcessImage,
    mode: Mode,
    fs: Option<&sys::FsIds>,
    cg: &crate::cgroup::Host,
) -> Result<()> {
    let pid = p.pid();
    let restart = mode == Mode::Restart;
    if pid <= 1 {
        return refuse(format!("image pid {pid} is not restorable"));
    }
    if restart && procfs::exists(pid) {
        let who = procfs::comm(pid);
        if let Some(ppid) = procfs::dying_parent(pid) {
            return refuse(format!(
                "pid {pid} is still held by a dying process or zombie ({}) that its parent {ppid} ({}) has not reaped; \
                 the parent must wait() for it (or exit) before the pid is free to restart",
                who.trim_end(),
                procfs::comm(ppid)
            ));
        }
        return refuse(format!(
            "pid {pid} is in use by another process ({}); stop it, or wait until it exits, then restart",
            who.trim_end()
        ));
    }
    match p.process.state {
        PROC_ZOMBIE => return Ok(()),
        PROC_ALIVE => {}
        PROC_STOPPED => {
            let stop_sigs = [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];
            let st = p.process.exit_status;
            if st & 0xff != 0x7f || !stop_sigs.contains(&((st >> 8) & 0xff)) {
                return refuse(format!(
                    "pid {pid}: the image says it is stopped, with a wait status {st:#x} that no stop signal gives"
                ));
            }
        }
        s => return refuse(format!("pid {pid}: unknown process state {s} in the image")),
    }
    match p.process.dumpable {
        0 | 1 => {}
        2 if suid_dumpable() == Some(2) => {}
        d => {
            return refuse(format!(
                "pid {pid}: dumpable {d} cannot be restored here (fs.suid_dumpable is {}); only 0 and 1 can be set, 2 needs fs.suid_dumpable = 2",
                suid_dumpable().map_or("unknown".into(), |v| v.to_string())
            ))
        }
    }
    // cwd and root are both paths in the checkpointer's root (the cwd need
    // not lie under the root); both must still be directories.
    let path = |t: &Text| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&t.0));
    if p.cwd_removed.is_some() {
        // It is recreated, entered and removed again: its name must be free
        // and its parent must exist.
        let cwd = path(&p.process.cwd);
        if cwd.symlink_metadata().is_ok() || !cwd.parent().is_some_and(|d| d.is_dir()) {
            return refuse(format!(
                "pid {pid}: its working directory {} was removed; restart recreates it for a moment, which needs the name free and its parent directory present",
                cwd.display()
            ));
        }
    }
    let dirs = [
        ("root directory", path(&p.process.root)),
        ("working directory", path(&p.process.cwd)),
    ];
    for (what, dir) in dirs
        .into_iter()
        .take(if p.cwd_removed.is_some() { 1 } else { 2 })
    {
        if !sys::with_fs_ids(fs, || std::fs::metadata(&dir)).is_ok_and(|m| m.is_dir()) {
            return refuse(format!(
                "pid {pid}: its {what} {} does not exist here; create it or restart where it exists",
                ckpt_image::escape(dir.as_os_str().as_bytes())
            ));
        }
    }
    crate::cgroup::plan(cg, pid, &p.cgroups.membership.lossy())?;
    if p.threads.is_empty() || p.threads[0].thread.tid != pid {
        return refuse(format!("pid {pid}: the image lacks its main thread"));
    }
    for t in &p.threads[1..] {
        if restart && procfs::exists(t.thread.tid) {
            return refuse(format!(
                "thread id {} of pid {pid} is in use by another process",
                t.thread.tid
            ));
        }
    }
    let own_xstate = sys::get_xstate_size();
    for t in &p.threads {
        if t.regs.tid != t.thread.tid || t.xstate.tid != t.thread.tid || t.debug.tid != t.thread.tid
        {
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
        if v.flags & !VMAF_ALL != 0 {
            return refuse(format!(
                "pid {pid}: mapping {:#x} has flags {:#x} this ckpt does not know; restart with the ckpt that wrote the image",
                v.start, v.flags
            ));
        }
        if v.kind == VMA_FILE && v.flags & VMAF_DELETED == 0 {
            let path = std::ffi::OsStr::from_bytes(&v.path.0);
            if let Err(e) = sys::with_fs_ids(fs, || std::fs::metadata(path)) {
                return refuse(format!("pid {pid}: mapped file {} is missing: {e}", v.path));
            }
        }
    }
    // (The mappings are sorted and disjoint, checked above.)
    for r in &p.pages {
        let end = r.addr.saturating_add(r.nr_pages * PAGE);
        let at = p.vmas.partition_point(|v| v.end <= r.addr);
        let inside = p.vmas.get(at).is_some_and(|v| {
            v.start <= r.addr
                && end <= v.end
                && !crate::mm::is_special(v.kind)
                && v.flags & VMAF_SHARED == 0
        });
        if !inside {
            return refuse(format!(
                "pid {pid}: page data at {:#x} ({} pages) lies outside every private mapping",
                r.addr, r.nr_pages
            ));
        }
    }
    // Our vDSO must look like the image's, since it is moved into place.
    let own = procfs::map_ranges(std::process::id() as Pid).map_err(|e| Error::Sys {
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
    for v in p.vmas.iter().filter(|v| v.kind == VMA_SHMEM || v.obj != 0) {
        if !img.shmems.iter().any(|s| s.shmem.id == v.obj) {
            return refuse(format!(
                "pid {pid}: mapping {:#x} names a missing shared memory object",
                v.start
            ));
        }
    }
    if let Some(sh) = &p.files_shared {
        let parent = img.process(p.process.ppid);
        if sh.parent != p.process.ppid || parent.is_none_or(|q| q.is_zombie()) {
            return refuse(format!(
                "pid {pid}: shares the fd table of {}, which is not its live parent in the image",
                sh.parent
            ));
        }
    }
    let ids: std::collections::HashSet<u32> = img.files.iter().map(|f| f.id).collect();
    let mut seen = std::collections::HashSet::new();
    for d in &p.fds {
        if !seen.insert(d.fd) {
            return refuse(format!("pid {pid}: fd {} appears twice in the image", d.fd));
        }
        if !ids.contains(&d.file_id) {
            return refuse(format!(
                "pid {pid}: fd {} refers to a file the image does not have",
                d.fd
            ));
        }
    }
    Ok(())
}

fn validate_objects(img: &Image, fs: Option<&sys::FsIds>) -> Result<()> {
    fn unique<T, K: Eq + std::hash::Hash>(items: &[T], key: impl Fn(&T) -> K) -> bool {
        let mut seen = std::collections::HashSet::new();
        items.iter().all(|x| seen.insert(key(x)))
    }
    if !unique(&img.files, |f| f.id)
        || !unique(&img.pipes, |p| p.id)
        || !unique(&img.shmems, |s| s.shmem.id)
    {
        return refuse(
            "the image has two shared objects (files, pipes or shmem objects) with one id".into(),
        );
    }
    for o in &img.file_owners {
        let ok_owner = match o.owner_type {
            _ if o.owner == 0 => true,
            0 | 1 => img.process(o.owner).is_some(),
            2 => img.processes.iter().any(|p| p.process.pgid == o.owner),
            _ => false,
        };
        if !ok_owner || o.signum > 64 || !img.files.iter().any(|f| f.id == o.file_id) {
            return refuse(format!(
                "file {}: invalid signal owner {} (type {}) or signal {}",
                o.file_id, o.owner, o.owner_type, o.signum
            ));
        }
    }
    for a in &img.file_attrs {
        let f = img.files.iter().find(|f| f.id == a.file_id);
        if !f.is_some_and(|f| files::kind_of(f.kind).is_some_and(|k| k.has_attrs(f))) {
            return refuse(format!(
                "file attributes name file {}, which is not a removed directory or FIFO of the image",
                a.file_id
            ));
        }
        if a.atime_nsec >= 1_000_000_000 || a.mtime_nsec >= 1_000_000_000 {
            return refuse(format!("file {}: invalid file times", a.file_id));
        }
    }
    if let Err(e) = files::validate(img, fs) {
        return refuse(e);
    }
    for s in &img.shmems {
        for r in &s.pages {
            if r.addr.saturating_add(r.nr_pages * PAGE) > crate::align_up(s.shmem.size) {
                return refuse(format!(
                    "shared memory object {} has pages beyond its size",
                    s.shmem.id
                ));
            }
        }
    }
    Ok(())
}

/// fs.suid_dumpable: what a change of credentials sets dumpable to.
fn suid_dumpable() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/fs/suid_dumpable")
        .ok()?
        .trim()
        .parse()
        .ok()
}
