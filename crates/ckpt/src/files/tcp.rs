//! TCP sockets, IPv4 and IPv6.
//!
//! - Not connected (fresh or bound): recreated with their options and
//!   bound again to their address.
//! - Ended (CLOSE after a connection: both FINs exchanged, or a reset
//!   whose error was read; it reads what is queued, then EOF, and writes
//!   give EPIPE): restored like a half-closed connection that gets the
//!   peer's FIN, sends its own and has it acknowledged (LAST_ACK, then
//!   CLOSE, so no timewait socket is left), with its addresses
//!   (SO_PEERNAME) and unread bytes, also with `--tcp-close`; its
//!   packets are blocked from checkpoint to restart like a connection's.
//!   Refused: a pending error (POLLERR: a reset not read yet), and a
//!   connect that failed (one segment in).
//! - Listening: bound and listening again on the same address and port,
//!   with their backlog and options. Connections waiting in the accept
//!   queue are refused (accept them before the checkpoint).
//! - Established: saved and rebuilt with TCP repair mode (TCP_REPAIR,
//!   needs CAP_NET_ADMIN). At checkpoint the socket goes into repair mode
//!   on ckpt's copy of it, which freezes the connection: nothing is sent,
//!   and closing it (when the tree is killed) sends nothing either. ckpt
//!   reads its sequence numbers, both queues (received and not read;
//!   written and not acknowledged, sent or not), the options negotiated
//!   (MSS, window scale, SACK, timestamps), the window and the timestamp
//!   clock. `netblock` drops the connection's packets from then on, so the
//!   kernel never answers the peer with a RST while no socket exists. When
//!   the tree keeps running (checkpoint failed, cancelled, or
//!   --leave-running), repair mode is left and the packets pass again.
//!   Restart builds the socket in repair mode in the restorer (bind,
//!   sequence numbers, connect, which sends nothing in repair mode,
//!   options, queues, window) and leaves repair mode only in `resume`,
//!   just before the tree runs; then the packets pass again and the bytes
//!   written but never sent are queued normally. Both ends of a loopback
//!   connection inside the tree are restored the same way.
//! - Half-closed (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING):
//!   saved like an established connection (repair mode works in these
//!   states), but a FIN takes a sequence number and no byte: ours is
//!   counted in the send sequence (and, until acknowledged, in SIOCOUTQ,
//!   and in SIOCOUTQNSD while it waits behind unsent bytes), the peer's in
//!   the receive sequence. The image keeps the kernel's sequence numbers
//!   and the state; queues and `unsent` hold bytes only. Repair mode can
//!   only rebuild an ESTABLISHED socket, so restart rebuilds it one
//!   sequence number short on each side with a FIN (and the announced
//!   window's left edge no further than that), then replays the FINs in
//!   their order (`tcp_fin`): our FIN with shutdown(SHUT_WR); the peer's
//!   with a segment (FIN, ACK, its sequence number, acknowledging what the
//!   peer had acknowledged, the peer's last window) written from a raw
//!   socket as if the peer sent it, with a mark the blocking rules let
//!   through; FIN_WAIT2's acknowledgement of our FIN the same way, after
//!   shutdown put our FIN in as sent (send queue selected: nothing goes
//!   out). In order, while still blocked: FIN_WAIT2's FIN and its ACK,
//!   CLOSE_WAIT's, LAST_ACK's and CLOSE's peer FIN, then CLOSE's FIN and
//!   its ACK; then repair mode ends, packets
//!   pass, unsent bytes are queued, FIN_WAIT1's, LAST_ACK's and CLOSING's
//!   FIN follows them (a second copy of one sent before has its sequence
//!   number: a retransmission), and CLOSING's peer FIN comes last. Each
//!   replayed segment must bring the socket to its state within 2 s, or
//!   the restart fails. What the peer does meanwhile is what it would have
//!   done to the original socket (nothing provokes a reset: the socket is
//!   synchronized all along). At checkpoint a probe (a segment without
//!   flags, which every state discards but counts in tcpi_segs_in) must
//!   reach the socket, or the connection is refused: a firewall rule of
//!   the program's own dropping the peer's segments would drop the
//!   replayed ones too. The segments carry no timestamp option
//!   (the kernel accepts a segment without one, and it leaves the echoed
//!   timestamp alone). Not kept: how the restored queues are cut into
//!   segments, so a FIN waiting behind bytes the peer had no room for may
//!   go out at once (and a restored connection's buffers are made large
//!   enough for its queues, so the window may open).
//! - Connections being set up (SYN_SENT, SYN_RECV) and TIME_WAIT are
//!   refused (a socket in TIME_WAIT no longer has an fd anyway).
//! - `--tcp-close`: established and half-closed connections are not put
//!   in repair mode; killing the tree closes them as usual (the peer sees
//!   FIN or RST), and restart replaces each with a socket whose
//!   connection was reset: a read returns ECONNRESET once, then EOF
//!   (0). It is made by connecting to a listener of ckpt's own on
//!   127.0.0.1 or ::1 that resets the connection, so its addresses are
//!   not the saved ones.
//!
//! Not kept: the urgency of MSG_OOB bytes still queued (they come back
//! as plain bytes), TCP_MD5SIG keys (the kernel does not show them),
//! half-open connections a listener has not completed yet (SYN_RECV;
//! the client's next ACK gets a reset or a SYN cookie). If ckpt itself
//! is killed (SIGKILL) in the middle of a checkpoint, the tree heals, and
//! so do its connections: before the first connection is blocked, ckpt
//! forks a guardian (`tcp_guard`) that gets each connection's socket
//! before it is blocked and put in repair mode; should ckpt die without
//! saying that the tree was killed (or that it undid all itself), the
//! guardian ends repair mode and removes the rules while the program
//! still runs. A failed restart leaves the rules in place, so the image
//! can be restarted again.
//!
//! SO_RCVBUF / SO_SNDBUF of a connection are set (with the FORCE
//! variants, which locks them as if the program had set them; the kernel
//! no longer tunes them); those of other sockets only when they differ
//! from a fresh socket's. A socket filter (SO_ATTACH_FILTER or BPF) is
//! refused.

use super::kind::{objects_of, Check, DumpCx, FdKind, OpenCx, Probe, ResumeCx};
use super::tcp_fin::{self, Segment};
use super::tcp_guard::Guard;
use crate::error::{Error, Result};
use crate::netblock::{self, Conn};
use crate::sys;
use ckpt_image::*;
use std::os::fd::{AsRawFd, OwnedFd};

pub struct Tcp;

// include/uapi/linux/tcp.h
const TCP_NODELAY: i32 = 1;
const TCP_MAXSEG: i32 = 2;
const TCP_KEEPIDLE: i32 = 4;
const TCP_KEEPINTVL: i32 = 5;
const TCP_KEEPCNT: i32 = 6;
const TCP_DEFER_ACCEPT: i32 = 9;
const TCP_INFO: i32 = 11;
const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const SO_GET_FILTER: i32 = 26;
const SIOCINQ: u64 = 0x541B;
const SIOCOUTQ: u64 = 0x5411;
const SIOCOUTQNSD: u64 = 0x894B;
const IPV6_TCLASS: i32 = 67;

// TCP states (include/net/tcp_states.h).
use super::tcp_fin::{CLOSE, CLOSE_WAIT, CLOSING, FIN_WAIT2, LAST_ACK};
const LISTEN: u32 = 10;

fn state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

const TCP_CONGESTION: i32 = 13;
const TCP_ULP: i32 = 31;

/// Int options saved when they differ from a fresh socket's: (level,
/// option, name). Options a restart may set from an image are only these.
const INT_OPTS: &[(i32, i32, &str)] = &[
    (libc::IPPROTO_TCP, 3, "TCP_CORK"),
    (libc::IPPROTO_TCP, 7, "TCP_SYNCNT"),
    (libc::IPPROTO_TCP, 8, "TCP_LINGER2"),
    (libc::IPPROTO_TCP, 10, "TCP_WINDOW_CLAMP"),
    (libc::IPPROTO_TCP, 16, "TCP_THIN_LINEAR_TIMEOUTS"),
    (libc::IPPROTO_TCP, 18, "TCP_USER_TIMEOUT"),
    (libc::IPPROTO_TCP, 23, "TCP_FASTOPEN"),
    (libc::IPPROTO_TCP, 25, "TCP_NOTSENT_LOWAT"),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY"),
    (libc::SOL_SOCKET, libc::SO_MARK, "SO_MARK"),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, "SO_OOBINLINE"),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, "SO_RCVLOWAT"),
    (libc::SOL_SOCKET, libc::SO_DONTROUTE, "SO_DONTROUTE"),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, "SO_BROADCAST"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, "SO_TIMESTAMP"),
    (libc::SOL_SOCKET, libc::SO_BUSY_POLL, "SO_BUSY_POLL"),
    (libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL"),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, "IP_FREEBIND"),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, "IP_TRANSPARENT"),
    (
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        "IP_BIND_ADDRESS_NO_PORT",
    ),
    (libc::IPPROTO_IP, libc::IP_RECVERR, "IP_RECVERR"),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, "IP_MTU_DISCOVER"),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_UNICAST_HOPS,
        "IPV6_UNICAST_HOPS",
    ),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, "IPV6_RECVERR"),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_MTU_DISCOVER,
        "IPV6_MTU_DISCOVER",
    ),
];

/// Whether option (level, opt) applies to a socket of `family`.
fn applies(level: i32, family: i32) -> bool {
    match level {
        libc::IPPROTO_IP => family == libc::AF_INET,
        libc::IPPROTO_IPV6 => family == libc::AF_INET6,
        _ => true,
    }
}

/// The options of `INT_OPTS` where `fd` differs from `fresh`, encoded for
/// `TcpSk::int_opts`.
/// `connected`: the kernel set TCP_WINDOW_CLAMP itself from the
/// handshake, and the restored connection gets its window from the image.
fn int_opts(fd: i32, fresh: i32, family: i32, connected: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for &(level, opt, _) in INT_OPTS {
        if !applies(level, family) || (connected && level == libc::IPPROTO_TCP && opt == 10) {
            continue;
        }
        // (An option this kernel does not know reads as an error on both.)
        let (Ok(v), Ok(d)) = (
            sys::getsockopt_int(fd, level, opt),
            sys::getsockopt_int(fresh, level, opt),
        ) else {
            continue;
        };
        if v != d {
            for w in [level, opt, v] {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
    }
    out
}

/// Decodes `TcpSk::int_opts`; `None` if malformed or naming an option
/// outside `INT_OPTS`.
fn decode_int_opts(b: &[u8]) -> Option<Vec<(i32, i32, i32)>> {
    if !b.len().is_multiple_of(12) {
        return None;
    }
    b.chunks(12)
        .map(|c| {
            let w = |i: usize| i32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().expect("4"));
            let (level, opt, v) = (w(0), w(1), w(2));
            INT_OPTS
                .iter()
                .any(|x| x.0 == level && x.1 == opt)
                .then_some((level, opt, v))
        })
        .collect()
}

fn text_opt(fd: i32, level: i32, opt: i32) -> std::io::Result<Vec<u8>> {
    let mut b = [0u8; 64];
    let n = sys::getsockopt_raw(fd, level, opt, &mut b)?;
    Ok(b[..n].split(|&c| c == 0).next().unwrap_or(&[]).to_vec())
}

/// What TCP_INFO says that ckpt uses (struct tcp_info, linux/tcp.h).
#[derive(Debug, Default, PartialEq, Eq)]
struct Info {
    state: u32,
    options: u32,
    snd_wscale: u32,
    rcv_wscale: u32,
    /// Listener: connections in the accept queue (tcpi_unacked).
    unacked: u32,
    /// Listener: the backlog (tcpi_sacked).
    sacked: u32,
    /// Segments sent and received (tcpi_segs_out + tcpi_segs_in; 0 when
    /// the kernel's tcp_info is too short to tell).
    segs: u64,
    /// Segments received (tcpi_segs_in).
    segs_in: u32,
}

/// Parses the first bytes of a struct tcp_info.
fn parse_info(b: &[u8]) -> Option<Info> {
    if b.len() < 32 {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    Some(Info {
        state: b[0] as u32,
        options: b[5] as u32,
        // (Bit fields, lowest first on x86: tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4.)
        snd_wscale: (b[6] & 0xf) as u32,
        rcv_wscale: (b[6] >> 4) as u32,
        unacked: u32_at(24),
        sacked: u32_at(28),
        segs: if b.len() >= 144 {
            u32_at(136) as u64 + u32_at(140) as u64
        } else {
            0
        },
        segs_in: if b.len() >= 144 { u32_at(140) } else { 0 },
    })
}

fn tcp_info(fd: i32) -> std::io::Result<Info> {
    let mut b = [0u8; 256];
    let n = sys::getsockopt_raw(fd, libc::IPPROTO_TCP, TCP_INFO, &mut b)?;
    parse_info(&b[..n]).ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// Whether a socket of this identity (`Probe::socket`) is TCP over IPv4 or IPv6.
fn is_tcp(socket: Option<(i32, i32, i32)>) -> bool {
    matches!(
        socket,
        Some((libc::AF_INET | libc::AF_INET6, _, libc::IPPROTO_TCP))
    )
}

/// A (copied) socket in repair mode since the checkpoint, and what leaving
/// repair mode must give back.
struct Repaired {
    fd: OwnedFd,
    /// In repair mode (else only its packets are blocked).
    repair: bool,
    reuseaddr: bool,
    conn: Conn,
}

/// The connections put in repair mode by this checkpoint. Unless the tree
/// was killed (`after_checkpoint`), dropping it leaves repair mode and
/// lets the packets through again: a failed checkpoint drops the file
/// table, and with it this scratch, while the tree is still frozen.
#[derive(Default)]
struct Scratch {
    repaired: Vec<Repaired>,
    /// Undoes repair mode and the blocking should ckpt die (SIGKILL).
    guard: Option<Guard>,
    guard_failed: bool,
}

impl Scratch {
    /// Hands connection `conn` (socket `fd` of process `pid`) to the
    /// guardian, started on first use.
    fn guard(&mut self, pid: sys::Pid, fd: i32, reuseaddr: bool, conn: &Conn) {
        if self.guard.is_none() && !self.guard_failed {
            match Guard::start() {
                Ok(g) => self.guard = Some(g),
                Err(e) => {
                    self.guard_failed = true;
                    tracing::warn!("no guardian for the TCP connections in repair mode ({e}): should ckpt be killed, they stay frozen");
                }
            }
        }
        if let Some(g) = self.guard.as_mut() {
            if let Err(e) = g.add(fd, reuseaddr, pid, conn) {
                tracing::warn!("pid {pid}: a TCP connection is not guarded ({e}): should ckpt be killed, it stays frozen");
            }
        }
    }

    /// The tree was killed: its connections stay in repair mode (closed
    /// so, they send nothing) and blocked until restart.
    fn keep(&mut self) {
        self.repaired.clear();
        if let Some(g) = self.guard.take() {
            g.finish(true);
        }
    }

    fn release(&mut self) {
        for r in self.repaired.drain(..) {
            let fd = r.fd.as_raw_fd();
            if r.repair {
                let _ = sys::setsockopt_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, 0);
            }
            if r.repair && r.reuseaddr {
                // (Leaving repair mode clears it.)
                let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
            }
            netblock::unblock(&r.conn);
        }
        if let Some(g) = self.guard.take() {
            g.finish(false);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.release();
    }
}

const SCRATCH: &str = "tcp";

/// The connection of a socket bound to (local) and connected to (peer),
/// as the packets show it (an IPv4-mapped IPv6 socket speaks IPv4).
fn conn_of(r: &TcpSk) -> Conn {
    let mapped = |a: &[u8]| a.len() == 16 && a[..10] == [0; 10] && a[10..12] == [0xff, 0xff];
    let v4 = |a: &[u8]| {
        if mapped(a) {
            a[12..].to_vec()
        } else {
            a.to_vec()
        }
    };
    let v6 = r.family == libc::AF_INET6 as u32 && !mapped(&r.local_addr.0);
    Conn {
        v6,
        local: if v6 {
            r.local_addr.0.clone()
        } else {
            v4(&r.local_addr.0)
        },
        lport: r.local_port as u16,
        peer: if v6 {
            r.peer_addr.0.clone()
        } else {
            v4(&r.peer_addr.0)
        },
        pport: r.peer_port as u16,
    }
}

fn bool_opt(fd: i32, level: i32, opt: i32) -> std::io::Result<bool> {
    sys::getsockopt_int(fd, level, opt).map(|v| v != 0)
}

fn timeo_us(fd: i32, opt: i32) -> std::io::Result<u64> {
    let mut b = [0u8; 16];
    sys::getsockopt_raw(fd, libc::SOL_SOCKET, opt, &mut b)?;
    let s = i64::from_ne_bytes(b[..8].try_into().expect("8"));
    let us = i64::from_ne_bytes(b[8..].try_into().expect("8"));
    Ok((s.max(0) as u64) * 1_000_000 + us.max(0) as u64)
}

/// The default SO_RCVBUF / SO_SNDBUF of a fresh TCP socket of `family`.
fn default_bufs(family: i32) -> std::io::Result<(u32, u32)> {
    let s = sys::socket(family, libc::SOCK_STREAM, libc::IPPROTO_TCP)?;
    let r = sys::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF);
    let w = sys::getsockopt_int(s, libc::SOL_SOCKET, libc::SO_SNDBUF);
    sys::close(s);
    Ok((r? as u32, w? as u32))
}

/// The options and addresses of socket `fd` (family `family`) into `r`.
fn read_options(p: &Probe, fd: i32, family: i32, connected: bool, r: &mut TcpSk) -> Result<()> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err| p.sys(&format!("getsockopt {what}"), err)
    };
    let sol = libc::SOL_SOCKET;
    let tcp = libc::IPPROTO_TCP;
    match sys::getsockopt_raw(fd, sol, SO_GET_FILTER, &mut []) {
        Ok(0) => {}
        Ok(n) => {
            return Err(p.unsupported(&format!(
                "it has a socket filter (SO_ATTACH_FILTER, {n} instructions), which ckpt cannot restore; detach it (SO_DETACH_FILTER) before the checkpoint"
            )))
        }
        Err(err) if err.raw_os_error() == Some(libc::EACCES) => {
            return Err(p.unsupported(
                "it has a BPF socket filter (SO_ATTACH_BPF), which ckpt cannot restore; detach it before the checkpoint",
            ))
        }
        Err(err) => return Err(p.sys("getsockopt SO_GET_FILTER", err)),
    }
    let (_, local, lport) = sys::sock_name(fd, false).map_err(|err| p.sys("getsockname", err))?;
    r.local_addr = Bytes(local);
    r.local_port = lport as u32;
    r.reuseaddr = bool_opt(fd, sol, libc::SO_REUSEADDR).map_err(e("SO_REUSEADDR"))?;
    r.reuseport = bool_opt(fd, sol, libc::SO_REUSEPORT).map_err(e("SO_REUSEPORT"))?;
    if family == libc::AF_INET6 {
        r.v6only = bool_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map_err(e("IPV6_V6ONLY"))?;
        r.tos = sys::getsockopt_int(fd, libc::IPPROTO_IPV6, IPV6_TCLASS)
            .map_err(e("IPV6_TCLASS"))? as u32;
    } else {
        r.tos =
            sys::getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TOS).map_err(e("IP_TOS"))? as u32;
    }
    r.nodelay = bool_opt(fd, tcp, TCP_NODELAY).map_err(e("TCP_NODELAY"))?;
    r.defer_accept =
        sys::getsockopt_int(fd, tcp, TCP_DEFER_ACCEPT).map_err(e("TCP_DEFER_ACCEPT"))? as u32;
    r.rcvbuf = sys::getsockopt_int(fd, sol, libc::SO_RCVBUF).map_err(e("SO_RCVBUF"))? as u32;
    r.sndbuf = sys::getsockopt_int(fd, sol, libc::SO_SNDBUF).map_err(e("SO_SNDBUF"))? as u32;
    r.keepalive = bool_opt(fd, sol, libc::SO_KEEPALIVE).map_err(e("SO_KEEPALIVE"))?;
    r.keepidle = sys::getsockopt_int(fd, tcp, TCP_KEEPIDLE).map_err(e("TCP_KEEPIDLE"))? as u32;
    r.keepintvl = sys::getsockopt_int(fd, tcp, TCP_KEEPINTVL).map_err(e("TCP_KEEPINTVL"))? as u32;
    r.keepcnt = sys::getsockopt_int(fd, tcp, TCP_KEEPCNT).map_err(e("TCP_KEEPCNT"))? as u32;
    let mut l = [0u8; 8];
    sys::getsockopt_raw(fd, sol, libc::SO_LINGER, &mut l).map_err(e("SO_LINGER"))?;
    r.linger_on = i32::from_ne_bytes(l[..4].try_into().expect("4")) != 0;
    r.linger_sec = i32::from_ne_bytes(l[4..].try_into().expect("4")).max(0) as u32;
    r.rcvtimeo_us = timeo_us(fd, libc::SO_RCVTIMEO).map_err(e("SO_RCVTIMEO"))?;
    r.sndtimeo_us = timeo_us(fd, libc::SO_SNDTIMEO).map_err(e("SO_SNDTIMEO"))?;
    let mut dev = [0u8; 16];
    let n = sys::getsockopt_raw(fd, sol, libc::SO_BINDTODEVICE, &mut dev)
        .map_err(e("SO_BINDTODEVICE"))?;
    let name = &dev[..n];
    r.bind_dev = Text(name.split(|&c| c == 0).next().unwrap_or(&[]).to_vec());
    match text_opt(fd, tcp, TCP_ULP) {
        Ok(ulp) if !ulp.is_empty() => {
            return Err(p.unsupported(&format!(
                "it has the upper layer protocol {} (TCP_ULP, e.g. kernel TLS), which ckpt cannot restore",
                String::from_utf8_lossy(&ulp)
            )))
        }
        _ => {}
    }
    let fresh = sys::socket(family, libc::SOCK_STREAM, libc::IPPROTO_TCP)
        .map_err(|e| p.sys("a fresh TCP socket to compare options with", e))?;
    r.int_opts = Bytes(int_opts(fd, fresh, family, connected));
    let cc = text_opt(fd, tcp, TCP_CONGESTION).unwrap_or_default();
    let fresh_cc = text_opt(fresh, tcp, TCP_CONGESTION).unwrap_or_default();
    sys::close(fresh);
    if cc != fresh_cc {
        r.congestion = Text(cc);
    }
    Ok(())
}

/// Peeks `len` bytes of the queue selected with TCP_REPAIR_QUEUE.
fn peek_queue(fd: i32, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let n = sys::recv(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
    if n != len {
        return Err(std::io::Error::other(format!(
            "peeked {n} bytes of a queue of {len}"
        )));
    }
    Ok(buf)
}

/// Reads the repair state of established socket `fd` (in repair mode) into
/// `r`; returns (receive queue, send queue).
fn read_repair(p: &Probe, fd: i32, info: &Info, r: &mut TcpRepair) -> Result<(Vec<u8>, Vec<u8>)> {
    let tcp = libc::IPPROTO_TCP;
    let e = |what: &'static str| move |err| p.sys(what, err);
    sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_QUEUE_RECV as i32)
        .map_err(e("select the receive queue (TCP_REPAIR_QUEUE)"))?;
    r.rcv_seq = sys::getsockopt_int(fd, tcp, TCP_QUEUE_SEQ).map_err(e("TCP_QUEUE_SEQ"))? as u32;
    // (Without the peer's FIN, which takes a sequence number but no byte.)
    let inq = sys::ioctl_int(fd, SIOCINQ).map_err(e("SIOCINQ"))? as usize;
    let recvq = peek_queue(fd, inq).map_err(e("peek the receive queue"))?;
    sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_QUEUE_SEND as i32)
        .map_err(e("select the send queue (TCP_REPAIR_QUEUE)"))?;
    r.snd_seq = sys::getsockopt_int(fd, tcp, TCP_QUEUE_SEQ).map_err(e("TCP_QUEUE_SEQ"))? as u32;
    let mut outq = sys::ioctl_int(fd, SIOCOUTQ).map_err(e("SIOCOUTQ"))? as usize;
    let mut unsent = sys::ioctl_int(fd, SIOCOUTQNSD).map_err(e("SIOCOUTQNSD"))? as usize;
    // Our FIN, not acknowledged yet, is counted in both (unsent when it
    // waits behind unsent bytes); the queue peeks bytes only.
    let fins = tcp_fin::fins(info.state).unwrap_or_default();
    if info.state == CLOSE {
        // (A reset leaves write_seq past what was acknowledged, and an
        // empty queue nobody can read.)
        outq = 0;
        unsent = 0;
    }
    if fins.queued() {
        if outq == 0 {
            return Err(p.unsupported(&format!(
                "its connection is in state {} without a FIN in its send queue (the kernel could not queue it), which ckpt cannot restore",
                state_name(info.state)
            )));
        }
        outq -= 1;
        unsent = unsent.saturating_sub(1);
    }
    let sendq = peek_queue(fd, outq).map_err(e("peek the send queue"))?;
    sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE).map_err(e("TCP_REPAIR_QUEUE"))?;
    r.unsent = unsent.min(outq) as u32;
    r.mss = sys::getsockopt_int(fd, tcp, TCP_MAXSEG).map_err(e("TCP_MAXSEG"))? as u32;
    r.tcp_options = info.options & (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE);
    r.snd_wscale = info.snd_wscale;
    r.rcv_wscale = info.rcv_wscale;
    if r.tcp_options & TCPI_OPT_TIMESTAMPS != 0 {
        r.timestamp =
            sys::getsockopt_int(fd, tcp, TCP_TIMESTAMP).map_err(e("TCP_TIMESTAMP"))? as u32;
    }
    let mut w = [0u8; 20];
    sys::getsockopt_raw(fd, tcp, TCP_REPAIR_WINDOW, &mut w).map_err(e("TCP_REPAIR_WINDOW"))?;
    let at = |i: usize| u32::from_ne_bytes(w[i * 4..i * 4 + 4].try_into().expect("4"));
    (r.snd_wl1, r.snd_wnd, r.max_window, r.rcv_wnd, r.rcv_wup) =
        (at(0), at(1), at(2), at(3), at(4));
    Ok((recvq, sendq))
}

impl FdKind for Tcp {
    fn name(&self) -> &'static str {
        "TCP socket"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_TCP]
    }
    fn matches(&self, p: &Probe) -> bool {
        is_tcp(p.socket)
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let mine = cx
            .fetch_fd(p.pid, p.fd)
            .map_err(|e| p.sys("pidfd_getfd", e))?;
        let fd = mine.as_raw_fd();
        let family = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
            .map_err(|e| p.sys("getsockopt SO_DOMAIN", e))?;
        let info = tcp_info(fd).map_err(|e| p.sys("getsockopt TCP_INFO", e))?;
        let mut r = TcpSk {
            file_id: f.id,
            family: family as u32,
            state: info.state,
            ..Default::default()
        };
        // A connection that ended (both FINs, or a reset whose error was
        // read; more than a failed connect's RST came in): it reads its
        // bytes, then EOF, writes give EPIPE; restored with its FINs.
        let ended = info.state == CLOSE && info.segs > 0 && info.segs_in >= 2;
        let connected = !matches!(info.state, LISTEN | CLOSE) || ended;
        read_options(p, fd, family, connected, &mut r)?;
        let mut queues = None;
        r.mode = match info.state {
            LISTEN => {
                if info.unacked > 0 {
                    return Err(p.unsupported(&format!(
                        "it is listening with {} connections waiting in its accept queue, which ckpt cannot restore; accept them (or let them go) before the checkpoint",
                        info.unacked
                    )));
                }
                r.backlog = info.sacked;
                TCP_MODE_LISTEN
            }
            CLOSE if ended => {
                let ev = sys::poll_now(fd, libc::POLLERR).map_err(|e| p.sys("poll", e))?;
                if ev & libc::POLLERR != 0 {
                    return Err(p.unsupported(
                        "its connection has ended with an error not read yet (such as ECONNRESET), which ckpt cannot restore; read it (or close the socket) before the checkpoint",
                    ));
                }
                TCP_MODE_REPAIR
            }
            CLOSE if info.segs > 0 => {
                return Err(p.unsupported(
                    "its connection has ended (state CLOSE after segments were exchanged): what reads and writes on it return (EOF, a pending ECONNRESET) cannot be restored; close the socket before the checkpoint",
                ))
            }
            CLOSE => TCP_MODE_PLAIN,
            _ if cx.opts.tcp_close && !matches!(info.state, 2 | 3) => TCP_MODE_RESET,
            s if tcp_fin::fins(s).is_some() => TCP_MODE_REPAIR,
            s => {
                return Err(p.unsupported(&format!(
                    "its connection is in state {} ({s}), which ckpt cannot restore (only established and half-closed connections, listeners and unconnected sockets); checkpoint once it is established, or use --tcp-close to restore it as reset",
                    state_name(s)
                )))
            }
        };
        if connected {
            // (Refused states first: a connecting socket has no peer yet.)
            let (_, peer, pport) = if ended {
                sys::sock_peername_opt(fd).map_err(|e| p.sys("getsockopt SO_PEERNAME", e))?
            } else {
                sys::sock_name(fd, true).map_err(|e| p.sys("getpeername", e))?
            };
            r.peer_addr = Bytes(peer);
            r.peer_port = pport as u32;
        }
        if r.mode != TCP_MODE_REPAIR {
            // Buffers as a fresh socket has them are left to the kernel.
            let (dr, dw) = default_bufs(family).map_err(|e| p.sys("a fresh TCP socket", e))?;
            if r.rcvbuf == dr {
                r.rcvbuf = 0;
            }
            if r.sndbuf == dw {
                r.sndbuf = 0;
            }
        }
        if r.mode == TCP_MODE_REPAIR {
            // The packets are blocked first (CRIU locks the network first
            // too): whatever reached the socket before is in its queues
            // when they are read, and nothing reaches it afterwards.
            let conn = conn_of(&r);
            let copy = mine.try_clone().map_err(|e| p.sys("dup", e))?;
            let s = cx.scratch::<Scratch>(SCRATCH);
            s.guard(p.pid, fd, r.reuseaddr, &conn);
            s.repaired.push(Repaired {
                fd: copy,
                repair: false,
                reuseaddr: r.reuseaddr,
                conn: conn.clone(),
            });
            if let Err(e) = netblock::block(std::slice::from_ref(&conn)) {
                tracing::warn!(
                    "pid {}: fd {}: the packets of its TCP connection are not blocked ({e}): if the peer sends before the restart, it gets a reset",
                    p.pid,
                    p.fd
                );
            }
            sys::setsockopt_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, 1).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    p.unsupported("its connection needs TCP repair mode, which needs CAP_NET_ADMIN: checkpoint as root, or use --tcp-close to restore it as reset")
                } else {
                    p.sys("setsockopt TCP_REPAIR", e)
                }
            })?;
            if let Some(last) = cx.scratch::<Scratch>(SCRATCH).repaired.last_mut() {
                last.repair = true;
            }
            kill_after_repair_for_tests();
            let mut rep = TcpRepair {
                file_id: f.id,
                ..Default::default()
            };
            let (recvq, sendq) = read_repair(p, fd, &info, &mut rep)?;
            let fins = tcp_fin::fins(info.state).unwrap_or_default();
            // (A socket in CLOSE receives nothing, so it cannot be asked.)
            if (fins.received || fins.acked)
                && info.state != CLOSE
                && !reaches(fd, &conn, rep.rcv_seq)
            {
                return Err(p.unsupported(&format!(
                    "its connection is half-closed ({}): restart replays the peer's FIN or acknowledgement with a segment from a raw socket, and such a segment does not reach this socket now (a firewall rule drops it?); checkpoint once the rule is gone, or use --tcp-close to restore it as reset",
                    state_name(info.state)
                )));
            }
            queues = Some((rep, recvq, sendq));
        }
        f.kind = FILE_TCP;
        f.path = Text(p.link.to_vec());
        cx.objects.push(r.into());
        if let Some((rep, recvq, sendq)) = queues {
            cx.objects.push(rep.into());
            for (q, data) in [(TCP_QUEUE_RECV, recvq), (TCP_QUEUE_SEND, sendq)] {
                if !data.is_empty() {
                    cx.objects.push(
                        TcpQueue {
                            file_id: f.id,
                            queue: q,
                            data: Bytes(data),
                        }
                        .into(),
                    );
                }
            }
        }
        Ok(())
    }
    fn after_checkpoint(&self, cx: &mut DumpCx, killed: bool) {
        let s = cx.scratch::<Scratch>(SCRATCH);
        if killed {
            s.keep();
        } else {
            s.release();
        }
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = records(c.img, f.id);
        let r = match (recs.next(), recs.next()) {
            (Some(r), None) => r,
            _ => return Err("needs exactly one tcp-socket record".into()),
        };
        let queues: Vec<&TcpQueue> = queues(c.img, f.id).collect();
        let mut reps = repairs(c.img, f.id);
        let rep = match (reps.next(), reps.next()) {
            (rep, None) => rep,
            _ => return Err("has more than one tcp-repair record".into()),
        };
        validate_record(r, rep, &queues, c.fs.is_some())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        // Listeners and unconnected sockets first: a connection's socket
        // binds in repair mode, which may share a listener's port.
        let mut order: Vec<(&File, &TcpSk)> = Vec::new();
        for f in files {
            order.push((f, record(cx.img, f)?));
        }
        order.sort_by_key(|(_, r)| r.mode == TCP_MODE_REPAIR);
        for (f, r) in order {
            let pid = (cx.user_of)(f.id);
            let raw = sys::socket(r.family as i32, libc::SOCK_STREAM, libc::IPPROTO_TCP)
                .map_err(|e| cx.open_err(f, "a TCP socket for ", e))?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|e| cx.err("dup a TCP socket".into(), e))?;
            cx.by_id.push((0, fd)); // closed with the rest if what follows fails
            let fail = |what: String, source| Error::Sys {
                pid,
                what: format!("{what} (TCP socket {})", describe(r)),
                source,
            };
            let q = |which| {
                queues(cx.img, f.id)
                    .find(|q| q.queue == which)
                    .map_or(&[][..], |q| &q.data.0[..])
            };
            match r.mode {
                TCP_MODE_REPAIR => {
                    let rep = repair_record(cx.img, f)?;
                    restore_repair(fd, r, rep, q(TCP_QUEUE_RECV), q(TCP_QUEUE_SEND))
                        .map_err(|(w, e)| fail(w, e))?
                }
                TCP_MODE_RESET => make_reset(fd, r).map_err(|(w, e)| fail(w, e))?,
                _ => {
                    set_options(fd, r, true).map_err(|(w, e)| fail(w, e))?;
                    // Another socket binding this port with SO_REUSEPORT:
                    // this one had it too when it was bound (or the kernel
                    // would have refused one of them), and turned it off
                    // since; so it is bound with it, then turned off.
                    let join = !r.reuseport
                        && r.local_port != 0
                        && objects_of::<TcpSk>(cx.img).any(|o| {
                            o.file_id != r.file_id
                                && o.reuseport
                                && o.local_port == r.local_port
                                && o.mode != TCP_MODE_REPAIR
                        });
                    let reuseport = |v| {
                        sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, v)
                            .map_err(|e| fail("setsockopt SO_REUSEPORT".into(), e))
                    };
                    if join {
                        reuseport(1)?;
                    }
                    if r.local_port != 0 {
                        sys::sock_bind(fd, r.family, &r.local_addr.0, r.local_port as u16)
                            .map_err(|e| fail("bind".into(), e))?;
                    }
                    if r.mode == TCP_MODE_LISTEN {
                        sys::listen(fd, r.backlog.min(i32::MAX as u32) as i32)
                            .map_err(|e| fail("listen".into(), e))?;
                    }
                    if join {
                        reuseport(0)?;
                    }
                }
            }
            cx.by_id.pop();
            cx.opened(f, fd)?;
        }
        Ok(())
    }
    fn resume(&self, cx: &ResumeCx, f: &File) -> Result<()> {
        let r = record(cx.img, f)?;
        if r.mode != TCP_MODE_REPAIR {
            return Ok(());
        }
        let Some((pid, copy)) = cx.fetch(f.id)? else {
            return Ok(());
        };
        let rep = repair_record(cx.img, f)?;
        let sendq = queues(cx.img, f.id)
            .find(|q| q.queue == TCP_QUEUE_SEND)
            .map_or(&[][..], |q| &q.data.0[..]);
        resume_repaired(copy.as_raw_fd(), r, rep, sendq).map_err(|(what, source)| Error::Sys {
            pid,
            what: format!("{what} (TCP socket {})", describe(r)),
            source,
        })
    }
}

/// Whether a segment written from a raw socket as the peer of `conn`
/// reaches its socket `fd` (in repair mode, whose next receive sequence
/// number is `rcv_nxt`): a probe without flags, which the socket
/// discards, but counts (up to 1 s).
fn reaches(fd: i32, conn: &Conn, rcv_nxt: u32) -> bool {
    let Ok(before) = tcp_info(fd).map(|i| i.segs_in) else {
        return false;
    };
    let probe = Segment {
        seq: rcv_nxt,
        ack: 0,
        flags: 0,
        window: 0,
    };
    if tcp_fin::inject(conn, &probe).is_err() {
        return false;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match tcp_info(fd) {
            Ok(i) if i.segs_in != before => return true,
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            _ => return false,
        }
    }
}

/// Waits (up to 2 s) for socket `fd` to reach one of `states` after a
/// segment was injected (the loopback device may deliver it later).
fn await_state(fd: i32, states: &[u32], what: &str) -> std::result::Result<(), StepErr> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let now = step("getsockopt TCP_INFO", tcp_info(fd))?.state;
        if states.contains(&now) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err((
                format!(
                    "{what}: the socket is in state {} instead of {}",
                    state_name(now),
                    state_name(states[0])
                ),
                std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Leaves repair mode on restored connection `fd` (just before the tree
/// runs), lets its packets through, queues the bytes never sent and
/// replays the FINs of a half-closed connection (see the module doc).
fn resume_repaired(
    fd: i32,
    r: &TcpSk,
    rep: &TcpRepair,
    sendq: &[u8],
) -> std::result::Result<(), StepErr> {
    let tcp = libc::IPPROTO_TCP;
    let fins = tcp_fin::fins(r.state).unwrap_or_default();
    let conn = conn_of(r);
    let scale = if rep.tcp_options & TCPI_OPT_WSCALE != 0 {
        rep.snd_wscale
    } else {
        0
    };
    let window = (rep.snd_wnd >> scale).min(0xffff) as u16;
    // The peer's view: everything before our FIN was acknowledged up to
    // the send queue, and its FIN (if any) is the last receive number.
    let snd_una = rep
        .snd_seq
        .wrapping_sub(fins.sent as u32)
        .wrapping_sub(sendq.len() as u32);
    let rcv_nxt = rep.rcv_seq.wrapping_sub(fins.received as u32);
    let their_fin = |ack: u32| Segment {
        seq: rcv_nxt,
        ack,
        flags: tcp_fin::FIN | tcp_fin::ACK,
        window,
    };
    let inject = |seg: &Segment, want: &[u32], what: &str| {
        step(
            &format!("{what} (a segment from a raw socket, needs CAP_NET_RAW)"),
            tcp_fin::inject(&conn, seg),
        )?;
        await_state(fd, want, what)
    };
    if fins.received || fins.acked {
        // Still blocked: only ckpt's marked segments pass (once per
        // restart is enough: only a table an older ckpt made lacks that).
        static MARKED: std::sync::Once = std::sync::Once::new();
        MARKED.call_once(netblock::let_marked_through);
    }
    // Our FIN acknowledged (FIN_WAIT2, CLOSE): it goes in as sent (the
    // send queue selected, it is not transmitted), then the peer's
    // acknowledgement of it.
    let acked_fin = |want: u32| {
        let q = |v: i32| {
            step(
                "select the send queue",
                sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, v),
            )
        };
        q(TCP_QUEUE_SEND as i32)?;
        step("queue our FIN (shutdown)", sys::shutdown(fd, libc::SHUT_WR))?;
        q(TCP_NO_QUEUE)?;
        let ack = Segment {
            seq: rep.rcv_seq,
            ack: rep.snd_seq,
            flags: tcp_fin::ACK,
            window,
        };
        inject(
            &ack,
            &[want],
            "replay the peer's acknowledgement of our FIN",
        )
    };
    if r.state == FIN_WAIT2 {
        acked_fin(FIN_WAIT2)?;
    }
    if matches!(r.state, CLOSE_WAIT | LAST_ACK | CLOSE) {
        // The peer's FIN came first (for CLOSE too: from LAST_ACK it ends
        // without a timewait socket).
        inject(&their_fin(snd_una), &[CLOSE_WAIT], "replay the peer's FIN")?;
    }
    if r.state == CLOSE {
        acked_fin(CLOSE)?;
    }
    step(
        "leave repair mode",
        sys::setsockopt_int(fd, tcp, TCP_REPAIR, 0),
    )?;
    if r.reuseaddr {
        step(
            "setsockopt SO_REUSEADDR",
            sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1),
        )?;
    }
    netblock::unblock(&conn);
    // The bytes never sent go out as a normal write now.
    let mut rest = &sendq[sendq.len() - rep.unsent as usize..];
    while !rest.is_empty() {
        let n = step(
            "queue the bytes not sent yet",
            sys::send(fd, rest, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL),
        )?;
        rest = &rest[n..];
    }
    if fins.queued() {
        // FIN_WAIT1, LAST_ACK, CLOSING: our FIN after those bytes, sent
        // again if it was sent before (the same sequence number).
        step("send our FIN (shutdown)", sys::shutdown(fd, libc::SHUT_WR))?;
    }
    if r.state == CLOSING {
        // The peer's FIN crossed ours. What acknowledges ours may have
        // arrived meanwhile (then FIN_WAIT2, and its FIN makes it
        // TIME_WAIT, as without ckpt): acknowledge what it acknowledged.
        let outq = step("SIOCOUTQ", sys::ioctl_int(fd, SIOCOUTQ))? as u32;
        // (CLOSE: TIME_WAIT, which the socket leaves for a timewait sock.)
        inject(
            &their_fin(rep.snd_seq.wrapping_sub(outq)),
            &[CLOSING, CLOSE],
            "replay the peer's FIN",
        )?;
    }
    Ok(())
}

/// Test hook: `CKPT_TEST_KILL_AFTER_REPAIR` makes ckpt kill itself
/// (SIGKILL) right after it put a connection in repair mode.
fn kill_after_repair_for_tests() {
    if crate::test_hooks::get().kill_after_repair {
        let _ = sys::kill(std::process::id() as sys::Pid, libc::SIGKILL);
    }
}

/// "127.0.0.1:80 -> 127.0.0.1:4000" for messages.
fn describe(r: &TcpSk) -> String {
    let a = |b: &[u8], port: u32| match b.len() {
        4 => format!(
            "{}:{port}",
            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).expect("4"))
        ),
        16 => format!(
            "[{}]:{port}",
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16"))
        ),
        _ => "?".into(),
    };
    let local = a(&r.local_addr.0, r.local_port);
    if r.peer_port != 0 {
        format!("{local} -> {}", a(&r.peer_addr.0, r.peer_port))
    } else {
        local
    }
}

type StepErr = (String, std::io::Error);

fn step<T>(what: &str, r: std::io::Result<T>) -> std::result::Result<T, StepErr> {
    r.map_err(|e| (what.to_string(), e))
}

/// Sets the saved options on a new socket; `reuse`: SO_REUSEADDR too
/// (not in repair mode, where leaving it would clear it).
fn set_options(fd: i32, r: &TcpSk, reuse: bool) -> std::result::Result<(), StepErr> {
    let sol = libc::SOL_SOCKET;
    let tcp = libc::IPPROTO_TCP;
    let int = |level, opt, v: i32, what: &str| step(what, sys::setsockopt_int(fd, level, opt, v));
    if reuse && r.reuseaddr {
        int(sol, libc::SO_REUSEADDR, 1, "setsockopt SO_REUSEADDR")?;
    }
    if r.reuseport {
        int(sol, libc::SO_REUSEPORT, 1, "setsockopt SO_REUSEPORT")?;
    }
    if r.family == libc::AF_INET6 as u32 {
        int(
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            r.v6only as i32,
            "setsockopt IPV6_V6ONLY",
        )?;
        if r.tos != 0 {
            int(
                libc::IPPROTO_IPV6,
                IPV6_TCLASS,
                r.tos as i32,
                "setsockopt IPV6_TCLASS",
            )?;
        }
    } else if r.tos != 0 {
        int(
            libc::IPPROTO_IP,
            libc::IP_TOS,
            r.tos as i32,
            "setsockopt IP_TOS",
        )?;
    }
    if r.nodelay {
        int(tcp, TCP_NODELAY, 1, "setsockopt TCP_NODELAY")?;
    }
    if r.defer_accept != 0 {
        int(
            tcp,
            TCP_DEFER_ACCEPT,
            r.defer_accept as i32,
            "setsockopt TCP_DEFER_ACCEPT",
        )?;
    }
    // (The kernel doubles what is set; getsockopt showed the double.)
    if r.rcvbuf != 0 {
        int(
            sol,
            libc::SO_RCVBUFFORCE,
            (r.rcvbuf / 2) as i32,
            "setsockopt SO_RCVBUFFORCE",
        )?;
    }
    if r.sndbuf != 0 {
        int(
            sol,
            libc::SO_SNDBUFFORCE,
            (r.sndbuf / 2) as i32,
            "setsockopt SO_SNDBUFFORCE",
        )?;
    }
    int(
        tcp,
        TCP_KEEPIDLE,
        r.keepidle as i32,
        "setsockopt TCP_KEEPIDLE",
    )?;
    int(
        tcp,
        TCP_KEEPINTVL,
        r.keepintvl as i32,
        "setsockopt TCP_KEEPINTVL",
    )?;
    int(tcp, TCP_KEEPCNT, r.keepcnt as i32, "setsockopt TCP_KEEPCNT")?;
    if r.keepalive {
        int(sol, libc::SO_KEEPALIVE, 1, "setsockopt SO_KEEPALIVE")?;
    }
    if r.linger_on {
        let mut l = [0u8; 8];
        l[..4].copy_from_slice(&1i32.to_ne_bytes());
        l[4..].copy_from_slice(&(r.linger_sec as i32).to_ne_bytes());
        step(
            "setsockopt SO_LINGER",
            sys::setsockopt_raw(fd, sol, libc::SO_LINGER, &l),
        )?;
    }
    for (opt, us, what) in [
        (libc::SO_RCVTIMEO, r.rcvtimeo_us, "setsockopt SO_RCVTIMEO"),
        (libc::SO_SNDTIMEO, r.sndtimeo_us, "setsockopt SO_SNDTIMEO"),
    ] {
        if us != 0 {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&((us / 1_000_000) as i64).to_ne_bytes());
            t[8..].copy_from_slice(&((us % 1_000_000) as i64).to_ne_bytes());
            step(what, sys::setsockopt_raw(fd, sol, opt, &t))?;
        }
    }
    for (level, opt, v) in decode_int_opts(&r.int_opts.0).unwrap_or_default() {
        let name = INT_OPTS
            .iter()
            .find(|x| x.0 == level && x.1 == opt)
            .map_or("?", |x| x.2);
        int(level, opt, v, &format!("setsockopt {name}"))?;
    }
    if !r.congestion.0.is_empty() {
        step(
            "setsockopt TCP_CONGESTION",
            sys::setsockopt_raw(fd, tcp, TCP_CONGESTION, &r.congestion.0),
        )?;
    }
    if !r.bind_dev.0.is_empty() {
        step(
            "setsockopt SO_BINDTODEVICE",
            sys::setsockopt_raw(fd, sol, libc::SO_BINDTODEVICE, &r.bind_dev.0),
        )?;
    }
    Ok(())
}

/// Writes `data` into the queue selected with TCP_REPAIR_QUEUE, in chunks
/// the kernel takes (it allocates each one linear).
fn fill_queue(fd: i32, mut data: &[u8]) -> std::io::Result<()> {
    let mut chunk = 64 * 1024;
    while !data.is_empty() {
        let n = data.len().min(chunk);
        match sys::send(fd, &data[..n], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(std::io::Error::other("the queue takes no more")),
            Ok(k) => data = &data[k..],
            Err(e) if chunk > 1024 && e.raw_os_error() == Some(libc::ENOMEM) => chunk /= 2,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Rebuilds established connection `r` in repair mode on new socket `fd`
/// (see the module doc; it leaves repair mode in `resume`).
fn restore_repair(
    fd: i32,
    r: &TcpSk,
    rep: &TcpRepair,
    recvq: &[u8],
    sendq: &[u8],
) -> std::result::Result<(), StepErr> {
    let tcp = libc::IPPROTO_TCP;
    step(
        "enter repair mode (TCP_REPAIR, needs CAP_NET_ADMIN)",
        sys::setsockopt_int(fd, tcp, TCP_REPAIR, 1),
    )?;
    set_options(fd, r, false)?;
    // Room for the queues, whatever the saved sizes.
    let need = |q: usize, saved: u32| (saved / 2).max((q * 2).min(i32::MAX as usize) as u32);
    step(
        "setsockopt SO_RCVBUFFORCE",
        sys::setsockopt_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            need(recvq.len(), r.rcvbuf) as i32,
        ),
    )?;
    step(
        "setsockopt SO_SNDBUFFORCE",
        sys::setsockopt_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            need(sendq.len(), r.sndbuf) as i32,
        ),
    )?;
    step(
        "bind",
        sys::sock_bind(fd, r.family, &r.local_addr.0, r.local_port as u16),
    )?;
    let set_seq = |queue: u32, seq: u32, what: &str| {
        step(
            what,
            sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, queue as i32),
        )?;
        step(
            what,
            sys::setsockopt_int(fd, tcp, TCP_QUEUE_SEQ, seq as i32),
        )
    };
    // Rebuilt as ESTABLISHED: without the FINs, which `resume` replays.
    let fins = tcp_fin::fins(r.state).unwrap_or_default();
    let rcv_nxt = rep.rcv_seq.wrapping_sub(fins.received as u32);
    set_seq(
        TCP_QUEUE_RECV,
        rcv_nxt.wrapping_sub(recvq.len() as u32),
        "set the receive sequence (TCP_QUEUE_SEQ)",
    )?;
    set_seq(
        TCP_QUEUE_SEND,
        rep.snd_seq
            .wrapping_sub(fins.sent as u32)
            .wrapping_sub(sendq.len() as u32),
        "set the send sequence (TCP_QUEUE_SEQ)",
    )?;
    step(
        "select no queue",
        sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE),
    )?;
    step(
        "connect in repair mode",
        sys::sock_connect(fd, r.family, &r.peer_addr.0, r.peer_port as u16),
    )?;
    let mut opts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    if rep.tcp_options & TCPI_OPT_SACK != 0 {
        opt(TCPOPT_SACK_PERM, 0);
    }
    if rep.tcp_options & TCPI_OPT_WSCALE != 0 {
        opt(TCPOPT_WINDOW, rep.snd_wscale | (rep.rcv_wscale << 16));
    }
    if rep.tcp_options & TCPI_OPT_TIMESTAMPS != 0 {
        opt(TCPOPT_TIMESTAMP, 0);
    }
    opt(TCPOPT_MAXSEG, rep.mss);
    step(
        "TCP_REPAIR_OPTIONS",
        sys::setsockopt_raw(fd, tcp, TCP_REPAIR_OPTIONS, &opts),
    )?;
    if rep.tcp_options & TCPI_OPT_TIMESTAMPS != 0 {
        step(
            "TCP_TIMESTAMP",
            sys::setsockopt_int(fd, tcp, TCP_TIMESTAMP, rep.timestamp as i32),
        )?;
    }
    if !recvq.is_empty() {
        step(
            "select the receive queue",
            sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_QUEUE_RECV as i32),
        )?;
        step("refill the receive queue", fill_queue(fd, recvq))?;
    }
    // The bytes sent and not acknowledged go back in repair mode (the
    // kernel retransmits them); those never sent wait for `resume`.
    let sent = &sendq[..sendq.len() - rep.unsent as usize];
    if !sent.is_empty() {
        step(
            "select the send queue",
            sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_QUEUE_SEND as i32),
        )?;
        step("refill the send queue", fill_queue(fd, sent))?;
    }
    step(
        "select no queue",
        sys::setsockopt_int(fd, tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE),
    )?;
    // The window we announced last may count the peer's FIN (rcv_wup is
    // rcv_nxt then): its right edge stays, its left one may not be ahead
    // of the rebuilt rcv_nxt.
    let (mut rcv_wnd, mut rcv_wup) = (rep.rcv_wnd, rep.rcv_wup);
    let ahead = rcv_wup.wrapping_sub(rcv_nxt) as i32;
    if ahead > 0 {
        rcv_wup = rcv_nxt;
        rcv_wnd = rcv_wnd.wrapping_add(ahead as u32);
    }
    let mut w = Vec::with_capacity(20);
    for v in [rep.snd_wl1, rep.snd_wnd, rep.max_window, rcv_wnd, rcv_wup] {
        w.extend_from_slice(&v.to_ne_bytes());
    }
    step(
        "TCP_REPAIR_WINDOW",
        sys::setsockopt_raw(fd, tcp, TCP_REPAIR_WINDOW, &w),
    )?;
    Ok(())
}

/// Makes `fd` a socket whose connection was reset: connected to a listener
/// of ours on loopback that closes with SO_LINGER 0 (a RST).
fn make_reset(fd: i32, r: &TcpSk) -> std::result::Result<(), StepErr> {
    set_options(fd, r, true)?;
    let family = r.family;
    let lo: Vec<u8> = if family == libc::AF_INET6 as u32 {
        std::net::Ipv6Addr::LOCALHOST.octets().to_vec()
    } else {
        vec![127, 0, 0, 1]
    };
    let l = step(
        "a loopback listener",
        sys::socket(family as i32, libc::SOCK_STREAM, libc::IPPROTO_TCP),
    )?;
    let res = (|| {
        step(
            "bind a loopback listener",
            sys::sock_bind(l, family, &lo, 0),
        )?;
        step("listen on loopback", sys::listen(l, 1))?;
        let (_, _, port) = step("getsockname", sys::sock_name(l, false))?;
        step(
            "connect to loopback",
            sys::sock_connect(fd, family, &lo, port),
        )?;
        let a = step("accept on loopback", sys::accept(l))?;
        let mut lin = [0u8; 8];
        lin[..4].copy_from_slice(&1i32.to_ne_bytes());
        let set = sys::setsockopt_raw(a, libc::SOL_SOCKET, libc::SO_LINGER, &lin);
        sys::close(a);
        step("setsockopt SO_LINGER", set)
    })();
    sys::close(l);
    res
}

/// Checks one socket's records (see `FdKind::validate`); `untrusted`: the
/// image is not root's.
fn validate_record(
    r: &TcpSk,
    rep: Option<&TcpRepair>,
    queues: &[&TcpQueue],
    untrusted: bool,
) -> std::result::Result<(), String> {
    let alen = match r.family as i32 {
        libc::AF_INET => 4,
        libc::AF_INET6 => 16,
        f => return Err(format!("has unknown address family {f}")),
    };
    let connected = matches!(r.mode, TCP_MODE_REPAIR | TCP_MODE_RESET);
    if r.local_addr.0.len() != alen || (connected && r.peer_addr.0.len() != alen) {
        return Err(format!(
            "has addresses of the wrong length for family {}",
            r.family
        ));
    }
    if r.local_port > 65535 || r.peer_port > 65535 {
        return Err("has a port above 65535".into());
    }
    match r.mode {
        TCP_MODE_PLAIN => {}
        TCP_MODE_LISTEN if r.backlog <= i32::MAX as u32 && r.local_port != 0 => {}
        TCP_MODE_LISTEN => {
            return Err("is a listener without a port or with an invalid backlog".into())
        }
        TCP_MODE_REPAIR | TCP_MODE_RESET if r.peer_port != 0 && r.local_port != 0 => {}
        TCP_MODE_REPAIR | TCP_MODE_RESET => return Err("is a connection without ports".into()),
        m => return Err(format!("has unknown mode {m}")),
    }
    let unsent = rep.map_or(0, |x| x.unsent);
    if r.mode == TCP_MODE_REPAIR {
        let Some(rep) = rep else {
            return Err("is a connection in repair mode without its tcp-repair record".into());
        };
        let Some(fins) = tcp_fin::fins(r.state) else {
            return Err(format!(
                "is repaired in state {} (only ESTABLISHED and the half-closed states)",
                r.state
            ));
        };
        if fins.acked && !queues.iter().all(|q| q.queue != TCP_QUEUE_SEND) {
            return Err(
                "has a send queue in FIN_WAIT2 or CLOSE (where all was acknowledged)".into(),
            );
        }
        if rep.mss == 0 || rep.mss > 65535 || rep.snd_wscale > 14 || rep.rcv_wscale > 14 {
            return Err("has an invalid MSS or window scale".into());
        }
        if rep.tcp_options & !(TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE) != 0 {
            return Err(format!("has unknown TCP options {:#x}", rep.tcp_options));
        }
        if untrusted {
            return Err("is a connection restored in TCP repair mode, which only an image owned by root may ask for (see docs/trust.md)".into());
        }
    } else if !queues.is_empty() || rep.is_some() {
        return Err("has queued bytes but is no repaired connection".into());
    }
    let mut seen = [false; 3];
    for q in queues {
        match q.queue {
            TCP_QUEUE_RECV | TCP_QUEUE_SEND if !seen[q.queue as usize] => {
                seen[q.queue as usize] = true
            }
            n => return Err(format!("has a repeated or unknown queue {n}")),
        }
        if q.data.0.len() > (1 << 30) {
            return Err("has a queue above 1 GiB".into());
        }
    }
    let sendq = queues
        .iter()
        .find(|q| q.queue == TCP_QUEUE_SEND)
        .map_or(0, |q| q.data.0.len());
    if unsent as usize > sendq {
        return Err(format!(
            "says {} bytes were not sent of a send queue of {sendq}",
            unsent
        ));
    }
    match decode_int_opts(&r.int_opts.0) {
        Some(v)
            if v.iter()
                .all(|&(level, _, _)| applies(level, r.family as i32)) => {}
        _ => return Err("has socket options ckpt does not restore".into()),
    }
    if r.congestion.0.len() >= 16 || r.congestion.0.contains(&0) {
        return Err("has an invalid TCP_CONGESTION name".into());
    }
    if r.bind_dev.0.len() >= 16 || r.bind_dev.0.contains(&0) {
        return Err("has an invalid SO_BINDTODEVICE name".into());
    }
    if untrusted && r.local_port != 0 && r.local_port < 1024 {
        return Err(format!(
            "binds privileged port {}, which only an image owned by root may ask for",
            r.local_port
        ));
    }
    if r.linger_sec > i32::MAX as u32
        || r.keepidle > i32::MAX as u32
        || r.keepintvl > i32::MAX as u32
        || r.keepcnt > i32::MAX as u32
        || r.defer_accept > i32::MAX as u32
        || r.tos > 255
    {
        return Err("has an option out of range".into());
    }
    Ok(())
}

fn record<'a>(img: &'a crate::model::Image, f: &File) -> Result<&'a TcpSk> {
    records(img, f.id)
        .next()
        .ok_or_else(|| Error::Refused(format!("TCP file {} has no tcp-socket record", f.id)))
}

fn repair_record<'a>(img: &'a crate::model::Image, f: &File) -> Result<&'a TcpRepair> {
    repairs(img, f.id)
        .next()
        .ok_or_else(|| Error::Refused(format!("TCP file {} has no tcp-repair record", f.id)))
}

fn repairs(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &TcpRepair> + '_ {
    super::kind::objects_of::<TcpRepair>(img).filter(move |r| r.file_id == id)
}

fn records(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &TcpSk> + '_ {
    super::kind::objects_of::<TcpSk>(img).filter(move |r| r.file_id == id)
}

fn queues(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &TcpQueue> + '_ {
    super::kind::objects_of::<TcpQueue>(img).filter(move |r| r.file_id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::tcp_fin::ESTABLISHED;

    #[test]
    fn parses_tcp_info() {
        let mut b = [0u8; 104];
        b[0] = 1;
        b[5] = 7;
        b[6] = 0x97; // rcv 9, snd 7
        b[24..28].copy_from_slice(&3u32.to_ne_bytes());
        b[28..32].copy_from_slice(&128u32.to_ne_bytes());
        let i = parse_info(&b).unwrap();
        assert_eq!(
            i,
            Info {
                state: 1,
                options: 7,
                snd_wscale: 7,
                rcv_wscale: 9,
                unacked: 3,
                sacked: 128,
                segs: 0,
                segs_in: 0,
            }
        );
        assert_eq!(parse_info(&b[..20]), None);
        let mut long = [0u8; 232];
        long[136..140].copy_from_slice(&2u32.to_ne_bytes());
        long[140..144].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse_info(&long).unwrap().segs, 5);
    }

    #[test]
    fn reads_a_real_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let i = tcp_info(l.as_raw_fd()).unwrap();
        assert_eq!(i.state, LISTEN);
        assert_eq!(i.sacked, 128); // std's backlog
        let me = std::process::id() as crate::sys::Pid;
        assert!(is_tcp(super::super::sockopt::identity(me, l.as_raw_fd())));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!is_tcp(super::super::sockopt::identity(me, u.as_raw_fd())));
    }

    fn conn() -> TcpSk {
        TcpSk {
            file_id: 1,
            family: libc::AF_INET as u32,
            mode: TCP_MODE_REPAIR,
            state: ESTABLISHED,
            local_addr: Bytes(vec![127, 0, 0, 1]),
            local_port: 5000,
            peer_addr: Bytes(vec![127, 0, 0, 1]),
            peer_port: 40000,
            ..Default::default()
        }
    }

    fn rep() -> TcpRepair {
        TcpRepair {
            file_id: 1,
            mss: 1460,
            unsent: 2,
            ..Default::default()
        }
    }

    #[test]
    fn validation() {
        let q = TcpQueue {
            file_id: 1,
            queue: TCP_QUEUE_SEND,
            data: Bytes(vec![1, 2, 3]),
        };
        let rp = rep();
        let ok = |r: &TcpSk, qs: &[&TcpQueue]| validate_record(r, Some(&rp), qs, false);
        assert_eq!(ok(&conn(), &[&q]), Ok(()));
        let e = validate_record(&conn(), Some(&rp), &[&q], true).unwrap_err();
        assert!(e.contains("owned by root"), "{e}");
        let e = ok(&conn(), &[]).unwrap_err();
        assert!(e.contains("not sent"), "{e}");
        let e = ok(&conn(), &[&q, &q]).unwrap_err();
        assert!(e.contains("repeated"), "{e}");
        let e = validate_record(&conn(), None, &[&q], false).unwrap_err();
        assert!(e.contains("tcp-repair"), "{e}");
        let bad = TcpSk {
            local_addr: Bytes(vec![0; 16]),
            ..conn()
        };
        assert!(ok(&bad, &[&q]).is_err());
        let bad = TcpSk { mode: 9, ..conn() };
        assert!(ok(&bad, &[&q]).is_err());
        let wide = TcpRepair {
            rcv_wscale: 15,
            ..rep()
        };
        assert!(validate_record(&conn(), Some(&wide), &[&q], false).is_err());
        let listen = TcpSk {
            mode: TCP_MODE_LISTEN,
            state: LISTEN,
            peer_port: 0,
            backlog: 5,
            ..conn()
        };
        assert_eq!(validate_record(&listen, None, &[], true), Ok(()));
        assert!(validate_record(&listen, None, &[&q], false).is_err());
        assert!(validate_record(&listen, Some(&rp), &[], false).is_err());
        // Half-closed and ended states are repaired; all acknowledged in
        // FIN_WAIT2 and CLOSE, so no send queue there; TIME_WAIT never.
        for st in [4, 8, 9, 11] {
            let hc = TcpSk {
                state: st,
                ..conn()
            };
            assert_eq!(ok(&hc, &[&q]), Ok(()), "state {st}");
        }
        let none = TcpRepair { unsent: 0, ..rep() };
        for st in [5, 7] {
            let hc = TcpSk {
                state: st,
                ..conn()
            };
            let e = validate_record(&hc, Some(&none), &[&q], false).unwrap_err();
            assert!(e.contains("send queue"), "{e}");
            assert_eq!(validate_record(&hc, Some(&none), &[], false), Ok(()));
        }
        let tw = TcpSk { state: 6, ..conn() };
        assert!(ok(&tw, &[&q]).is_err());
        let low = TcpSk {
            local_port: 80,
            ..listen
        };
        assert!(validate_record(&low, None, &[], true).is_err());
    }

    #[test]
    fn int_options_differing_from_a_fresh_socket() {
        let fam = libc::AF_INET;
        let s = sys::socket(fam, libc::SOCK_STREAM, libc::IPPROTO_TCP).unwrap();
        let fresh = sys::socket(fam, libc::SOCK_STREAM, libc::IPPROTO_TCP).unwrap();
        assert!(int_opts(s, fresh, fam, false).is_empty());
        sys::setsockopt_int(s, libc::IPPROTO_TCP, 3, 1).unwrap(); // TCP_CORK
        sys::setsockopt_int(s, libc::IPPROTO_IP, libc::IP_TTL, 7).unwrap();
        let b = int_opts(s, fresh, fam, false);
        assert_eq!(
            decode_int_opts(&b),
            Some(vec![
                (libc::IPPROTO_TCP, 3, 1),
                (libc::IPPROTO_IP, libc::IP_TTL, 7)
            ])
        );
        sys::close(s);
        sys::close(fresh);
        // Only options of the list, in whole triples.
        assert_eq!(decode_int_opts(&b[..11]), None);
        let mut any = Vec::new();
        for w in [libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, 1] {
            any.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(decode_int_opts(&any), None);
    }

    #[test]
    fn mapped_addresses_block_as_ipv4() {
        let mut m = vec![0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&[127, 0, 0, 1]);
        let r = TcpSk {
            family: libc::AF_INET6 as u32,
            local_addr: Bytes(m.clone()),
            peer_addr: Bytes(m),
            ..conn()
        };
        let c = conn_of(&r);
        assert!(!c.v6);
        assert_eq!(c.local, vec![127, 0, 0, 1]);
    }
}
