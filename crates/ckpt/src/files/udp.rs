//! UDP sockets (IPv4 and IPv6): the address bound and connected to, the
//! options (common ones through `sockopt`, IP/IPv6 ones here), and the
//! datagrams waiting in the receive queue with their sources.
//!
//! Checkpoint reads the queue without consuming it: SO_PEEK_OFF set to 0
//! makes every MSG_PEEK step past the datagram it returned, so each is
//! read whole and apart (the saved SO_PEEK_OFF is set back afterwards).
//! Restart sends them again, in order, to the restored socket from their
//! original source address (a helper socket with IP_TRANSPARENT and
//! IP_FREEBIND bound there, or the restored socket that owns that address),
//! before it is connected (a connected socket filters by peer), then reads
//! them back the same way to check every one arrived.
//!
//! Multicast memberships: the kernel lists groups per device only
//! (/proc/net/igmp, igmp6); each is asked of the socket with MCAST_MSFILTER,
//! which answers (with the source filter) only for the socket's own, and
//! restart joins them again (MCAST_JOIN_GROUP, then the filter).
//!
//! Refused: a filter attached (`sockopt::refuse_filters`), UDP_CORK,
//! UDP encapsulation, GSO/GRO (UDP_SEGMENT, UDP_GRO), a queue beyond
//! `MAX_QUEUE_BYTES` / `MAX_QUEUE_DATAGRAMS`.
//!
//! Zero-length datagrams are saved too: the peek offset walk returns each
//! once (the kernel marks it peeked), and a plain peek first catches one at
//! the head that the process had peeked at itself.
//!
//! An SO_REUSEPORT socket's queue may be sent to another socket of its
//! group at restart: the check then fails the restart, saying so.
//!
//! Not seen: a second zero-length datagram the process had peeked at,
//! right behind the first (the walk steps over those); the shutdown state
//! of a socket never bound (sock_diag does not list it; a bound one's comes
//! from INET_DIAG_SHUTDOWN); an IPv4 IP_MULTICAST_IF given by ifindex only
//! (getsockopt shows the address); whether a connected socket was bound to
//! the wildcard before connect (restart binds it to the address connect
//! chose, which only matters after a later disconnect).

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use super::sockopt;
use crate::error::{Error, Result};
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::fd::AsRawFd;

pub struct Udp;

/// Largest receive queue saved (the default rmem_max is 208 KiB).
pub const MAX_QUEUE_BYTES: usize = 16 << 20;
pub const MAX_QUEUE_DATAGRAMS: usize = 65536;

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const SOL_UDP: i32 = 17;
const IP_TRANSPARENT: i32 = 19;
const IP_FREEBIND: i32 = 15;
const IPV6_TRANSPARENT: i32 = 75;
const IPV6_FREEBIND: i32 = 78;
const IPV6_V6ONLY: i32 = 26;
const MCAST_MSFILTER: i32 = 48;
const UDP_CORK: i32 = 1;
const UDP_ENCAP: i32 = 100;
const UDP_SEGMENT: i32 = 103;
const UDP_GRO: i32 = 104;

/// The IP-level options kept, in `IpOpts` order: name and (level, option)
/// for IPv4 and for IPv6 (`None`: not for that family).
type OptRow = (&'static str, Option<(i32, i32)>, Option<(i32, i32)>);
const IP_OPTS: [OptRow; N_OPTS] = [
    (
        "IP_TOS/IPV6_TCLASS",
        Some((SOL_IP, 1)),
        Some((SOL_IPV6, 67)),
    ),
    (
        "IP_TTL/IPV6_UNICAST_HOPS",
        Some((SOL_IP, 2)),
        Some((SOL_IPV6, 16)),
    ),
    ("IPV6_V6ONLY", None, Some((SOL_IPV6, IPV6_V6ONLY))),
    (
        "IP_MULTICAST_TTL/HOPS",
        Some((SOL_IP, 33)),
        Some((SOL_IPV6, 18)),
    ),
    (
        "IP_MULTICAST_LOOP",
        Some((SOL_IP, 34)),
        Some((SOL_IPV6, 19)),
    ),
    ("IP_MULTICAST_ALL", Some((SOL_IP, 49)), None),
    ("IP_MULTICAST_IF", Some((SOL_IP, 32)), Some((SOL_IPV6, 17))),
    (
        "IP_PKTINFO/IPV6_RECVPKTINFO",
        Some((SOL_IP, 8)),
        Some((SOL_IPV6, 49)),
    ),
    (
        "IP_RECVERR/IPV6_RECVERR",
        Some((SOL_IP, 11)),
        Some((SOL_IPV6, 25)),
    ),
    (
        "IP_FREEBIND",
        Some((SOL_IP, IP_FREEBIND)),
        Some((SOL_IPV6, IPV6_FREEBIND)),
    ),
    (
        "IP_TRANSPARENT",
        Some((SOL_IP, IP_TRANSPARENT)),
        Some((SOL_IPV6, IPV6_TRANSPARENT)),
    ),
];
const N_OPTS: usize = 11;

fn opt_of(family: u32, row: &OptRow) -> Option<(i32, i32)> {
    if family == libc::AF_INET as u32 {
        row.1
    } else {
        row.2
    }
}

/// The IP options of `fd` in `IP_OPTS` order (0 where not applicable).
fn ip_opts(fd: i32, family: u32) -> std::io::Result<[i32; N_OPTS]> {
    let mut v = [0; N_OPTS];
    for (i, row) in IP_OPTS.iter().enumerate() {
        if let Some((l, o)) = opt_of(family, row) {
            v[i] = sys::getsockopt_int(fd, l, o)?;
        }
    }
    Ok(v)
}

fn record_opts(u: &UdpSk) -> [i32; N_OPTS] {
    [
        u.tos,
        u.ttl,
        u.v6only as i32,
        u.mc_ttl,
        u.mc_loop as i32,
        u.mc_all as i32,
        u.mc_if as i32,
        u.pktinfo as i32,
        u.recverr as i32,
        u.freebind as i32,
        u.transparent as i32,
    ]
}

impl FdKind for Udp {
    fn name(&self) -> &'static str {
        "UDP socket"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_UDP]
    }
    fn matches(&self, p: &Probe) -> bool {
        matches!(
            p.socket,
            Some((
                libc::AF_INET | libc::AF_INET6,
                libc::SOCK_DGRAM,
                libc::IPPROTO_UDP
            ))
        )
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let own = cx
            .fetch_fd(p.pid, p.fd)
            .map_err(|e| p.sys("pidfd_getfd", e))?;
        let fd = own.as_raw_fd();
        sockopt::refuse_filters(p, fd)?;
        let family = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
            .map_err(|e| p.sys("getsockopt(SO_DOMAIN)", e))? as u32;
        for (name, opt) in [
            ("UDP_CORK (corked data)", UDP_CORK),
            ("UDP_ENCAP (encapsulation)", UDP_ENCAP),
            ("UDP_SEGMENT (GSO)", UDP_SEGMENT),
            ("UDP_GRO", UDP_GRO),
        ] {
            if sys::getsockopt_int(fd, SOL_UDP, opt).unwrap_or(0) != 0 {
                return Err(p.unsupported(&format!(
                    "it has {name} set, which ckpt does not restore yet; clear it before the checkpoint"
                )));
            }
        }
        let local = sys::sockname(fd).map_err(|e| p.sys("getsockname", e))?;
        let peer = sys::peername(fd)
            .map_err(|e| p.sys("getpeername", e))?
            .unwrap_or_default();
        let opts = sockopt::save(fd).map_err(|e| p.sys("read socket options", e))?;
        let ip = ip_opts(fd, family).map_err(|e| p.sys("read IP options", e))?;
        let groups = joined_groups(p.pid, fd).map_err(|e| p.unsupported(&e))?;
        // (sock_diag lists bound sockets only: a socket never bound is
        // taken as not shut down.)
        let shutdown = match diag_shutdown(fd, family) {
            _ if port(&local) == 0 => 0,
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(p.unsupported(
                    "sock_diag does not show it (is it in another network namespace than ckpt?), so whether it was shut down is unknown",
                ))
            }
            Err(e) => return Err(p.sys("sock_diag query", e)),
        };
        let queue = peek_queue(fd, opts.peek_off).map_err(|e| match e {
            QueueErr::Sys(what, e) => p.sys(what, e),
            QueueErr::Refuse(why) => p.unsupported(&why),
        })?;
        f.kind = FILE_UDP;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            UdpSk {
                file_id: f.id,
                family,
                local: Bytes(local),
                peer: Bytes(peer),
                opts,
                tos: ip[0],
                ttl: ip[1],
                v6only: ip[2] != 0,
                mc_ttl: ip[3],
                mc_loop: ip[4] != 0,
                mc_all: ip[5] != 0,
                mc_if: ip[6] as u32,
                pktinfo: ip[7] != 0,
                recverr: ip[8] != 0,
                freebind: ip[9] != 0,
                transparent: ip[10] != 0,
                shutdown,
                groups,
                queued: queue.len() as u32,
            }
            .into(),
        );
        for (seq, (source, data)) in queue.into_iter().enumerate() {
            cx.objects.push(
                UdpQueue {
                    file_id: f.id,
                    seq: seq as u32,
                    source: Bytes(source),
                    data: Bytes(data),
                }
                .into(),
            );
        }
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = super::kind::objects_of::<UdpSk>(c.img).filter(|u| u.file_id == f.id);
        let (Some(u), None) = (recs.next(), recs.next()) else {
            return Err("needs exactly one udp-socket record".into());
        };
        if u.family != libc::AF_INET as u32 && u.family != libc::AF_INET6 as u32 {
            return Err(format!("has address family {}", u.family));
        }
        check_addr(u.family, &u.local.0).map_err(|e| format!("local address {e}"))?;
        if !u.peer.0.is_empty() {
            check_addr(u.family, &u.peer.0).map_err(|e| format!("peer address {e}"))?;
        }
        sockopt::validate(&u.opts)?;
        if u.groups.len() > 1024 {
            return Err(format!("has {} multicast groups", u.groups.len()));
        }
        for g in &u.groups {
            let fam = if g.group.0.len() == 16 {
                libc::AF_INET
            } else {
                libc::AF_INET6
            } as u32;
            check_addr(fam, &g.group.0).map_err(|e| format!("multicast group {e}"))?;
            if g.sources.len() > MAX_SOURCES || g.ifindex == 0 {
                return Err("has a multicast group with too many sources or no interface".into());
            }
            for src in &g.sources {
                check_addr(fam, &src.0).map_err(|e| format!("multicast source {e}"))?;
            }
        }
        if u.shutdown > 3 {
            return Err(format!("has shutdown state {}", u.shutdown));
        }
        let q: Vec<&UdpQueue> = queue_of(c.img, f.id).collect();
        if q.len() != u.queued as usize || q.iter().enumerate().any(|(i, d)| d.seq != i as u32) {
            return Err(format!(
                "announces {} queued datagrams but has {} udp-queue records (or out of order)",
                u.queued,
                q.len()
            ));
        }
        let total: usize = q.iter().map(|d| d.data.0.len()).sum();
        if q.len() > MAX_QUEUE_DATAGRAMS || total > MAX_QUEUE_BYTES {
            return Err(format!(
                "has a receive queue of {total} bytes in {} datagrams, beyond the limit",
                q.len()
            ));
        }
        for d in q {
            if d.data.0.len() > 65535 {
                return Err(format!("has a queued datagram of {} bytes", d.data.0.len()));
            }
            check_addr(u.family, &d.source.0).map_err(|e| format!("datagram source {e}"))?;
            if port(&d.source.0) == 0 {
                return Err("has a queued datagram from port 0".into());
            }
        }
        if u.queued > 0 && port(&u.local.0) == 0 {
            return Err("has queued datagrams but no local port".into());
        }
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        // Every socket is made and bound first, so datagrams from one of
        // them can be sent from it; then the queues; then connect.
        let mut made: Vec<(&File, &UdpSk, i32)> = Vec::new();
        for f in files {
            let u = super::kind::objects_of::<UdpSk>(cx.img)
                .find(|u| u.file_id == f.id)
                .ok_or_else(|| {
                    Error::Refused(format!("UDP file {} has no udp-socket record", f.id))
                })?;
            let fd = new_socket(cx, f, u)?;
            made.push((f, u, fd));
        }
        for &(f, u, _) in &made {
            if u.queued > 0 {
                let q: Vec<&UdpQueue> = queue_of(cx.img, f.id).collect();
                refill(&made, u, &q).map_err(|e| fail(cx, f, &e))?;
            }
        }
        for &(f, u, fd) in &made {
            if !u.peer.0.is_empty() {
                sys::connect(fd, &u.peer.0).map_err(|e| {
                    fail(cx, f, &format!("connect to {}: {e}", show_addr(&u.peer.0)))
                })?;
            }
            join_groups(fd, &u.groups).map_err(|e| fail(cx, f, &e))?;
            sockopt::restore_late(fd, &u.opts).map_err(|e| fail(cx, f, &e))?;
            if u.shutdown != 0 {
                // (The kernel records it, then says ENOTCONN, on a socket
                // never connected.)
                match sys::shutdown(fd, u.shutdown as i32 - 1) {
                    Err(e) if e.raw_os_error() != Some(libc::ENOTCONN) => {
                        return Err(fail(cx, f, &format!("shutdown: {e}")))
                    }
                    _ => {}
                }
            }
            if u.queued > 0 {
                let q: Vec<&UdpQueue> = queue_of(cx.img, f.id).collect();
                verify_queue(fd, &q, u.opts.peek_off).map_err(|e| {
                    let why = if u.opts.reuseport {
                        " (it is in an SO_REUSEPORT group, which shares incoming datagrams between its sockets)"
                    } else {
                        ""
                    };
                    fail(cx, f, &format!("{e}{why}"))
                })?;
            }
        }
        for (f, _, fd) in made {
            cx.by_id.retain(|x| x.1 != fd);
            cx.opened(f, fd)?;
        }
        Ok(())
    }
}

/// The error for restoring UDP socket `f`.
fn fail(cx: &OpenCx, f: &File, e: &str) -> Error {
    Error::Refused(format!(
        "pid {}: cannot restore UDP socket {}: {e}",
        (cx.user_of)(f.id),
        f.path
    ))
}

/// The queued datagrams of UDP file `id`, in order.
fn queue_of(img: &crate::model::Image, id: u32) -> impl Iterator<Item = &UdpQueue> + '_ {
    super::kind::objects_of::<UdpQueue>(img).filter(move |d| d.file_id == id)
}

/// Socket `u` made, with its options, and bound (at an fd >= base,
/// tracked in `cx.by_id` under id 0 until done).
fn new_socket(cx: &mut OpenCx, f: &File, u: &UdpSk) -> Result<i32> {
    let raw = sys::socket(u.family as i32, libc::SOCK_DGRAM, libc::IPPROTO_UDP)
        .map_err(|e| cx.err("socket(UDP)".into(), e))?;
    let fd = sys::dup_above(raw, cx.base);
    sys::close(raw);
    let fd = fd.map_err(|e| cx.err("dup socket".into(), e))?;
    cx.by_id.push((0, fd));
    let now = ip_opts(fd, u.family).map_err(|e| fail(cx, f, &format!("read IP options: {e}")))?;
    // (IPV6_V6ONLY can only change before bind.)
    for (i, (want, have)) in record_opts(u).into_iter().zip(now).enumerate() {
        let row = &IP_OPTS[i];
        if let (Some((l, o)), true) = (opt_of(u.family, row), want != have) {
            sys::setsockopt_int(fd, l, o, want)
                .map_err(|e| fail(cx, f, &format!("set {} to {want}: {e}", row.0)))?;
        }
    }
    sockopt::restore(fd, &u.opts).map_err(|e| fail(cx, f, &e))?;
    if port(&u.local.0) != 0 {
        bind(fd, u).map_err(|e| fail(cx, f, &format!("bind to {}: {e}", show_addr(&u.local.0))))?;
    }
    Ok(fd)
}

/// Binds `fd` to the saved address. An address that is not (or no
/// longer) local was bound with IP_FREEBIND since cleared: it is set for
/// the bind only.
fn bind(fd: i32, u: &UdpSk) -> std::io::Result<()> {
    match sys::bind(fd, &u.local.0) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && !u.freebind => {
            let (l, o) = if u.family == libc::AF_INET as u32 {
                (SOL_IP, IP_FREEBIND)
            } else {
                (SOL_IPV6, IPV6_FREEBIND)
            };
            sys::setsockopt_int(fd, l, o, 1)?;
            let r = sys::bind(fd, &u.local.0);
            sys::setsockopt_int(fd, l, o, 0)?;
            r
        }
        r => r,
    }
}

/// Sends the saved datagrams `q` to socket `fd` (record `u`) from their
/// sources.
fn refill(
    made: &[(&File, &UdpSk, i32)],
    u: &UdpSk,
    q: &[&UdpQueue],
) -> std::result::Result<(), String> {
    let mut helpers: Vec<(Vec<u8>, i32)> = Vec::new();
    let r = (|| {
        for d in q {
            // An IPv4 source of an IPv6 socket (::ffff:a.b.c.d) sends as IPv4.
            let (family, src, dest) = match (
                unmap(&d.source.0),
                unmap(&loopback_dest(&u.local.0, &d.source.0)),
            ) {
                (Some(s), Some(t)) => (libc::AF_INET as u32, s, t),
                _ => (
                    u.family,
                    d.source.0.clone(),
                    loopback_dest(&u.local.0, &d.source.0),
                ),
            };
            let src = &src;
            let sent = if let Some(m) = made.iter().find(|m| same_addr(&m.1.local.0, src)) {
                sys::sendto(m.2, &d.data.0, &dest)
            } else if let Some(m) = made.iter().find(|m| {
                m.1.family == family && port(&m.1.local.0) == port(src) && wildcard(&m.1.local.0)
            }) {
                // The restored socket of that port, bound to the wildcard:
                // the source address is chosen with IP_PKTINFO.
                send_from_wildcard(m.2, family, &d.data.0, &dest, src)
            } else {
                let h = match helpers.iter().find(|h| same_addr(&h.0, src)) {
                    Some(h) => h.1,
                    None => {
                        let h = helper(family, src).map_err(|e| {
                            format!("cannot send its queued datagrams again from {}: {e} (is another socket bound there?)", show_addr(src))
                        })?;
                        helpers.push((src.clone(), h));
                        h
                    }
                };
                sys::sendto(h, &d.data.0, &dest)
            };
            let n = sent.map_err(|e| {
                format!(
                    "send queued datagram {} from {}: {e}",
                    d.seq,
                    show_addr(src)
                )
            })?;
            if n != d.data.0.len() {
                return Err(format!("queued datagram {} sent short", d.seq));
            }
        }
        Ok(())
    })();
    for (_, h) in helpers {
        sys::close(h);
    }
    r
}

/// The sockaddr_in of a v4-mapped sockaddr_in6 (::ffff:a.b.c.d).
fn unmap(a: &[u8]) -> Option<Vec<u8>> {
    if a.len() != 28 || a[8..20] != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
        return None;
    }
    let mut v = vec![0u8; 16];
    v[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    v[2..4].copy_from_slice(&a[2..4]);
    v[4..8].copy_from_slice(&a[20..24]);
    Some(v)
}

/// Whether raw sockaddrs `a` and `b` name one address and port (an IPv6
/// flow label, which recvfrom may report, does not count).
fn same_addr(a: &[u8], b: &[u8]) -> bool {
    match (a.len(), b.len()) {
        (16, 16) => a[..8] == b[..8],
        (28, 28) => a[..4] == b[..4] && a[8..] == b[8..],
        _ => false,
    }
}

/// Whether raw sockaddr `a` has the wildcard address.
fn wildcard(a: &[u8]) -> bool {
    if a.len() == 16 {
        a[4..8] == [0; 4]
    } else {
        a.len() == 28 && a[8..24] == [0; 16]
    }
}

/// Sends from socket `fd` (bound to the wildcard) with source address
/// that of `src` (IP_PKTINFO / IPV6_PKTINFO).
fn send_from_wildcard(
    fd: i32,
    family: u32,
    data: &[u8],
    dest: &[u8],
    src: &[u8],
) -> std::io::Result<usize> {
    if family == libc::AF_INET as u32 {
        // struct in_pktinfo: ifindex, spec_dst, addr.
        let mut info = [0u8; 12];
        info[4..8].copy_from_slice(&src[4..8]);
        sys::sendmsg_cmsg(fd, data, dest, SOL_IP, 8, &info)
    } else {
        // struct in6_pktinfo: addr, ifindex (a v4-mapped address works for
        // a v4-mapped destination).
        let mut info = [0u8; 20];
        info[..16].copy_from_slice(&src[8..24]);
        sys::sendmsg_cmsg(fd, data, dest, SOL_IPV6, 50, &info)
    }
}

/// A socket bound to `src` whatever it is (IP_TRANSPARENT, IP_FREEBIND;
/// needs CAP_NET_ADMIN).
fn helper(family: u32, src: &[u8]) -> std::io::Result<i32> {
    let h = sys::socket(family as i32, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
    let set = || -> std::io::Result<()> {
        let _ = sys::setsockopt_int(h, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        if family == libc::AF_INET as u32 {
            sys::setsockopt_int(h, SOL_IP, IP_TRANSPARENT, 1)?;
            sys::setsockopt_int(h, SOL_IP, IP_FREEBIND, 1)?;
        } else {
            sys::setsockopt_int(h, SOL_IPV6, IPV6_TRANSPARENT, 1)?;
            let _ = sys::setsockopt_int(h, SOL_IPV6, IPV6_FREEBIND, 1);
        }
        sys::bind(h, src)
    };
    match set() {
        Ok(()) => Ok(h),
        Err(e) => {
            sys::close(h);
            Err(e)
        }
    }
}

/// Where to send to reach a socket bound to `local` from `src`: that
/// address, or loopback for the wildcard (::ffff:127.0.0.1 when an IPv6
/// socket hears from an IPv4 source).
fn loopback_dest(local: &[u8], src: &[u8]) -> Vec<u8> {
    let mut d = local.to_vec();
    if d.len() == 16 {
        if d[4..8] == [0; 4] {
            d[4..8].copy_from_slice(&[127, 0, 0, 1]);
        }
    } else if d.len() == 28 && d[8..24] == [0; 16] {
        if src.len() == 28 && src[8..20] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            d[18..24].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        } else {
            d[23] = 1; // ::1
        }
    }
    d
}

/// Reads the queue of `fd` back and checks it is `q`, waiting a little
/// for loopback delivery; leaves SO_PEEK_OFF at `peek_off`.
fn verify_queue(fd: i32, q: &[&UdpQueue], peek_off: i32) -> std::result::Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let got = peek_queue(fd, peek_off).map_err(|e| match e {
            QueueErr::Sys(what, e) => format!("{what}: {e}"),
            QueueErr::Refuse(why) => why,
        })?;
        let same = got.len() == q.len()
            && got
                .iter()
                .zip(q)
                .all(|(g, d)| g.0 == d.source.0 && g.1 == d.data.0);
        if same {
            return Ok(());
        }
        if got.len() > q.len() || std::time::Instant::now() > deadline {
            return Err(format!(
                "its receive queue holds {} datagrams after sending the {} saved ones again (SIOCINQ {})",
                got.len(),
                q.len(),
                sys::siocinq(fd).unwrap_or(-1)
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A queued datagram: (source, data).
type Datagram = (Vec<u8>, Vec<u8>);

enum QueueErr {
    Sys(&'static str, std::io::Error),
    Refuse(String),
}

/// The datagrams queued on `fd`, each (source, data), read with MSG_PEEK
/// under SO_PEEK_OFF; SO_PEEK_OFF is left at `peek_off` (-1: off).
fn peek_queue(fd: i32, peek_off: i32) -> std::result::Result<Vec<Datagram>, QueueErr> {
    if let Err(e) = sockopt::set_peek_off(fd, 0) {
        // Without SO_PEEK_OFF only the first datagram can be seen.
        let empty = sys::sock_meminfo(fd).map(|m| m[0] == 0).unwrap_or(false);
        if empty {
            return Ok(Vec::new());
        }
        return Err(QueueErr::Refuse(format!("its receive queue is not empty and this kernel cannot peek past the first datagram (SO_PEEK_OFF: {e}); read the queue before the checkpoint")));
    }
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 65536];
    // A zero-length datagram the process already peeked at is stepped over
    // by the peek offset: a plain peek sees the head whatever it is (and
    // marks it, so the offset walk below steps over it in turn).
    let head = sockopt::set_peek_off(fd, -1)
        .and_then(|_| sys::recv_peek(fd, &mut buf))
        .and_then(|h| sockopt::set_peek_off(fd, 0).map(|_| h));
    match head {
        Ok(Some((0, src))) => out.push((src, Vec::new())),
        Ok(_) => {}
        Err(e) => {
            let _ = sockopt::set_peek_off(fd, peek_off);
            return Err(QueueErr::Sys("recvfrom(MSG_PEEK)", e));
        }
    }
    let r = loop {
        match sys::recv_peek(fd, &mut buf) {
            Ok(None) => break Ok(()),
            Ok(Some((n, src))) => {
                if n > buf.len() {
                    break Err(QueueErr::Refuse(format!(
                        "it has a queued datagram of {n} bytes"
                    )));
                }
                total += n;
                if out.len() >= MAX_QUEUE_DATAGRAMS || total > MAX_QUEUE_BYTES {
                    break Err(QueueErr::Refuse(format!(
                        "its receive queue holds more than {MAX_QUEUE_DATAGRAMS} datagrams or {MAX_QUEUE_BYTES} bytes; ckpt does not save queues that large: read it before the checkpoint"
                    )));
                }
                out.push((src, buf[..n].to_vec()));
            }
            Err(e) => break Err(QueueErr::Sys("recvfrom(MSG_PEEK)", e)),
        }
    };
    let back = sockopt::set_peek_off(fd, peek_off);
    r?;
    back.map_err(|e| QueueErr::Sys("setsockopt(SO_PEEK_OFF)", e))?;
    if out.is_empty() && sys::sock_meminfo(fd).is_ok_and(|m| m[0] != 0) {
        return Err(QueueErr::Refuse(
            "its receive queue holds memory but no datagram could be read (zero-length datagrams?)"
                .into(),
        ));
    }
    Ok(out)
}

/// The shutdown state (`UdpSk::shutdown`) of UDP socket `fd` from
/// sock_diag, found by inode; `None` when sock_diag does not list it.
fn diag_shutdown(fd: i32, family: u32) -> std::io::Result<Option<u32>> {
    const INET_DIAG_SHUTDOWN: u16 = 8;
    /// Size of struct inet_diag_msg; its inode is the last field.
    const MSG_LEN: usize = 72;
    let ino = sys::fstat_ino(fd)?.1;
    // inet_diag_req_v2: family, protocol, ext, pad, states (all), id.
    let mut req = vec![family as u8, libc::IPPROTO_UDP as u8, 0, 0];
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    for m in crate::sockdiag::dump(&req)? {
        if m.len() < MSG_LEN || u32::from_ne_bytes(m[68..72].try_into().expect("4")) as u64 != ino {
            continue;
        }
        let shut = crate::sockdiag::attrs(&m[MSG_LEN..])?
            .into_iter()
            .find(|&(ty, v)| ty == INET_DIAG_SHUTDOWN && !v.is_empty())
            .map_or(0, |(_, v)| v[0] as u32 & 3);
        return Ok(Some(shut));
    }
    Ok(None)
}

/// The port of a raw sockaddr_in/in6.
fn port(a: &[u8]) -> u16 {
    if a.len() < 4 {
        return 0;
    }
    u16::from_be_bytes([a[2], a[3]])
}

/// Checks a raw sockaddr of `family`.
fn check_addr(family: u32, a: &[u8]) -> std::result::Result<(), String> {
    let want = if family == libc::AF_INET as u32 {
        16
    } else {
        28
    };
    if a.len() != want || u16::from_ne_bytes([a[0], a[1]]) as u32 != family {
        return Err(format!(
            "is not a sockaddr of family {family} ({} bytes)",
            a.len()
        ));
    }
    Ok(())
}

/// "127.0.0.1:53", "[::1]:53" for messages.
fn show_addr(a: &[u8]) -> String {
    if a.len() >= 16 && u16::from_ne_bytes([a[0], a[1]]) == libc::AF_INET as u16 {
        let ip = std::net::Ipv4Addr::new(a[4], a[5], a[6], a[7]);
        format!("{ip}:{}", port(a))
    } else if a.len() >= 24 {
        let b: [u8; 16] = a[8..24].try_into().expect("16 bytes");
        format!("[{}]:{}", std::net::Ipv6Addr::from(b), port(a))
    } else {
        format!("{a:?}")
    }
}

/// Most sources of one group's filter saved.
const MAX_SOURCES: usize = 64;
const MCAST_JOIN_GROUP: i32 = 42;

/// The multicast groups socket `fd` (of process `pid`) joined: the groups
/// of its network namespace (/proc/PID/net/igmp, igmp6), each asked of the
/// socket with MCAST_MSFILTER (which fails unless the socket joined it on
/// that interface) with its source filter. Err: why they cannot be saved.
fn joined_groups(pid: Pid, fd: i32) -> std::result::Result<Vec<UdpGroup>, String> {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{f}"));
    let (Ok(v4), Ok(v6)) = (read("igmp"), read("igmp6")) else {
        return Ok(Vec::new()); // (no multicast in this kernel)
    };
    let mut out = Vec::new();
    let mut candidates: Vec<(i32, u32, Vec<u8>)> = Vec::new();
    for (ifindex, g) in parse_igmp(&v4) {
        let mut sa = vec![0u8; 16];
        sa[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        sa[4..8].copy_from_slice(&g);
        // (IPv4 groups of an IPv6 socket are at SOL_IP too.)
        candidates.push((SOL_IP, ifindex, sa));
    }
    for (ifindex, g) in parse_igmp6(&v6) {
        let mut sa = vec![0u8; 28];
        sa[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        sa[8..24].copy_from_slice(&g);
        candidates.push((SOL_IPV6, ifindex, sa));
    }
    for (level, ifindex, sa) in candidates {
        let mut gf = group_filter(ifindex, &sa, false, MAX_SOURCES as u32, &[]);
        if sys::getsockopt_raw(fd, level, MCAST_MSFILTER, &mut gf).is_err() {
            continue;
        }
        let fmode = u32::from_ne_bytes(gf[136..140].try_into().expect("4"));
        let n = u32::from_ne_bytes(gf[140..144].try_into().expect("4")) as usize;
        if n > MAX_SOURCES {
            return Err(format!(
                "its multicast group {} has a filter of {n} sources, more than ckpt saves ({MAX_SOURCES})",
                show_group(&sa)
            ));
        }
        let sources = (0..n)
            .map(|i| {
                let s = &gf[144 + 128 * i..144 + 128 * (i + 1)];
                Bytes(s[..sa.len()].to_vec())
            })
            .collect();
        out.push(UdpGroup {
            ifindex,
            group: Bytes(sa),
            include: fmode == 1,
            sources,
        });
    }
    Ok(out)
}

/// A struct group_filter: gf_interface, (pad), gf_group, gf_fmode,
/// gf_numsrc, then room for `room` sources (`sources` filled in).
fn group_filter(
    ifindex: u32,
    group: &[u8],
    include: bool,
    room: u32,
    sources: &[Bytes],
) -> Vec<u8> {
    let room = room.max(sources.len() as u32) as usize;
    let mut gf = vec![0u8; 144 + 128 * room.max(1)];
    gf[..4].copy_from_slice(&ifindex.to_ne_bytes());
    gf[8..8 + group.len()].copy_from_slice(group);
    gf[136..140].copy_from_slice(&(include as u32).to_ne_bytes());
    gf[140..144].copy_from_slice(&(room as u32).to_ne_bytes());
    for (i, s) in sources.iter().enumerate() {
        gf[144 + 128 * i..144 + 128 * i + s.0.len()].copy_from_slice(&s.0);
    }
    gf
}

/// Joins the saved groups again on new socket `fd`, with their filters.
fn join_groups(fd: i32, groups: &[UdpGroup]) -> std::result::Result<(), String> {
    for g in groups {
        let level = if g.group.0.len() == 16 {
            SOL_IP
        } else {
            SOL_IPV6
        };
        let name = format!("{} on interface {}", show_group(&g.group.0), g.ifindex);
        let mut req = vec![0u8; 136];
        req[..4].copy_from_slice(&g.ifindex.to_ne_bytes());
        req[8..8 + g.group.0.len()].copy_from_slice(&g.group.0);
        sys::setsockopt_raw(fd, level, MCAST_JOIN_GROUP, &req)
            .map_err(|e| format!("join multicast group {name}: {e}"))?;
        if g.include || !g.sources.is_empty() {
            let mut gf = group_filter(g.ifindex, &g.group.0, g.include, 0, &g.sources);
            let len = 144 + 128 * g.sources.len();
            gf.truncate(len.max(144));
            sys::setsockopt_raw(fd, level, MCAST_MSFILTER, &gf)
                .map_err(|e| format!("set the source filter of group {name}: {e}"))?;
        }
    }
    Ok(())
}

/// A group's address for messages.
fn show_group(a: &[u8]) -> String {
    let s = show_addr(a);
    s.rsplit_once(':').map_or(s.clone(), |x| x.0.to_string())
}

/// (ifindex, group) of /proc/net/igmp: a device line ("1\tlo : ...")
/// then its groups ("\t\t\t\t010000E0 ...", the address in memory order).
fn parse_igmp(text: &str) -> Vec<(u32, [u8; 4])> {
    let mut out = Vec::new();
    let mut dev = None;
    for line in text.lines().skip(1) {
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            dev = line.split_whitespace().next().and_then(|s| s.parse().ok());
        } else if let (Some(d), Some(g)) = (dev, line.split_whitespace().next()) {
            if let Ok(v) = u32::from_str_radix(g, 16) {
                out.push((d, v.to_ne_bytes()));
            }
        }
    }
    out
}

/// (ifindex, group) of /proc/net/igmp6 ("1 lo ff02...01 1 0000000C 0").
fn parse_igmp6(text: &str) -> Vec<(u32, [u8; 16])> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let idx = w.next()?.parse().ok()?;
            let hex = w.nth(1)?;
            if hex.len() != 32 {
                return None;
            }
            let mut g = [0u8; 16];
            for (i, b) in g.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
            }
            Some((idx, g))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn igmp_tables_are_parsed() {
        let v4 = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
                  1\tlo        :     1      V3\n\
                  \t\t\t\t010000E0     1 0:00000000\t\t0\n\
                  2\teth0      :     2      V3\n\
                  \t\t\t\t050000EF     1 0:00000000\t\t0\n";
        let g = parse_igmp(v4);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0], (1, [224, 0, 0, 1]));
        assert_eq!(g[1], (2, [239, 0, 0, 5]));
        let v6 = "1    lo              ff020000000000000000000000000001     1 0000000C 0\n";
        assert_eq!(
            parse_igmp6(v6),
            vec![(
                1,
                std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets()
            )]
        );
    }

    fn validate_recs(recs: Vec<AnyRecord>) -> std::result::Result<(), String> {
        let img = crate::model::Image {
            objects: recs,
            ..Default::default()
        };
        let c = Check::new(&img, None);
        let f = File {
            id: 1,
            kind: FILE_UDP,
            ..Default::default()
        };
        Udp.validate(&c, &f)
    }

    fn v4(port: u16) -> Bytes {
        let mut a = vec![0u8; 16];
        a[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        a[2..4].copy_from_slice(&port.to_be_bytes());
        a[4..8].copy_from_slice(&[127, 0, 0, 1]);
        Bytes(a)
    }

    #[test]
    fn validation_refuses_malformed_sockets_and_queues() {
        let sk = |queued| UdpSk {
            file_id: 1,
            family: libc::AF_INET as u32,
            local: v4(5000),
            queued,
            opts: SockOpts {
                peek_off: -1,
                ..Default::default()
            },
            ..Default::default()
        };
        let dg = |seq, len| UdpQueue {
            file_id: 1,
            seq,
            source: v4(6000),
            data: Bytes(vec![7; len]),
        };
        assert_eq!(validate_recs(vec![sk(0).into()]), Ok(()));
        assert_eq!(
            validate_recs(vec![sk(2).into(), dg(0, 3).into(), dg(1, 0).into()]),
            Ok(())
        );
        // Count, order, sizes, addresses.
        assert!(validate_recs(vec![sk(2).into(), dg(0, 3).into()]).is_err());
        assert!(validate_recs(vec![sk(2).into(), dg(1, 3).into(), dg(0, 3).into()]).is_err());
        assert!(validate_recs(vec![sk(1).into(), dg(0, 70000).into()]).is_err());
        let mut bad = dg(0, 1);
        bad.source = Bytes(vec![1, 2, 3]);
        assert!(validate_recs(vec![sk(1).into(), bad.into()]).is_err());
        assert!(validate_recs(vec![UdpSk { family: 1, ..sk(0) }.into()]).is_err());
        assert!(validate_recs(vec![
            UdpSk {
                local: v4(0),
                ..sk(1)
            }
            .into(),
            dg(0, 1).into()
        ])
        .is_err());
        assert!(validate_recs(vec![UdpSk {
            shutdown: 4,
            ..sk(0)
        }
        .into()])
        .is_err());
        let mut o = sk(0);
        o.opts.bindtodevice = Text(vec![b'x'; 16]);
        assert!(validate_recs(vec![o.into()]).is_err());
        let mut g = sk(0);
        g.groups = vec![UdpGroup {
            ifindex: 0,
            group: v4(0),
            ..Default::default()
        }];
        assert!(validate_recs(vec![g.into()]).is_err());
        assert!(validate_recs(vec![]).is_err());
        assert!(validate_recs(vec![sk(0).into(), sk(0).into()]).is_err());
    }

    #[test]
    fn shutdown_state_is_read_from_sock_diag() {
        let a = sys::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).unwrap();
        let mut any = vec![0u8; 28];
        any[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        sys::bind(a, &any).unwrap();
        assert_eq!(diag_shutdown(a, libc::AF_INET6 as u32).unwrap(), Some(0));
        let _ = sys::shutdown(a, libc::SHUT_WR); // ENOTCONN, but recorded
        assert_eq!(diag_shutdown(a, libc::AF_INET6 as u32).unwrap(), Some(2));
        sys::close(a);
    }

    #[test]
    fn queue_is_peeked_whole_and_left_in_place() {
        let r = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        let mut any = vec![0u8; 16];
        any[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        any[4..8].copy_from_slice(&[127, 0, 0, 1]);
        sys::bind(r, &any).unwrap();
        let local = sys::sockname(r).unwrap();
        let s = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        for m in [&b"one"[..], b"second", b"3"] {
            sys::sendto(s, m, &local).unwrap();
        }
        let src = sys::sockname(s).unwrap();
        // Zero-length ones: one the process peeked at, one later.
        let r0 = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        sys::bind(r0, &any).unwrap();
        let l0 = sys::sockname(r0).unwrap();
        for m in [&b""[..], b"x", b""] {
            sys::sendto(s, m, &l0).unwrap();
        }
        let mut b = [0u8; 8];
        assert_eq!(sys::recv_peek(r0, &mut b).unwrap().unwrap().0, 0);
        let q0: Vec<usize> = match peek_queue(r0, -1) {
            Ok(q) => q.iter().map(|d| d.1.len()).collect(),
            Err(_) => panic!("peek of zero-length datagrams failed"),
        };
        assert_eq!(q0, vec![0, 1, 0]);
        sys::close(r0);
        let q = match peek_queue(r, -1) {
            Ok(q) => q,
            Err(QueueErr::Refuse(w)) => panic!("peek refused: {w}"),
            Err(QueueErr::Sys(w, e)) => panic!("peek failed: {w}: {e}"),
        };
        let data: Vec<&[u8]> = q.iter().map(|d| &d.1[..]).collect();
        assert_eq!(data, vec![&b"one"[..], b"second", b"3"]);
        assert!(q
            .iter()
            .all(|d| port(&d.0) == port(&src) && d.0[4..8] == [127, 0, 0, 1]));
        // Still there, and SO_PEEK_OFF is off again.
        assert_eq!(sys::siocinq(r).unwrap(), 3);
        assert_eq!(sys::getsockopt_int(r, libc::SOL_SOCKET, 42).unwrap(), -1);
        assert_eq!(show_addr(&local).split(':').next(), Some("127.0.0.1"));
        assert_eq!(loopback_dest(&any, &src), any);
        sys::close(r);
        sys::close(s);
    }
}
