//! Records of the fd kinds that plug into the object seam (`ckpt::files`)
//! and of per-process kinds. Each kind owns its records here; the model
//! keeps them generically (`Image::objects`, `ProcessImage::extra`) by type
//! range, so adding a kind touches no orchestrator.

use super::*;

/// Type numbers of records about shared objects (written with the files,
/// before the first process): `T_OBJECT_FIRST..=T_OBJECT_LAST`.
pub const T_OBJECT_FIRST: u32 = 130;
pub const T_OBJECT_LAST: u32 = 159;
/// Type numbers of per-process records of a kind (written after the
/// process's fds): `T_PROCESS_KIND_FIRST..=T_PROCESS_KIND_LAST`.
pub const T_PROCESS_KIND_FIRST: u32 = 160;
pub const T_PROCESS_KIND_LAST: u32 = 179;

pub const T_EVENTFD: u32 = 130;
pub const T_EPOLL: u32 = 131;
pub const T_EPOLL_WATCH: u32 = 132;
pub const T_TIMERFD: u32 = 133;
pub const T_SIGNALFD: u32 = 134;
pub const T_INOTIFY: u32 = 135;
pub const T_INOTIFY_WATCH: u32 = 136;
pub const T_PIDFD: u32 = 137;
/// Sockets (issue 9): unix 138-141, TCP 142-145, UDP 146-147, netlink 148.
pub const T_UNIX_SK: u32 = 138;
pub const T_UNIX_QUEUE: u32 = 139;
pub const T_UNIX_SCM: u32 = 140;
pub const T_TCP_SK: u32 = 142;
pub const T_TCP_QUEUE: u32 = 143;
pub const T_UDP_SK: u32 = 146;
pub const T_UDP_QUEUE: u32 = 147;
pub const T_NETLINK_SK: u32 = 148;
pub const T_POSIX_TIMER: u32 = 160;
pub const T_FILE_LOCK: u32 = 161;

/// Whether records of type `t` belong to `Image::objects`.
pub fn is_object_record(t: u32) -> bool {
    (T_OBJECT_FIRST..=T_OBJECT_LAST).contains(&t)
}

/// Whether records of type `t` belong to `ProcessImage::extra`.
pub fn is_process_kind_record(t: u32) -> bool {
    (T_PROCESS_KIND_FIRST..=T_PROCESS_KIND_LAST).contains(&t)
}

/// An eventfd (`File` kind `FILE_EVENTFD`).
pub const FILE_EVENTFD: u32 = 10;
/// An epoll instance (`FILE_EPOLL`), its watches in `EpollWatch` records.
pub const FILE_EPOLL: u32 = 11;
/// A timerfd (`FILE_TIMERFD`).
pub const FILE_TIMERFD: u32 = 12;
/// A signalfd (`FILE_SIGNALFD`).
pub const FILE_SIGNALFD: u32 = 13;
/// An inotify instance (`FILE_INOTIFY`), its watches in `InotifyWatch`.
pub const FILE_INOTIFY: u32 = 14;
/// A pidfd on a process of the tree (`FILE_PIDFD`).
pub const FILE_PIDFD: u32 = 15;
/// A unix socket (`FILE_UNIX`), TCP socket (`FILE_TCP`), UDP socket
/// (`FILE_UDP`), netlink socket (`FILE_NETLINK`).
pub const FILE_UNIX: u32 = 16;
pub const FILE_TCP: u32 = 17;
pub const FILE_UDP: u32 = 18;
pub const FILE_NETLINK: u32 = 19;

/// Names of the kinds above, for `inspect`.
pub(super) fn file_kind_name(k: u32) -> Option<&'static str> {
    Some(match k {
        FILE_EVENTFD => "eventfd",
        FILE_EPOLL => "epoll",
        FILE_TIMERFD => "timerfd",
        FILE_SIGNALFD => "signalfd",
        FILE_INOTIFY => "inotify",
        FILE_PIDFD => "pidfd",
        FILE_UNIX => "unix-socket",
        FILE_TCP => "tcp-socket",
        FILE_UDP => "udp-socket",
        FILE_NETLINK => "netlink-socket",
        _ => return None,
    })
}

record!(
    /// The state of eventfd `file_id`: its counter and EFD_SEMAPHORE (the
    /// other flags are the `File`'s).
    Eventfd = T_EVENTFD, "eventfd" { file_id: u32, count: u64, semaphore: bool }
);

record!(
    /// Epoll instance `file_id` (its status flags are the `File`'s): the
    /// busy-poll parameters of EPIOCSPARAMS (all 0 when never set). Its
    /// watches are `EpollWatch` records.
    Epoll = T_EPOLL, "epoll" {
        file_id: u32,
        busy_poll_usecs: u32,
        busy_poll_budget: u16,
        prefer_busy_poll: u8,
    }
);

record!(
    /// One watch of epoll `epoll_id`: the description `target_id` as it was
    /// added under fd number `tfd` (the kernel keys a watch by description
    /// and fd number; the fd may since have been closed or reused), with
    /// its event mask (EPOLLET, EPOLLONESHOT... included; a fired
    /// EPOLLONESHOT watch has no event bits left) and 64-bit cookie.
    EpollWatch = T_EPOLL_WATCH, "epoll-watch" {
        epoll_id: u32,
        target_id: u32,
        tfd: u32,
        events: u32,
        data: u64,
    }
);

/// `Timerfd::settime_flags`: `TFD_TIMER_ABSTIME`, `TFD_TIMER_CANCEL_ON_SET`.
pub const TIMERFD_ABSTIME: u32 = 1;
pub const TIMERFD_CANCEL_ON_SET: u32 = 2;

record!(
    /// The state of timerfd `file_id` (its status flags are the `File`'s).
    /// Times are (seconds, nanoseconds below 10^9).
    Timerfd = T_TIMERFD, "timerfd" {
        file_id: u32,
        /// CLOCK_REALTIME 0, CLOCK_MONOTONIC 1, CLOCK_BOOTTIME 7,
        /// CLOCK_REALTIME_ALARM 8, CLOCK_BOOTTIME_ALARM 9.
        clockid: u32,
        /// The flags of the last timerfd_settime (`TIMERFD_*`).
        settime_flags: u32,
        /// Expirations not read yet.
        ticks: u64,
        /// Time left until the next expiry at checkpoint; (0, 0): disarmed.
        value_sec: u64,
        value_nsec: u32,
        interval_sec: u64,
        interval_nsec: u32,
        /// The timer's clock when `value` was read: an absolute timer
        /// expires at `clock + value`.
        clock_sec: u64,
        clock_nsec: u32,
        /// /proc/sys/kernel/random/boot_id at checkpoint: monotonic and
        /// boot-time clocks only compare within one boot.
        boot_id: Text,
    }
);

record!(
    /// The signals signalfd `file_id` reads (bit `n - 1` for signal `n`).
    Signalfd = T_SIGNALFD, "signalfd" { file_id: u32, mask: u64 }
);

record!(
    /// Inotify instance `file_id` (its O_NONBLOCK is the `File`'s status
    /// flag); `watches` `InotifyWatch` records follow.
    Inotify = T_INOTIFY, "inotify" { file_id: u32, watches: u32 }
);

record!(
    /// One watch of inotify `file_id`: watch descriptor `wd`, the mask as
    /// the kernel keeps it (events plus IN_ONESHOT / IN_EXCL_UNLINK), and
    /// the watched inode: its path in ckpt's root, device and inode number
    /// at checkpoint.
    InotifyWatch = T_INOTIFY_WATCH, "inotify-watch" { file_id: u32, wd: i32, mask: u32, dev: u64, ino: u64, path: Text }
);

record!(
    /// Pidfd `file_id` on process `pid` of the image (PIDFD_NONBLOCK is the
    /// `File`'s O_NONBLOCK); `ino` is its pidfs inode at checkpoint, the
    /// same for every pidfd of one process. `pid` -1: the process had
    /// exited and been reaped, with wait status `exit_status`.
    Pidfd = T_PIDFD, "pidfd" { file_id: u32, pid: i32, ino: u64, exit_status: i32 }
);

/// `FileLock::class`: a POSIX record lock (fcntl F_SETLK), owned by the
/// process.
pub const LOCK_POSIX: u32 = 1;
/// An open file description lock (F_OFD_SETLK), owned by the description.
pub const LOCK_OFD: u32 = 2;
/// A flock() lock, owned by the description (`start`, `len` are 0).
pub const LOCK_FLOCK: u32 = 3;

record!(
    /// One lock the process holds through description `file_id` (for a
    /// POSIX lock: on that description's file). A lock of a description
    /// several processes hold is in each of their records; restart takes
    /// it once.
    FileLock = T_FILE_LOCK, "file-lock" {
        /// `LOCK_POSIX`, `LOCK_OFD` or `LOCK_FLOCK`.
        class: u32,
        file_id: u32,
        /// Write (exclusive) rather than read (shared).
        write: bool,
        /// First byte locked.
        start: u64,
        /// Bytes locked; 0: up to the end of the file, however it grows.
        len: u64,
        /// The pid /proc/locks showed (who took it; -1 for OFD locks).
        pid: i32,
    }
);

/// `PosixTimer::notify`: how the timer tells of an expiry (sigev_notify).
pub const SIGEV_SIGNAL: u32 = 0;
pub const SIGEV_NONE: u32 = 1;
/// The kernel treats it as `SIGEV_SIGNAL` (glibc never passes it).
pub const SIGEV_THREAD: u32 = 2;
/// `SIGEV_SIGNAL | SIGEV_THREAD_ID`: the signal goes to thread `tid`.
pub const SIGEV_THREAD_ID: u32 = 4;

record!(
    /// One POSIX timer (timer_create) of the process, per-process record.
    PosixTimer = T_POSIX_TIMER, "posix-timer" {
        /// Its timer id, which timer_create must give back.
        id: i32,
        /// The clockid it counts on (CLOCK_REALTIME, MONOTONIC, BOOTTIME,
        /// TAI, or an _ALARM one).
        clock: i32,
        /// sigev_notify (`SIGEV_*` above).
        notify: u32,
        /// sigev_signo (any value for SIGEV_NONE, which never sends it).
        signo: i32,
        /// sigev_value, delivered as si_value.
        value: u64,
        /// Target thread of SIGEV_THREAD_ID, else 0.
        tid: i32,
        /// timer_gettime(): the time left until it fires (0: disarmed) and
        /// its interval (0: one-shot).
        value_sec: u64,
        value_nsec: u32,
        interval_sec: u64,
        interval_nsec: u32,
        /// timer_getoverrun() at checkpoint (not restorable, see ckpt's
        /// `timers` module).
        overrun: i32,
        /// The timer's clock at checkpoint (clock_gettime in the process).
        now_sec: i64,
        now_nsec: u32,
    }
);

fields!(
    /// The SOL_SOCKET options of a socket, common to every family (saved
    /// and set again by ckpt's `files::sockopt`; other socket kinds embed
    /// it in their own record).
    SockOpts {
        reuseaddr: bool,
        reuseport: bool,
        keepalive: bool,
        broadcast: bool,
        passcred: bool,
        /// SO_RCVBUF / SO_SNDBUF as getsockopt reads them (the kernel's
        /// doubled value).
        rcvbuf: u32,
        sndbuf: u32,
        /// SO_LINGER: on, seconds.
        linger_on: bool,
        linger_secs: u32,
        /// SO_RCVTIMEO / SO_SNDTIMEO in microseconds (0: none).
        rcvtimeo_us: u64,
        sndtimeo_us: u64,
        priority: u32,
        mark: u32,
        /// SO_BINDTODEVICE ("": none).
        bindtodevice: Text,
        /// SO_PEEK_OFF (-1: off).
        peek_off: i32,
    }
);

fields!(
    /// A multicast group a UDP socket joined on interface `ifindex`:
    /// `group` a raw sockaddr (AF_INET or AF_INET6), the source filter mode
    /// (`include`: MCAST_INCLUDE, else MCAST_EXCLUDE) and its sources.
    UdpGroup { ifindex: u32, group: Bytes, include: bool, sources: Vec<Bytes> }
);

record!(
    /// UDP socket `file_id` (IPv4 or IPv6; O_NONBLOCK/O_ASYNC are the
    /// `File`'s status flags). Addresses are raw sockaddr_in/sockaddr_in6
    /// bytes; `local` port 0: never bound; `peer` empty: not connected.
    /// `queued` `UdpQueue` records follow.
    UdpSk = T_UDP_SK, "udp-socket" {
        file_id: u32,
        /// AF_INET or AF_INET6.
        family: u32,
        local: Bytes,
        peer: Bytes,
        opts: SockOpts,
        /// IP_TOS / IPV6_TCLASS.
        tos: i32,
        /// IP_TTL / IPV6_UNICAST_HOPS.
        ttl: i32,
        v6only: bool,
        mc_ttl: i32,
        mc_loop: bool,
        /// IP_MULTICAST_ALL (IPv4 only).
        mc_all: bool,
        /// IP_MULTICAST_IF: address (IPv4) or IPV6_MULTICAST_IF ifindex.
        mc_if: u32,
        /// IP_PKTINFO / IPV6_RECVPKTINFO.
        pktinfo: bool,
        /// IP_RECVERR / IPV6_RECVERR.
        recverr: bool,
        /// IP_FREEBIND / IPV6_FREEBIND, IP_TRANSPARENT / IPV6_TRANSPARENT.
        freebind: bool,
        transparent: bool,
        /// shutdown() done on it: bit 0 SHUT_RD, bit 1 SHUT_WR (sock_diag's
        /// INET_DIAG_SHUTDOWN).
        shutdown: u32,
        /// Multicast memberships.
        groups: Vec<UdpGroup>,
        queued: u32,
    }
);

record!(
    /// Datagram `seq` (0 first) queued for reading on UDP socket `file_id`,
    /// from `source` (raw sockaddr).
    UdpQueue = T_UDP_QUEUE, "udp-queue" { file_id: u32, seq: u32, source: Bytes, data: Bytes }
);

record!(
    /// Netlink socket `file_id` of family `protocol` (NETLINK_ROUTE...),
    /// bound to port id `portid` (0: unbound), with the multicast groups
    /// of `groups` (bit n of word n/32: group n+1), connected to
    /// `dst_portid`/`dst_group` (0: not connected). Its receive queue was
    /// empty. `flags`: `NL_*` bits.
    NetlinkSk = T_NETLINK_SK, "netlink-socket" {
        file_id: u32,
        /// SOCK_RAW or SOCK_DGRAM.
        sock_type: u32,
        protocol: u32,
        portid: u32,
        groups: Vec<u32>,
        dst_portid: u32,
        dst_group: u32,
        flags: u32,
        opts: SockOpts,
    }
);

/// `NetlinkSk::flags`: the boolean NETLINK_* options set.
pub const NL_PKTINFO: u32 = 1;
pub const NL_BROADCAST_ERROR: u32 = 2;
pub const NL_NO_ENOBUFS: u32 = 4;
pub const NL_LISTEN_ALL_NSID: u32 = 8;
pub const NL_CAP_ACK: u32 = 16;
pub const NL_EXT_ACK: u32 = 32;
pub const NL_GET_STRICT_CHK: u32 = 64;

record!(
    /// Unix socket `file_id` (O_NONBLOCK is the `File`'s status flag).
    /// Its peer is another description of the image (`peer_id`), or a
    /// connection waiting in the backlog of listener `listener_id`.
    UnixSk = T_UNIX_SK, "unix-socket" {
        file_id: u32,
        /// Its inode at checkpoint.
        ino: u64,
        /// SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5.
        sock_type: u32,
        /// TCP_ESTABLISHED 1 (connected), TCP_CLOSE 7, TCP_LISTEN 10.
        state: u32,
        /// Its address, sun_path bytes as getsockname gives them (an
        /// abstract name starts with 0); empty: unbound.
        name: Bytes,
        /// A relative path name is relative to this directory.
        bind_dir: Text,
        /// The socket file of a path name had been removed: restart
        /// binds and removes it again.
        deleted: bool,
        /// Permission bits and owner of the socket file.
        mode: u32,
        uid: u32,
        gid: u32,
        /// The peer's description, 0: none.
        peer_id: u32,
        /// A socket whose peer was closed (peer_id 0), and that peer's
        /// address (getpeername; empty: unnamed).
        peer_gone: bool,
        peer_name: Bytes,
        /// Connected to a connection waiting in this listener's backlog.
        listener_id: u32,
        /// listen() backlog.
        backlog: u32,
        /// Shutdown bits: 1 receive, 2 send.
        shutdown: u32,
        passcred: bool,
        /// SO_RCVBUF and SO_SNDBUF as getsockopt gives them.
        rcvbuf: u32,
        sndbuf: u32,
        /// SO_RCVTIMEO and SO_SNDTIMEO in microseconds (0: none).
        rcvtimeo_us: u64,
        sndtimeo_us: u64,
        /// SO_PEEK_OFF (-1: off).
        peek_off: i32,
    }
);

record!(
    /// Data waiting in the receive queue of unix socket `file_id`, in
    /// queue order: a stream socket's bytes in one record, one record
    /// per message of a datagram or seqpacket socket (sent again at
    /// restart).
    UnixQueue = T_UNIX_QUEUE, "unix-queue" {
        file_id: u32,
        /// The sending socket of a datagram: 0 for the peer (or, for a
        /// socket without one, an unnamed socket), else the description
        /// bound to the sender's address.
        sender_id: u32,
        data: Bytes,
    }
);

pub const T_TCP_REPAIR: u32 = 144;

/// `TcpSk::mode`: how a TCP socket comes back.
/// Not connected (fresh, bound, or closed): recreated with its options.
pub const TCP_MODE_PLAIN: u32 = 0;
/// Listening on its address, with its backlog.
pub const TCP_MODE_LISTEN: u32 = 1;
/// An established connection, rebuilt in repair mode (TCP_REPAIR) with
/// its sequence numbers, queues, negotiated options and window.
pub const TCP_MODE_REPAIR: u32 = 2;
/// An established connection saved with `--tcp-close`: restored as a
/// socket whose connection was reset (a read gives ECONNRESET, then EOF).
pub const TCP_MODE_RESET: u32 = 3;

/// `TcpSk::tcp_options` bits (tcpi_options of TCP_INFO).
pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
pub const TCPI_OPT_SACK: u32 = 2;
pub const TCPI_OPT_WSCALE: u32 = 4;

record!(
    /// TCP socket `file_id` (IPv4 or IPv6): its addresses, options and, for
    /// a connection in repair mode, the state TCP_REPAIR reads out. Its
    /// queued bytes are `TcpQueue` records. Addresses are 4 (AF_INET) or 16
    /// (AF_INET6) bytes, network order; ports host order, 0: none. A
    /// connection in repair mode has a `TcpRepair` record too.
    TcpSk = T_TCP_SK, "tcp-socket" {
        file_id: u32,
        /// AF_INET 2 or AF_INET6 10.
        family: u32,
        /// `TCP_MODE_*`.
        mode: u32,
        /// The kernel's TCP state at checkpoint (TCP_ESTABLISHED 1, TCP_LISTEN 10, TCP_CLOSE 7).
        state: u32,
        local_addr: Bytes,
        local_port: u32,
        peer_addr: Bytes,
        peer_port: u32,
        /// listen() backlog (a listener).
        backlog: u32,
        reuseaddr: bool,
        reuseport: bool,
        v6only: bool,
        nodelay: bool,
        /// TCP_DEFER_ACCEPT as getsockopt shows it (seconds).
        defer_accept: u32,
        /// SO_RCVBUF / SO_SNDBUF as getsockopt shows them (the kernel's
        /// doubled values); 0: a fresh socket's default, left alone.
        rcvbuf: u32,
        sndbuf: u32,
        keepalive: bool,
        keepidle: u32,
        keepintvl: u32,
        keepcnt: u32,
        linger_on: bool,
        linger_sec: u32,
        /// SO_RCVTIMEO / SO_SNDTIMEO in microseconds (0: none).
        rcvtimeo_us: u64,
        sndtimeo_us: u64,
        /// IP_TOS (AF_INET) or IPV6_TCLASS (AF_INET6).
        tos: u32,
        /// SO_BINDTODEVICE (empty: none).
        bind_dev: Text,
        /// TCP_CONGESTION when it is not a fresh socket's (empty: default).
        congestion: Text,
        /// Other int options that differ from a fresh socket's, as
        /// (level, option, value) triples of little-endian 32-bit words;
        /// only options of ckpt's own list (see ckpt's files/tcp.rs).
        int_opts: Bytes,
    }
);

record!(
    /// The state TCP repair mode reads out of connection `file_id`
    /// (`TCP_MODE_REPAIR`).
    TcpRepair = T_TCP_REPAIR, "tcp-repair" {
        file_id: u32,
        /// TCP_QUEUE_SEQ of the send queue (write_seq) and of the receive
        /// queue (rcv_nxt).
        snd_seq: u32,
        rcv_seq: u32,
        /// Bytes at the end of the send queue never sent (SIOCOUTQNSD).
        unsent: u32,
        mss: u32,
        /// `TCPI_OPT_*` negotiated, and the window scales.
        tcp_options: u32,
        snd_wscale: u32,
        rcv_wscale: u32,
        /// TCP_TIMESTAMP (the connection's timestamp clock).
        timestamp: u32,
        /// struct tcp_repair_window.
        snd_wl1: u32,
        snd_wnd: u32,
        max_window: u32,
        rcv_wnd: u32,
        rcv_wup: u32,
    }
);

/// `TcpQueue::queue`: TCP_RECV_QUEUE 1, TCP_SEND_QUEUE 2.
pub const TCP_QUEUE_RECV: u32 = 1;
pub const TCP_QUEUE_SEND: u32 = 2;

record!(
    /// The bytes of one queue of TCP connection `file_id` at checkpoint:
    /// received and not read (`TCP_QUEUE_RECV`), or written and not
    /// acknowledged by the peer, sent or not (`TCP_QUEUE_SEND`).
    TcpQueue = T_TCP_QUEUE, "tcp-queue" { file_id: u32, queue: u32, data: Bytes }
);
