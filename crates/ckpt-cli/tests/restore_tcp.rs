//! TCP sockets (see `workloads/tcp.c`): established loopback connections
//! between processes of the tree (IPv4 and IPv6) go on without a byte lost
//! or repeated, a connection to a client outside the tree (this test)
//! survives, a listener accepts on the same port after restart,
//! `--tcp-close` restores connections as reset, half-closed connections
//! (every state inside the tree, FIN_WAIT2 and CLOSE_WAIT with the client
//! outside) come back with their FINs, a ckpt killed mid-checkpoint
//! leaves no connection frozen, and what cannot be restored is refused.
//! After each test no nftables rule of ckpt remains.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

/// The tests share the nftables table of ckpt: one at a time, so each
/// can check that it is gone afterwards.
static NFT: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    NFT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The nftables table of ckpt as `nft` lists it ("" when there is none).
fn nft_table() -> String {
    std::process::Command::new("nft")
        .args(["list", "table", "inet", "ckpt"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// No nftables table of ckpt is left.
fn assert_no_rules(when: &str) {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", "ckpt"])
        .output();
    if let Ok(out) = out {
        assert!(
            !out.status.success(),
            "{when}: the nftables table of ckpt is still there:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Checkpoint of tcp `case` must be refused saying `words`; the process
/// goes on and verifies itself (SIGTERM right after the refusal: the pause
/// the checkpoint interrupted must then fail with EINTR, not be re-run).
fn refused(test: &str, case: &str, words: &[&str]) {
    refused_workload(test, "tcp", case, words);
}

fn byte_at(i: u64, side: u64) -> u8 {
    (i ^ (i >> 8) ^ (i >> 16) ^ (side * 0x5a)) as u8
}

fn port_of(w: &Workload) -> u16 {
    let p = w.result_sibling(".port");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .parse()
        .expect("a port")
}

fn stream(test: &str, case: &str, drop_rules: bool) {
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &[case]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let run = env.ckpt([OsStr::new("inspect"), img.as_os_str()]);
    assert!(
        run.stdout.contains("tcp-queue"),
        "inspect shows no queued TCP bytes:\n{}",
        run.stdout
    );
    assert!(
        nft_table().contains("elements"),
        "the connections' packets are not blocked after the checkpoint"
    );
    if drop_rules {
        // The rules only protect the window; a restart without them works.
        let out = std::process::Command::new("nft")
            .args(["delete", "table", "inet", "ckpt"])
            .output()
            .expect("nft");
        assert!(out.status.success(), "nft delete table: {out:?}");
    }
    env.restart_detached(&mut w, &img);
    // (A SIGTERM before the restarted pause() would be handled first.)
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    assert_no_rules(test);
}

#[test]
fn restore_tcp_stream_ipv4() {
    stream("restore_tcp_stream_ipv4", "stream4", false);
}

#[test]
fn restore_tcp_stream_ipv6() {
    stream("restore_tcp_stream_ipv6", "stream6", true);
}

fn read_check(c: &mut std::net::TcpStream, from: u64, n: usize) {
    let mut buf = vec![0u8; n];
    c.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes at {from} from the server: {e}"));
    for (i, b) in buf.iter().enumerate() {
        let at = from + i as u64;
        assert_eq!(*b, byte_at(at, 0), "byte {at} from the server");
    }
}

fn send(c: &mut std::net::TcpStream, from: u64, n: usize) {
    let buf: Vec<u8> = (from..from + n as u64).map(|i| byte_at(i, 1)).collect();
    c.write_all(&buf)
        .unwrap_or_else(|e| panic!("sending {n} bytes at {from} to the server: {e}"));
}

#[test]
fn restore_tcp_client_outside_the_tree() {
    let _g = serial();
    let Some(env) = TestEnv::new("restore_tcp_client_outside_the_tree") else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &["ext4"]) else {
        return;
    };
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port_of(&w))).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // Half of the server's first 100000 bytes: the rest is in its queues
    // (or in flight) at checkpoint, and so are 30000 of ours.
    read_check(&mut c, 0, 50000);
    send(&mut c, 0, 10000);
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let port = port_of(&w).to_string();
    let rules = nft_table();
    assert!(
        rules.contains(&port),
        "after the checkpoint the server's connection on port {port} is not blocked:\n{rules}"
    );
    // Sent while no server socket exists: without the blocking rules the
    // kernel would answer with a RST; with them, the segments are dropped
    // and retransmitted to the restored socket.
    send(&mut c, 10000, 20000);
    env.restart_detached(&mut w, &img);
    read_check(&mut c, 50000, 50000);
    send(&mut c, 30000, 70000);
    read_check(&mut c, 100000, 100000);
    send(&mut c, 100000, 100000);
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    drop(c);
    assert_no_rules("restore_tcp_client_outside_the_tree");
}

fn listen(test: &str, case: &str) {
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    env.roundtrip(
        "tcp",
        &[case],
        |_, _| {},
        |env, w| {
            let port = port_of(w);
            for _ in 0..2 {
                let mut c = if case.ends_with('6') {
                    std::net::TcpStream::connect(("::1", port))
                } else {
                    std::net::TcpStream::connect(("127.0.0.1", port))
                }
                .unwrap_or_else(|e| panic!("connect to the restored listener on {port}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                // (TCP_DEFER_ACCEPT: the server accepts once we send.)
                c.write_all(b"x").unwrap();
                let mut s = String::new();
                c.read_to_string(&mut s).expect("read the greeting");
                assert_eq!(s, "hello\n");
            }
            env.wait_blocked_in(w, &[libc::SYS_poll, libc::SYS_ppoll]);
        },
    );
    assert_no_rules(test);
}

#[test]
fn restore_tcp_listener_ipv4() {
    listen("restore_tcp_listener_ipv4", "listen4");
}

#[test]
fn restore_tcp_listener_ipv6() {
    listen("restore_tcp_listener_ipv6", "listen6");
}

#[test]
fn restore_tcp_close_resets_connections() {
    let _g = serial();
    let Some(env) = TestEnv::new("restore_tcp_close_resets_connections") else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &["close4"]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill_with(&mut w, &img, &[OsStr::new("--tcp-close")]);
    assert_no_rules("after a --tcp-close checkpoint");
    env.restart_detached(&mut w, &img);
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    assert_no_rules("restore_tcp_close_resets_connections");
}

#[test]
fn refuse_tcp_socket_filter() {
    let _g = serial();
    refused("refuse_tcp_socket_filter", "filter", &["SO_ATTACH_FILTER"]);
    assert_no_rules("refuse_tcp_socket_filter");
}

#[test]
fn refuse_tcp_filter_and_undo_repair() {
    let _g = serial();
    refused(
        "refuse_tcp_filter_and_undo_repair",
        "filtered",
        &["SO_ATTACH_FILTER"],
    );
    assert_no_rules("refuse_tcp_filter_and_undo_repair");
}

/// Half-closed connections inside the tree, in every state (see the fin
/// case of the workload), come back in their state and end as they would
/// have.
fn half_closed(test: &str, case: &str) {
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &[case]) else {
        return;
    };
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    let run = env.ckpt([OsStr::new("inspect"), img.as_os_str()]);
    // Every half-closed state was saved (restart checks each one it
    // rebuilds by replaying FINs).
    for st in [4, 5, 7, 8, 9, 11] {
        assert!(
            run.stdout.contains(&format!(" state {st}, ")),
            "inspect shows no repaired connection in state {st}:\n{}",
            run.stdout
        );
    }
    env.restart_detached(&mut w, &img);
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    assert_no_rules(test);
}

#[test]
fn restore_tcp_half_closed_ipv4() {
    half_closed("restore_tcp_half_closed_ipv4", "fin4");
}

#[test]
fn restore_tcp_half_closed_ipv6() {
    half_closed("restore_tcp_half_closed_ipv6", "fin6");
}

/// The state (hex, as /proc/net/tcp shows it) of the IPv4 socket bound to
/// local port `lport` and connected to `rport`.
fn proc_tcp_state(lport: u16, rport: u16) -> Option<u8> {
    let t = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    t.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && port(f[1]) == Some(lport) && port(f[2]) == Some(rport))
            .then(|| u8::from_str_radix(f[3], 16).ok())
            .flatten()
    })
}

fn wait_server_state(c: &std::net::TcpStream, want: u8, name: &str) {
    let (sport, cport) = (
        c.peer_addr().unwrap().port(),
        c.local_addr().unwrap().port(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || proc_tcp_state(sport, cport)
            == Some(want)),
        "the server's socket is not in {name}: state {:?}",
        proc_tcp_state(sport, cport)
    );
}

fn expect_eof(c: &mut std::net::TcpStream, when: &str) {
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => {}
        other => panic!("{when}: reading from the server gave {other:?}, not EOF"),
    }
}

/// A server in FIN_WAIT2 whose client (this test) is outside the tree:
/// after restart the client still sends, the server reads it all and
/// still cannot write.
#[test]
fn restore_tcp_fin_wait2_client_outside_the_tree() {
    let test = "restore_tcp_fin_wait2_client_outside_the_tree";
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &["extfw2"]) else {
        return;
    };
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port_of(&w))).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    read_check(&mut c, 0, 100000);
    expect_eof(&mut c, "before the checkpoint");
    send(&mut c, 0, 10000);
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    wait_server_state(&c, 5, "FIN_WAIT2");
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    // Dropped while no server socket exists, retransmitted afterwards.
    send(&mut c, 10000, 20000);
    env.restart_detached(&mut w, &img);
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    wait_server_state(&c, 5, "FIN_WAIT2 after restart");
    expect_eof(&mut c, "after restart");
    w.proc.signal(libc::SIGTERM).expect("SIGTERM");
    send(&mut c, 30000, 70000);
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    env.signal_and_expect_pass(&mut w, 0);
    drop(c);
    assert_no_rules(test);
}

/// A server in CLOSE_WAIT whose client (this test) is outside the tree:
/// after restart the client gets the rest of the server's bytes, the
/// server reads the client's bytes and EOF, then sends more and closes.
#[test]
fn restore_tcp_close_wait_client_outside_the_tree() {
    let test = "restore_tcp_close_wait_client_outside_the_tree";
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &["extcw"]) else {
        return;
    };
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port_of(&w))).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    read_check(&mut c, 0, 50000);
    send(&mut c, 0, 10000);
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    wait_server_state(&c, 8, "CLOSE_WAIT");
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    env.restart_detached(&mut w, &img);
    read_check(&mut c, 50000, 50000);
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    w.proc.signal(libc::SIGTERM).expect("SIGTERM");
    read_check(&mut c, 100000, 100000);
    expect_eof(&mut c, "once the server closed");
    env.signal_and_expect_pass(&mut w, 0);
    drop(c);
    assert_no_rules(test);
}

#[test]
fn restore_tcp_leave_running_undoes_repair() {
    let _g = serial();
    let Some(env) = TestEnv::new("restore_tcp_leave_running_undoes_repair") else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &["stream4"]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    let run = env.ckpt([
        OsStr::new("checkpoint"),
        OsStr::new(&pid),
        OsStr::new("-o"),
        img.as_os_str(),
        OsStr::new("--leave-running"),
    ]);
    assert!(run.success(), "checkpoint failed:\n{}", run.describe());
    assert_no_rules("after --leave-running");
    env.assert_running_untraced(&mut w, "after --leave-running");
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    // The connection goes on in the process that kept running.
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
}

#[test]
fn refuse_tcp_ended_connection() {
    let _g = serial();
    refused(
        "refuse_tcp_ended_connection",
        "ended",
        &["connection has ended", "close the socket"],
    );
    assert_no_rules("refuse_tcp_ended_connection");
}

/// ckpt killed (SIGKILL) right after it put a connection in repair mode
/// during `checkpoint --leave-running`: its guardian takes the
/// connections out of repair mode and removes the rules, so the program,
/// healed, goes on talking over them both ways.
#[test]
fn restore_tcp_killed_ckpt_leaves_no_frozen_connection() {
    let test = "restore_tcp_killed_ckpt_leaves_no_frozen_connection";
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &["stream4"]) else {
        return;
    };
    let img = env.path("img");
    let pid = w.pid.to_string();
    let run = env.ckpt_with_env(
        [
            OsStr::new("checkpoint"),
            OsStr::new(&pid),
            OsStr::new("-o"),
            img.as_os_str(),
            OsStr::new("--leave-running"),
        ],
        &[("CKPT_TEST_KILL_AFTER_REPAIR", "1")],
    );
    assert!(
        !run.success(),
        "ckpt was not killed by the hook:\n{}",
        run.describe()
    );
    let table_gone = || {
        !std::process::Command::new("nft")
            .args(["list", "table", "inet", "ckpt"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        wait_until(Duration::from_secs(20), table_gone),
        "the rules of the killed ckpt are still there:\n{}",
        nft_table()
    );
    // The guardian is gone too (it was ckpt's fork: its command line
    // names the image).
    assert!(
        wait_until(Duration::from_secs(10), || env
            .own_processes()
            .iter()
            .all(|&p| p == w.pid || process_tree(w.pid).contains(&p))),
        "processes besides the workload: {:?}",
        env.own_processes()
    );
    env.assert_running_untraced(&mut w, "after ckpt was killed");
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    // Both ends exchange 3 MiB each way over the connection.
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    assert_no_rules(test);
}

/// A half-closed connection whose peer's segments a firewall rule of the
/// program's own drops: restart could not replay the peer's FIN, so the
/// checkpoint is refused and the program goes on (its connection out of
/// repair mode, unblocked).
#[test]
fn refuse_tcp_half_closed_behind_a_firewall() {
    let test = "refuse_tcp_half_closed_behind_a_firewall";
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let nft = |script: &str| {
        let mut c = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "nft -f: {script}");
    };
    let Some(mut w) = env.start_workload("tcp", &["extcw"]) else {
        return;
    };
    let port = port_of(&w);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    read_check(&mut c, 0, 50000);
    send(&mut c, 0, 10000);
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    wait_server_state(&c, 8, "CLOSE_WAIT");
    nft(&format!(
        "add table inet ckpt_test_fw\n\
         add chain inet ckpt_test_fw input {{ type filter hook input priority 0; }}\n\
         add rule inet ckpt_test_fw input tcp dport {port} drop\n"
    ));
    let img = env.path("img");
    let run = env.checkpoint_must_fail(&mut w, &img, "checkpoint behind a firewall");
    nft("delete table inet ckpt_test_fw\n");
    assert!(
        run.stderr.contains("CLOSE_WAIT") && run.stderr.contains("does not reach"),
        "the refusal must say why:\n{}",
        run.describe()
    );
    assert_no_rules("after the refusal");
    env.assert_running_untraced(&mut w, "after the refused checkpoint");
    // The connection goes on as if nothing happened.
    read_check(&mut c, 50000, 50000);
    w.proc.signal(libc::SIGTERM).expect("SIGTERM");
    read_check(&mut c, 100000, 100000);
    expect_eof(&mut c, "once the server closed");
    env.signal_and_expect_pass(&mut w, 0);
    drop(c);
    assert_no_rules(test);
}

/// A server in FIN_WAIT1 (its FIN behind bytes the client, this test, has
/// not read yet): after restart the client reads the rest of the bytes,
/// then EOF, and its own bytes still reach the server.
#[test]
fn restore_tcp_fin_wait1_client_outside_the_tree() {
    let test = "restore_tcp_fin_wait1_client_outside_the_tree";
    let _g = serial();
    let Some(env) = TestEnv::new(test) else {
        return;
    };
    let Some(mut w) = env.start_workload("tcp", &["extfw1"]) else {
        return;
    };
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port_of(&w))).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let sent_file = w.result_sibling(".sent");
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(
            &sent_file
        )
        .is_ok_and(|s| s.ends_with('\n'))),
        "the server did not say how much it sent"
    );
    let sent: usize = std::fs::read_to_string(&sent_file)
        .unwrap()
        .trim()
        .parse()
        .expect("a count");
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    wait_server_state(&c, 4, "FIN_WAIT1");
    send(&mut c, 0, 5000);
    let img = env.path("img");
    env.checkpoint_and_kill(&mut w, &img);
    send(&mut c, 5000, 5000);
    env.restart_detached(&mut w, &img);
    read_check(&mut c, 0, sent);
    expect_eof(&mut c, "after all the server's bytes");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    env.wait_blocked_in(&mut w, &[libc::SYS_pause]);
    env.signal_and_expect_pass(&mut w, libc::SIGTERM);
    drop(c);
    assert_no_rules(test);
}
