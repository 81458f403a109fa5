/*
 * tcp: TCP sockets survive a restart (argv[3] is the case).
 *
 *   stream4, stream6  a loopback connection (127.0.0.1 / ::1) between the
 *          parent and a child: before "ready" each side writes numbered
 *          bytes without reading, until the socket takes no more (so both
 *          queues hold data at checkpoint, both ways); after SIGTERM both
 *          sides go on until each has sent and received TOTAL bytes, each
 *          byte checked: none lost, none repeated.
 *   ext4   a server for a client outside the tree (the test): it writes
 *          its port to RESULT.port; after "ready" it accepts one
 *          connection, sends 100000 numbered bytes, reads 100000, sends
 *          100000 more, reads 100000 more (the test checkpoints and
 *          restarts it in the middle), then waits for SIGTERM.
 *   listen4, listen6  a listener with options (SO_REUSEADDR, TCP_NODELAY,
 *          keepalive, TCP_DEFER_ACCEPT...), a socket only bound and a
 *          fresh one: after restart the listener accepts connections on the
 *          same port (port in RESULT.port; each gets "hello\n"); on SIGTERM
 *          the options and addresses are checked.
 *   close4  a loopback connection inside the process and a half-closed
 *          one (FIN_WAIT2 / CLOSE_WAIT), checkpointed with --tcp-close:
 *          after restart a read on each socket gives ECONNRESET or EOF.
 *   filter  a connected socket with SO_ATTACH_FILTER (refused).
 *   ended  a connection reset by its peer (CLOSE, ECONNRESET pending;
 *          refused).
 *   filtered  an established connection, then one with a socket filter
 *          (refused); the established one still works after the refusal
 *          (its repair mode was undone).
 *   fin4, fin6  half-closed loopback connections inside the process, in
 *          every state: FIN_WAIT2 / CLOSE_WAIT (data queued both ways),
 *          LAST_ACK / FIN_WAIT2 and FIN_WAIT1 / ESTABLISHED (the FIN
 *          waits behind bytes the peer has no room for), CLOSING /
 *          FIN_WAIT2 (the FINs crossed). After restart each socket is in
 *          its state again (or the next one: a FIN waiting behind bytes
 *          may go out at once), the bytes come, reads give EOF where a FIN
 *          came, writes fail with EPIPE after our FIN, and the
 *          connections close as they would have. Also connections that
 *          ended (CLOSE): after both FINs, with bytes still to read, and
 *          after a reset whose ECONNRESET was read: bytes, then EOF,
 *          EPIPE on writes, the same SO_PEERNAME.
 *   extfw2  a server for a client outside the tree (the test; port in
 *          RESULT.port): it accepts, sends 100000 bytes and shuts down
 *          for writing (FIN_WAIT2 once the client has it all); after
 *          SIGTERM its write fails with EPIPE, and it reads 100000 bytes
 *          from the client, then EOF.
 *   extfw1  a server whose client (the test) does not read: it sends
 *          until the socket takes no more, shuts down for writing
 *          (FIN_WAIT1: the FIN waits behind bytes the client has no room
 *          for) and writes how many bytes it sent to RESULT.sent; after
 *          SIGTERM its write fails with EPIPE and it reads 10000 bytes
 *          from the client, then EOF.
 *   extcw  a server whose client (the test) sends 10000 bytes and shuts
 *          down (CLOSE_WAIT); the server writes 100000 bytes before the
 *          checkpoint; after SIGTERM it reads the 10000 bytes and EOF,
 *          sends 100000 more and closes.
 */
#include "wl.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#define TOTAL (3u << 20)
#define PHASE1_MAX (2u << 20)

static const char *which;
static int v6;

static unsigned char byte_at(uint64_t i, int side)
{
    return (unsigned char)(i ^ (i >> 8) ^ (i >> 16) ^ (side * 0x5a));
}

static void write_port(int port)
{
    char path[3100];
    snprintf(path, sizeof(path), "%s.port", wl_result);
    FILE *f = fopen(path, "w");
    if (!f)
        wl_die("open %s", path);
    fprintf(f, "%d\n", port);
    fclose(f);
}

static int sock_port(int s)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(s, (struct sockaddr *)&ss, &len) != 0)
        wl_die("getsockname");
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void loopback(struct sockaddr_storage *ss, socklen_t *len, int port)
{
    memset(ss, 0, sizeof(*ss));
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        a->sin6_port = htons(port);
        *len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a->sin_port = htons(port);
        *len = sizeof(*a);
    }
}

static int listener(int reuse)
{
    int l = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (l < 0)
        wl_die("socket");
    int one = 1;
    if (reuse && setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        wl_die("SO_REUSEADDR");
    struct sockaddr_storage ss;
    socklen_t len;
    loopback(&ss, &len, 0);
    if (bind(l, (struct sockaddr *)&ss, len) != 0)
        wl_die("bind");
    if (listen(l, 16) != 0)
        wl_die("listen");
    return l;
}

/* A connected pair in this process: (client, server). */
static void pair(int *c, int *s)
{
    int l = listener(1);
    *c = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage ss;
    socklen_t len;
    loopback(&ss, &len, sock_port(l));
    if (*c < 0 || connect(*c, (struct sockaddr *)&ss, len) != 0)
        wl_die("connect");
    *s = accept(l, NULL, NULL);
    if (*s < 0)
        wl_die("accept");
    close(l);
}

static void set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
}

/* Phase 1: writes without reading until the socket takes no more. */
static uint64_t fill(int s, int side)
{
    unsigned char buf[65536];
    uint64_t sent = 0;
    set_nonblock(s, 1);
    while (sent < PHASE1_MAX) {
        size_t n = sizeof(buf);
        if (n > PHASE1_MAX - sent)
            n = PHASE1_MAX - sent;
        for (size_t i = 0; i < n; i++)
            buf[i] = byte_at(sent + i, side);
        ssize_t w = send(s, buf, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0)
            wl_die("send");
        sent += w;
    }
    return sent;
}

/* Phase 2: sends from `sent` up to TOTAL and receives up to TOTAL,
 * checking every byte of `peer`'s stream. Returns 0 if all is well. */
static int exchange(int s, int side, uint64_t sent, const char *who)
{
    unsigned char buf[65536];
    uint64_t got = 0;
    set_nonblock(s, 1);
    double deadline = wl_monotonic() + 60;
    while (sent < TOTAL || got < TOTAL) {
        if (wl_monotonic() > deadline) {
            wl_fail("%s: timeout: sent %llu, received %llu of %u", who,
                    (unsigned long long)sent, (unsigned long long)got, TOTAL);
            return 1;
        }
        struct pollfd p = {s, (short)((got < TOTAL ? POLLIN : 0) | (sent < TOTAL ? POLLOUT : 0)),
                           0};
        if (poll(&p, 1, 1000) < 0 && errno != EINTR)
            wl_die("poll");
        if (sent < TOTAL) {
            size_t n = sizeof(buf);
            if (n > TOTAL - sent)
                n = TOTAL - sent;
            for (size_t i = 0; i < n; i++)
                buf[i] = byte_at(sent + i, side);
            ssize_t w = send(s, buf, n, MSG_NOSIGNAL);
            if (w > 0)
                sent += w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                wl_fail("%s: send: %s", who, strerror(errno));
                return 1;
            }
        }
        if (got < TOTAL) {
            ssize_t r = recv(s, buf, sizeof(buf), 0);
            if (r == 0) {
                wl_fail("%s: EOF after %llu bytes", who, (unsigned long long)got);
                return 1;
            }
            if (r < 0 && errno != EAGAIN && errno != EINTR) {
                wl_fail("%s: recv after %llu bytes: %s", who, (unsigned long long)got,
                        strerror(errno));
                return 1;
            }
            for (ssize_t i = 0; i < r; i++) {
                if (buf[i] != byte_at(got + i, !side)) {
                    wl_fail("%s: byte %llu is %u, not %u", who, (unsigned long long)(got + i),
                            buf[i], byte_at(got + i, !side));
                    return 1;
                }
            }
            if (r > 0)
                got += r;
        }
    }
    return 0;
}

static void do_stream(void)
{
    int c, s;
    pair(&c, &s);
    int go[2], done[2];
    if (pipe(go) != 0 || pipe(done) != 0)
        wl_die("pipe");
    pid_t child = fork();
    if (child == 0) {
        close(s);
        close(go[1]);
        close(done[0]);
        uint64_t sent = fill(c, 1);
        if (write(done[1], "x", 1) != 1)
            _exit(2);
        char x;
        if (read(go[0], &x, 1) != 1)
            _exit(2);
        _exit(exchange(c, 1, sent, "child") ? 1 : 0);
    }
    close(c);
    close(go[0]);
    close(done[1]);
    uint64_t sent = fill(s, 0);
    char x;
    if (read(done[0], &x, 1) != 1)
        wl_die("child did not fill");
    close(done[0]);
    fprintf(stderr, "tcp: parent wrote %llu before ready\n", (unsigned long long)sent);
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    if (write(go[1], "g", 1) != 1)
        wl_die("go");
    close(go[1]);
    exchange(s, 0, sent, "parent");
    int st;
    if (waitpid(child, &st, 0) != child)
        wl_die("waitpid");
    WL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exited with status %#x", st);
    close(s);
}

static int write_all(int fd, const unsigned char *b, size_t n)
{
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= w;
    }
    return 0;
}

static int read_check(int fd, uint64_t from, size_t n, int side)
{
    unsigned char buf[8192];
    while (n) {
        ssize_t r = read(fd, buf, n < sizeof(buf) ? n : sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            wl_fail("ext: read at %llu: %zd (%s)", (unsigned long long)from, r, strerror(errno));
            return -1;
        }
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != byte_at(from + i, side)) {
                wl_fail("ext: byte %llu from the client is wrong", (unsigned long long)(from + i));
                return -1;
            }
        from += r;
        n -= r;
    }
    return 0;
}

static void do_ext(void)
{
    int l = listener(1);
    write_port(sock_port(l));
    wl_ready();
    int s = accept(l, NULL, NULL);
    if (s < 0)
        wl_die("accept");
    unsigned char buf[200000];
    for (int i = 0; i < 200000; i++)
        buf[i] = byte_at(i, 0);
    int ok = write_all(s, buf, 100000) == 0 && read_check(s, 0, 100000, 1) == 0 &&
             write_all(s, buf + 100000, 100000) == 0 && read_check(s, 100000, 100000, 1) == 0;
    WL_CHECK(ok, "ext: the exchange with the client failed");
    while (!wl_term)
        pause();
    close(s);
}

static int opt(int s, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof(v);
    if (getsockopt(s, level, name, &v, &len) != 0)
        return -1;
    return v;
}

static void do_listen(void)
{
    int l = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int one = 1, idle = 77, cnt = 5, defer = 3;
    struct linger lin = {1, 9};
    struct timeval tv = {4, 500000};
    if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
        setsockopt(l, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
        setsockopt(l, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) ||
        setsockopt(l, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) ||
        setsockopt(l, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) ||
        setsockopt(l, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)) ||
        setsockopt(l, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin)) ||
        setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)))
        wl_die("listener options");
    if (v6 && setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)))
        wl_die("IPV6_V6ONLY");
    struct sockaddr_storage ss;
    socklen_t len;
    loopback(&ss, &len, 0);
    if (bind(l, (struct sockaddr *)&ss, len) != 0 || listen(l, 7) != 0)
        wl_die("bind/listen");
    int port = sock_port(l);
    /* A socket only bound, and a fresh one. */
    int b = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    loopback(&ss, &len, 0);
    if (b < 0 || bind(b, (struct sockaddr *)&ss, len) != 0)
        wl_die("bind b");
    int bport = sock_port(b);
    int fresh = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fresh < 0)
        wl_die("socket");
    write_port(port);
    wl_ready();
    int served = 0;
    while (!wl_term) {
        struct pollfd p = {l, POLLIN, 0};
        if (poll(&p, 1, -1) <= 0)
            continue;
        int a = accept(l, NULL, NULL);
        if (a < 0)
            continue;
        char x;
        /* (Its byte read first: closing with unread data would reset.) */
        if (read(a, &x, 1) == 1 && write(a, "hello\n", 6) == 6)
            served++;
        close(a);
    }
    wl_verify_common();
    WL_CHECK(served >= 1, "listen: served %d connections", served);
    WL_CHECK(sock_port(l) == port, "listen: port %d, was %d", sock_port(l), port);
    WL_CHECK(sock_port(b) == bport, "bound: port %d, was %d", sock_port(b), bport);
    WL_CHECK(sock_port(fresh) == 0, "fresh socket got bound");
    WL_CHECK(opt(l, SOL_SOCKET, SO_ACCEPTCONN) == 1, "not listening");
    WL_CHECK(opt(l, SOL_SOCKET, SO_REUSEADDR) == 1, "SO_REUSEADDR lost");
    WL_CHECK(opt(l, IPPROTO_TCP, TCP_NODELAY) == 1, "TCP_NODELAY lost");
    WL_CHECK(opt(l, SOL_SOCKET, SO_KEEPALIVE) == 1, "SO_KEEPALIVE lost");
    WL_CHECK(opt(l, IPPROTO_TCP, TCP_KEEPIDLE) == 77, "TCP_KEEPIDLE lost");
    WL_CHECK(opt(l, IPPROTO_TCP, TCP_KEEPCNT) == 5, "TCP_KEEPCNT lost");
    WL_CHECK(opt(l, IPPROTO_TCP, TCP_DEFER_ACCEPT) > 0, "TCP_DEFER_ACCEPT lost");
    WL_CHECK(!v6 || opt(l, IPPROTO_IPV6, IPV6_V6ONLY) == 1, "IPV6_V6ONLY lost");
    struct linger lin2;
    socklen_t ll = sizeof(lin2);
    getsockopt(l, SOL_SOCKET, SO_LINGER, &lin2, &ll);
    WL_CHECK(lin2.l_onoff == 1 && lin2.l_linger == 9, "SO_LINGER lost");
    struct timeval tv2;
    socklen_t tl = sizeof(tv2);
    getsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv2, &tl);
    WL_CHECK(tv2.tv_sec == 4 && tv2.tv_usec == 500000, "SO_RCVTIMEO lost");
    close(l);
    close(b);
    close(fresh);
}

static int tcp_state(int s);
static int wait_state(int s, int st, const char *who);

static void do_close(void)
{
    int c, s, hc, hs;
    pair(&c, &s);
    if (write(c, "abc", 3) != 3)
        wl_die("write");
    /* And a half-closed pair: hc FIN_WAIT2, hs CLOSE_WAIT. */
    pair(&hc, &hs);
    if (shutdown(hc, SHUT_WR) != 0 || wait_state(hc, 5, "hc") || wait_state(hs, 8, "hs"))
        wl_die("half-closed pair");
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    char buf[16];
    ssize_t r = read(s, buf, sizeof(buf));
    WL_CHECK(r == 0 || (r < 0 && errno == ECONNRESET),
             "close: read on the reset connection gave %zd (%s)", r, strerror(errno));
    r = read(c, buf, sizeof(buf));
    WL_CHECK(r == 0 || (r < 0 && errno == ECONNRESET),
             "close: read on the other end gave %zd (%s)", r, strerror(errno));
    for (int i = 0; i < 2; i++) {
        r = read(i ? hs : hc, buf, sizeof(buf));
        WL_CHECK(r == 0 || (r < 0 && errno == ECONNRESET),
                 "close: read on the half-closed %s gave %zd (%s)", i ? "hs" : "hc", r,
                 strerror(errno));
    }
    close(c);
    close(s);
    close(hc);
    close(hs);
}

static void do_filter(void)
{
    int c, s;
    pair(&c, &s);
    struct sock_filter code[] = {{BPF_RET | BPF_K, 0, 0, 0xffff}};
    struct sock_fprog prog = {1, code};
    if (setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0)
        wl_die("SO_ATTACH_FILTER");
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    WL_CHECK(write(c, "x", 1) == 1, "write");
    char x;
    WL_CHECK(read(s, &x, 1) == 1 && x == 'x', "filtered socket does not work");
    close(c);
    close(s);
}

static void do_ended(void)
{
    int c, s;
    pair(&c, &s);
    /* Reset by the peer: `c` is in CLOSE with ECONNRESET pending. */
    struct linger lin = {1, 0};
    if (setsockopt(s, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin)) != 0)
        wl_die("SO_LINGER");
    close(s);
    struct pollfd p = {c, POLLIN, 0};
    poll(&p, 1, 5000);
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    char x;
    ssize_t r = read(c, &x, 1);
    WL_CHECK(r < 0 && errno == ECONNRESET, "ended: read gave %zd (%s)", r, strerror(errno));
    close(c);
}

static void do_filtered(void)
{
    int c, s, hc, hs;
    pair(&c, &s);
    pair(&hc, &hs);
    struct sock_filter code[] = {{BPF_RET | BPF_K, 0, 0, 0xffff}};
    struct sock_fprog prog = {1, code};
    if (setsockopt(hs, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) != 0)
        wl_die("SO_ATTACH_FILTER");
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    /* The established pair still talks (its repair mode was undone). */
    WL_CHECK(write(c, "ping", 4) == 4, "write after refusal: %s", strerror(errno));
    char buf[4];
    WL_CHECK(read(s, buf, 4) == 4 && !memcmp(buf, "ping", 4), "read after refusal");
    WL_CHECK(write(s, "pong", 4) == 4, "write back after refusal: %s", strerror(errno));
    WL_CHECK(read(c, buf, 4) == 4 && !memcmp(buf, "pong", 4), "read back after refusal");
    close(c);
    close(s);
    close(hc);
    close(hs);
}


static const char *st_name(int st)
{
    static const char *n[] = {"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1",
                              "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK",
                              "LISTEN", "CLOSING"};
    return st >= 0 && st <= 11 ? n[st] : "?";
}

static int tcp_state(int s)
{
    struct tcp_info ti;
    socklen_t l = sizeof(ti);
    if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &l) != 0)
        return -1;
    return ti.tcpi_state;
}

/* Waits up to 10 s for socket `s` to be in state `st`. */
static int wait_state(int s, int st, const char *who)
{
    double deadline = wl_monotonic() + 10;
    while (tcp_state(s) != st) {
        if (wl_monotonic() > deadline) {
            wl_fail("%s: in state %s, not %s", who, st_name(tcp_state(s)), st_name(st));
            return -1;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Writes numbered bytes without blocking until the socket takes no more
 * (the peer does not read): bytes are left unsent. */
static uint64_t fill_all(int s, int side)
{
    int small = 32768;
    if (setsockopt(s, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) != 0)
        wl_die("SO_SNDBUF");
    unsigned char buf[4096];
    uint64_t sent = 0;
    set_nonblock(s, 1);
    for (;;) {
        for (size_t i = 0; i < sizeof(buf); i++)
            buf[i] = byte_at(sent + i, side);
        ssize_t w = send(s, buf, sizeof(buf), MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0)
            wl_die("send");
        sent += w;
    }
    set_nonblock(s, 0);
    return sent;
}

/* Reads `n` numbered bytes of `side` then expects EOF (blocking, with a
 * 10 s receive timeout). */
static int read_to_eof(int s, uint64_t n, int side, const char *who)
{
    struct timeval tv = {10, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    set_nonblock(s, 0);
    unsigned char buf[8192];
    uint64_t got = 0;
    for (;;) {
        ssize_t r = read(s, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            wl_fail("%s: read after %llu bytes: %s", who, (unsigned long long)got,
                    strerror(errno));
            return -1;
        }
        if (r == 0)
            break;
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != byte_at(got + i, side)) {
                wl_fail("%s: byte %llu is wrong", who, (unsigned long long)(got + i));
                return -1;
            }
        got += r;
    }
    if (got != n) {
        wl_fail("%s: EOF after %llu bytes, not %llu", who, (unsigned long long)got,
                (unsigned long long)n);
        return -1;
    }
    return 0;
}

static int read_str(int s, const char *want, const char *who)
{
    char buf[64];
    size_t n = strlen(want), got = 0;
    while (got < n) {
        ssize_t r = read(s, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            wl_fail("%s: read gave %zd (%s) after %zu bytes", who, r, strerror(errno), got);
            return -1;
        }
        got += r;
    }
    if (memcmp(buf, want, n)) {
        wl_fail("%s: read \"%.*s\", not \"%s\"", who, (int)n, buf, want);
        return -1;
    }
    return 0;
}

static int expect_eof(int s, const char *who)
{
    char x;
    ssize_t r = read(s, &x, 1);
    if (r != 0) {
        wl_fail("%s: read gave %zd (%s), not EOF", who, r, r < 0 ? strerror(errno) : "a byte");
        return -1;
    }
    return 0;
}

static int expect_epipe(int s, const char *who)
{
    ssize_t w = send(s, "x", 1, MSG_NOSIGNAL);
    if (!(w < 0 && errno == EPIPE)) {
        wl_fail("%s: write after our FIN gave %zd (%s), not EPIPE", who, w,
                w < 0 ? strerror(errno) : "a byte");
        return -1;
    }
    return 0;
}

#define STATE(s, st, who) WL_CHECK(tcp_state(s) == (st), "%s: state %s, not %s", who, \
                                   st_name(tcp_state(s)), st_name(st))

#define STATE2(s, a, b, who) WL_CHECK(tcp_state(s) == (a) || tcp_state(s) == (b), \
                                      "%s: state %s, not %s or %s", who, st_name(tcp_state(s)), \
                                      st_name(a), st_name(b))

static void do_fin(void)
{
    int c1, s1, c2, s2, c3, s3, c4, s4;
    /* 1: c1 FIN_WAIT2, s1 CLOSE_WAIT; bytes queued both ways. */
    pair(&c1, &s1);
    if (write(c1, "one", 3) != 3 || write(s1, "uno", 3) != 3 || shutdown(c1, SHUT_WR) != 0)
        wl_die("pair 1");
    /* 2: s2 LAST_ACK (its FIN behind bytes c2 has no room for), c2
     * FIN_WAIT2. */
    pair(&c2, &s2);
    uint64_t n2 = fill_all(s2, 0);
    if (shutdown(c2, SHUT_WR) != 0 || wait_state(s2, 8, "s2") || shutdown(s2, SHUT_WR) != 0)
        wl_die("pair 2");
    /* 3: s3 FIN_WAIT1 (FIN behind unsent bytes), c3 ESTABLISHED with
     * bytes for s3. */
    pair(&c3, &s3);
    uint64_t n3 = fill_all(s3, 0);
    if (shutdown(s3, SHUT_WR) != 0 || write(c3, "tres", 4) != 4)
        wl_die("pair 3");
    /* 4: s4 FIN_WAIT1 behind unsent bytes, then c4's FIN: s4 CLOSING, c4
     * FIN_WAIT2. */
    pair(&c4, &s4);
    uint64_t n4 = fill_all(s4, 0);
    if (shutdown(s4, SHUT_WR) != 0 || write(c4, "cuatro", 6) != 6 || shutdown(c4, SHUT_WR) != 0)
        wl_die("pair 4");
    /* 5: ended, both ways (CLOSE after both FINs), with bytes s5 has not
     * read. 6: ended by a reset whose error c6 has read. */
    int c5, s5, c6, s6;
    pair(&c5, &s5);
    if (write(c5, "cinco", 5) != 5 || shutdown(c5, SHUT_WR) != 0 || wait_state(s5, 8, "s5") ||
        shutdown(s5, SHUT_WR) != 0 || wait_state(s5, 7, "s5") || wait_state(c5, 7, "c5"))
        wl_die("pair 5");
    pair(&c6, &s6);
    struct linger lin = {1, 0};
    if (setsockopt(s6, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin)) != 0)
        wl_die("SO_LINGER");
    close(s6);
    char x;
    if (wait_state(c6, 7, "c6") || read(c6, &x, 1) != -1 || errno != ECONNRESET)
        wl_die("pair 6: no ECONNRESET");
    struct sockaddr_storage peer5, peer5b;
    socklen_t pl = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (getsockopt(s5, SOL_SOCKET, SO_PEERNAME, &peer5, &pl) != 0)
        wl_die("SO_PEERNAME");
    if (wait_state(c1, 5, "c1") || wait_state(s1, 8, "s1") || wait_state(s2, 9, "s2") ||
        wait_state(c2, 5, "c2") || wait_state(s3, 4, "s3") || wait_state(c3, 1, "c3") ||
        wait_state(s4, 11, "s4") || wait_state(c4, 5, "c4"))
        wl_die("states before the checkpoint");
    fprintf(stderr, "tcp: fin: filled %llu %llu %llu\n", (unsigned long long)n2,
            (unsigned long long)n3, (unsigned long long)n4);
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    STATE(c1, 5, "c1");
    STATE(s1, 8, "s1");
    /* The bytes behind which a FIN waits may go out at once: the restored
     * queues are not cut into the same segments, and the peer's buffer
     * is at least as large as the bytes it holds. So those connections
     * may have moved on by now, as they would have once read from. */
    STATE2(s2, 9, 7, "s2");
    STATE2(c2, 5, 7, "c2");
    STATE2(s3, 4, 5, "s3");
    STATE2(c3, 1, 8, "c3");
    STATE2(s4, 11, 7, "s4");
    STATE2(c4, 5, 7, "c4");
    /* 1: s1 reads c1's bytes then EOF and can still write; c1 reads
     * them, cannot write, and sees s1's close. */
    WL_CHECK(!read_str(s1, "one", "s1") && !expect_eof(s1, "s1"), "pair 1: s1");
    WL_CHECK(!read_str(c1, "uno", "c1") && !expect_epipe(c1, "c1"), "pair 1: c1");
    WL_CHECK(write(s1, "dos", 3) == 3, "s1: write in CLOSE_WAIT: %s", strerror(errno));
    WL_CHECK(!read_str(c1, "dos", "c1"), "pair 1: c1 reads s1's late bytes");
    close(s1);
    WL_CHECK(!expect_eof(c1, "c1"), "pair 1: c1 sees s1's FIN");
    WL_CHECK(!wait_state(c1, 7, "c1 after both FINs"), "pair 1: c1 ends");
    /* 2: c2 reads all then s2's FIN; s2 sees c2's FIN and ends when its
     * own is acknowledged. */
    WL_CHECK(!expect_eof(s2, "s2") && !expect_epipe(s2, "s2"), "pair 2: s2");
    WL_CHECK(!read_to_eof(c2, n2, 0, "c2"), "pair 2: c2 reads to EOF");
    WL_CHECK(!wait_state(s2, 7, "s2 once its FIN is acknowledged"), "pair 2: s2 ends");
    WL_CHECK(!wait_state(c2, 7, "c2 after both FINs"), "pair 2: c2 ends");
    /* 3: c3 reads all then EOF, s3 reads c3's bytes; c3 still writes. */
    WL_CHECK(!read_str(s3, "tres", "s3") && !expect_epipe(s3, "s3"), "pair 3: s3");
    WL_CHECK(!read_to_eof(c3, n3, 0, "c3"), "pair 3: c3 reads to EOF");
    WL_CHECK(!wait_state(s3, 5, "s3 once its FIN is acknowledged"), "pair 3: s3 FIN_WAIT2");
    WL_CHECK(write(c3, "mas", 3) == 3, "c3: write in CLOSE_WAIT: %s", strerror(errno));
    WL_CHECK(!read_str(s3, "mas", "s3"), "pair 3: s3 reads c3's late bytes");
    close(c3);
    WL_CHECK(!expect_eof(s3, "s3"), "pair 3: s3 sees c3's FIN");
    /* 4: both read to EOF; s4 ends once c4 acknowledges its FIN. */
    WL_CHECK(!read_str(s4, "cuatro", "s4") && !expect_eof(s4, "s4") && !expect_epipe(s4, "s4"),
             "pair 4: s4");
    WL_CHECK(!read_to_eof(c4, n4, 0, "c4"), "pair 4: c4 reads to EOF");
    WL_CHECK(!wait_state(s4, 7, "s4 once its FIN is acknowledged"), "pair 4: s4 ends");
    WL_CHECK(!wait_state(c4, 7, "c4 after both FINs"), "pair 4: c4 ends");
    /* 5, 6: ended; what was queued, then EOF; writes fail. */
    STATE(s5, 7, "s5");
    STATE(c5, 7, "c5");
    STATE(c6, 7, "c6");
    socklen_t pl2 = pl;
    WL_CHECK(getsockopt(s5, SOL_SOCKET, SO_PEERNAME, &peer5b, &pl2) == 0 && pl2 == pl &&
                 !memcmp(&peer5, &peer5b, pl),
             "s5: SO_PEERNAME changed");
    WL_CHECK(!read_str(s5, "cinco", "s5") && !expect_eof(s5, "s5") && !expect_epipe(s5, "s5"),
             "pair 5: s5");
    WL_CHECK(!expect_eof(c5, "c5") && !expect_epipe(c5, "c5"), "pair 5: c5");
    WL_CHECK(!expect_eof(c6, "c6") && !expect_epipe(c6, "c6"), "pair 6: c6");
    close(c1);
    close(c2);
    close(s2);
    close(s3);
    close(c4);
    close(s4);
    close(c5);
    close(s5);
    close(c6);
}

static void do_ext_fw1(void)
{
    int l = listener(1);
    write_port(sock_port(l));
    wl_ready();
    int s = accept(l, NULL, NULL);
    if (s < 0)
        wl_die("accept");
    uint64_t n = fill_all(s, 0);
    if (shutdown(s, SHUT_WR) != 0)
        wl_die("shutdown");
    char path[3100];
    snprintf(path, sizeof(path), "%s.sent", wl_result);
    FILE *f = fopen(path, "w");
    if (!f)
        wl_die("open %s", path);
    fprintf(f, "%llu\n", (unsigned long long)n);
    fclose(f);
    while (!wl_term)
        pause();
    WL_CHECK(!expect_epipe(s, "server"), "extfw1: write after our FIN");
    WL_CHECK(!read_to_eof(s, 10000, 1, "server"), "extfw1: the client's bytes, then EOF");
    close(s);
}

/* A server in the tree whose client is the test (see the header). */
static void do_ext_half(int cw)
{
    int l = listener(1);
    write_port(sock_port(l));
    wl_ready();
    int s = accept(l, NULL, NULL);
    if (s < 0)
        wl_die("accept");
    close(l);
    unsigned char buf[100000];
    for (int i = 0; i < 100000; i++)
        buf[i] = byte_at(i, 0);
    if (write_all(s, buf, sizeof(buf)) != 0)
        wl_die("write");
    if (!cw && shutdown(s, SHUT_WR) != 0)
        wl_die("shutdown");
    while (!wl_term)
        pause();
    /* (No wl_verify_common: the fds changed since "ready".) */
    if (cw) {
        STATE(s, 8, "server");
        WL_CHECK(!read_to_eof(s, 10000, 1, "server"), "extcw: the client's bytes, then EOF");
        for (int i = 0; i < 100000; i++)
            buf[i] = byte_at(100000 + i, 0);
        WL_CHECK(write_all(s, buf, sizeof(buf)) == 0, "extcw: write in CLOSE_WAIT: %s",
                 strerror(errno));
    } else {
        /* (Its state is the test's to check: the client's FIN may come
         * any time now.) */
        WL_CHECK(!expect_epipe(s, "server"), "extfw2: write after our FIN");
        WL_CHECK(!read_to_eof(s, 100000, 1, "server"), "extfw2: the client's bytes, then EOF");
    }
    close(s);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "tcp");
    which = argc > 3 ? argv[3] : "stream4";
    v6 = strchr(which, '6') != NULL;
    if (!strncmp(which, "stream", 6))
        do_stream();
    else if (!strcmp(which, "ext4"))
        do_ext();
    else if (!strncmp(which, "listen", 6))
        do_listen();
    else if (!strcmp(which, "close4"))
        do_close();
    else if (!strcmp(which, "filter"))
        do_filter();
    else if (!strcmp(which, "ended"))
        do_ended();
    else if (!strcmp(which, "filtered"))
        do_filtered();
    else if (!strncmp(which, "fin", 3))
        do_fin();
    else if (!strcmp(which, "extfw1"))
        do_ext_fw1();
    else if (!strcmp(which, "extfw2"))
        do_ext_half(0);
    else if (!strcmp(which, "extcw"))
        do_ext_half(1);
    else
        wl_die("unknown case %s", which);
    wl_finish();
}
