//! Where restart finds page data. An image file holds it in place: its
//! page section is checked by a thread while the processes are rebuilt,
//! and before any of them runs (`Checked`). A stream
//! (pipe, socket) or a compressed image is read by a spool thread into a
//! memfd while the restore goes on (`Spool`): each reader of page data
//! waits for what it needs, and what was read into a process is punched
//! out of the memfd, so the spool holds little more than a window ahead
//! of the restore. The image's checksum is checked when the stream ends,
//! before the tree runs.

use crate::error::{Error, Result};
use crate::model::{Image, Plan, PlanOwner};
use ckpt_image::{ImageReader, PAGE_SIZE, PLAN_EARLY};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Page data readers wait for their data and say when they are done with it.
pub trait Wait: Sync {
    /// Returns once the page data before offset `end` is in place.
    fn wait(&self, end: u64) -> Result<()>;
    /// The data at `off..off + len` is not needed any more.
    fn release(&self, off: u64, len: u64);
    /// Returns once the restorer may fork (no other thread of it runs)
    /// with the pages needed by then in place.
    fn before_fork(&self) -> Result<()> {
        Ok(())
    }
    /// The forks are done.
    fn after_fork(&self) {}
    /// Returns once all of the image was read and its checksum is right.
    fn finish(&self) -> Result<()> {
        Ok(())
    }
    /// Reads all the rest of the image now, however much that holds.
    fn read_all(&self) -> Result<()> {
        Ok(())
    }
    /// Whether page data arrives as the restore goes on.
    fn streamed(&self) -> bool {
        false
    }
    /// The most page data held at once outside the processes, in bytes.
    fn held_at_most(&self) -> Option<u64> {
        None
    }
}

/// Page data that is all there (an image file, checked).
pub struct InPlace;

impl Wait for InPlace {
    fn wait(&self, _end: u64) -> Result<()> {
        Ok(())
    }
    fn release(&self, _off: u64, _len: u64) {}
}

/// Page data in an image file whose page section a thread checks (its
/// structure and checksums) while the restore reads it (`with_checked`):
/// the check overlaps the copying instead of coming before it, and
/// `finish`, before anything runs, waits for its verdict.
#[derive(Default)]
pub struct Checked {
    state: Mutex<CheckState>,
    cv: Condvar,
}

#[derive(Default)]
struct CheckState {
    /// The thread waits for `resumed` (the restorer forks meanwhile).
    parked: bool,
    resumed: bool,
    stopping: bool,
    /// The verdict, once the page section was read to its tail.
    verdict: Option<Result<()>>,
}

impl Checked {
    fn lock(&self) -> MutexGuard<'_, CheckState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_until(&self, cond: impl Fn(&CheckState) -> bool) -> MutexGuard<'_, CheckState> {
        let mut st = self.lock();
        while !cond(&st) {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    /// The thread's work: parks until the forks are done, then reads the
    /// page section of `img` from `rd`.
    fn run<R: Read>(&self, img: &Image, rd: &mut ImageReader<R>) {
        {
            let mut st = self.lock();
            st.parked = true;
            self.cv.notify_all();
            drop(st);
            let mut st = self.wait_until(|st| st.resumed || st.stopping);
            st.parked = false;
            if st.stopping {
                st.verdict = Some(Ok(()));
                self.cv.notify_all();
                return;
            }
        }
        let r = img.read_pages(rd, |_, _| {
            if self.lock().stopping {
                return Err(Error::Refused("restart abandoned".into()));
            }
            Ok(())
        });
        self.lock().verdict = Some(r);
        self.cv.notify_all();
    }

    fn stop(&self) {
        let mut st = self.lock();
        st.stopping = true;
        self.cv.notify_all();
    }

    /// The thread's verdict, waited for if it was let go on reading (an
    /// error only: an image found damaged explains a failed restore).
    fn damage(&self) -> Option<Error> {
        if !self.lock().resumed {
            return None;
        }
        match self.wait_until(|st| st.verdict.is_some()).verdict.take() {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }
}

impl Wait for Checked {
    fn wait(&self, _end: u64) -> Result<()> {
        Ok(())
    }
    fn release(&self, _off: u64, _len: u64) {}

    fn before_fork(&self) -> Result<()> {
        // Parked, the thread holds no lock a child could inherit taken.
        drop(self.wait_until(|st| st.parked || st.verdict.is_some()));
        Ok(())
    }

    fn after_fork(&self) {
        let mut st = self.lock();
        st.resumed = true;
        self.cv.notify_all();
    }

    fn finish(&self) -> Result<()> {
        self.after_fork();
        let mut st = self.wait_until(|st| st.verdict.is_some());
        let verdict = st.verdict.take().expect("waited for");
        st.verdict = Some(Ok(()));
        verdict
    }
}

/// Runs `f` while a thread checks the page section of `img` from `rd`
/// (see `Checked`); the thread is stopped (and joined) however `f` ends.
/// A failed `f` on an image found damaged reports the damage.
pub fn with_checked<R: Read + Send, T>(
    checked: &Checked,
    img: &Image,
    rd: ImageReader<R>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::thread::scope(|sc| {
        let mut rd = rd;
        let run = move || checked.run(img, &mut rd);
        spawn_scoped(sc, "ckpt-check", "checking the image", run)?;
        let _stop = OnDrop(|| checked.stop());
        f().map_err(|e| checked.damage().unwrap_or(e))
    })
}

/// How far the spool reads ahead of what the restore asked for.
const WINDOW: u64 = 32 << 20;

/// Page data read from a stream into a memfd by a thread (`run`).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    memfd: std::fs::File,
    /// Readable once the restore is abandoned: wakes a blocked read.
    stop: OwnedFd,
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    /// Page data before this offset is in the memfd.
    ready: u64,
    /// The highest end a reader asked for.
    wanted: u64,
    /// The thread waits for `resume` (the restorer forks meanwhile).
    parked: bool,
    resumed: bool,
    /// The page section was read to its tail, checksum right.
    done: bool,
    failed: Option<String>,
    stopping: bool,
    /// The most the memfd held (allocated bytes), sampled per record.
    peak: u64,
}

impl Spool {
    pub fn new() -> io::Result<Spool> {
        let stop = crate::sys::eventfd(0)?;
        Ok(Spool {
            inner: Arc::new(Inner {
                memfd: crate::sys::memfd("ckpt-pages")?,
                // SAFETY: a new fd of ours, owned from here on.
                stop: unsafe { OwnedFd::from_raw_fd(stop) },
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
            }),
        })
    }

    /// The memfd tasks read their pages from.
    pub fn file(&self) -> &std::fs::File {
        &self.inner.memfd
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `input` made to fail once the restore is abandoned (`stop`),
    /// instead of blocking on a stream that sends nothing more.
    pub fn abortable(&self, input: std::fs::File) -> Abortable {
        Abortable {
            file: input,
            stop: self.inner.stop.as_raw_fd(),
        }
    }

    /// Page data before `end` is in the memfd.
    fn advance(&self, end: u64) {
        use std::os::unix::fs::MetadataExt;
        let held = self.inner.memfd.metadata().map_or(0, |m| m.blocks() * 512);
        let mut st = self.lock();
        st.ready = st.ready.max(end);
        st.peak = st.peak.max(held);
        self.inner.cv.notify_all();
    }

    /// Blocks the spool thread until data from `start` on is within the
    /// window. (By its start: data a reader waits for always is.)
    fn window(&self, start: u64) -> io::Result<()> {
        let mut st = self.lock();
        while start > st.wanted.saturating_add(WINDOW) && !st.stopping {
            st = self.inner.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.stopping {
            return Err(io::Error::other("restart abandoned"));
        }
        Ok(())
    }

    /// The `ImageReader` hook that copies uncompressed page data into the
    /// memfd at its stream offset, checksumming it on the way.
    pub fn page_data_hook<R: Read>(&self) -> ckpt_image::reader::PageData<R> {
        let me = self.clone();
        let mut buf = vec![0u8; 1 << 20];
        Box::new(move |input: &mut R, off, len| {
            let mut crc = 0u32;
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                me.window(off + done)?;
                input.read_exact(&mut buf[..n])?;
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                crate::sys::pwrite_all(me.inner.memfd.as_raw_fd(), &buf[..n], off + done)?;
                done += n as u64;
                // Readers may take it from here (a record is up to 256 MiB).
                me.advance(off + done);
            }
            Ok(crc)
        })
    }

    /// Reads the page section of `img` from `rd` (run in the spool thread).
    /// Parks once the pages restart needs before it forks are in (see
    /// `wait_parked`).
    pub fn run<R: Read>(&self, img: &Image, rd: &mut ImageReader<R>) {
        let section = img.section.as_ref().expect("an image with a page section");
        let first = |p: &Plan| matches!(p.owner, PlanOwner::Shmem(_)) || p.flags & PLAN_EARLY != 0;
        let n_first = section.plans.iter().filter(|p| first(p)).count();
        let mut seen = 0;
        let mut buf = Vec::new();
        let park = |me: &Spool| {
            let mut st = me.lock();
            st.parked = true;
            me.inner.cv.notify_all();
            while !st.resumed && !st.stopping {
                st = me.inner.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.parked = false;
        };
        if n_first == 0 {
            park(self);
        }
        let r = img.read_pages(rd, |plan, z| {
            let end = plan.data_offset + plan.nr_pages * PAGE_SIZE;
            if let Some(z) = z {
                self.window(plan.data_offset).map_err(Error::Write)?;
                buf.resize((plan.nr_pages * PAGE_SIZE) as usize, 0);
                crate::mm::decompress(section.compression, z, &mut buf).map_err(|e| {
                    Error::Refused(format!(
                        "page data for {:#x} does not decompress: {e}",
                        plan.addr
                    ))
                })?;
                crate::sys::pwrite_all(self.inner.memfd.as_raw_fd(), &buf, plan.data_offset)
                    .map_err(Error::Write)?;
            }
            self.advance(end);
            seen += 1;
            if seen == n_first {
                park(self);
            }
            Ok(())
        });
        let mut st = self.lock();
        match r {
            Ok(()) => st.done = true,
            Err(e) => st.failed = Some(e.to_string()),
        }
        self.inner.cv.notify_all();
    }

    /// Waits until the thread is parked (the pages needed before the
    /// processes are forked are in), so that forking is safe: the thread
    /// then holds no lock.
    fn wait_parked(&self) -> Result<()> {
        self.until(self.lock(), |st| st.parked).map(drop)
    }

    /// Waits with `st` until `cond` holds or the thread has ended; an
    /// error if it failed.
    fn until<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        cond: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'a, State>> {
        while !cond(&st) && !st.done && st.failed.is_none() {
            st = self.inner.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        match &st.failed {
            Some(e) => Err(Error::Refused(format!("reading the image stream: {e}"))),
            None => Ok(st),
        }
    }

    /// Lets a parked thread go on reading.
    fn resume(&self) {
        let mut st = self.lock();
        st.resumed = true;
        self.inner.cv.notify_all();
    }

    /// Waits until the whole stream was read and checked.
    fn finish_reading(&self) -> Result<()> {
        self.until(self.lock(), |_| false).map(drop)
    }

    /// Abandons the restore: the thread stops at its next read or wait.
    pub fn stop(&self) {
        let mut st = self.lock();
        st.stopping = true;
        st.resumed = true;
        self.inner.cv.notify_all();
        drop(st);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        let _ = unsafe { libc::write(self.inner.stop.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

impl Wait for Spool {
    fn wait(&self, end: u64) -> Result<()> {
        let mut st = self.lock();
        if end > st.wanted {
            st.wanted = end;
            self.inner.cv.notify_all();
        }
        let st = self.until(st, |st| st.ready >= end)?;
        if st.ready < end {
            return Err(Error::Refused(format!(
                "the image stream ended before page data at offset {end}"
            )));
        }
        Ok(())
    }

    fn release(&self, off: u64, len: u64) {
        // Best effort: a hole left unpunched only costs memory.
        let _ = crate::sys::punch_hole(self.inner.memfd.as_raw_fd(), off, len);
    }

    fn before_fork(&self) -> Result<()> {
        self.wait_parked()
    }

    fn after_fork(&self) {
        self.resume()
    }

    fn finish(&self) -> Result<()> {
        self.finish_reading()
    }

    fn read_all(&self) -> Result<()> {
        {
            let mut st = self.lock();
            st.wanted = u64::MAX;
            // Nothing forks while it reads: it need not park.
            st.resumed = true;
            self.inner.cv.notify_all();
        }
        self.finish_reading()
    }

    fn streamed(&self) -> bool {
        true
    }

    fn held_at_most(&self) -> Option<u64> {
        Some(self.lock().peak)
    }
}

/// Runs `f` while a thread reads the page section of `img` from `rd` into
/// `spool`; the thread is stopped (and joined) however `f` ends.
pub fn with_spool<R: Read + Send, T>(
    spool: &Spool,
    img: &Image,
    rd: ImageReader<R>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    std::thread::scope(|sc| {
        let mut rd = rd;
        let run = move || spool.run(img, &mut rd);
        spawn_scoped(sc, "ckpt-spool", "reading the image stream", run)?;
        let _stop = OnDrop(|| spool.stop());
        f()
    })
}

/// Runs its closure when dropped: stops a thread however its scope ends.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Starts `run` as thread `name` of scope `sc` (`what` it does, for the
/// error).
fn spawn_scoped<'scope>(
    sc: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    what: &str,
    run: impl FnOnce() + Send + 'scope,
) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(sc, run)
        .map(drop)
        .map_err(|e| Error::Sys {
            pid: std::process::id() as i32,
            what: format!("start the thread {what}"),
            source: e,
        })
}

/// A stream that fails once its spool is stopped (see `Spool::abortable`).
pub struct Abortable {
    file: std::fs::File,
    stop: i32,
}

impl Read for Abortable {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !crate::sys::readable_unless(self.file.as_raw_fd(), self.stop)? {
            return Err(io::Error::other("restart abandoned"));
        }
        self.file.read(buf)
    }
}
