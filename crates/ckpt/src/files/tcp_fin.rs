//! Half-closed TCP connections (see the module doc of `tcp`): which FINs a
//! state has exchanged, and the segment restart sends a restored socket
//! to make it see the peer's FIN (or the peer's acknowledgement of ours)
//! again.
//!
//! A FIN takes one sequence number: ours the last of the send sequence
//! (write_seq counts it as soon as it is queued), the peer's the last of
//! the receive sequence (rcv_nxt counts it once received). TCP repair
//! mode can only rebuild a connection as ESTABLISHED, so restart rebuilds
//! it without the FINs (one sequence number less on each side that has
//! one) and then replays them: our FIN with shutdown(SHUT_WR), the peer's
//! with a segment written from a raw socket as the peer would have sent
//! it. Nothing else can make a socket receive a FIN: the real peer sent
//! it long ago, and its FIN was acknowledged.

use crate::netblock::Conn;
use crate::sys;
use std::io;

// TCP states (include/net/tcp_states.h).
pub const ESTABLISHED: u32 = 1;
pub const FIN_WAIT1: u32 = 4;
pub const FIN_WAIT2: u32 = 5;
pub const CLOSE: u32 = 7;
pub const CLOSE_WAIT: u32 = 8;
pub const LAST_ACK: u32 = 9;
pub const CLOSING: u32 = 11;

/// The FINs a connection in some state has exchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fins {
    /// Ours was queued (shutdown or close for writing): the last send
    /// sequence number is its.
    pub sent: bool,
    /// ... and the peer acknowledged it (FIN_WAIT2): nothing is left in
    /// the send queue.
    pub acked: bool,
    /// The peer's was received: the last receive sequence number is its.
    pub received: bool,
}

impl Fins {
    /// Our FIN still in the send queue (SIOCOUTQ and SIOCOUTQNSD count it).
    pub fn queued(&self) -> bool {
        self.sent && !self.acked
    }
}

/// The FINs of a connection in `state`; `None` for a state TCP repair
/// cannot restore (SYN_SENT, SYN_RECV, TIME_WAIT, LISTEN). (CLOSE is a
/// connection that ended only for a socket that had one.)
pub fn fins(state: u32) -> Option<Fins> {
    let f = |sent, acked, received| {
        Some(Fins {
            sent,
            acked,
            received,
        })
    };
    match state {
        ESTABLISHED => f(false, false, false),
        FIN_WAIT1 => f(true, false, false),
        FIN_WAIT2 => f(true, true, false),
        CLOSE_WAIT => f(false, false, true),
        // The peer's FIN came first, then ours.
        LAST_ACK => f(true, false, true),
        // Ours went first, then the peer's crossed it.
        CLOSING => f(true, false, true),
        // Ended: both FINs exchanged and acknowledged (or reset, and the
        // error read: it reads and writes alike).
        CLOSE => f(true, true, true),
        _ => None,
    }
}

/// The mark of the segments ckpt writes (SO_MARK): the nftables rules of
/// `netblock` let them through while they drop the connection's own.
pub const MARK: u32 = 0x636b_7074;

/// TCP header flags.
pub const FIN: u8 = 0x01;
pub const ACK: u8 = 0x10;

/// A segment without data from the peer of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    /// `FIN`, `ACK`; none: a probe every state discards unseen (but
    /// counts in tcpi_segs_in).
    pub flags: u8,
    /// The window field (already scaled down).
    pub window: u16,
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add_words(sum: &mut u32, b: &[u8]) {
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        *sum += w as u32;
    }
}

/// The IP packet (header included) of `seg` sent by the peer of connection
/// `c` to it: from (c.peer, c.pport) to (c.local, c.lport).
pub fn packet(c: &Conn, seg: &Segment) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&c.pport.to_be_bytes());
    tcp.extend_from_slice(&c.lport.to_be_bytes());
    tcp.extend_from_slice(&seg.seq.to_be_bytes());
    tcp.extend_from_slice(&seg.ack.to_be_bytes());
    tcp.push(5 << 4); // data offset: 5 words, no options
    tcp.push(seg.flags);
    tcp.extend_from_slice(&seg.window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let mut sum = 0u32;
    add_words(&mut sum, &c.peer);
    add_words(&mut sum, &c.local);
    sum += libc::IPPROTO_TCP as u32 + tcp.len() as u32;
    add_words(&mut sum, &tcp);
    let csum = fold(sum);
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    let mut p = Vec::with_capacity(60);
    if c.v6 {
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        p.push(libc::IPPROTO_TCP as u8);
        p.push(64); // hop limit
        p.extend_from_slice(&c.peer);
        p.extend_from_slice(&c.local);
    } else {
        p.push(0x45);
        p.push(0);
        p.extend_from_slice(&(20 + tcp.len() as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0]); // id (the kernel picks one), DF
        p.push(64); // TTL
        p.push(libc::IPPROTO_TCP as u8);
        p.extend_from_slice(&[0, 0]); // checksum: the kernel computes it
        p.extend_from_slice(&c.peer);
        p.extend_from_slice(&c.local);
    }
    p.extend_from_slice(&tcp);
    p
}

/// Sends `seg` to the socket of connection `c`, as its peer, from a raw
/// socket (needs CAP_NET_RAW) with mark `MARK`.
pub fn inject(c: &Conn, seg: &Segment) -> io::Result<()> {
    let family = if c.v6 { libc::AF_INET6 } else { libc::AF_INET };
    // IPPROTO_RAW: the header is ours (IP_HDRINCL), whatever the source.
    let fd = sys::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    let res = (|| {
        sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, MARK as i32)?;
        let p = packet(c, seg);
        let n = sys::sock_sendto(fd, &p, family as u32, &c.local, 0)?;
        if n != p.len() {
            return Err(io::Error::other(format!("sent {n} bytes of {}", p.len())));
        }
        Ok(())
    })();
    sys::close(fd);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(v6: bool) -> Conn {
        let (local, peer) = if v6 {
            let mut a = vec![0u8; 16];
            a[15] = 1;
            (a.clone(), a)
        } else {
            (vec![127, 0, 0, 1], vec![127, 0, 0, 2])
        };
        Conn {
            v6,
            local,
            lport: 5000,
            peer,
            pport: 40000,
        }
    }

    /// The one's complement sum over the pseudo-header and the TCP
    /// header, checksum included, is 0xffff when the checksum is right.
    fn verifies(c: &Conn, tcp: &[u8]) -> bool {
        let mut sum = 0u32;
        add_words(&mut sum, &c.peer);
        add_words(&mut sum, &c.local);
        sum += 6 + tcp.len() as u32;
        add_words(&mut sum, tcp);
        fold(sum) == 0
    }

    #[test]
    fn builds_a_fin_from_the_peer() {
        let seg = Segment {
            seq: 0x0102_0304,
            ack: 0xa0b0_c0d0,
            flags: FIN | ACK,
            window: 512,
        };
        let c = conn(false);
        let p = packet(&c, &seg);
        assert_eq!(p.len(), 40);
        assert_eq!(p[0], 0x45);
        assert_eq!(&p[2..4], &40u16.to_be_bytes());
        assert_eq!(p[9], 6);
        assert_eq!(&p[12..16], &[127, 0, 0, 2]); // from the peer
        assert_eq!(&p[16..20], &[127, 0, 0, 1]);
        let tcp = &p[20..];
        assert_eq!(&tcp[0..2], &40000u16.to_be_bytes());
        assert_eq!(&tcp[2..4], &5000u16.to_be_bytes());
        assert_eq!(&tcp[4..8], &[1, 2, 3, 4]);
        assert_eq!(&tcp[8..12], &[0xa0, 0xb0, 0xc0, 0xd0]);
        assert_eq!(tcp[13], 0x11);
        assert_eq!(&tcp[14..16], &512u16.to_be_bytes());
        assert!(verifies(&c, tcp));
        let c6 = conn(true);
        let p6 = packet(&c6, &Segment { flags: ACK, ..seg });
        assert_eq!(p6.len(), 60);
        assert_eq!(p6[0] >> 4, 6);
        assert_eq!(&p6[4..6], &20u16.to_be_bytes());
        assert_eq!(p6[40 + 13], 0x10);
        assert!(verifies(&c6, &p6[40..]));
    }

    #[test]
    fn fins_of_states() {
        assert_eq!(fins(ESTABLISHED), Some(Fins::default()));
        assert!(fins(FIN_WAIT1).unwrap().queued());
        assert!(!fins(FIN_WAIT2).unwrap().queued());
        let la = fins(LAST_ACK).unwrap();
        assert!(la.sent && la.received && !la.acked);
        assert_eq!(fins(CLOSING), fins(LAST_ACK));
        assert!(fins(CLOSE_WAIT).unwrap().received);
        assert!(!fins(CLOSE).unwrap().queued());
        for s in [2, 3, 6, 10] {
            assert_eq!(fins(s), None, "state {s}");
        }
    }
}
