//! Netlink sockets of the families whose state is the socket's own
//! (NETLINK_ROUTE, NETLINK_GENERIC, NETLINK_AUDIT, NETLINK_KOBJECT_UEVENT),
//! idle: made again with the same type and family, bound to the same port
//! id (restart fails, naming it, when that port id is taken), with the same
//! multicast groups (NETLINK_LIST_MEMBERSHIPS), destination, NETLINK_*
//! flags and common options (`sockopt`).
//!
//! Refused: a socket with messages queued (replies to a request of a
//! process that is gone, or notifications: they cannot be sent again by
//! the kernel), a filter attached, and every other family (their state is
//! in the kernel subsystem: a sock_diag dump in progress, netfilter queues;
//! see `sockopt::describe`). A generic netlink socket is restored as a
//! socket; family ids resolved before the checkpoint stay valid on the
//! same boot only.

use super::kind::{Check, DumpCx, FdKind, OpenCx, Probe};
use super::sockopt;
use crate::error::{Error, Result};
use crate::sys;
use ckpt_image::*;
use std::os::fd::AsRawFd;

pub struct Netlink;

const SOL_NETLINK: i32 = 270;
/// The families restored.
const FAMILIES: [i32; 4] = [
    libc::NETLINK_ROUTE,
    libc::NETLINK_GENERIC,
    libc::NETLINK_AUDIT,
    libc::NETLINK_KOBJECT_UEVENT,
];
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// NETLINK_* boolean options and their `NL_*` bit.
const FLAGS: [(&str, i32, u32); 7] = [
    ("NETLINK_PKTINFO", 3, NL_PKTINFO),
    ("NETLINK_BROADCAST_ERROR", 4, NL_BROADCAST_ERROR),
    ("NETLINK_NO_ENOBUFS", 5, NL_NO_ENOBUFS),
    ("NETLINK_LISTEN_ALL_NSID", 8, NL_LISTEN_ALL_NSID),
    ("NETLINK_CAP_ACK", 10, NL_CAP_ACK),
    ("NETLINK_EXT_ACK", 11, NL_EXT_ACK),
    ("NETLINK_GET_STRICT_CHK", 12, NL_GET_STRICT_CHK),
];
/// Most group words kept (groups up to 32 * 32).
const MAX_GROUP_WORDS: usize = 32;

impl FdKind for Netlink {
    fn name(&self) -> &'static str {
        "netlink socket"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_NETLINK]
    }
    fn matches(&self, p: &Probe) -> bool {
        matches!(p.socket, Some((libc::AF_NETLINK, _, proto)) if FAMILIES.contains(&proto))
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let own = cx
            .fetch_fd(p.pid, p.fd)
            .map_err(|e| p.sys("pidfd_getfd", e))?;
        let fd = own.as_raw_fd();
        sockopt::refuse_filters(p, fd)?;
        let int =
            |o| sys::getsockopt_int(fd, libc::SOL_SOCKET, o).map_err(|e| p.sys("getsockopt", e));
        let sock_type = int(libc::SO_TYPE)? as u32;
        let protocol = int(libc::SO_PROTOCOL)? as u32;
        // SO_MEMINFO: what the receive queue holds, without touching it.
        let queued = sys::sock_meminfo(fd).map_err(|e| p.sys("getsockopt(SO_MEMINFO)", e))?[0];
        if queued != 0 {
            return Err(p.unsupported(&format!(
                "it has messages waiting in its receive queue ({queued} bytes); replies and notifications of a {} socket cannot be made again after restart: read them before the checkpoint",
                sockopt::netlink_family(protocol as i32)
            )));
        }
        let local = sys::sockname(fd).map_err(|e| p.sys("getsockname", e))?;
        let peer = sys::peername(fd)
            .map_err(|e| p.sys("getpeername", e))?
            .unwrap_or_default();
        let mut g = vec![0u8; MAX_GROUP_WORDS * 4];
        let n = sys::getsockopt_raw(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut g)
            .map_err(|e| p.sys("getsockopt(NETLINK_LIST_MEMBERSHIPS)", e))?;
        let groups: Vec<u32> = g[..n.min(g.len())]
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().expect("4")))
            .collect();
        let mut flags = 0;
        for (name, opt, bit) in FLAGS {
            let v = sys::getsockopt_int(fd, SOL_NETLINK, opt)
                .map_err(|e| p.sys(&format!("getsockopt({name})"), e))?;
            if v != 0 {
                flags |= bit;
            }
        }
        let opts = sockopt::save(fd).map_err(|e| p.sys("read socket options", e))?;
        f.kind = FILE_NETLINK;
        f.path = Text(p.link.to_vec());
        cx.objects.push(
            NetlinkSk {
                file_id: f.id,
                sock_type,
                protocol,
                portid: nl_field(&local, 4),
                groups: trim(groups),
                dst_portid: nl_field(&peer, 4),
                dst_group: nl_field(&peer, 8),
                flags,
                opts,
            }
            .into(),
        );
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = super::kind::objects_of::<NetlinkSk>(c.img).filter(|n| n.file_id == f.id);
        let (Some(n), None) = (recs.next(), recs.next()) else {
            return Err("needs exactly one netlink-socket record".into());
        };
        if !FAMILIES.contains(&(n.protocol as i32)) {
            return Err(format!(
                "is of family {}, which ckpt does not restore",
                sockopt::netlink_family(n.protocol as i32)
            ));
        }
        if n.sock_type != libc::SOCK_RAW as u32 && n.sock_type != libc::SOCK_DGRAM as u32 {
            return Err(format!("has socket type {}", n.sock_type));
        }
        if n.groups.len() > MAX_GROUP_WORDS {
            return Err(format!("lists {} words of groups", n.groups.len()));
        }
        if n.flags & !FLAGS.iter().fold(0, |a, f| a | f.2) != 0 {
            return Err(format!("has unknown flags {:#x}", n.flags));
        }
        sockopt::validate(&n.opts)
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        for f in files {
            let n = super::kind::objects_of::<NetlinkSk>(cx.img)
                .find(|n| n.file_id == f.id)
                .ok_or_else(|| {
                    Error::Refused(format!(
                        "netlink file {} has no netlink-socket record",
                        f.id
                    ))
                })?;
            let raw = sys::socket(libc::AF_NETLINK, n.sock_type as i32, n.protocol as i32)
                .map_err(|e| cx.err("socket(AF_NETLINK)".into(), e))?;
            let fd = sys::dup_above(raw, cx.base);
            sys::close(raw);
            let fd = fd.map_err(|e| cx.err("dup socket".into(), e))?;
            cx.by_id.push((0, fd));
            setup(fd, n).map_err(|e| {
                Error::Refused(format!(
                    "pid {}: cannot restore {} socket {}: {e}",
                    (cx.user_of)(f.id),
                    sockopt::netlink_family(n.protocol as i32),
                    f.path
                ))
            })?;
            cx.by_id.pop();
            cx.opened(f, fd)?;
        }
        Ok(())
    }
}

/// Gives new socket `fd` the state of `n`.
fn setup(fd: i32, n: &NetlinkSk) -> std::result::Result<(), String> {
    sockopt::restore(fd, &n.opts)?;
    for (name, opt, bit) in FLAGS {
        if n.flags & bit != 0 {
            sys::setsockopt_int(fd, SOL_NETLINK, opt, 1).map_err(|e| format!("set {name}: {e}"))?;
        }
    }
    if n.portid != 0 {
        sys::bind(fd, &sockaddr_nl(n.portid, 0)).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                format!(
                    "its port id {} is taken by another netlink socket of this family",
                    n.portid
                )
            } else {
                format!("bind to port id {}: {e}", n.portid)
            }
        })?;
    }
    for (w, bits) in n.groups.iter().enumerate() {
        for b in 0..32 {
            if bits & (1 << b) != 0 {
                let group = (w * 32 + b + 1) as i32;
                sys::setsockopt_int(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
                    .map_err(|e| format!("join multicast group {group}: {e}"))?;
            }
        }
    }
    if n.dst_portid != 0 || n.dst_group != 0 {
        sys::connect(fd, &sockaddr_nl(n.dst_portid, n.dst_group)).map_err(|e| {
            format!(
                "connect to port id {} group {}: {e}",
                n.dst_portid, n.dst_group
            )
        })?;
    }
    sockopt::restore_late(fd, &n.opts)
}

/// A raw sockaddr_nl.
fn sockaddr_nl(pid: u32, groups: u32) -> Vec<u8> {
    let mut a = vec![0u8; 12];
    a[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    a[4..8].copy_from_slice(&pid.to_ne_bytes());
    a[8..12].copy_from_slice(&groups.to_ne_bytes());
    a
}

/// The u32 at `off` of a raw sockaddr_nl (0 when too short).
fn nl_field(a: &[u8], off: usize) -> u32 {
    a.get(off..off + 4)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4")))
}

/// `groups` without trailing zero words.
fn trim(mut groups: Vec<u32>) -> Vec<u32> {
    while groups.last() == Some(&0) {
        groups.pop();
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_other_families_and_bad_fields() {
        let check = |n: NetlinkSk| {
            let img = crate::model::Image {
                objects: vec![n.into()],
                ..Default::default()
            };
            let f = File {
                id: 1,
                kind: FILE_NETLINK,
                ..Default::default()
            };
            Netlink.validate(&Check::new(&img, None), &f)
        };
        let ok = NetlinkSk {
            file_id: 1,
            sock_type: libc::SOCK_RAW as u32,
            protocol: libc::NETLINK_GENERIC as u32,
            groups: vec![1, 0, 4],
            opts: SockOpts {
                peek_off: -1,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(check(ok.clone()), Ok(()));
        let e = check(NetlinkSk {
            protocol: 4,
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.contains("NETLINK_SOCK_DIAG"), "{e}");
        assert!(check(NetlinkSk {
            sock_type: 1,
            ..ok.clone()
        })
        .is_err());
        assert!(check(NetlinkSk {
            flags: 128,
            ..ok.clone()
        })
        .is_err());
        assert!(check(NetlinkSk {
            groups: vec![0; 33],
            ..ok
        })
        .is_err());
    }

    #[test]
    fn route_socket_state_comes_back() {
        let a = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        sys::bind(a, &sockaddr_nl(0, 1)).unwrap(); // RTMGRP_LINK
        let local = sys::sockname(a).unwrap();
        let portid = nl_field(&local, 4);
        assert_ne!(portid, 0);
        let mut g = vec![0u8; 8];
        let n = sys::getsockopt_raw(a, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &mut g).unwrap();
        assert!(n >= 4 && g[0] & 1 == 1);
        sys::close(a);
        let rec = NetlinkSk {
            sock_type: libc::SOCK_RAW as u32,
            protocol: 0,
            portid,
            groups: vec![1],
            flags: NL_EXT_ACK,
            opts: sockopt::save(sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0).unwrap()).unwrap(),
            ..Default::default()
        };
        let b = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        setup(b, &rec).unwrap();
        assert_eq!(nl_field(&sys::sockname(b).unwrap(), 4), portid);
        assert_eq!(sys::getsockopt_int(b, SOL_NETLINK, 11).unwrap(), 1);
        let c = sys::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE).unwrap();
        assert!(setup(c, &rec).unwrap_err().contains("is taken"));
        sys::close(b);
        sys::close(c);
        assert_eq!(trim(vec![1, 0, 0]), vec![1]);
    }
}
