//! The guardian of a checkpoint's TCP connections: a process forked from
//! ckpt when the checkpoint first blocks a connection, before it goes
//! into repair mode, so that a ckpt killed with SIGKILL does not leave a
//! running program's connections frozen (in repair mode and blocked by
//! nftables, see `tcp` and `netblock`).
//!
//! ckpt hands the guardian each such socket (an fd through SCM_RIGHTS;
//! repair mode belongs to the socket, so any fd of it can end it), whether
//! it had SO_REUSEADDR (leaving repair mode clears it), a pidfd of the
//! process holding it, and the shell lines that unblock it (appended to a
//! memfd the guardian reads at the end). Then the guardian waits on its
//! socket to ckpt:
//! - "keep" (the tree was killed: the sockets were closed in repair mode
//!   on purpose and the rules wait for the restart) or "done" (ckpt
//!   undid repair mode and the rules itself): it exits;
//! - end of file without a word (ckpt died): if the holders are all gone
//!   within a second (ckpt died while killing the tree) it exits as for
//!   "keep"; otherwise the program runs on, so it takes every socket out
//!   of repair mode (SO_REUSEADDR set again where it was), then becomes
//!   `sh` running the unblocking lines, and the table goes once empty.
//!
//! The guardian is ckpt's child in a session of its own (a terminal's
//! signals meant for ckpt do not reach it), keeps only stderr of ckpt's
//! fds, and allocates nothing after the fork (ckpt could have threads).
//! ckpt reaps it when it finishes.

use crate::netblock::{self, Conn};
use crate::sys::{self, Pid};
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

const TCP_REPAIR: i32 = 19;
/// Message kinds: a socket (flags: 1 SO_REUSEADDR, 2 a pidfd follows it).
const ADD: u8 = b'A';
const KEEP: u8 = b'K';
const DONE: u8 = b'D';

/// ckpt's end of a running guardian.
pub struct Guard {
    ctl: OwnedFd,
    pid: Pid,
    script: std::fs::File,
    script_len: u64,
    holders: HashSet<Pid>,
}

impl Guard {
    /// Forks the guardian.
    pub fn start() -> io::Result<Guard> {
        let (mine, theirs) = sys::unix_socketpair_owned(libc::SOCK_SEQPACKET)?;
        let script = sys::memfd("ckpt-tcp-guard")?;
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        let path = std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        let trailer = format!(". /dev/stdin; {}", netblock::remove_empty_table_line());
        let exec = sys::Exec::new(
            "/bin/sh",
            &["sh", "-c", &trailer],
            &[format!("PATH={path}")],
        )?;
        let fds = [
            theirs.as_raw_fd(),
            mine.as_raw_fd(),
            script.as_raw_fd(),
            devnull.as_raw_fd(),
        ];
        match sys::fork()? {
            0 => guardian(fds, &exec),
            pid => Ok(Guard {
                ctl: mine,
                pid,
                script,
                script_len: 0,
                holders: HashSet::new(),
            }),
        }
    }

    /// Hands socket `fd` (of connection `conn`, held by process `holder`)
    /// to the guardian; call it before the connection is blocked.
    pub fn add(&mut self, fd: i32, reuseaddr: bool, holder: Pid, conn: &Conn) -> io::Result<()> {
        let lines = netblock::unblock_lines(conn);
        self.script
            .write_all_at(lines.as_bytes(), self.script_len)?;
        self.script_len += lines.len() as u64;
        let mut flags = reuseaddr as u8;
        let pidfd = if self.holders.contains(&holder) {
            None
        } else {
            flags |= 2;
            Some(sys::pidfd_open(holder)?)
        };
        let mut fds = vec![fd];
        fds.extend(pidfd.as_ref().map(|p| p.as_raw_fd()));
        self.send(&[ADD, flags], &fds)?;
        self.holders.insert(holder);
        Ok(())
    }

    /// Sends one message, waiting (up to 10 s) while the guardian's queue
    /// is full.
    fn send(&self, msg: &[u8], fds: &[i32]) -> io::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sys::send_fds(self.ctl.as_raw_fd(), msg, fds) {
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                r => return r.map(drop),
            }
        }
    }

    /// Tells the guardian that the sockets stay as they are (`keep`: the
    /// tree was killed) or were given back (ckpt undid repair mode and the
    /// rules), and reaps it.
    pub fn finish(self, keep: bool) {
        let _ = self.send(&[if keep { KEEP } else { DONE }], &[]);
        drop(self.ctl);
        let _ = sys::wait(self.pid, 0);
    }
}

/// A set of fd numbers below `FDS`, without allocating.
struct Bits([u64; FDS / 64]);
const FDS: usize = 1 << 16;

impl Bits {
    fn set(&mut self, fd: i32) -> bool {
        let f = fd as usize;
        if fd < 0 || f >= FDS {
            return false;
        }
        self.0[f / 64] |= 1 << (f % 64);
        true
    }
    fn has(&self, fd: i32) -> bool {
        let f = fd as usize;
        fd >= 0 && f < FDS && self.0[f / 64] & (1 << (f % 64)) != 0
    }
}

/// The guardian (see the module doc). `fds`: its end of the socket,
/// ckpt's end, the script memfd, /dev/null.
fn guardian(fds: [i32; 4], exec: &sys::Exec) -> ! {
    // (Out of the way first: one of them could be 0, 1 or 3 itself.)
    let [ctl, script, devnull] =
        [fds[0], fds[2], fds[3]].map(|f| sys::dup_above(f, 16).unwrap_or(f));
    let _ = sys::setsid();
    // 0: the script (sh reads it from /dev/stdin), 1: /dev/null, 2: ckpt's
    // stderr, 3: the socket to ckpt; nothing else.
    let _ = sys::dup2(script, 0);
    let _ = sys::dup2(devnull, 1);
    let _ = sys::dup2(ctl, 3);
    sys::close_range_from(4);
    let (mut socks, mut reuse, mut pidfds) = (
        Bits([0; FDS / 64]),
        Bits([0; FDS / 64]),
        Bits([0; FDS / 64]),
    );
    let mut top = 3;
    loop {
        let mut buf = [0u8; 8];
        let mut got = [-1i32; 2];
        match sys::recv_fds(3, &mut buf, &mut got) {
            Ok((0, _)) => break,
            Ok((_, k)) => match buf[0] {
                ADD if k >= 1 => {
                    socks.set(got[0]);
                    if buf[1] & 1 != 0 {
                        reuse.set(got[0]);
                    }
                    if buf[1] & 2 != 0 && k == 2 {
                        pidfds.set(got[1]);
                    }
                    top = top.max(got[0]).max(got[1]);
                }
                KEEP | DONE => sys::exit_now(0),
                _ => {}
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // ckpt died without a word. Killing the tree? Then its sockets stay.
    // (Without a holder to ask, the sockets are given back.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut holders = (4..=top).filter(|&f| pidfds.has(f)).peekable();
    let asked = holders.peek().is_some();
    let running = holders.any(|f| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        !sys::poll_in(f, left.as_millis() as i32)
    });
    if asked && !running {
        sys::exit_now(0);
    }
    for f in (4..=top).filter(|&f| socks.has(f)) {
        let _ = sys::setsockopt_int(f, libc::IPPROTO_TCP, TCP_REPAIR, 0);
        if reuse.has(f) {
            let _ = sys::setsockopt_int(f, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        }
    }
    let _ = sys::lseek(0, 0);
    let _ = exec.exec();
    sys::exit_now(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_fds_or_none() {
        let (a, b) = sys::unix_socketpair_owned(libc::SOCK_SEQPACKET).unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        sys::send_fds(a.as_raw_fd(), &[ADD, 3], &[f.as_raw_fd(), f.as_raw_fd()]).unwrap();
        sys::send_fds(a.as_raw_fd(), &[KEEP], &[]).unwrap();
        let mut buf = [0u8; 8];
        let mut got = [-1i32; 2];
        assert_eq!(
            sys::recv_fds(b.as_raw_fd(), &mut buf, &mut got).unwrap(),
            (2, 2)
        );
        assert_eq!(&buf[..2], &[ADD, 3]);
        assert!(got[0] > 2 && got[1] > 2 && got[0] != got[1]);
        assert!(sys::fd_flags(got[0]).unwrap() & libc::FD_CLOEXEC != 0);
        sys::close(got[0]);
        sys::close(got[1]);
        assert_eq!(
            sys::recv_fds(b.as_raw_fd(), &mut buf, &mut got).unwrap(),
            (1, 0)
        );
        assert_eq!(buf[0], KEEP);
        drop(a);
        assert_eq!(
            sys::recv_fds(b.as_raw_fd(), &mut buf, &mut got).unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn fd_sets() {
        let mut b = Bits([0; FDS / 64]);
        assert!(b.set(5) && b.set(64) && !b.set(-1) && !b.set(FDS as i32));
        assert!(b.has(5) && b.has(64) && !b.has(6) && !b.has(-1));
    }
}
