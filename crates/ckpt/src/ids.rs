//! One id space for every shared kernel object of an image (open file
//! descriptions, pipes, shared memory objects, and the fd kinds that plug
//! into `files::kind`), and kcmp-backed detection of shared descriptions.
//!
//! Ids are unique across kinds, so a record naming an object cannot name
//! an object of another kind by accident, and they are typed in the code
//! (`ObjId`) until they are written.

use crate::sys::{self, Pid};
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

/// Every fd seen so far, to find fds that share one open file description.
#[derive(Default)]
pub struct FdIds {
    /// (pid, fd, dev, ino, id).
    seen: Vec<(Pid, i32, u64, u64, ObjId)>,
}

impl FdIds {
    /// The description `fd` of `pid` shares with an fd seen before, if any.
    /// (dev, ino) only narrows the candidates: anonymous inodes (every
    /// eventfd, epoll, timerfd... shares one) are told apart by kcmp.
    pub fn shared(&self, pid: Pid, fd: i32, dev: u64, ino: u64) -> std::io::Result<Option<ObjId>> {
        for &(opid, ofd, d, i, id) in &self.seen {
            if d == dev && i == ino && sys::same_file(opid, ofd, pid, fd)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    pub fn note(&mut self, pid: Pid, fd: i32, dev: u64, ino: u64, id: ObjId) {
        self.seen.push((pid, fd, dev, ino, id));
    }

    /// The description fd `fd` of `pid` was saved as.
    pub fn of(&self, pid: Pid, fd: i32) -> Option<ObjId> {
        self.seen
            .iter()
            .find(|s| s.0 == pid && s.1 == fd)
            .map(|s| s.4)
    }

    /// Every (pid, fd, id) seen, in order.
    pub fn all(&self) -> impl Iterator<Item = (Pid, i32, ObjId)> + '_ {
        self.seen.iter().map(|s| (s.0, s.1, s.4))
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
        ids.note(me, f.as_raw_fd(), 1, 2, ObjId(7));
        assert_eq!(
            ids.shared(me, dup.as_raw_fd(), 1, 2).unwrap(),
            Some(ObjId(7))
        );
        assert_eq!(ids.shared(me, other.as_raw_fd(), 1, 2).unwrap(), None);
        // Another inode is not even compared.
        assert_eq!(ids.shared(me, dup.as_raw_fd(), 1, 3).unwrap(), None);
        assert_eq!(ids.of(me, f.as_raw_fd()), Some(ObjId(7)));
    }
}
