//! UDP and netlink sockets (see `workloads/udp.c`): bound IPv4 and IPv6
//! sockets with datagrams queued from two sources, a connected socket, an
//! unbound one, multicast memberships, shut down sockets and a
//! NETLINK_ROUTE socket with groups come back and verify themselves; a
//! filter, a packet socket, a NETLINK_SOCK_DIAG socket and a netlink
//! socket with queued replies are refused at checkpoint, and the process
//! keeps running.
//!
//! These tests need root; without it they print `SKIP: ...` and pass.

mod common;

use common::*;

#[test]
fn restore_udp_queues_options_connected_and_netlink() {
    let Some(env) = TestEnv::new("restore_udp_queues_options_connected_and_netlink") else {
        return;
    };
    env.roundtrip(
        "udp",
        &[],
        |_, _| {},
        |env, _| {
            let img = env.path("img");
            let run = env.ckpt([std::ffi::OsStr::new("inspect"), img.as_os_str()]);
            assert!(
                run.stdout.contains("udp-queue") && run.stdout.contains("netlink-socket"),
                "inspect does not show the UDP queue and the netlink socket:\n{}",
                run.stdout
            );
        },
    );
}

#[test]
fn checkpoint_refuses_udp_socket_with_filter() {
    refused_workload(
        "checkpoint_refuses_udp_socket_with_filter",
        "udp",
        "filter",
        &["SO_ATTACH_FILTER", "socket:["],
    );
}

#[test]
fn checkpoint_refuses_packet_socket() {
    refused_workload(
        "checkpoint_refuses_packet_socket",
        "udp",
        "packet",
        &["packet socket (AF_PACKET)", "cannot be saved yet"],
    );
}

#[test]
fn checkpoint_refuses_netlink_socket_with_queued_messages() {
    refused_workload(
        "checkpoint_refuses_netlink_socket_with_queued_messages",
        "udp",
        "nlqueue",
        &["NETLINK_ROUTE", "receive queue"],
    );
}

#[test]
fn checkpoint_refuses_netlink_sock_diag_socket() {
    refused_workload(
        "checkpoint_refuses_netlink_sock_diag_socket",
        "udp",
        "diag",
        &["netlink socket of family NETLINK_SOCK_DIAG"],
    );
}
