//! Traffic blocking for TCP connections between checkpoint and restart.
//!
//! From the moment a connection goes into repair mode at checkpoint until
//! its restored socket leaves repair mode just before the tree runs, no
//! socket may answer the peer: once the tree is killed the kernel would
//! reply to the peer's next segment with a RST, and the peer would drop
//! the connection. So each connection's packets are dropped by nftables,
//! in a table of ckpt's own, `inet ckpt`: its set `in4`/`in6` matches
//! packets arriving at the socket (local address and port, peer address
//! and port) at the input hook, `out4`/`out6` packets leaving it at the
//! output hook. Segments ckpt itself writes to a restored socket (the
//! peer's FIN of a half-closed connection, see `files/tcp_fin.rs`) carry
//! the mark `tcp_fin::MARK` and pass. A peer whose segments are dropped retransmits them, so
//! the connection survives a restart within its retransmission timeout
//! (minutes by default, tcp_retries2).
//!
//! The rules are an optimisation for that window, not a requirement: a
//! restart without them works (any error removing them is ignored), and
//! without `nft` a checkpoint still works, only less safely for the peer
//! (a warning is logged). When no restart follows, the rules stay and
//! keep the peer's packets out: remove them with `nft delete table inet
//! ckpt` (the peer then gets a RST on its next segment). A failed
//! restart leaves them too, for the next try. A checkpoint whose ckpt is
//! killed while the program keeps running has them removed by its
//! guardian (`files/tcp_guard.rs`).

use crate::files::tcp_fin::MARK;
use std::io::Write;
use std::process::{Command, Stdio};

/// The table's name.
pub const TABLE: &str = "ckpt";

/// One connection: (family, local address, local port, peer address,
/// peer port), addresses 4 or 16 bytes in network order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    pub v6: bool,
    pub local: Vec<u8>,
    pub lport: u16,
    pub peer: Vec<u8>,
    pub pport: u16,
}

fn addr(v6: bool, a: &[u8]) -> String {
    if v6 {
        let b: [u8; 16] = a.try_into().unwrap_or([0; 16]);
        std::net::Ipv6Addr::from(b).to_string()
    } else {
        let b: [u8; 4] = a.try_into().unwrap_or([0; 4]);
        std::net::Ipv4Addr::from(b).to_string()
    }
}

impl Conn {
    /// The set elements of the connection: (set, element).
    fn elements(&self) -> [(String, String); 2] {
        let f = if self.v6 { "6" } else { "4" };
        let (l, p) = (addr(self.v6, &self.local), addr(self.v6, &self.peer));
        [
            (
                format!("in{f}"),
                format!("{l} . {} . {p} . {}", self.lport, self.pport),
            ),
            (
                format!("out{f}"),
                format!("{l} . {} . {p} . {}", self.lport, self.pport),
            ),
        ]
    }
}

/// The nft script creating the table (idempotent: `add` of what exists is
/// no error).
fn table_script() -> String {
    let mut s = format!("add table inet {TABLE}\n");
    for (f, ty) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        s += &format!(
            "add set inet {TABLE} in{f} {{ type {ty} . inet_service . {ty} . inet_service; }}\n\
             add set inet {TABLE} out{f} {{ type {ty} . inet_service . {ty} . inet_service; }}\n"
        );
    }
    s += &format!(
        "add chain inet {TABLE} input {{ type filter hook input priority -300; }}\n\
         add chain inet {TABLE} output {{ type filter hook output priority -300; }}\n\
         flush chain inet {TABLE} input\n\
         flush chain inet {TABLE} output\n\
         add rule inet {TABLE} input meta mark {MARK:#x} accept\n\
         add rule inet {TABLE} output meta mark {MARK:#x} accept\n\
         add rule inet {TABLE} input ip daddr . tcp dport . ip saddr . tcp sport @in4 drop\n\
         add rule inet {TABLE} input ip6 daddr . tcp dport . ip6 saddr . tcp sport @in6 drop\n\
         add rule inet {TABLE} output ip saddr . tcp sport . ip daddr . tcp dport @out4 drop\n\
         add rule inet {TABLE} output ip6 saddr . tcp sport . ip6 daddr . tcp dport @out6 drop\n"
    );
    s
}

/// Makes sure segments with mark `MARK` pass the rules of an existing
/// table (one written before ckpt marked its segments lacks the rule).
pub fn let_marked_through() {
    if table_exists() {
        if let Err(e) = nft(&table_script()) {
            tracing::warn!("nftables: cannot let ckpt's own segments through ({e})");
        }
    }
}

fn table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `nft -f -` on `script`.
fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes())
            .map_err(|e| format!("write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Drops every packet of `conns` from now on (one transaction).
pub fn block(conns: &[Conn]) -> Result<(), String> {
    if conns.is_empty() {
        return Ok(());
    }
    let mut s = table_script();
    for c in conns {
        for (set, e) in c.elements() {
            s += &format!("add element inet {TABLE} {set} {{ {e} }}\n");
        }
    }
    nft(&s)
}

/// Lets the packets of `c` through again; removes the table once no
/// connection is blocked any more. Errors (no nft, no table, no such
/// element) are ignored: the rules are an optimisation.
pub fn unblock(c: &Conn) {
    for (set, e) in c.elements() {
        let _ = nft(&format!("delete element inet {TABLE} {set} {{ {e} }}\n"));
    }
    if table_is_empty() {
        let _ = nft(&format!("delete table inet {TABLE}\n"));
    }
}

/// Shell lines (for `sh`, errors silenced) letting the packets of `c`
/// through again, as `unblock` does.
pub fn unblock_lines(c: &Conn) -> String {
    c.elements()
        .iter()
        .map(|(set, e)| format!("nft delete element inet {TABLE} {set} '{{ {e} }}' 2>/dev/null\n"))
        .collect()
}

/// The shell line that removes the table once no connection is blocked
/// any more, as `unblock` does.
pub fn remove_empty_table_line() -> String {
    format!(
        "if nft list table inet {TABLE} >/dev/null 2>&1 && ! nft list table inet {TABLE} 2>/dev/null | grep -q elements; then nft delete table inet {TABLE} 2>/dev/null; fi"
    )
}

/// Whether table `ckpt` exists with no element in its sets.
fn table_is_empty() -> bool {
    let Ok(out) = Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("elements")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_name_the_four_tuple() {
        let c = Conn {
            v6: false,
            local: vec![127, 0, 0, 1],
            lport: 5000,
            peer: vec![127, 0, 0, 2],
            pport: 40000,
        };
        let e = c.elements();
        assert_eq!(e[0].0, "in4");
        assert_eq!(e[0].1, "127.0.0.1 . 5000 . 127.0.0.2 . 40000");
        assert_eq!(e[1].0, "out4");
        let mut one = [0u8; 16];
        one[15] = 1;
        let c6 = Conn {
            v6: true,
            local: one.to_vec(),
            lport: 1,
            peer: one.to_vec(),
            pport: 2,
        };
        assert_eq!(
            c6.elements()[1],
            ("out6".into(), "::1 . 1 . ::1 . 2".into())
        );
        assert!(table_script().contains("@in6 drop"));
    }
}
