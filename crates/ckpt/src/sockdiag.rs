//! NETLINK_SOCK_DIAG: what the kernel tells of sockets that their fds do
//! not (a unix socket's peer, the connections waiting in a listener's
//! backlog, queue lengths, shutdown state). The request/answer loop is
//! generic (`dump`); the parsing of each family's answers is next to it.
//!
//! The answers are about ckpt's own network namespace.

use crate::sys;
use std::os::fd::AsRawFd;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// The payloads of every answer of a dump request whose family-specific
/// request body is `req` (starting with the family byte).
pub fn dump(req: &[u8]) -> std::io::Result<Vec<Vec<u8>>> {
    let sock = sys::sock_diag_socket()?;
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(req);
    sys::netlink_send(sock.as_raw_fd(), &msg)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sys::netlink_recv(sock.as_raw_fd(), &mut buf)?;
        let mut rest = &buf[..n];
        if rest.is_empty() {
            return Ok(out);
        }
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            if len < 16 || len > rest.len() {
                return Err(bad("netlink message of a bad length"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = rest
                        .get(16..20)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .unwrap_or(0);
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                _ => out.push(rest[16..len].to_vec()),
            }
            rest = &rest[align4(len).min(rest.len())..];
        }
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes (type, payload) of a netlink message after its header.
pub fn attrs(mut b: &[u8]) -> std::io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]);
        if len < 4 || len > b.len() {
            return Err(bad("netlink attribute of a bad length"));
        }
        out.push((ty, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    Ok(out)
}

const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// One unix socket as sock_diag tells of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    pub ty: u8,
    /// TCP_ESTABLISHED (1), TCP_CLOSE (7), TCP_LISTEN (10)...
    pub state: u8,
    /// sun_path bytes of its address (abstract: leading 0); empty: none.
    pub name: Vec<u8>,
    /// The socket file of a path name: (inode, device).
    pub vfs: Option<(u32, u32)>,
    /// Inode of the peer (0: none).
    pub peer: u32,
    /// Inodes of the connections waiting in a listener's backlog (0: the
    /// client end is gone).
    pub icons: Vec<u32>,
    /// Listener: connections waiting, and the backlog. Others: bytes (for
    /// a datagram socket: of the first message) waiting to be read, and
    /// bytes sent and not yet read by the peer.
    pub rqueue: u32,
    pub wqueue: u32,
    /// sk_shutdown: 1 receive, 2 send.
    pub shutdown: u8,
}

/// Every unix socket of ckpt's network namespace.
pub fn unix_sockets() -> std::io::Result<Vec<UnixDiag>> {
    let mut req = Vec::with_capacity(24);
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    dump(&req)?.iter().map(|m| parse_unix(m)).collect()
}

/// One unix_diag_msg and its attributes.
pub fn parse_unix(m: &[u8]) -> std::io::Result<UnixDiag> {
    if m.len() < 16 || m[0] != libc::AF_UNIX as u8 {
        return Err(bad("not a unix_diag_msg"));
    }
    let u32_at = |b: &[u8], i: usize| -> std::io::Result<u32> {
        b.get(i..i + 4)
            .map(|x| u32::from_ne_bytes(x.try_into().unwrap()))
            .ok_or_else(|| bad("short unix diag attribute"))
    };
    let mut d = UnixDiag {
        ty: m[1],
        state: m[2],
        ino: u32_at(m, 4)?,
        ..Default::default()
    };
    for (ty, v) in attrs(&m[16..])? {
        match ty {
            UNIX_DIAG_NAME => d.name = v.to_vec(),
            UNIX_DIAG_VFS => d.vfs = Some((u32_at(v, 0)?, u32_at(v, 4)?)),
            UNIX_DIAG_PEER => d.peer = u32_at(v, 0)?,
            UNIX_DIAG_ICONS => {
                d.icons = v
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
                    .collect()
            }
            UNIX_DIAG_RQLEN => {
                d.rqueue = u32_at(v, 0)?;
                d.wqueue = u32_at(v, 4)?;
            }
            UNIX_DIAG_SHUTDOWN => d.shutdown = *v.first().unwrap_or(&0),
            _ => {}
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        while !a.len().is_multiple_of(4) {
            a.push(0);
        }
        a
    }

    #[test]
    fn parses_unix_diag_msg() {
        let mut m = vec![libc::AF_UNIX as u8, libc::SOCK_STREAM as u8, 10, 0];
        m.extend_from_slice(&77u32.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend(attr(UNIX_DIAG_NAME, b"\0abc"));
        m.extend(attr(
            UNIX_DIAG_ICONS,
            &[5u32.to_ne_bytes(), 6u32.to_ne_bytes()].concat(),
        ));
        m.extend(attr(
            UNIX_DIAG_RQLEN,
            &[2u32.to_ne_bytes(), 128u32.to_ne_bytes()].concat(),
        ));
        m.extend(attr(UNIX_DIAG_SHUTDOWN, &[2]));
        m.extend(attr(99, b"ignored"));
        let d = parse_unix(&m).unwrap();
        assert_eq!(
            d,
            UnixDiag {
                ino: 77,
                ty: libc::SOCK_STREAM as u8,
                state: 10,
                name: b"\0abc".to_vec(),
                icons: vec![5, 6],
                rqueue: 2,
                wqueue: 128,
                shutdown: 2,
                ..Default::default()
            }
        );
        // A truncated attribute is an error, not a guess.
        let mut short = m[..16].to_vec();
        short.extend_from_slice(&[12, 0, 2, 0, 1]);
        assert!(parse_unix(&short).is_err());
        assert!(parse_unix(&[1, 2, 3]).is_err());
    }

    #[test]
    fn finds_own_socketpair() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let ino = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino() as u32
        };
        use std::io::Write;
        (&a).write_all(b"hello").unwrap();
        let all = match unix_sockets() {
            Ok(all) => all,
            Err(e) => {
                eprintln!("SKIP: sock_diag: {e}");
                return;
            }
        };
        let db = all.iter().find(|d| d.ino == ino(b.as_raw_fd())).unwrap();
        assert_eq!(db.peer, ino(a.as_raw_fd()));
        assert_eq!(db.rqueue, 5);
        assert_eq!(db.state, 1);
    }
}
