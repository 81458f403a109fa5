//! Unix sockets (AF_UNIX: stream, datagram, seqpacket): type, state,
//! address, peer, the listener backlog, the data waiting in the receive
//! queues, shutdown state and options (SO_PASSCRED, SO_RCVBUF/SO_SNDBUF,
//! SO_RCVTIMEO/SO_SNDTIMEO, SO_PEEK_OFF; O_NONBLOCK is the `File`'s).
//!
//! Checkpoint asks sock_diag (`sockdiag`) for the peer, the clients
//! waiting in a listener's backlog, queue lengths and shutdown bits, and
//! reads the receive queue without consuming it: MSG_PEEK from SO_PEEK_OFF
//! 0 on a pidfd_getfd copy (SO_PEEK_OFF is put back). Peers are resolved
//! to descriptions of the image once the whole tree is saved (`finish`).
//!
//! Restart builds every socket in the restorer:
//! - a listener is bound and listens with its backlog; a socket bound and
//!   not connected is bound again. A path whose socket file is there
//!   from before is unlinked first only when it is a stale socket
//!   (connecting to it is refused); a path naming another kind of file is
//!   refused. A socket whose file was removed since the bind (or whose
//!   path now names another file: the kernel keeps no link to a renamed
//!   socket file, so a renamed one is taken as removed) is bound for a
//!   moment: what the path names is renamed aside, missing directories
//!   made, the sockets connected to it connect, then its file goes and
//!   the rest comes back (`Builder::free_path`, `settle_to`).
//! - a connected pair: socketpair(), or, when one end of a stream or
//!   seqpacket pair has a name (an accepted socket has its listener's),
//!   a connect to a listener of that name (the restored one, or one made
//!   for the moment) and accept(), so getsockname and getpeername give
//!   what they gave. A datagram end with a name is bound after
//!   socketpair(). A datagram socket connected to a bound one that is not
//!   connected back is connected to its name again.
//! - a client waiting in a listener's backlog connects to the restored
//!   listener, in backlog order, so the program's accept() finds it.
//! - a socket whose peer was closed gets a peer under the closed one's
//!   address (getpeername), closed once its queue is refilled: a stream
//!   socket reads EOF after the data, a datagram socket's next send fails
//!   with ECONNREFUSED.
//! - queued data is sent again from the peer end (or from the sender
//!   bound to a datagram's source address, or an unnamed socket), then
//!   shutdown() is applied, then the options.
//!
//! Refused at checkpoint, with why: a peer (or a client in a backlog)
//! outside the checkpointed tree (no reconnecting by path is attempted:
//! the other side would see a new connection); a client waiting in a
//! backlog that already sent data (it sits in a socket no fd holds, and
//! only accept() could read it); fds in flight (SCM_RIGHTS), credentials
//! in flight (a queue read with SO_PASSCRED), SO_PASSSEC; queues over
//! `MAX_QUEUE`; a socket of another network namespace than ckpt's.
//!
//! What differs after restart: a stream socket whose peer was closed
//! while its own data was unread reported ECONNRESET once (SO_ERROR);
//! that pending error is not read at checkpoint (reading clears it) and
//! is not there after restart.

use super::kind::{objects_of, Check, DumpCx, FdKind, OpenCx, Probe};
use crate::error::{Error, Result};
use crate::sockdiag::{self, UnixDiag};
use crate::sys::{self, Pid};
use ckpt_image::*;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

pub struct UnixKind;

const SCRATCH: &str = "unix";
/// Most bytes queued in one socket that ckpt saves.
const MAX_QUEUE: u64 = 16 << 20;
/// Most messages queued in one datagram or seqpacket socket.
const MAX_MESSAGES: usize = 65536;
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
const STREAM: u32 = libc::SOCK_STREAM as u32;
const DGRAM: u32 = libc::SOCK_DGRAM as u32;
const SEQPACKET: u32 = libc::SOCK_SEQPACKET as u32;
/// sun_path's size.
const MAX_NAME: usize = 108;

/// A socket saved in `dump`, its peer resolved in `finish`.
struct Pending {
    rec: UnixSk,
    pid: Pid,
    comm: String,
    fd: i32,
    peer_ino: u32,
    /// Connected (getpeername works) though sock_diag shows no live peer.
    peername: Option<Vec<u8>>,
    icons: Vec<u32>,
    /// Bytes it sent that its peer has not read (sk_wmem_alloc).
    wqueue: u32,
    /// Receive queue: (sender's address, data).
    queue: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pending {
    fn refuse(&self, reason: String) -> Error {
        Error::Unsupported {
            pid: self.pid,
            comm: self.comm.clone(),
            object: format!(
                "fd {} (unix socket{})",
                self.fd,
                show_name(&self.rec.name.0)
            ),
            reason,
        }
    }
}

/// " bound to NAME" for messages ("@name" for an abstract one).
fn show_name(name: &[u8]) -> String {
    match name.first() {
        None => String::new(),
        Some(0) => format!(" bound to @{}", escape(&name[1..])),
        // (A path as bound may carry NULs after it.)
        Some(_) => {
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            format!(" bound to {}", escape(&name[..end]))
        }
    }
}

const EMBRYO_DATA: &str = "it waits in the backlog of a listener and already sent data, which sits in a socket no fd holds yet (only accept() could read it); let the program accept the connection before the checkpoint";

fn outside_peer(ino: u32, name: &str) -> String {
    format!("it is connected to a unix socket (inode {ino}{name}) that no process of the checkpointed tree holds; ckpt does not reconnect it (the other side would see a new connection): checkpoint the process holding the other end too, or close the connection before the checkpoint")
}

fn outside_icon(ino: u32) -> String {
    if ino == 0 {
        "a connection waiting in its backlog was closed by its client; ckpt cannot recreate it: let the program accept it before the checkpoint".into()
    } else {
        format!("a connection from a socket (inode {ino}) that no process of the checkpointed tree holds waits in its backlog; checkpoint the process holding the client too, or let the program accept it first")
    }
}

/// Whether a process of `tree` has an fd on socket inode `ino`.
fn held_in_tree(tree: &[Pid], ino: u32) -> bool {
    let want = format!("socket:[{ino}]");
    tree.iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.as_os_str().as_bytes() == want.as_bytes())
            })
        })
    })
}

#[derive(Default)]
struct Scratch {
    diag: Option<Vec<UnixDiag>>,
    pending: Vec<Pending>,
}

fn type_name(t: u32) -> &'static str {
    match t {
        STREAM => "stream",
        DGRAM => "datagram",
        SEQPACKET => "seqpacket",
        _ => "unknown",
    }
}

/// The absolute path of path name `name`, relative ones taken from `dir`.
fn abs_path(name: &[u8], dir: &[u8]) -> Vec<u8> {
    if name.first() == Some(&b'/') {
        name.to_vec()
    } else {
        let mut p = dir.to_vec();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }
}

/// Runs `f` (a bind or connect to `name`) with the working directory at
/// `dir` when `name` is a relative path, and back afterwards.
fn from_dir(
    name: &[u8],
    dir: &[u8],
    f: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    if !is_path(name) || name[0] == b'/' {
        return f();
    }
    let here = sys::open_raw(b".", libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC, 0)?;
    let r = sys::chdir(dir).and_then(|()| f());
    let back = sys::fchdir(here);
    sys::close(here);
    r.and(back)
}

fn is_path(name: &[u8]) -> bool {
    name.first().is_some_and(|&c| c != 0)
}

/// Reads the receive queue of `fd` without consuming it.
fn peek_queue(p: &Probe, fd: i32, ty: u32, shut_rd: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let old = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(|e| p.sys("getsockopt(SO_PEEK_OFF)", e))?;
    sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| p.sys("setsockopt(SO_PEEK_OFF)", e))?;
    let r = peek_all(p, fd, ty, shut_rd);
    // The program's peek offset, whatever happened.
    let back = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    let q = r?;
    back.map_err(|e| p.sys("setsockopt(SO_PEEK_OFF) back", e))?;
    Ok(q)
}

fn peek_all(p: &Probe, fd: i32, ty: u32, shut_rd: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut total = 0u64;
    loop {
        let m = match sys::peek_msg(fd, &mut buf) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(p.sys("recvmsg(MSG_PEEK)", e)),
        };
        if m.rights {
            return Err(p.unsupported("a message waiting in its receive queue carries file descriptors (SCM_RIGHTS) that ckpt cannot save yet; let the program read it before the checkpoint"));
        }
        if m.creds {
            return Err(p.unsupported("messages waiting in its receive queue carry credentials (SO_PASSCRED) that ckpt cannot save yet; let the program read them before the checkpoint"));
        }
        if m.other_cmsg {
            return Err(p.unsupported(
                "a message waiting in its receive queue carries control data ckpt does not know",
            ));
        }
        if m.truncated {
            return Err(p.unsupported(&format!(
                "a message waiting in its receive queue is larger than {} bytes",
                buf.len()
            )));
        }
        if m.len == 0 && (ty == STREAM || shut_rd) {
            // End of stream (the peer shut down); for a datagram socket
            // whose receive side is shut down, the end as well.
            break;
        }
        total += m.len as u64;
        if total > MAX_QUEUE || out.len() >= MAX_MESSAGES {
            return Err(p.unsupported(&format!(
                "more than {} MiB or {MAX_MESSAGES} messages wait in its receive queue; ckpt saves at most that",
                MAX_QUEUE >> 20
            )));
        }
        let data = buf[..m.len].to_vec();
        match out.last_mut() {
            Some(last) if ty == STREAM => last.1.extend_from_slice(&data),
            _ => out.push((m.addr, data)),
        }
    }
    Ok(out)
}

impl FdKind for UnixKind {
    fn name(&self) -> &'static str {
        "unix socket"
    }
    fn kinds(&self) -> &'static [u32] {
        &[FILE_UNIX]
    }
    fn matches(&self, p: &Probe) -> bool {
        matches!(p.socket, Some((libc::AF_UNIX, _, _)))
    }
    fn dump(&self, cx: &mut DumpCx, p: &Probe, f: &mut File) -> Result<()> {
        let mine = cx
            .fetch_fd(p.pid, p.fd)
            .map_err(|e| p.sys("pidfd_getfd", e))?;
        let fd = mine.as_raw_fd();
        let ino = p.meta.ino();
        let s = cx.scratch::<Scratch>(SCRATCH);
        if s.diag.is_none() {
            s.diag = Some(
                sockdiag::unix_sockets().map_err(|e| p.sys("sock_diag dump of unix sockets", e))?,
            );
        }
        let Some(d) = s
            .diag
            .as_ref()
            .and_then(|all| all.iter().find(|d| d.ino as u64 == ino))
            .cloned()
        else {
            return Err(p.unsupported("sock_diag does not know it: it belongs to another network namespace than ckpt's; run ckpt in the network namespace of the tree"));
        };
        let ty = d.ty as u32;
        if ![STREAM, DGRAM, SEQPACKET].contains(&ty) {
            return Err(p.unsupported(&format!(
                "it is of socket type {ty}, which ckpt does not know"
            )));
        }
        let state = d.state as u32;
        if ![TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN].contains(&state) {
            return Err(p.unsupported(&format!(
                "it is in state {state} (connecting?); checkpoint it when it is connected, listening or closed"
            )));
        }
        let opt = |o: i32, what: &str| {
            sys::getsockopt_int(fd, libc::SOL_SOCKET, o)
                .map_err(|e| p.sys(&format!("getsockopt({what})"), e))
        };
        if opt(libc::SO_PASSSEC, "SO_PASSSEC")? != 0 {
            return Err(p.unsupported("it has SO_PASSSEC set (security labels with each message), which ckpt does not restore"));
        }
        let tv = |o: i32, what: &str| {
            sys::sockopt_timeval(fd, o).map_err(|e| p.sys(&format!("getsockopt({what})"), e))
        };
        let name = sys::unix_sockname(fd).map_err(|e| p.sys("getsockname", e))?;
        if name.len() > MAX_NAME {
            return Err(p.unsupported("its address is longer than sun_path"));
        }
        let mut rec = UnixSk {
            file_id: f.id,
            ino,
            sock_type: ty,
            state,
            name: Bytes(name.clone()),
            backlog: if state == TCP_LISTEN { d.wqueue } else { 0 },
            shutdown: d.shutdown as u32 & 3,
            passcred: opt(libc::SO_PASSCRED, "SO_PASSCRED")? != 0,
            rcvbuf: opt(libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
            sndbuf: opt(libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
            rcvtimeo_us: tv(libc::SO_RCVTIMEO, "SO_RCVTIMEO")?,
            sndtimeo_us: tv(libc::SO_SNDTIMEO, "SO_SNDTIMEO")?,
            peek_off: opt(libc::SO_PEEK_OFF, "SO_PEEK_OFF")?,
            ..Default::default()
        };
        if is_path(&name) {
            // Its socket file: where restart binds it again.
            let dir = if name[0] == b'/' {
                Vec::new()
            } else {
                crate::procfs::link(p.pid, "cwd").map_err(|e| p.sys("readlink cwd", e))?
            };
            let path = abs_path(&name, &dir);
            let vfs_ino = d.vfs.map(|v| v.0 as u64);
            match sys::lstat_mode_ino(&path) {
                Ok((mode, i)) if mode & libc::S_IFMT == libc::S_IFSOCK && Some(i) == vfs_ino => {
                    rec.mode = mode & 0o7777;
                    let m = std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(&path))
                        .map_err(|e| p.sys("lstat of its socket file", e))?;
                    rec.uid = m.uid();
                    rec.gid = m.gid();
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    rec.deleted = true;
                    rec.mode = 0o777;
                }
                _ if name[0] != b'/' => {
                    return Err(p.unsupported(&format!(
                        "its relative address {} does not name its socket file from the process's working directory {} (it was bound elsewhere); ckpt could not bind it again",
                        escape(&name),
                        escape(&dir)
                    )));
                }
                _ => {
                    // Its file was removed and the path reused (the kernel
                    // keeps no link from a socket to a renamed file: a
                    // renamed socket file is taken as removed too).
                    rec.deleted = true;
                    rec.mode = 0o777;
                }
            }
            rec.bind_dir = Text(dir);
        }
        // (An unconnected stream or seqpacket socket has no queue to read.)
        let queue = if state == TCP_LISTEN || (ty != DGRAM && state != TCP_ESTABLISHED) {
            Vec::new()
        } else {
            peek_queue(p, fd, ty, d.shutdown & 1 != 0)?
        };
        if rec.passcred && !queue.is_empty() {
            return Err(p.unsupported("it has SO_PASSCRED and messages wait in its receive queue: their credentials cannot be saved yet; let the program read them before the checkpoint"));
        }
        let peername = sys::unix_peername(fd).ok();
        // A closed peer's relative name comes back from the same directory
        // as the socket's own (or the process's working directory).
        if peername
            .as_deref()
            .is_some_and(|n| is_path(n) && n[0] != b'/')
            && rec.bind_dir.0.is_empty()
        {
            rec.bind_dir =
                Text(crate::procfs::link(p.pid, "cwd").map_err(|e| p.sys("readlink cwd", e))?);
        }
        // What involves sockets outside the tree is refused now, before
        // the rest of the tree is saved.
        let tree = &cx.tree;
        if d.peer != 0 && !held_in_tree(tree, d.peer) {
            let all = cx
                .scratch::<Scratch>(SCRATCH)
                .diag
                .as_deref()
                .unwrap_or_default();
            let name = all
                .iter()
                .find(|x| x.ino == d.peer)
                .map(|x| show_name(&x.name))
                .unwrap_or_default();
            return Err(p.unsupported(&outside_peer(d.peer, &name)));
        }
        for &icon in &d.icons {
            if icon == 0 || !held_in_tree(tree, icon) {
                return Err(p.unsupported(&outside_icon(icon)));
            }
        }
        let all = cx
            .scratch::<Scratch>(SCRATCH)
            .diag
            .as_deref()
            .unwrap_or_default();
        if d.wqueue > 0 && d.peer == 0 && all.iter().any(|l| l.icons.contains(&d.ino)) {
            return Err(p.unsupported(EMBRYO_DATA));
        }
        f.kind = FILE_UNIX;
        f.path = Text(p.link.to_vec());
        cx.scratch::<Scratch>(SCRATCH).pending.push(Pending {
            rec,
            pid: p.pid,
            comm: p.comm.into(),
            fd: p.fd,
            peer_ino: d.peer,
            peername,
            icons: d.icons,
            wqueue: d.wqueue,
            queue,
        });
        Ok(())
    }
    fn finish(
        &self,
        cx: &mut DumpCx,
        _files: &mut [File],
        _shm: &mut crate::mm::ShmemTable,
    ) -> Result<()> {
        let s = std::mem::take(cx.scratch::<Scratch>(SCRATCH));
        let diag = s.diag.unwrap_or_default();
        let mut all = s.pending;
        let id_of_ino = |all: &[Pending], ino: u32| {
            all.iter()
                .find(|q| q.rec.ino == ino as u64)
                .map(|q| q.rec.file_id)
        };
        // Clients waiting in backlogs, and where they go.
        let mut order: Vec<usize> = Vec::new();
        for l in 0..all.len() {
            if all[l].rec.state != TCP_LISTEN {
                continue;
            }
            for &icon in &all[l].icons.clone() {
                let Some(c) = all
                    .iter()
                    .position(|q| q.rec.ino == icon as u64 && icon != 0)
                else {
                    return Err(all[l].refuse(outside_icon(icon)));
                };
                if all[c].wqueue > 0 || !all[c].queue.is_empty() {
                    return Err(all[c].refuse(EMBRYO_DATA.into()));
                }
                all[c].rec.listener_id = all[l].rec.file_id;
                order.push(c);
            }
        }
        for i in 0..all.len() {
            let q = &all[i];
            if q.rec.listener_id != 0 || q.rec.state == TCP_LISTEN {
                continue;
            }
            if q.peer_ino != 0 {
                match id_of_ino(&all, q.peer_ino) {
                    Some(id) => all[i].rec.peer_id = id,
                    None => {
                        let other = diag.iter().find(|d| d.ino == q.peer_ino);
                        let name = other.map(|d| show_name(&d.name)).unwrap_or_default();
                        return Err(q.refuse(outside_peer(q.peer_ino, &name)));
                    }
                }
            } else if (q.rec.sock_type != DGRAM && q.rec.state == TCP_ESTABLISHED)
                || (q.rec.sock_type == DGRAM && q.peername.is_some())
            {
                // Its peer was closed (a datagram socket's next send
                // fails with ECONNREFUSED): restart closes one again.
                let name = q.peername.clone().unwrap_or_default();
                if name.len() > MAX_NAME {
                    return Err(
                        q.refuse("its closed peer's address is longer than sun_path".into())
                    );
                }
                all[i].rec.peer_gone = true;
                all[i].rec.peer_name = Bytes(name);
            }
        }
        // Pairs are whole; one-way datagram connections go to a name.
        for q in &all {
            if q.rec.peer_id == 0 {
                continue;
            }
            let peer = all
                .iter()
                .find(|x| x.rec.file_id == q.rec.peer_id)
                .expect("resolved");
            if peer.rec.sock_type != q.rec.sock_type {
                return Err(q.refuse("its peer is a unix socket of another type".into()));
            }
            let mutual = peer.rec.peer_id == q.rec.file_id;
            if !mutual && (q.rec.sock_type != DGRAM || peer.rec.name.0.is_empty()) {
                return Err(q.refuse(format!("it is connected to fd {} of pid {}, which is connected elsewhere; ckpt cannot recreate that", peer.fd, peer.pid)));
            }
        }
        // Datagrams from a bound sender: sent again from that socket.
        let mut queues = Vec::new();
        for q in &all {
            for (addr, data) in &q.queue {
                let mut sender_id = 0;
                if !addr.is_empty() {
                    let peer_name = all
                        .iter()
                        .find(|x| x.rec.file_id == q.rec.peer_id && q.rec.peer_id != 0)
                        .map(|x| x.rec.name.0.as_slice());
                    let gone_name = q.rec.peer_gone.then_some(q.rec.peer_name.0.as_slice());
                    if peer_name != Some(addr.as_slice()) && gone_name != Some(addr.as_slice()) {
                        match all
                            .iter()
                            .find(|x| x.rec.name.0 == *addr && x.rec.sock_type == DGRAM)
                        {
                            Some(x) => sender_id = x.rec.file_id,
                            None => {
                                return Err(q.refuse(format!("a datagram waiting in its receive queue comes from {}, which no socket of the checkpointed tree is bound to; ckpt could not send it again from that address: let the program read it first", show_name(addr).trim_start_matches(" bound to "))));
                            }
                        }
                    }
                }
                queues.push(UnixQueue {
                    file_id: q.rec.file_id,
                    sender_id,
                    data: Bytes(data.clone()),
                });
            }
        }
        // Records in image order, backlog clients in their listener's order.
        let mut seq: Vec<usize> = (0..all.len()).filter(|i| !order.contains(i)).collect();
        seq.extend(order);
        for i in seq {
            cx.objects.push(all[i].rec.clone().into());
        }
        for q in queues {
            cx.objects.push(q.into());
        }
        Ok(())
    }
    fn validate(&self, c: &Check, f: &File) -> std::result::Result<(), String> {
        let mut recs = objects_of::<UnixSk>(c.img).filter(|r| r.file_id == f.id);
        let r = match (recs.next(), recs.next()) {
            (Some(r), None) => r,
            _ => return Err("needs exactly one unix-socket record".into()),
        };
        let kind_of = |id: u32| c.img.files.iter().find(|x| x.id == id).map(|x| x.kind);
        let rec_of = |id: u32| objects_of::<UnixSk>(c.img).find(|x| x.file_id == id);
        if let Some(x) = objects_of::<UnixSk>(c.img).find(|x| kind_of(x.file_id) != Some(FILE_UNIX))
        {
            return Err(format!(
                "is not alone: a unix-socket record names file {}, no unix socket",
                x.file_id
            ));
        }
        if ![STREAM, DGRAM, SEQPACKET].contains(&r.sock_type) {
            return Err(format!("has socket type {}", r.sock_type));
        }
        if ![TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN].contains(&r.state) {
            return Err(format!("has state {}", r.state));
        }
        let name = &r.name.0;
        if name.len() > MAX_NAME {
            return Err(format!(
                "has an address of {} bytes (sun_path holds {MAX_NAME})",
                name.len()
            ));
        }
        if is_path(name) {
            if name.contains(&0) {
                return Err("has a path address with a NUL byte".into());
            }
            if name[0] != b'/' && r.bind_dir.0.first() != Some(&b'/') {
                return Err("has a relative path address without its absolute directory".into());
            }
            let path = abs_path(name, &r.bind_dir.0);
            if let Some((mode, _)) = sys::lstat_mode_ino(&path).ok().filter(|_| !r.deleted) {
                if mode & libc::S_IFMT != libc::S_IFSOCK {
                    return Err(format!("is bound to {}, which now names a file that is not a socket; remove or rename it", escape(&path)));
                }
            }
        } else if r.deleted {
            return Err("has no path but a removed socket file".into());
        }
        if r.shutdown > 3 {
            return Err(format!("has shutdown bits {:#x}", r.shutdown));
        }
        if r.peek_off < -1
            || r.backlog > i32::MAX as u32
            || r.rcvbuf > i32::MAX as u32
            || r.sndbuf > i32::MAX as u32
        {
            return Err("has an option out of range".into());
        }
        if r.state == TCP_LISTEN
            && (r.sock_type == DGRAM
                || name.is_empty()
                || r.peer_id != 0
                || r.peer_gone
                || r.listener_id != 0)
        {
            return Err(
                "listens without being a bound, unconnected stream or seqpacket socket".into(),
            );
        }
        if r.peer_id != 0 {
            let Some(p) = rec_of(r.peer_id) else {
                return Err(format!("has peer {}, which is no unix socket", r.peer_id));
            };
            let own = p.file_id == r.file_id;
            if (own && (r.sock_type != DGRAM || name.is_empty()))
                || p.sock_type != r.sock_type
                || p.state == TCP_LISTEN
            {
                return Err(format!(
                    "has peer {}, which is of another type, listening, or itself without being a bound datagram socket",
                    r.peer_id
                ));
            }
            let mutual = p.peer_id == r.file_id;
            if r.sock_type != DGRAM && (!mutual || r.state != TCP_ESTABLISHED) {
                return Err(
                    "is a connected stream or seqpacket socket whose peer is not connected to it"
                        .into(),
                );
            }
            if !mutual && p.name.0.is_empty() {
                return Err(
                    "is connected to an unbound datagram socket that is not connected back".into(),
                );
            }
            if r.peer_gone || r.listener_id != 0 {
                return Err("has a peer and a closed peer or a listener".into());
            }
        }
        if r.peer_gone && r.listener_id != 0 {
            return Err("has a closed peer but waits in a backlog".into());
        }
        let pn = &r.peer_name.0;
        if pn.len() > MAX_NAME
            || (!r.peer_gone && !pn.is_empty())
            || (is_path(pn) && pn.contains(&0))
            || (is_path(pn) && pn[0] != b'/' && r.bind_dir.0.first() != Some(&b'/'))
        {
            return Err("has a bad closed peer's address".into());
        }
        if r.listener_id != 0 {
            let Some(l) = rec_of(r.listener_id) else {
                return Err(format!(
                    "waits in the backlog of {}, which is no unix socket",
                    r.listener_id
                ));
            };
            if l.state != TCP_LISTEN || l.sock_type != r.sock_type {
                return Err(format!(
                    "waits in the backlog of {}, which is no listener of its type",
                    r.listener_id
                ));
            }
        }
        let mut total = 0u64;
        let mut n = 0usize;
        for q in objects_of::<UnixQueue>(c.img) {
            if kind_of(q.file_id) != Some(FILE_UNIX) {
                return Err(format!(
                    "is not alone: a unix-queue record names file {}, no unix socket",
                    q.file_id
                ));
            }
            if q.file_id != r.file_id {
                continue;
            }
            n += 1;
            total += q.data.0.len() as u64;
            if r.state == TCP_LISTEN || r.listener_id != 0 {
                return Err("has queued data but listens or waits in a backlog".into());
            }
            if r.sock_type != DGRAM && r.peer_id == 0 && !r.peer_gone {
                return Err("has queued data but no peer to send it".into());
            }
            if q.sender_id != 0 {
                match rec_of(q.sender_id) {
                    Some(s)
                        if s.sock_type == DGRAM
                            && r.sock_type == DGRAM
                            && !s.name.0.is_empty()
                            && s.state != TCP_LISTEN => {}
                    _ => {
                        return Err(format!(
                            "has a datagram from {}, which is no bound datagram socket",
                            q.sender_id
                        ))
                    }
                }
                if r.name.0.is_empty() {
                    return Err(
                        "has a datagram from a named sender but no name to receive it at".into(),
                    );
                }
            } else if r.peer_id == 0 && !r.peer_gone && r.name.0.is_empty() {
                return Err("has a datagram but neither a peer nor a name to receive it at".into());
            }
        }
        if total > MAX_QUEUE || n > MAX_MESSAGES || (r.sock_type == STREAM && n > 1) {
            return Err(format!("has {n} queued records of {total} bytes (at most {} MiB, {MAX_MESSAGES} messages, one record for a stream socket)", MAX_QUEUE >> 20));
        }
        Ok(())
    }
    fn open(&self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut b = Builder {
            fds: Vec::new(),
            temps: Vec::new(),
            freed: Vec::new(),
        };
        let r = b.build(cx, files);
        for &t in &b.temps {
            sys::close(t);
        }
        let settled = b.settle_to(cx, 0);
        let r = r.and(settled);
        if r.is_err() {
            for &(_, fd) in &b.fds {
                sys::close(fd);
            }
            return r;
        }
        for f in files {
            let fd = b.fd(f.id).expect("built");
            cx.opened(f, fd)?;
        }
        Ok(())
    }
}

/// Whether `r` is a datagram socket connected to a socket that is not
/// connected back (or to itself): connected by name once both exist.
fn one_way<'a>(r: &UnixSk, rec: &impl Fn(u32) -> Option<&'a UnixSk>) -> bool {
    r.peer_id != 0
        && (r.peer_id == r.file_id || rec(r.peer_id).is_some_and(|p| p.peer_id != r.file_id))
}

/// The sockets made in `open`, by file id (fds >= the base).
struct Builder {
    fds: Vec<(u32, i32)>,
    /// Sockets needed only while building (closed after).
    temps: Vec<i32>,
    /// Names of removed socket files bound for the moment (`settle_to`).
    freed: Vec<Freed>,
}

/// A path made free to bind a removed socket's name again: what was there
/// moved aside, missing directories made; `Builder::settle_to` removes the
/// socket file and puts things back.
struct Freed {
    path: Vec<u8>,
    moved: Option<Vec<u8>>,
    dirs: Vec<Vec<u8>>,
}

impl Builder {
    fn fd(&self, id: u32) -> Option<i32> {
        self.fds.iter().find(|x| x.0 == id).map(|x| x.1)
    }

    /// `raw` moved above the base and kept as file `id` (0: a temporary).
    fn keep(&mut self, cx: &OpenCx, id: u32, raw: i32) -> Result<i32> {
        let fd = sys::dup_above(raw, cx.base);
        sys::close(raw);
        let fd = fd.map_err(|e| cx.err("dup unix socket".into(), e))?;
        if id == 0 {
            self.temps.push(fd);
        } else {
            self.fds.push((id, fd));
        }
        Ok(fd)
    }

    fn socket(&mut self, cx: &OpenCx, id: u32, ty: u32) -> Result<i32> {
        let raw = sys::socket(libc::AF_UNIX, ty as i32, 0)
            .map_err(|e| cx.err(format!("socket(AF_UNIX, {})", type_name(ty)), e))?;
        self.keep(cx, id, raw)
    }

    /// Binds `fd` to the name of `r` (see the module doc for paths).
    fn bind(&mut self, cx: &OpenCx, fd: i32, r: &UnixSk) -> Result<()> {
        let name = &r.name.0;
        let what = format!(
            "bind unix socket {} to{}",
            r.file_id,
            show_name(name).trim_start_matches(" bound to")
        );
        if !is_path(name) {
            return sys::unix_bind(fd, name).map_err(|e| cx.err(what, e));
        }
        let path = abs_path(name, &r.bind_dir.0);
        if r.deleted {
            self.free_path(cx, &path)?;
        } else if let Ok((mode, _)) = sys::lstat_mode_ino(&path) {
            if mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(Error::Refused(format!(
                    "unix socket {}: {} names a file that is not a socket; remove or rename it",
                    r.file_id,
                    escape(&path)
                )));
            }
            // Only a stale socket file goes: no socket is bound to it (asked
            // of sock_diag rather than by connecting, which a live server
            // would see).
            let ino = sys::lstat_mode_ino(&path).map(|x| x.1).unwrap_or(0);
            let live = sockdiag::unix_sockets()
                .map_err(|e| cx.err("sock_diag dump of unix sockets".into(), e))?
                .iter()
                .any(|d| d.vfs.is_some_and(|v| v.0 as u64 == ino & 0xffff_ffff));
            if live {
                return Err(Error::Refused(format!("unix socket {}: {} is in use by a live socket (of another process); stop it or remove the file", r.file_id, escape(&path))));
            }
            sys::with_fs_ids(cx.fs, || sys::unlink(&path)).map_err(|e| {
                cx.err(format!("remove the stale socket file {}", escape(&path)), e)
            })?;
        }
        let dir = &r.bind_dir.0;
        // A relative name is bound from its directory, so that
        // getsockname gives it as it was.
        sys::with_fs_ids(cx.fs, || from_dir(name, dir, || sys::unix_bind(fd, name)))
            .map_err(|e| cx.err(format!("{what}{}", cx.who()), e))?;
        // (As the image's user: a path swapped meanwhile is theirs to change.)
        sys::with_fs_ids(cx.fs, || sys::chmod(&path, r.mode))
            .map_err(|e| cx.err(format!("chmod {}{}", escape(&path), cx.who()), e))?;
        // An image restored with a user's ids keeps that user as owner.
        if sys::geteuid() == 0 && cx.fs.is_none() && !r.deleted {
            sys::lchown(&path, r.uid, r.gid)
                .map_err(|e| cx.err(format!("chown {}", escape(&path)), e))?;
        }
        Ok(())
    }

    /// Makes `path` free for a bind: what is there is renamed aside,
    /// missing directories are made (as the image's user).
    fn free_path(&mut self, cx: &OpenCx, path: &[u8]) -> Result<()> {
        let mut f = Freed {
            path: path.to_vec(),
            moved: None,
            dirs: Vec::new(),
        };
        let mut missing = Vec::new();
        let mut d = path;
        while let Some(i) = d.iter().rposition(|&c| c == b'/') {
            d = &d[..i];
            if d.is_empty() || sys::lstat_mode_ino(d).is_ok() {
                break;
            }
            missing.push(d.to_vec());
        }
        let r = sys::with_fs_ids(cx.fs, || {
            for d in missing.iter().rev() {
                sys::mkdir(d, 0o700)?;
                f.dirs.push(d.clone());
            }
            if sys::lstat_mode_ino(path).is_ok() {
                let mut aside = path.to_vec();
                aside.extend_from_slice(format!(".ckpt-aside-{}", std::process::id()).as_bytes());
                sys::rename(path, &aside)?;
                f.moved = Some(aside);
            }
            Ok(())
        });
        self.freed.push(f);
        r.map_err(|e| {
            cx.err(
                format!(
                    "make {} free to bind a removed socket's name again",
                    escape(path)
                ),
                e,
            )
        })
    }

    /// Undoes the `free_path`s above the first `mark`: the socket file
    /// bound goes, what was there comes back.
    fn settle_to(&mut self, cx: &OpenCx, mark: usize) -> Result<()> {
        let mut first_err = None;
        while self.freed.len() > mark {
            let f = self.freed.pop().expect("above mark");
            let r = sys::with_fs_ids(cx.fs, || {
                let _ = sys::unlink(&f.path);
                if let Some(aside) = &f.moved {
                    sys::rename(aside, &f.path)?;
                }
                for d in f.dirs.iter().rev() {
                    sys::rmdir(d)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                first_err.get_or_insert_with(|| {
                    cx.err(format!("put {} back as it was", escape(&f.path)), e)
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// connect `fd` to the socket bound to `r`'s name.
    fn connect(cx: &OpenCx, fd: i32, r: &UnixSk) -> Result<()> {
        let name = &r.name.0;
        // A relative name is connected to from its directory: joined to it,
        // it may pass sun_path's 108 bytes.
        let dir: &[u8] = if is_path(name) { &r.bind_dir.0 } else { b"/" };
        from_dir(name, dir, || sys::unix_connect(fd, name)).map_err(|e| {
            cx.err(
                format!("connect to unix socket {}{}", r.file_id, show_name(name)),
                e,
            )
        })
    }

    fn build(&mut self, cx: &mut OpenCx, files: &[&File]) -> Result<()> {
        let img = cx.img;
        let recs: Vec<&UnixSk> = objects_of::<UnixSk>(img)
            .filter(|r| files.iter().any(|f| f.id == r.file_id))
            .collect();
        let rec = |id: u32| recs.iter().copied().find(|r| r.file_id == id);
        // Listeners and unconnected sockets.
        for r in &recs {
            let alone = r.peer_id == 0 && !r.peer_gone && r.listener_id == 0;
            let one_way = one_way(r, &rec);
            if !(alone || one_way) {
                continue;
            }
            let fd = self.socket(cx, r.file_id, r.sock_type)?;
            if !r.name.0.is_empty() && !r.deleted {
                self.bind(cx, fd, r)?;
            }
            if r.state == TCP_LISTEN && !r.deleted {
                sys::listen(fd, r.backlog as i32)
                    .map_err(|e| cx.err(format!("listen on unix socket {}", r.file_id), e))?;
            }
        }
        // Sockets whose file was removed: bound for the moment, and
        // connected to while bound (a listener stays bound until its
        // connections are made).
        let mut connected: Vec<u32> = Vec::new();
        for r in &recs {
            let alone = r.peer_id == 0 && !r.peer_gone && r.listener_id == 0;
            if !(r.deleted && (alone || one_way(r, &rec))) {
                continue;
            }
            let mark = self.freed.len();
            let fd = self.fd(r.file_id).expect("made");
            self.bind(cx, fd, r)?;
            if r.state == TCP_LISTEN {
                sys::listen(fd, r.backlog as i32)
                    .map_err(|e| cx.err(format!("listen on unix socket {}", r.file_id), e))?;
                continue;
            }
            for c in recs
                .iter()
                .filter(|c| c.peer_id == r.file_id && one_way(c, &rec))
            {
                Self::connect(cx, self.fd(c.file_id).expect("made"), r)?;
                connected.push(c.file_id);
            }
            self.settle_to(cx, mark)?;
        }
        // Connected pairs (and sockets whose peer was closed).
        let mut gone_peers: Vec<(u32, i32)> = Vec::new();
        for r in &recs {
            // A closed peer comes back for a moment, under its name.
            let ghost = r.peer_gone.then(|| UnixSk {
                sock_type: r.sock_type,
                state: TCP_ESTABLISHED,
                name: r.peer_name.clone(),
                bind_dir: if is_path(&r.peer_name.0) && r.peer_name.0[0] != b'/' {
                    r.bind_dir.clone()
                } else {
                    Text(Vec::new())
                },
                deleted: true,
                mode: 0o777,
                ..Default::default()
            });
            let (a, b) = if let Some(g) = &ghost {
                (*r, Some(g))
            } else if r.peer_id != 0 && r.peer_id > r.file_id && !one_way(r, &rec) {
                match rec(r.peer_id) {
                    Some(p) if p.peer_id == r.file_id => (*r, Some(p)),
                    _ => continue,
                }
            } else {
                continue;
            };
            let (fa, fb) = self.pair(cx, a, b, &recs)?;
            self.fds.push((a.file_id, fa));
            match b {
                Some(b) if ghost.is_none() => self.fds.push((b.file_id, fb)),
                _ => gone_peers.push((a.file_id, fb)),
            }
        }
        // One-way datagram connections, then the backlogs in order.
        for r in &recs {
            if one_way(r, &rec) && !connected.contains(&r.file_id) {
                let p = rec(r.peer_id).expect("checked");
                Self::connect(cx, self.fd(r.file_id).expect("made"), p)?;
            }
        }
        for r in &recs {
            if r.listener_id == 0 {
                continue;
            }
            let l = rec(r.listener_id).ok_or_else(|| {
                Error::Refused(format!(
                    "unix socket {} waits in the backlog of a listener not in the image",
                    r.file_id
                ))
            })?;
            let fd = self.socket(cx, r.file_id, r.sock_type)?;
            let mark = self.freed.len();
            if !r.name.0.is_empty() {
                self.bind(cx, fd, r)?;
            }
            self.settle_to(cx, mark)?;
            Self::connect(cx, fd, l)?;
        }
        self.settle_to(cx, 0)?;
        // Queued data, sent from the other end.
        let force = sys::geteuid() == 0;
        for q in objects_of::<UnixQueue>(img) {
            let Some(r) = rec(q.file_id) else { continue };
            let data = &q.data.0;
            let sent = if q.sender_id != 0 {
                let s = self.fd(q.sender_id).ok_or_else(|| {
                    Error::Refused(format!(
                        "unix socket {}: its datagram's sender {} is not in the image",
                        r.file_id, q.sender_id
                    ))
                })?;
                Self::send_all(s, force, data, Some(&Self::address(r)))
            } else if let Some(peer) = self
                .fd(r.peer_id)
                .or_else(|| gone_peers.iter().find(|g| g.0 == r.file_id).map(|g| g.1))
            {
                Self::send_all(peer, force, data, None)
            } else {
                let s = self.socket(cx, 0, DGRAM)?;
                Self::send_all(s, force, data, Some(&Self::address(r)))
            };
            sent.map_err(|e| {
                cx.err(
                    format!(
                        "queue {} bytes again into unix socket {}",
                        data.len(),
                        r.file_id
                    ),
                    e,
                )
            })?;
        }
        for &(_, fd) in &gone_peers {
            sys::close(fd);
        }
        // Shutdown state and options last.
        for r in &recs {
            let fd = self.fd(r.file_id).expect("made");
            let how = match r.shutdown {
                1 => Some(libc::SHUT_RD),
                2 => Some(libc::SHUT_WR),
                3 if !r.peer_gone => Some(libc::SHUT_RDWR),
                _ => None,
            };
            if let Some(how) = how {
                sys::shutdown(fd, how)
                    .map_err(|e| cx.err(format!("shutdown unix socket {}", r.file_id), e))?;
            }
            Self::options(cx, fd, r, force)?;
        }
        Ok(())
    }

    /// The address datagrams to `r` are sent to.
    fn address(r: &UnixSk) -> Vec<u8> {
        if is_path(&r.name.0) {
            abs_path(&r.name.0, &r.bind_dir.0)
        } else {
            r.name.0.clone()
        }
    }

    /// Sends `data` from `fd` (to `to`, or its peer), with room in its
    /// send buffer for it (the options are set after).
    fn send_all(fd: i32, force: bool, mut data: &[u8], to: Option<&[u8]>) -> std::io::Result<()> {
        if force {
            let want = (data.len() as u64 * 2 + (1 << 20)).min(i32::MAX as u64 / 2) as i32;
            let _ = sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want);
        }
        let stream = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)? == libc::SOCK_STREAM;
        loop {
            let n = match to {
                Some(to) => sys::unix_sendto(fd, data, to)?,
                None => sys::send_now(fd, data)?,
            };
            if !stream || n >= data.len() {
                return Ok(());
            }
            data = &data[n..];
        }
    }

    fn options(cx: &OpenCx, fd: i32, r: &UnixSk, force: bool) -> Result<()> {
        let set = |o: i32, v: i32, what: &str| {
            sys::setsockopt_int(fd, libc::SOL_SOCKET, o, v).map_err(|e| {
                cx.err(
                    format!("setsockopt({what}) of unix socket {}", r.file_id),
                    e,
                )
            })
        };
        // (The kernel doubles what it is given.)
        for (o, forced, v, what) in [
            (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, r.rcvbuf, "SO_RCVBUF"),
            (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, r.sndbuf, "SO_SNDBUF"),
        ] {
            let half = (v / 2) as i32;
            if !(force && sys::setsockopt_int(fd, libc::SOL_SOCKET, forced, half).is_ok()) {
                set(o, half, what)?;
            }
            let now = sys::getsockopt_int(fd, libc::SOL_SOCKET, o).unwrap_or(0) as u32;
            if now != v {
                return Err(Error::Refused(format!("unix socket {}: {what} is {now} after restart, not {v} (over the sysctl limit? restart as root)", r.file_id)));
            }
        }
        if r.passcred {
            set(libc::SO_PASSCRED, 1, "SO_PASSCRED")?;
        }
        if r.peek_off != -1 {
            set(libc::SO_PEEK_OFF, r.peek_off, "SO_PEEK_OFF")?;
        }
        for (o, v, what) in [
            (libc::SO_RCVTIMEO, r.rcvtimeo_us, "SO_RCVTIMEO"),
            (libc::SO_SNDTIMEO, r.sndtimeo_us, "SO_SNDTIMEO"),
        ] {
            if v != 0 {
                sys::set_sockopt_timeval(fd, o, v).map_err(|e| {
                    cx.err(
                        format!("setsockopt({what}) of unix socket {}", r.file_id),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The two ends of a connected pair: `a` and `b` (None: a peer that
    /// was closed, whose end the caller closes once the queue is in).
    fn pair(
        &mut self,
        cx: &OpenCx,
        a: &UnixSk,
        b: Option<&UnixSk>,
        recs: &[&UnixSk],
    ) -> Result<(i32, i32)> {
        let ty = a.sock_type;
        let a_named = !a.name.0.is_empty();
        let b_named = b.is_some_and(|b| !b.name.0.is_empty());
        let err = |e| cx.err(format!("socketpair for unix socket {}", a.file_id), e);
        if ty == DGRAM || (!a_named && !b_named) {
            let (x, y) = sys::unix_socketpair(ty as i32).map_err(err)?;
            let x = self.keep(cx, 0, x)?;
            let y = self.keep(cx, 0, y)?;
            self.temps.retain(|&t| t != x && t != y);
            let mark = self.freed.len();
            if a_named {
                self.bind(cx, x, a)?;
                self.settle_to(cx, mark)?;
            }
            if let Some(b) = b.filter(|_| b_named) {
                self.bind(cx, y, b)?;
                self.settle_to(cx, mark)?;
            }
            return Ok((x, y));
        }
        // A stream or seqpacket end with a name: accepted from a listener
        // of that name.
        let (server, client, server_is_a) = if a_named
            && (!b_named
                || Self::listened(b.unwrap(), recs).is_none() && Self::listened(a, recs).is_some())
        {
            (a, b, true)
        } else {
            (b.expect("named"), Some(a), false)
        };
        let mark = self.freed.len();
        let listener = match Self::listened(server, recs).and_then(|l| self.fd(l)) {
            Some(l) => l,
            None => {
                let l = self.socket(cx, 0, ty)?;
                // (A path's socket file stays, stale, as it was; a removed
                // one is removed again.)
                self.bind(cx, l, server)?;
                sys::listen(l, 1)
                    .map_err(|e| cx.err(format!("listen for unix socket {}", server.file_id), e))?;
                l
            }
        };
        let c = self.socket(cx, 0, ty)?;
        if let Some(cl) = client.filter(|c| !c.name.0.is_empty()) {
            // (Its own name, when removed, is put back before the connect
            // to the server's, which may be the same path.)
            let inner = self.freed.len();
            self.bind(cx, c, cl)?;
            self.settle_to(cx, inner)?;
        }
        Self::connect(cx, c, server)?;
        let s = sys::accept(listener)
            .map_err(|e| cx.err(format!("accept for unix socket {}", server.file_id), e))?;
        self.settle_to(cx, mark)?;
        let s = self.keep(cx, 0, s)?;
        self.temps.retain(|&t| t != c && t != s);
        Ok(if server_is_a { (s, c) } else { (c, s) })
    }

    /// The listener of the image with `r`'s name and type, if any.
    fn listened(r: &UnixSk, recs: &[&UnixSk]) -> Option<u32> {
        recs.iter()
            .find(|l| {
                l.state == TCP_LISTEN
                    && l.sock_type == r.sock_type
                    && l.name == r.name
                    && l.bind_dir == r.bind_dir
                    && l.file_id != r.file_id
            })
            .map(|l| l.file_id)
    }
}
