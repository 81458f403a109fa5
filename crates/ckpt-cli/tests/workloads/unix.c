/*
 * unix: unix sockets survive a restart, with what is queued in them.
 *
 * Case "all" (argv[3], the default):
 *   stream   a socketpair between the process and a child, each side
 *            writing 32-bit counters without blocking until its peer's
 *            queue is full (data in flight both ways at checkpoint); after
 *            restart both go on to LIMIT past that and shut down: each
 *            reader sees 0, 1, 2... to the end, nothing lost or repeated
 *   seqpacket, dgram  pairs with 3 messages of 1, 100, 3000 bytes queued
 *            each way: boundaries and contents come back
 *   listeners  one bound to a relative path, one to an abstract name:
 *            new connections are accepted after restart
 *   backlog  a client connected to the path listener, not accepted: it
 *            is accepted after restart and carries data both ways
 *   accepted a connection accepted from the path listener, data queued
 *            both ways: getsockname/getpeername and the data come back
 *   shut     "tail" then shutdown(SHUT_WR): the peer reads "tail" then EOF
 *   gone     "bye" then close: the peer reads "bye" then EOF; a datagram
 *            pair the same way: the message, then ECONNREFUSED
 *   options  O_NONBLOCK, SO_RCVTIMEO, SO_PASSCRED, SO_PEEK_OFF, SO_SNDBUF
 *   dgramname  a bound datagram socket with messages from a bound sender
 *            (not connected): recvfrom gives the sender's name
 * Refusal cases: "outside PATH" (connected to a listener of the test),
 * "scm" (an fd in flight), "embryo" (a backlog client that sent data).
 * Verified on SIGTERM.
 */
#include "wl.h"

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define LIMIT_EXTRA 20000

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, int abstract)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (abstract) {
        memcpy(a->sun_path + 1, name, n);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    }
    memcpy(a->sun_path, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

static void set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Writes counters from *next until the peer's queue is full. */
static void fill(int fd, uint32_t *next)
{
    set_nonblock(fd, 1);
    for (;;) {
        uint32_t v = *next;
        ssize_t r = send(fd, &v, 4, MSG_NOSIGNAL);
        if (r == 4) {
            (*next)++;
            continue;
        }
        if (r < 0 && errno == EAGAIN)
            break;
        wl_die("fill send");
    }
}

/* Sends counters up to `limit` then SHUT_WR, and reads counters until
 * EOF checking they follow 0, 1, 2...; returns the count read or -1. */
static long pump(int fd, uint32_t next, uint32_t limit, const char *who)
{
    uint32_t expect = 0;
    unsigned char part[4];
    int have = 0, eof = 0, shut = 0;
    set_nonblock(fd, 1);
    double end = wl_monotonic() + 30;
    while (!eof || !shut) {
        if (wl_monotonic() > end) {
            wl_fail("%s: pump timed out (sent %u, read %u)", who, next, expect);
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = (eof ? 0 : POLLIN) | (shut ? 0 : POLLOUT)};
        poll(&p, 1, 1000);
        while (!shut) {
            if (next == limit) {
                shutdown(fd, SHUT_WR);
                shut = 1;
                break;
            }
            uint32_t v = next;
            ssize_t r = send(fd, &v, 4, MSG_NOSIGNAL);
            if (r == 4)
                next++;
            else
                break;
        }
        while (!eof) {
            unsigned char buf[4096];
            ssize_t r = recv(fd, buf, sizeof(buf), 0);
            if (r == 0) {
                eof = 1;
                break;
            }
            if (r < 0)
                break;
            for (ssize_t i = 0; i < r; i++) {
                part[have++] = buf[i];
                if (have == 4) {
                    uint32_t v;
                    memcpy(&v, part, 4);
                    have = 0;
                    if (v != expect) {
                        wl_fail("%s: read counter %u, want %u", who, v, expect);
                        return -1;
                    }
                    expect++;
                }
            }
        }
    }
    if (have)
        wl_fail("%s: %d stray bytes at the end", who, have);
    return expect;
}

static int sp_parent;
static pid_t child;
static int go[2];
static uint32_t sent_parent;

static int seq[2], dg[2];
static const int msg_sizes[3] = {1, 100, 3000};
static int lpath, lab, bl_client, acc_srv, acc_cli, shp[2], gone_b, opt_fd, opt_peer;
static int dn_recv, dn_send, dgone, gone_cli;
static char absname[64];
static struct timeval rcvtimeo;

static void fill_msg(char *buf, int size, int tag)
{
    for (int i = 0; i < size; i++)
        buf[i] = (char)(tag * 31 + i);
}

static void send_msgs(int fd, int tag)
{
    char buf[3000];
    for (int i = 0; i < 3; i++) {
        fill_msg(buf, msg_sizes[i], tag + i);
        if (send(fd, buf, (size_t)msg_sizes[i], 0) != msg_sizes[i])
            wl_die("send msg");
    }
}

static void check_msgs(int fd, int tag, const char *what)
{
    char buf[4000], want[3000];
    for (int i = 0; i < 3; i++) {
        ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        fill_msg(want, msg_sizes[i], tag + i);
        WL_CHECK(r == msg_sizes[i], "%s: message %d has %zd bytes, want %d", what, i, r, msg_sizes[i]);
        if (r == msg_sizes[i])
            WL_CHECK(memcmp(buf, want, (size_t)r) == 0, "%s: message %d differs", what, i);
    }
    ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    WL_CHECK(r < 0 && errno == EAGAIN, "%s: a 4th message (%zd)", what, r);
}

static void connect_and_accept(int listener, const char *name, int abstract, const char *what)
{
    struct sockaddr_un a;
    socklen_t len = mkaddr(&a, name, abstract);
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    WL_CHECK(connect(c, (struct sockaddr *)&a, len) == 0, "%s: connect: %s", what, strerror(errno));
    int s = accept(listener, NULL, NULL);
    WL_CHECK(s >= 0, "%s: accept: %s", what, strerror(errno));
    if (s >= 0) {
        WL_CHECK(write(c, "ping", 4) == 4, "%s: write", what);
        char b[8] = {0};
        WL_CHECK(read(s, b, 8) == 4 && memcmp(b, "ping", 4) == 0, "%s: read", what);
        close(s);
    }
    close(c);
}

static void expect_read(int fd, const char *want, const char *what)
{
    char b[64] = {0};
    size_t n = strlen(want);
    ssize_t r = recv(fd, b, n, MSG_WAITALL | MSG_DONTWAIT);
    WL_CHECK(r == (ssize_t)n && memcmp(b, want, n) == 0, "%s: read %zd bytes \"%.*s\", want \"%s\"",
             what, r, (int)(r > 0 ? r : 0), b, want);
}

static int do_all(void)
{
    /* stream pair across processes */
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || pipe(go))
        wl_die("socketpair");
    int ready[2];
    if (pipe(ready))
        wl_die("pipe");
    child = fork();
    if (child == 0) {
        close(sp[0]);
        close(go[1]);
        close(ready[0]);
        uint32_t next = 0;
        fill(sp[1], &next);
        if (write(ready[1], &next, 4) != 4)
            _exit(2);
        close(ready[1]);
        char c;
        if (read(go[0], &c, 1) != 1)
            _exit(3);
        long got = pump(sp[1], next, next + LIMIT_EXTRA, "child");
        _exit(got >= LIMIT_EXTRA && wl_failures == 0 ? 0 : 4);
    }
    close(sp[1]);
    close(go[0]);
    close(ready[1]);
    sp_parent = sp[0];
    fill(sp_parent, &sent_parent);
    uint32_t child_sent;
    if (read(ready[0], &child_sent, 4) != 4)
        wl_die("child not ready");
    close(ready[0]);
    fprintf(stderr, "unix: %u counters queued to the child, %u from it\n", sent_parent, child_sent);

    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, seq) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg))
        wl_die("socketpair seq/dgram");
    send_msgs(seq[0], 1);
    send_msgs(seq[1], 10);
    send_msgs(dg[0], 20);
    send_msgs(dg[1], 30);

    struct sockaddr_un a;
    socklen_t len;
    unlink("lsock");
    lpath = socket(AF_UNIX, SOCK_STREAM, 0);
    len = mkaddr(&a, "lsock", 0);
    if (bind(lpath, (struct sockaddr *)&a, len) || listen(lpath, 8))
        wl_die("bind lsock");
    snprintf(absname, sizeof(absname), "ckpt-unix-%d", (int)getpid());
    lab = socket(AF_UNIX, SOCK_STREAM, 0);
    len = mkaddr(&a, absname, 1);
    if (bind(lab, (struct sockaddr *)&a, len) || listen(lab, 8))
        wl_die("bind abstract");

    /* accepted connection with data both ways */
    acc_cli = socket(AF_UNIX, SOCK_STREAM, 0);
    len = mkaddr(&a, "lsock", 0);
    if (connect(acc_cli, (struct sockaddr *)&a, len))
        wl_die("connect acc");
    acc_srv = accept(lpath, NULL, NULL);
    if (acc_srv < 0 || write(acc_cli, "to-server", 9) != 9 || write(acc_srv, "to-client", 9) != 9)
        wl_die("accepted");
    /* a client whose accepted end was closed after sending */
    gone_cli = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(gone_cli, (struct sockaddr *)&a, len))
        wl_die("connect gone");
    int gs = accept(lpath, NULL, NULL);
    if (gs < 0 || write(gs, "last", 4) != 4)
        wl_die("accept gone");
    close(gs);
    /* backlog client, not accepted */
    bl_client = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(bl_client, (struct sockaddr *)&a, len))
        wl_die("connect backlog");

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, shp))
        wl_die("socketpair shut");
    if (write(shp[0], "tail", 4) != 4 || shutdown(shp[0], SHUT_WR))
        wl_die("shut");
    int g[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, g))
        wl_die("socketpair gone");
    if (write(g[0], "bye", 3) != 3)
        wl_die("bye");
    close(g[0]);
    gone_b = g[1];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, g))
        wl_die("socketpair dgram gone");
    if (send(g[0], "dg-bye", 6, 0) != 6)
        wl_die("dg-bye");
    close(g[0]);
    dgone = g[1];

    int o[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, o))
        wl_die("socketpair opt");
    opt_fd = o[0];
    opt_peer = o[1];
    set_nonblock(opt_fd, 1);
    struct timeval tv = {3, 250000};
    int one = 1, off = 2, sndbuf = 65536;
    if (setsockopt(opt_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
        setsockopt(opt_fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) ||
        setsockopt(opt_peer, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) ||
        setsockopt(opt_peer, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)))
        wl_die("setsockopt");
    /* (The kernel keeps timeouts in jiffies: what it gives back is the
     * reference.) */
    socklen_t tl = sizeof(rcvtimeo);
    getsockopt(opt_fd, SOL_SOCKET, SO_RCVTIMEO, &rcvtimeo, &tl);
    /* opt_peer has a peek offset of 2 into "abcdef". */
    if (write(opt_fd, "abcdef", 6) != 6)
        wl_die("write abcdef");

    /* datagrams from a bound sender to a bound receiver */
    char rn[64], sn[64];
    snprintf(rn, sizeof(rn), "ckpt-unix-r-%d", (int)getpid());
    snprintf(sn, sizeof(sn), "ckpt-unix-s-%d", (int)getpid());
    dn_recv = socket(AF_UNIX, SOCK_DGRAM, 0);
    dn_send = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un ra, sa;
    socklen_t rl = mkaddr(&ra, rn, 1), sl = mkaddr(&sa, sn, 1);
    if (bind(dn_recv, (struct sockaddr *)&ra, rl) || bind(dn_send, (struct sockaddr *)&sa, sl))
        wl_die("bind dgram names");
    if (sendto(dn_send, "d1", 2, 0, (struct sockaddr *)&ra, rl) != 2 ||
        sendto(dn_send, "dgram-2", 7, 0, (struct sockaddr *)&ra, rl) != 7)
        wl_die("sendto");
    return 0;
}

static void verify_all(void)
{
    WL_CHECK(write(go[1], "g", 1) == 1, "wake the child");
    long got = pump(sp_parent, sent_parent, sent_parent + LIMIT_EXTRA, "parent");
    WL_CHECK(got >= LIMIT_EXTRA, "parent read only %ld counters", got);
    int st = 0;
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "child status %#x", st);

    check_msgs(seq[1], 1, "seqpacket 0->1");
    check_msgs(seq[0], 10, "seqpacket 1->0");
    check_msgs(dg[1], 20, "dgram 0->1");
    check_msgs(dg[0], 30, "dgram 1->0");

    /* backlog: accept the waiting client (first in the queue) */
    set_nonblock(lpath, 1);
    int s = accept(lpath, NULL, NULL);
    WL_CHECK(s >= 0, "backlog client not in the queue: %s", strerror(errno));
    if (s >= 0) {
        WL_CHECK(write(bl_client, "from-client", 11) == 11, "backlog write");
        WL_CHECK(write(s, "from-server", 11) == 11, "backlog write back");
        expect_read(s, "from-client", "backlog server");
        expect_read(bl_client, "from-server", "backlog client");
        close(s);
    }
    s = accept(lpath, NULL, NULL);
    WL_CHECK(s < 0 && errno == EAGAIN, "a second connection in the backlog");
    set_nonblock(lpath, 0);
    connect_and_accept(lpath, "lsock", 0, "path listener");
    connect_and_accept(lab, absname, 1, "abstract listener");

    expect_read(acc_srv, "to-server", "accepted server");
    expect_read(acc_cli, "to-client", "accepted client");
    struct sockaddr_un a;
    socklen_t len = sizeof(a);
    WL_CHECK(getsockname(acc_srv, (struct sockaddr *)&a, &len) == 0 && strcmp(a.sun_path, "lsock") == 0,
             "accepted server's name is \"%s\"", a.sun_path);
    len = sizeof(a);
    WL_CHECK(getpeername(acc_cli, (struct sockaddr *)&a, &len) == 0 && strcmp(a.sun_path, "lsock") == 0,
             "accepted client's peer is \"%s\"", a.sun_path);

    expect_read(shp[1], "tail", "shutdown peer");
    char b[8];
    WL_CHECK(recv(shp[1], b, 8, MSG_DONTWAIT) == 0, "no EOF after the tail");
    WL_CHECK(send(shp[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "write after SHUT_WR works");
    WL_CHECK(write(shp[1], "back", 4) == 4, "the other way is open");
    expect_read(shp[0], "back", "shutdown writer");

    expect_read(gone_cli, "last", "client of a closed accepted socket");
    WL_CHECK(recv(gone_cli, b, 8, MSG_DONTWAIT) == 0, "no EOF after last");
    len = sizeof(a);
    memset(&a, 0, sizeof(a));
    WL_CHECK(getpeername(gone_cli, (struct sockaddr *)&a, &len) == 0 && strcmp(a.sun_path, "lsock") == 0,
             "closed accepted socket's name is \"%s\"", a.sun_path);
    expect_read(gone_b, "bye", "closed peer");
    WL_CHECK(recv(gone_b, b, 8, MSG_DONTWAIT) == 0, "no EOF after bye");
    expect_read(dgone, "dg-bye", "datagram from a closed peer");
    WL_CHECK(send(dgone, "x", 1, MSG_DONTWAIT) < 0 && errno == ECONNREFUSED,
             "send to the closed datagram peer: %s, want ECONNREFUSED", strerror(errno));
    WL_CHECK(send(dgone, "x", 1, MSG_DONTWAIT) < 0 && errno == ENOTCONN,
             "second send to the closed datagram peer: %s, want ENOTCONN", strerror(errno));

    WL_CHECK(fcntl(opt_fd, F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
    WL_CHECK(!(fcntl(opt_peer, F_GETFL) & O_NONBLOCK), "O_NONBLOCK gained");
    struct timeval tv;
    socklen_t tl = sizeof(tv);
    getsockopt(opt_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &tl);
    WL_CHECK(tv.tv_sec == rcvtimeo.tv_sec && tv.tv_usec == rcvtimeo.tv_usec,
             "SO_RCVTIMEO %ld.%06ld, was %ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec,
             (long)rcvtimeo.tv_sec, (long)rcvtimeo.tv_usec);
    int v = 0;
    tl = sizeof(v);
    getsockopt(opt_fd, SOL_SOCKET, SO_PASSCRED, &v, &tl);
    WL_CHECK(v == 1, "SO_PASSCRED %d", v);
    getsockopt(opt_peer, SOL_SOCKET, SO_SNDBUF, &v, &tl);
    WL_CHECK(v == 131072, "SO_SNDBUF %d", v);
    getsockopt(opt_peer, SOL_SOCKET, SO_PEEK_OFF, &v, &tl);
    WL_CHECK(v == 2, "SO_PEEK_OFF %d", v);
    char pk[8] = {0};
    WL_CHECK(recv(opt_peer, pk, 2, MSG_PEEK | MSG_DONTWAIT) == 2 && memcmp(pk, "cd", 2) == 0,
             "peek at offset 2 gave \"%s\"", pk);
    expect_read(opt_peer, "abcdef", "options pair");

    struct sockaddr_un from;
    char sn[64], buf[16];
    snprintf(sn, sizeof(sn), "ckpt-unix-s-%d", (int)wl_pid);
    const char *want[2] = {"d1", "dgram-2"};
    for (int i = 0; i < 2; i++) {
        socklen_t fl = sizeof(from);
        memset(buf, 0, sizeof(buf));
        memset(&from, 0, sizeof(from));
        ssize_t r = recvfrom(dn_recv, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        WL_CHECK(r == (ssize_t)strlen(want[i]) && memcmp(buf, want[i], (size_t)r) == 0,
                 "named datagram %d: \"%s\"", i, buf);
        size_t nl = fl > offsetof(struct sockaddr_un, sun_path) + 1
                        ? fl - offsetof(struct sockaddr_un, sun_path) - 1
                        : 0;
        WL_CHECK(nl == strlen(sn) && from.sun_path[0] == 0 && memcmp(from.sun_path + 1, sn, nl) == 0,
                 "named datagram %d from \"%.*s\"", i, (int)nl, from.sun_path + 1);
    }
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "unix");
    const char *mode = argc > 3 ? argv[3] : "all";
    int fds[2] = {-1, -1};
    if (!strcmp(mode, "all")) {
        do_all();
    } else if (!strcmp(mode, "outside")) {
        struct sockaddr_un a;
        socklen_t len = mkaddr(&a, argv[4], 0);
        fds[0] = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fds[0], (struct sockaddr *)&a, len))
            wl_die("connect %s", argv[4]);
    } else if (!strcmp(mode, "scm")) {
        if (socketpair(AF_UNIX, SOCK_DGRAM, 0, fds))
            wl_die("socketpair");
        int passed = open("/dev/null", O_RDONLY | O_CLOEXEC);
        char c = 'x';
        struct iovec iov = {&c, 1};
        char ctl[CMSG_SPACE(sizeof(int))];
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                           .msg_controllen = sizeof(ctl)};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &passed, sizeof(int));
        if (sendmsg(fds[0], &m, 0) != 1)
            wl_die("sendmsg");
        close(passed);
    } else if (!strcmp(mode, "embryo")) {
        struct sockaddr_un a;
        char name[64];
        snprintf(name, sizeof(name), "ckpt-unix-e-%d", (int)getpid());
        socklen_t len = mkaddr(&a, name, 1);
        fds[0] = socket(AF_UNIX, SOCK_STREAM, 0);
        fds[1] = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(fds[0], (struct sockaddr *)&a, len) || listen(fds[0], 4) ||
            connect(fds[1], (struct sockaddr *)&a, len) || write(fds[1], "early", 5) != 5)
            wl_die("embryo");
    } else {
        wl_die("unknown case %s", mode);
    }
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    if (!strcmp(mode, "all")) {
        verify_all();
    } else if (!strcmp(mode, "scm")) {
        /* The fd in flight is still there, untouched. */
        char c;
        struct iovec iov = {&c, 1};
        char ctl[CMSG_SPACE(sizeof(int))];
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                           .msg_controllen = sizeof(ctl)};
        WL_CHECK(recvmsg(fds[1], &m, MSG_DONTWAIT) == 1, "the message with the fd is gone");
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        WL_CHECK(cm && cm->cmsg_type == SCM_RIGHTS, "no SCM_RIGHTS after the refusal");
    } else if (!strcmp(mode, "embryo")) {
        int s = accept(fds[0], NULL, NULL);
        WL_CHECK(s >= 0, "the backlog connection is gone");
        expect_read(s, "early", "backlog data");
    }
    wl_finish();
}
