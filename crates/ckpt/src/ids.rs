//! One id space for every shared kernel object of an image (open file
//! descriptions, pipes, shared memory objects, and the fd kinds that plug
//! into `files::kind`), and kcmp-backed detection of shared descriptions.
//!
//! Ids are unique across kinds, so a record naming an object cannot name
//! an object of another kind by accident, and they are typed in the code
//! (`ObjId`) until they are written.

use crate::sys::{self, Pid};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The id of one shared object of an image (never 0: 0 means none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjId(pub u32);

/// Hands out the ids of one image; clones share the counter, so every
/// table of a checkpoint draws from one space.
#[derive(Debug, Clone, Default)]
pub struct IdSpace(Arc<AtomicU32>);

impl IdSpace {
    pub fn next(&self) -> ObjId {
        ObjId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// One fd of a process, and the description it was saved as.
type FdOf = (Pid, i32, ObjId);

/// Every fd seen so far, to find fds that share one open file description.
/// Costs O(log n) kcmp calls per fd: descriptions of one inode are kept in
/// kcmp's order and searched, not compared one by one (10,000 fds of
/// /dev/null would otherwise take 50 million kcmp calls).
#[derive(Default)]
pub struct FdIds {
    /// (pid, fd, id), in the order seen.
    seen: Vec<FdOf>,
    by_fd: HashMap<(Pid, i32), ObjId>,
    /// One fd of each description, by (dev, ino), sorted by `sys::file_order`.
    reps: HashMap<(u64, u64), Vec<FdOf>>,
    /// The fds whose fdinfo lists a lock (`locks` reads only those again).
    locked: std::collections::HashSet<(Pid, i32)>,
}

/// What `FdIds::find` found for one fd: the description it shares, or
/// where a new one goes (so `note` need not search again).
pub struct Found {
    pid: Pid,
    fd: i32,
    key: (u64, u64),
    at: Result<ObjId, usize>,
}

impl Found {
    /// The description the fd shares with an fd seen before, if any.
    pub fn shared(&self) -> Option<ObjId> {
        self.at.ok()
    }
}

impl FdIds {
    /// Where fd `fd` of `pid` is, or would go, among the descriptions of
    /// its inode: Ok(index) when one of them is its own description.
    fn search(
        &self,
        pid: Pid,
        fd: i32,
        dev: u64,
        ino: u64,
    ) -> std::io::Result<Result<usize, usize>> {
        let Some(reps) = self.reps.get(&(dev, ino)) else {
            return Ok(Err(0));
        };
        let (mut lo, mut hi) = (0, reps.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (rp, rfd, _) = reps[mid];
            match sys::file_order(rp, rfd, pid, fd)? {
                std::cmp::Ordering::Equal => return Ok(Ok(mid)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(Err(lo))
    }

    /// Looks fd `fd` of `pid` up among the descriptions seen. (dev, ino)
    /// only narrows the candidates: anonymous inodes (every eventfd, epoll,
    /// timerfd... shares one) are told apart by kcmp.
    pub fn find(&self, pid: Pid, fd: i32, dev: u64, ino: u64) -> std::io::Result<Found> {
        let key = (dev, ino);
        let at = match self.search(pid, fd, dev, ino)? {
            Ok(i) => Ok(self.reps[&key][i].2),
            Err(at) => Err(at),
        };
        Ok(Found { pid, fd, key, at })
    }

    /// Records that the fd `found` is about is description `id` (the one it
    /// shares, or a new one).
    pub fn note(&mut self, found: Found, id: ObjId) {
        let Found { pid, fd, key, at } = found;
        if let Err(at) = at {
            self.reps.entry(key).or_default().insert(at, (pid, fd, id));
        }
        self.seen.push((pid, fd, id));
        self.by_fd.insert((pid, fd), id);
    }

    /// Records that fd `fd` of `pid` holds a lock (its fdinfo says so).
    pub fn note_locked(&mut self, pid: Pid, fd: i32) {
        self.locked.insert((pid, fd));
    }

    /// Whether fd `fd` of `pid` was seen holding a lock.
    pub fn locked(&self, pid: Pid, fd: i32) -> bool {
        self.locked.contains(&(pid, fd))
    }

    /// The description fd `fd` of `pid` was saved as.
    pub fn of(&self, pid: Pid, fd: i32) -> Option<ObjId> {
        self.by_fd.get(&(pid, fd)).copied()
    }

    /// Every (pid, fd, id) seen, in order.
    pub fn all(&self) -> impl Iterator<Item = (Pid, i32, ObjId)> + '_ {
        self.seen.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_space_for_every_table() {
        let a = IdSpace::default();
        let b = a.clone();
        assert_eq!(a.next(), ObjId(1));
        assert_eq!(b.next(), ObjId(2));
        assert_eq!(a.next(), ObjId(3));
    }

    #[test]
    fn fds_of_one_description_share_an_id() {
        use std::os::fd::AsRawFd;
        let me = std::process::id() as Pid;
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let dup = f.try_clone().unwrap(); // same description
        let other = std::fs::File::open("/proc/self/stat").unwrap();
        let mut ids = FdIds::default();
        let shared = |ids: &FdIds, fd, ino| ids.find(me, fd, 1, ino).unwrap().shared();
        let found = ids.find(me, f.as_raw_fd(), 1, 2).unwrap();
        ids.note(found, ObjId(7));
        assert_eq!(shared(&ids, dup.as_raw_fd(), 2), Some(ObjId(7)));
        assert_eq!(shared(&ids, other.as_raw_fd(), 2), None);
        // Another inode is not even compared.
        assert_eq!(shared(&ids, dup.as_raw_fd(), 3), None);
        assert_eq!(ids.of(me, f.as_raw_fd()), Some(ObjId(7)));
    }

    #[test]
    fn many_descriptions_of_one_inode_are_told_apart() {
        use std::os::fd::AsRawFd;
        let me = std::process::id() as Pid;
        let files: Vec<std::fs::File> = (0..300)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let dups: Vec<std::fs::File> = files.iter().map(|f| f.try_clone().unwrap()).collect();
        let mut ids = FdIds::default();
        for (i, f) in files.iter().enumerate() {
            let found = ids.find(me, f.as_raw_fd(), 5, 6).unwrap();
            assert_eq!(found.shared(), None);
            ids.note(found, ObjId(i as u32 + 1));
        }
        for (i, d) in dups.iter().enumerate() {
            let found = ids.find(me, d.as_raw_fd(), 5, 6).unwrap();
            assert_eq!(found.shared(), Some(ObjId(i as u32 + 1)));
        }
    }
}
