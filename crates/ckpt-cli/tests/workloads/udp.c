/*
 * UDP and netlink sockets (crates/ckpt-cli/tests/restore_udp.rs). Modes
 * (argv[3]):
 *
 *   (none)   r4: IPv4 UDP bound to 127.0.0.1:<free>, O_NONBLOCK, SO_RCVBUF,
 *            SO_REUSEADDR, IP_TOS, IP_PKTINFO set (c4: IP_RECVERR), with 3 datagrams queued from two
 *            sources (s1, kept open, and s2, closed before the checkpoint)
 *            and a fourth from a4 (autobound to the wildcard, kept open);
 *            r6d: dual-stack on [::] with a datagram from s1 (IPv4);
 *            r6: the same on [::1] with IPV6_V6ONLY, from two closed
 *            sources, and SO_PEEK_OFF 0 with the first datagram peeked
 *            (offset 5: the next MSG_PEEK gives the second); c4: a UDP socket connected to p4; u: never bound;
 *            nl: NETLINK_ROUTE bound with RTMGRP_LINK; m4: joined to
 *            239.1.2.3 on lo and to 232.1.1.1 from source 127.0.0.5 only,
 *            IP_MULTICAST_TTL 5, IP_MULTICAST_LOOP 0.
 *            Verified on SIGTERM: the queues read back in order with their
 *            boundaries and sources, new datagrams still arrive on the same
 *            ports, c4 sends to p4 and hears only p4, the options read back
 *            the same, nl has the same port id and groups and answers an
 *            RTM_GETLINK dump, m4 has both groups with the same filters.
 *            shr: bound, shutdown(SHUT_RD); shw: connected,
 *            shutdown(SHUT_WR): after restart shr polls POLLRDHUP, shw
 *            sends EPIPE.
 *   diag     a NETLINK_SOCK_DIAG socket (refused)
 *   filter   a UDP socket with a classic filter attached (refused)
 *   packet   an AF_PACKET socket (refused)
 *   nlqueue  a netlink socket with replies queued (refused)
 */
#include "wl.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <sys/socket.h>

static int r4, r6, s1, c4, p4, u, nl, m4, a4, r6d, shr, shw;
static struct sockaddr_in a4a;
static struct sockaddr_in6 r6da, s1m;
static struct sockaddr_in r4a, s1a, s2a, c4a, p4a;
static struct sockaddr_in6 r6a, t1a, t2a;
static int rcvbuf4, tos4, reuse4, v6only6, rcvbuf6;
static unsigned nl_portid;

static int udp(int family, const void *addr, socklen_t len)
{
    int fd = socket(family, SOCK_DGRAM, 0);
    if (fd < 0)
        wl_die("socket");
    if (addr && bind(fd, addr, len) != 0)
        wl_die("bind");
    return fd;
}

static struct sockaddr_in lo4(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static struct sockaddr_in6 lo6(void)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6};
    a.sin6_addr = in6addr_loopback;
    return a;
}

static void name_of(int fd, void *a, socklen_t len)
{
    if (getsockname(fd, a, &len) != 0)
        wl_die("getsockname");
}

static int getint(int fd, int level, int opt)
{
    int v = -12345;
    socklen_t l = sizeof(v);
    if (getsockopt(fd, level, opt, &v, &l) != 0)
        return -12345;
    return v;
}

static void send_to(int fd, const char *msg, const void *to, socklen_t len)
{
    if (sendto(fd, msg, strlen(msg), 0, to, len) != (ssize_t)strlen(msg))
        wl_die("sendto(%s)", msg);
}

/* Waits up to 2 s for a datagram on fd; its length or -1. */
static ssize_t recv_wait(int fd, char *buf, size_t len, void *from, socklen_t *flen)
{
    double end = wl_monotonic() + 2;
    while (wl_monotonic() < end) {
        ssize_t n = recvfrom(fd, buf, len, MSG_DONTWAIT, from, flen);
        if (n >= 0 || errno != EAGAIN)
            return n;
        wl_sleep_ns(1000000);
    }
    return -1;
}

static void expect4(int fd, const char *what, const char *msg, const struct sockaddr_in *src)
{
    char buf[256];
    struct sockaddr_in from;
    socklen_t fl = sizeof(from);
    ssize_t n = recv_wait(fd, buf, sizeof(buf), &from, &fl);
    if (n < 0) {
        wl_fail("%s: no datagram (wanted \"%s\"): %s", what, msg, strerror(errno));
        return;
    }
    buf[n] = 0;
    WL_CHECK(strcmp(buf, msg) == 0, "%s: got \"%s\", wanted \"%s\"", what, buf, msg);
    WL_CHECK(from.sin_port == src->sin_port && from.sin_addr.s_addr == src->sin_addr.s_addr,
             "%s: \"%s\" from port %d, wanted port %d", what, msg, ntohs(from.sin_port),
             ntohs(src->sin_port));
}

static void expect6(int fd, const char *what, const char *msg, const struct sockaddr_in6 *src)
{
    char buf[256];
    struct sockaddr_in6 from;
    socklen_t fl = sizeof(from);
    ssize_t n = recv_wait(fd, buf, sizeof(buf), &from, &fl);
    if (n < 0) {
        wl_fail("%s: no datagram (wanted \"%s\"): %s", what, msg, strerror(errno));
        return;
    }
    buf[n] = 0;
    WL_CHECK(strcmp(buf, msg) == 0, "%s: got \"%s\", wanted \"%s\"", what, buf, msg);
    WL_CHECK(from.sin6_port == src->sin6_port &&
                 memcmp(&from.sin6_addr, &src->sin6_addr, sizeof(from.sin6_addr)) == 0,
             "%s: \"%s\" from port %d, wanted port %d", what, msg, ntohs(from.sin6_port),
             ntohs(src->sin6_port));
}

static void expect_empty(int fd, const char *what)
{
    char buf[64];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    WL_CHECK(n < 0 && errno == EAGAIN, "%s: queue not empty (recv gave %zd)", what, n);
}

static void nl_getlink(int fd)
{
    struct {
        struct nlmsghdr h;
        struct rtgenmsg g;
    } req = {{.nlmsg_len = sizeof(req),
              .nlmsg_type = RTM_GETLINK,
              .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP,
              .nlmsg_seq = 7},
             {.rtgen_family = AF_UNSPEC}};
    struct sockaddr_nl k = {.nl_family = AF_NETLINK};
    if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&k, sizeof(k)) != sizeof(req))
        wl_die("send RTM_GETLINK");
}

static void verify_netlink(void)
{
    struct sockaddr_nl a;
    socklen_t l = sizeof(a);
    WL_CHECK(getsockname(nl, (struct sockaddr *)&a, &l) == 0 && a.nl_pid == nl_portid,
             "netlink port id is %u, was %u", a.nl_pid, nl_portid);
    unsigned groups[4] = {0};
    l = sizeof(groups);
    WL_CHECK(getsockopt(nl, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &l) == 0 &&
                 groups[0] == RTMGRP_LINK,
             "netlink groups are %#x, want RTMGRP_LINK", groups[0]);
    nl_getlink(nl);
    static char buf[65536];
    int links = 0, done = 0;
    double end = wl_monotonic() + 3;
    while (!done && wl_monotonic() < end) {
        ssize_t n = recv(nl, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN) {
            wl_sleep_ns(1000000);
            continue;
        }
        if (n <= 0)
            break;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE)
                done = 1;
            else if (h->nlmsg_type == RTM_NEWLINK && h->nlmsg_seq == 7)
                links++;
        }
    }
    WL_CHECK(done && links > 0, "RTM_GETLINK dump: %d links, done %d", links, done);
}

/* The filter mode and first source of m4's membership of `group` on lo;
 * -1 when not a member. */
static int membership(const char *group, struct in_addr *src, int *nsrc)
{
    struct {
        struct group_filter gf;
        struct sockaddr_storage more[4];
    } f;
    memset(&f, 0, sizeof(f));
    f.gf.gf_interface = 1;
    f.gf.gf_numsrc = 4;
    struct sockaddr_in *g = (struct sockaddr_in *)&f.gf.gf_group;
    g->sin_family = AF_INET;
    g->sin_addr.s_addr = inet_addr(group);
    socklen_t l = sizeof(f);
    if (getsockopt(m4, IPPROTO_IP, MCAST_MSFILTER, &f, &l) != 0)
        return -1;
    *nsrc = (int)f.gf.gf_numsrc;
    if (f.gf.gf_numsrc > 0)
        *src = ((struct sockaddr_in *)&f.gf.gf_slist[0])->sin_addr;
    return (int)f.gf.gf_fmode;
}

static void verify_multicast(void)
{
    struct in_addr src = {0};
    int n = -1;
    int mode = membership("239.1.2.3", &src, &n);
    WL_CHECK(mode == MCAST_EXCLUDE && n == 0, "m4 239.1.2.3: mode %d, %d sources", mode, n);
    mode = membership("232.1.1.1", &src, &n);
    WL_CHECK(mode == MCAST_INCLUDE && n == 1 && src.s_addr == inet_addr("127.0.0.5"),
             "m4 232.1.1.1: mode %d, %d sources", mode, n);
    mode = membership("239.9.9.9", &src, &n);
    WL_CHECK(mode == -1, "m4 is a member of 239.9.9.9");
    WL_CHECK(getint(m4, IPPROTO_IP, IP_MULTICAST_TTL) == 5, "m4 IP_MULTICAST_TTL changed");
    WL_CHECK(getint(m4, IPPROTO_IP, IP_MULTICAST_LOOP) == 0, "m4 IP_MULTICAST_LOOP changed");
}

static void verify(void)
{
    wl_verify_common();
    WL_CHECK(fcntl(r4, F_GETFL) & O_NONBLOCK, "r4 lost O_NONBLOCK");
    WL_CHECK(getint(r4, SOL_SOCKET, SO_RCVBUF) == rcvbuf4, "r4 SO_RCVBUF %d, was %d",
             getint(r4, SOL_SOCKET, SO_RCVBUF), rcvbuf4);
    WL_CHECK(getint(r4, SOL_SOCKET, SO_REUSEADDR) == reuse4, "r4 SO_REUSEADDR changed");
    WL_CHECK(getint(r4, IPPROTO_IP, IP_TOS) == tos4, "r4 IP_TOS %d, was %d",
             getint(r4, IPPROTO_IP, IP_TOS), tos4);
    WL_CHECK(getint(r4, IPPROTO_IP, IP_PKTINFO) == 1, "r4 lost IP_PKTINFO");
    WL_CHECK(getint(c4, IPPROTO_IP, IP_RECVERR) == 1, "c4 lost IP_RECVERR");
    WL_CHECK(getint(r6, IPPROTO_IPV6, IPV6_V6ONLY) == v6only6, "r6 IPV6_V6ONLY changed");
    WL_CHECK(getint(r6, SOL_SOCKET, SO_RCVBUF) == rcvbuf6, "r6 SO_RCVBUF changed");
    struct sockaddr_in now;
    name_of(r4, &now, sizeof(now));
    WL_CHECK(now.sin_port == r4a.sin_port, "r4 port changed");

    expect4(r4, "r4 #1", "one", &s1a);
    expect4(r4, "r4 #2", "second-from-s2", &s2a);
    expect4(r4, "r4 #3", "third", &s1a);
    expect4(r4, "r4 #4", "fourth-from-a4", &a4a);
    expect_empty(r4, "r4 after 4");
    expect6(r6d, "r6d #1", "v4-to-dual", &s1m);
    expect_empty(r6d, "r6d after 1");
    send_to(s1, "after", &r4a, sizeof(r4a));
    expect4(r4, "r4 new", "after", &s1a);

    WL_CHECK(getint(r6, SOL_SOCKET, SO_PEEK_OFF) == 5, "r6 SO_PEEK_OFF %d, was 5",
             getint(r6, SOL_SOCKET, SO_PEEK_OFF));
    char pk[16] = {0};
    WL_CHECK(recv(r6, pk, sizeof(pk) - 1, MSG_PEEK | MSG_DONTWAIT) == 5 && strcmp(pk, "six-2") == 0,
             "r6 MSG_PEEK at offset 5 gives \"%s\", not six-2", pk);
    expect6(r6, "r6 #1", "six-1", &t1a);
    expect6(r6, "r6 #2", "six-2", &t2a);
    expect6(r6, "r6 #3", "six-3", &t1a);
    expect_empty(r6, "r6 after 3");
    int t = udp(AF_INET6, NULL, 0);
    send_to(t, "six-new", &r6a, sizeof(r6a));
    struct sockaddr_in6 ta;
    name_of(t, &ta, sizeof(ta));
    ta.sin6_addr = in6addr_loopback;
    expect6(r6, "r6 new", "six-new", &ta);
    close(t);

    /* Connected: sends to its peer, hears its peer only. */
    struct sockaddr_in pa;
    socklen_t pl = sizeof(pa);
    WL_CHECK(getpeername(c4, (struct sockaddr *)&pa, &pl) == 0 && pa.sin_port == p4a.sin_port,
             "c4 is no longer connected to p4");
    if (send(c4, "to-peer", 7, 0) != 7)
        wl_fail("c4 send: %s", strerror(errno));
    expect4(p4, "p4 from c4", "to-peer", &c4a);
    int o = udp(AF_INET, NULL, 0);
    send_to(o, "stranger", &c4a, sizeof(c4a));
    send_to(p4, "from-peer", &c4a, sizeof(c4a));
    expect4(c4, "c4 from p4", "from-peer", &p4a);
    expect_empty(c4, "c4 (stranger filtered)");
    close(o);

    struct sockaddr_in ua;
    name_of(u, &ua, sizeof(ua));
    WL_CHECK(ua.sin_port == 0, "unbound socket has port %d", ntohs(ua.sin_port));

    verify_netlink();
    verify_multicast();

    struct pollfd pf = {.fd = shr, .events = POLLIN | POLLRDHUP};
    WL_CHECK(poll(&pf, 1, 0) == 1 && (pf.revents & POLLRDHUP), "shr is no longer shut down for reading");
    signal(SIGPIPE, SIG_IGN);
    WL_CHECK(send(shw, "x", 1, 0) < 0 && errno == EPIPE, "shw is no longer shut down for writing");
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "udp");
    const char *mode = argc > 3 ? argv[3] : "";
    if (strcmp(mode, "filter") == 0) {
        int fd = udp(AF_INET, NULL, 0);
        struct sock_filter code[] = {{BPF_RET | BPF_K, 0, 0, 0xffff}};
        struct sock_fprog prog = {1, code};
        if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0)
            wl_die("SO_ATTACH_FILTER");
    } else if (strcmp(mode, "diag") == 0) {
        if (socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG) < 0)
            wl_die("socket(NETLINK_SOCK_DIAG)");
    } else if (strcmp(mode, "packet") == 0) {
        if (socket(AF_PACKET, SOCK_DGRAM, 0) < 0)
            wl_die("socket(AF_PACKET)");
    } else if (strcmp(mode, "nlqueue") == 0) {
        int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        if (fd < 0)
            wl_die("socket(AF_NETLINK)");
        nl_getlink(fd);
        /* The reply is queued synchronously by the send. */
    } else {
        struct sockaddr_in a = lo4();
        r4 = udp(AF_INET, NULL, 0);
        int one = 1, tos = IPTOS_LOWDELAY, rb = 50000;
        if (setsockopt(r4, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
            setsockopt(r4, SOL_SOCKET, SO_RCVBUF, &rb, sizeof(rb)) ||
            setsockopt(r4, IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) ||
            setsockopt(r4, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one)))
            wl_die("r4 options");
        if (bind(r4, (struct sockaddr *)&a, sizeof(a)) != 0)
            wl_die("bind r4");
        fcntl(r4, F_SETFL, O_NONBLOCK);
        name_of(r4, &r4a, sizeof(r4a));
        s1 = udp(AF_INET, &a, sizeof(a));
        int s2 = udp(AF_INET, &a, sizeof(a));
        name_of(s1, &s1a, sizeof(s1a));
        name_of(s2, &s2a, sizeof(s2a));
        send_to(s1, "one", &r4a, sizeof(r4a));
        send_to(s2, "second-from-s2", &r4a, sizeof(r4a));
        send_to(s1, "third", &r4a, sizeof(r4a));
        close(s2);
        a4 = udp(AF_INET, NULL, 0);
        send_to(a4, "fourth-from-a4", &r4a, sizeof(r4a));
        name_of(a4, &a4a, sizeof(a4a));
        a4a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        rcvbuf4 = getint(r4, SOL_SOCKET, SO_RCVBUF);
        reuse4 = getint(r4, SOL_SOCKET, SO_REUSEADDR);
        tos4 = getint(r4, IPPROTO_IP, IP_TOS);

        struct sockaddr_in6 b = lo6();
        r6 = udp(AF_INET6, NULL, 0);
        if (setsockopt(r6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)))
            wl_die("IPV6_V6ONLY");
        if (bind(r6, (struct sockaddr *)&b, sizeof(b)) != 0)
            wl_die("bind r6");
        name_of(r6, &r6a, sizeof(r6a));
        int t1 = udp(AF_INET6, &b, sizeof(b)), t2 = udp(AF_INET6, &b, sizeof(b));
        name_of(t1, &t1a, sizeof(t1a));
        name_of(t2, &t2a, sizeof(t2a));
        send_to(t1, "six-1", &r6a, sizeof(r6a));
        send_to(t2, "six-2", &r6a, sizeof(r6a));
        send_to(t1, "six-3", &r6a, sizeof(r6a));
        close(t1);
        close(t2);
        int zero = 0;
        char pk[16];
        if (setsockopt(r6, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)) ||
            recv(r6, pk, sizeof(pk), MSG_PEEK) != 5)
            wl_die("peek r6");
        v6only6 = getint(r6, IPPROTO_IPV6, IPV6_V6ONLY);
        struct sockaddr_in6 any6 = {.sin6_family = AF_INET6};
        r6d = udp(AF_INET6, &any6, sizeof(any6));
        name_of(r6d, &r6da, sizeof(r6da));
        struct sockaddr_in to = lo4();
        to.sin_port = r6da.sin6_port;
        send_to(s1, "v4-to-dual", &to, sizeof(to));
        memset(&s1m, 0, sizeof(s1m));
        s1m.sin6_family = AF_INET6;
        s1m.sin6_port = s1a.sin_port;
        s1m.sin6_addr.s6_addr[10] = s1m.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&s1m.sin6_addr.s6_addr[12], &s1a.sin_addr, 4);
        rcvbuf6 = getint(r6, SOL_SOCKET, SO_RCVBUF);

        p4 = udp(AF_INET, &a, sizeof(a));
        name_of(p4, &p4a, sizeof(p4a));
        c4 = udp(AF_INET, NULL, 0);
        if (setsockopt(c4, IPPROTO_IP, IP_RECVERR, &one, sizeof(one)) ||
            connect(c4, (struct sockaddr *)&p4a, sizeof(p4a)) != 0)
            wl_die("connect c4");
        name_of(c4, &c4a, sizeof(c4a));
        u = udp(AF_INET, NULL, 0);

        shr = udp(AF_INET, &a, sizeof(a));
        shutdown(shr, SHUT_RD); /* ENOTCONN, but recorded */
        shw = udp(AF_INET, NULL, 0);
        if (connect(shw, (struct sockaddr *)&p4a, sizeof(p4a)) != 0 || shutdown(shw, SHUT_WR) != 0)
            wl_die("shw");
        m4 = udp(AF_INET, NULL, 0);
        struct ip_mreqn mr = {.imr_ifindex = 1};
        mr.imr_multiaddr.s_addr = inet_addr("239.1.2.3");
        struct ip_mreq_source ms = {0};
        ms.imr_multiaddr.s_addr = inet_addr("232.1.1.1");
        ms.imr_interface.s_addr = htonl(INADDR_LOOPBACK);
        ms.imr_sourceaddr.s_addr = inet_addr("127.0.0.5");
        int ttl = 5, loop = 0;
        if (setsockopt(m4, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof(mr)) ||
            setsockopt(m4, IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, &ms, sizeof(ms)) ||
            setsockopt(m4, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof(ttl)) ||
            setsockopt(m4, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof(loop)))
            wl_die("multicast options");

        nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        struct sockaddr_nl n = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK};
        if (nl < 0 || bind(nl, (struct sockaddr *)&n, sizeof(n)) != 0)
            wl_die("netlink");
        struct sockaddr_nl na;
        name_of(nl, &na, sizeof(na));
        nl_portid = na.nl_pid;
    }
    wl_ready();
    while (!wl_term)
        pause();
    if (*mode == 0)
        verify();
    else
        wl_verify_common();
    wl_finish();
}
