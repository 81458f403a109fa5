//! SOL_SOCKET options common to every socket family, for the socket kinds
//! (UDP, netlink; unix and TCP can embed the same `SockOpts` record field):
//!
//! - `identity(pid, fd)`: domain, type and protocol of a socket fd of a process
//!   (for `FdKind::matches`).
//! - `refuse_filters(p, fd)`: a socket with a classic or eBPF filter
//!   attached (SO_ATTACH_FILTER / SO_ATTACH_BPF) is refused: the kernel
//!   gives back no eBPF program and no way to re-lock a filter.
//! - `save(fd)` reads the options into a `SockOpts`; `restore(fd, o)`
//!   sets them on a new socket, each only when it differs from what the
//!   new socket has (so an untouched SO_RCVBUF stays untouched: setting it
//!   would lock the size against TCP autotuning). `restore_late(fd, o)`
//!   sets what must come last (SO_BINDTODEVICE: restored queues are sent
//!   over loopback first).
//! - `describe(p)`: what a socket no kind takes is, for the refusal.

use super::kind::Probe;
use crate::sys;
use ckpt_image::{SockOpts, Text};
use std::os::fd::AsRawFd;

const S: i32 = libc::SOL_SOCKET;
const SO_RCVTIMEO_OLD: i32 = 20;
const SO_SNDTIMEO_OLD: i32 = 21;
const SO_GET_FILTER: i32 = 26;
const SO_SNDBUFFORCE: i32 = 32;
const SO_RCVBUFFORCE: i32 = 33;
const SO_PEEK_OFF: i32 = 42;
const SO_LOCK_FILTER: i32 = 44;

/// (SO_DOMAIN, SO_TYPE, SO_PROTOCOL) of socket fd `fd` of `pid`, read on
/// a copy of it (`Probe::socket` holds it for every socket fd saved).
pub fn identity(pid: crate::sys::Pid, fd: i32) -> Option<(i32, i32, i32)> {
    let pidfd = sys::pidfd_open(pid).ok()?;
    let fd = sys::pidfd_getfd(pidfd.as_raw_fd(), fd).ok()?;
    let fd = fd.as_raw_fd();
    let get = |o| sys::getsockopt_int(fd, S, o).ok();
    Some((
        get(libc::SO_DOMAIN)?,
        get(libc::SO_TYPE)?,
        get(libc::SO_PROTOCOL)?,
    ))
}

/// Refuses a socket with a packet filter attached.
pub fn refuse_filters(p: &Probe, fd: i32) -> crate::error::Result<()> {
    // SO_GET_FILTER with length 0 answers the number of classic BPF
    // instructions (0: no filter); EACCES: an eBPF program (SO_ATTACH_BPF)
    // whose instructions the kernel does not give back.
    let mut none = [0u8; 0];
    let n = match sys::getsockopt_raw(fd, S, SO_GET_FILTER, &mut none) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => usize::MAX,
        Err(e) => return Err(p.sys("getsockopt(SO_GET_FILTER)", e)),
    };
    let locked = sys::getsockopt_int(fd, S, SO_LOCK_FILTER).unwrap_or(0) != 0;
    if n != 0 || locked {
        return Err(p.unsupported(
            "it has a socket filter attached (SO_ATTACH_FILTER or SO_ATTACH_BPF) or locked (SO_LOCK_FILTER); ckpt does not restore socket filters yet: detach it (SO_DETACH_FILTER) before the checkpoint",
        ));
    }
    Ok(())
}

/// The common options of socket `fd`.
pub fn save(fd: i32) -> std::io::Result<SockOpts> {
    let int = |o| sys::getsockopt_int(fd, S, o);
    let flag = |o| int(o).map(|v| v != 0);
    let mut linger = [0u8; 8];
    sys::getsockopt_raw(fd, S, libc::SO_LINGER, &mut linger)?;
    let mut dev = [0u8; 16];
    let n = sys::getsockopt_raw(fd, S, libc::SO_BINDTODEVICE, &mut dev)?;
    let dev: Vec<u8> = dev[..n].iter().copied().take_while(|&b| b != 0).collect();
    Ok(SockOpts {
        reuseaddr: flag(libc::SO_REUSEADDR)?,
        reuseport: flag(libc::SO_REUSEPORT)?,
        keepalive: flag(libc::SO_KEEPALIVE)?,
        broadcast: flag(libc::SO_BROADCAST)?,
        // (Unix and netlink sockets only on recent kernels.)
        passcred: flag(libc::SO_PASSCRED).unwrap_or(false),
        rcvbuf: int(libc::SO_RCVBUF)? as u32,
        sndbuf: int(libc::SO_SNDBUF)? as u32,
        linger_on: i32::from_ne_bytes(linger[..4].try_into().expect("4")) != 0,
        linger_secs: i32::from_ne_bytes(linger[4..].try_into().expect("4")) as u32,
        rcvtimeo_us: timeout(fd, SO_RCVTIMEO_OLD)?,
        sndtimeo_us: timeout(fd, SO_SNDTIMEO_OLD)?,
        priority: int(libc::SO_PRIORITY)? as u32,
        mark: int(libc::SO_MARK)? as u32,
        bindtodevice: Text(dev),
        peek_off: int(SO_PEEK_OFF).unwrap_or(-1),
    })
}

fn timeout(fd: i32, opt: i32) -> std::io::Result<u64> {
    let mut tv = [0u8; 16];
    sys::getsockopt_raw(fd, S, opt, &mut tv)?;
    let sec = i64::from_ne_bytes(tv[..8].try_into().expect("8"));
    let usec = i64::from_ne_bytes(tv[8..].try_into().expect("8"));
    Ok((sec.max(0) as u64).saturating_mul(1_000_000) + usec.max(0) as u64)
}

/// Checks a saved `SockOpts` (images are untrusted).
pub fn validate(o: &SockOpts) -> Result<(), String> {
    if o.bindtodevice.0.len() >= 16 {
        return Err("has an SO_BINDTODEVICE name longer than IFNAMSIZ".into());
    }
    if o.rcvbuf > i32::MAX as u32 || o.sndbuf > i32::MAX as u32 || o.linger_secs > i32::MAX as u32 {
        return Err("has a socket buffer size or linger time out of range".into());
    }
    if o.peek_off < -1 {
        return Err(format!("has SO_PEEK_OFF {}", o.peek_off));
    }
    Ok(())
}

/// Sets the options of `o` on new socket `fd` (all but the late ones),
/// each only where the new socket differs. The error names the option.
pub fn restore(fd: i32, o: &SockOpts) -> Result<(), String> {
    let now = save(fd).map_err(|e| format!("read the options of the new socket: {e}"))?;
    let set = |name: &str, opt: i32, v: i32| {
        sys::setsockopt_int(fd, S, opt, v).map_err(|e| format!("set {name} to {v}: {e}"))
    };
    let flags = [
        (
            "SO_REUSEADDR",
            libc::SO_REUSEADDR,
            o.reuseaddr,
            now.reuseaddr,
        ),
        (
            "SO_REUSEPORT",
            libc::SO_REUSEPORT,
            o.reuseport,
            now.reuseport,
        ),
        (
            "SO_KEEPALIVE",
            libc::SO_KEEPALIVE,
            o.keepalive,
            now.keepalive,
        ),
        (
            "SO_BROADCAST",
            libc::SO_BROADCAST,
            o.broadcast,
            now.broadcast,
        ),
        ("SO_PASSCRED", libc::SO_PASSCRED, o.passcred, now.passcred),
    ];
    for (name, opt, want, have) in flags {
        if want != have {
            set(name, opt, want as i32)?;
        }
    }
    // The kernel doubles what is set (and keeps at least its minimum), so
    // half the saved value gives it back; FORCE passes rmem_max/wmem_max.
    for (name, force, plain, want, have) in [
        (
            "SO_RCVBUF",
            SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            o.rcvbuf,
            now.rcvbuf,
        ),
        (
            "SO_SNDBUF",
            SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            o.sndbuf,
            now.sndbuf,
        ),
    ] {
        if want != have {
            let v = (want / 2) as i32;
            sys::setsockopt_int(fd, S, force, v)
                .or_else(|_| sys::setsockopt_int(fd, S, plain, v))
                .map_err(|e| format!("set {name} to {v}: {e}"))?;
        }
    }
    if (o.linger_on, o.linger_secs) != (now.linger_on, now.linger_secs) {
        let mut l = (o.linger_on as i32).to_ne_bytes().to_vec();
        l.extend_from_slice(&(o.linger_secs as i32).to_ne_bytes());
        sys::setsockopt_raw(fd, S, libc::SO_LINGER, &l)
            .map_err(|e| format!("set SO_LINGER: {e}"))?;
    }
    for (name, opt, want, have) in [
        (
            "SO_RCVTIMEO",
            SO_RCVTIMEO_OLD,
            o.rcvtimeo_us,
            now.rcvtimeo_us,
        ),
        (
            "SO_SNDTIMEO",
            SO_SNDTIMEO_OLD,
            o.sndtimeo_us,
            now.sndtimeo_us,
        ),
    ] {
        if want != have {
            let mut tv = ((want / 1_000_000) as i64).to_ne_bytes().to_vec();
            tv.extend_from_slice(&((want % 1_000_000) as i64).to_ne_bytes());
            sys::setsockopt_raw(fd, S, opt, &tv).map_err(|e| format!("set {name}: {e}"))?;
        }
    }
    if o.priority != now.priority {
        set("SO_PRIORITY", libc::SO_PRIORITY, o.priority as i32)?;
    }
    if o.mark != now.mark {
        set("SO_MARK", libc::SO_MARK, o.mark as i32)?;
    }
    if o.peek_off != now.peek_off && (o.peek_off >= 0 || now.peek_off >= 0) {
        set("SO_PEEK_OFF", SO_PEEK_OFF, o.peek_off)?;
    }
    Ok(())
}

/// Sets what must come once the socket is otherwise ready
/// (SO_BINDTODEVICE).
pub fn restore_late(fd: i32, o: &SockOpts) -> Result<(), String> {
    if !o.bindtodevice.0.is_empty() {
        sys::setsockopt_raw(fd, S, libc::SO_BINDTODEVICE, &o.bindtodevice.0).map_err(|e| {
            format!(
                "bind to device {} (SO_BINDTODEVICE): {e}",
                ckpt_image::escape(&o.bindtodevice.0)
            )
        })?;
    }
    Ok(())
}

/// Sets SO_PEEK_OFF of `fd` (-1: off).
pub fn set_peek_off(fd: i32, v: i32) -> std::io::Result<()> {
    sys::setsockopt_int(fd, S, SO_PEEK_OFF, v)
}

/// What a socket is, for the refusal of one no kind takes ("a packet
/// socket (AF_PACKET)", "a netlink socket of family NETLINK_SOCK_DIAG").
pub fn describe(p: &Probe) -> String {
    let Some((domain, ty, proto)) = p.socket else {
        return "a socket".into();
    };
    match domain {
        libc::AF_NETLINK => format!(
            "a netlink socket of family {} (ckpt restores NETLINK_ROUTE, NETLINK_GENERIC, NETLINK_AUDIT and NETLINK_KOBJECT_UEVENT sockets only)",
            netlink_family(proto)
        ),
        libc::AF_PACKET => "a packet socket (AF_PACKET)".into(),
        libc::AF_INET | libc::AF_INET6 => {
            let fam = if domain == libc::AF_INET { "IPv4" } else { "IPv6" };
            let what = match (ty, proto) {
                (libc::SOCK_RAW, _) => "raw".to_string(),
                (_, libc::IPPROTO_UDPLITE) => "UDP-Lite".into(),
                (_, libc::IPPROTO_ICMP) | (_, libc::IPPROTO_ICMPV6) => "ICMP (ping)".into(),
                (_, libc::IPPROTO_SCTP) => "SCTP".into(),
                (_, libc::IPPROTO_TCP) => "TCP".into(),
                (_, libc::IPPROTO_UDP) => "UDP".into(),
                _ => format!("protocol {proto}"),
            };
            format!("an {fam} {what} socket")
        }
        libc::AF_UNIX => "a unix socket".into(),
        d => format!("a socket of address family {d}"),
    }
}

/// The name of netlink family `proto`.
pub fn netlink_family(proto: i32) -> String {
    const NAMES: &[&str] = &[
        "NETLINK_ROUTE",
        "NETLINK_UNUSED",
        "NETLINK_USERSOCK",
        "NETLINK_FIREWALL",
        "NETLINK_SOCK_DIAG",
        "NETLINK_NFLOG",
        "NETLINK_XFRM",
        "NETLINK_SELINUX",
        "NETLINK_ISCSI",
        "NETLINK_AUDIT",
        "NETLINK_FIB_LOOKUP",
        "NETLINK_CONNECTOR",
        "NETLINK_NETFILTER",
        "NETLINK_IP6_FW",
        "NETLINK_DNRTMSG",
        "NETLINK_KOBJECT_UEVENT",
        "NETLINK_GENERIC",
        "NETLINK_DM",
        "NETLINK_SCSITRANSPORT",
        "NETLINK_ECRYPTFS",
        "NETLINK_RDMA",
        "NETLINK_CRYPTO",
        "NETLINK_SMC",
    ];
    NAMES
        .get(proto as usize)
        .map_or_else(|| format!("{proto}"), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_on_a_new_socket() {
        let a = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        sys::setsockopt_int(a, S, libc::SO_REUSEADDR, 1).unwrap();
        sys::setsockopt_int(a, S, libc::SO_RCVBUF, 12345).unwrap();
        sys::setsockopt_int(a, S, libc::SO_PRIORITY, 3).unwrap();
        sys::setsockopt_raw(
            a,
            S,
            SO_RCVTIMEO_OLD,
            &[2i64.to_ne_bytes(), 500_000i64.to_ne_bytes()].concat(),
        )
        .unwrap();
        let o = save(a).unwrap();
        assert!(o.reuseaddr && o.priority == 3 && o.rcvtimeo_us == 2_500_000);
        assert_eq!(o.peek_off, -1);
        validate(&o).unwrap();
        let b = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).unwrap();
        restore(b, &o).unwrap();
        assert_eq!(save(b).unwrap(), o);
        sys::close(a);
        sys::close(b);
    }

    #[test]
    fn netlink_families_are_named() {
        assert_eq!(netlink_family(4), "NETLINK_SOCK_DIAG");
        assert_eq!(netlink_family(12), "NETLINK_NETFILTER");
        assert_eq!(netlink_family(99), "99");
    }
}
