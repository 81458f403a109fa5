/*
 * files: file descriptors and file-system context.
 *
 *   rw        RESULT.rw opened O_RDWR, 20000 bytes of known content, offset 12345.
 *   dup pair  RESULT.dup opened, dup()ed: both fds share one offset (a read on
 *             one moves the other); a separate open() of the same file keeps
 *             its own offset.
 *   append    RESULT.append opened O_WRONLY|O_APPEND: writes still go to the end.
 *   unlinked  RESULT.unlinked written, offset 777, then unlinked while open:
 *             nlink 0, content and offset intact.
 *   cloexec   one fd with FD_CLOEXEC, one without (F_GETFD).
 *   nonblock  /dev/null opened O_NONBLOCK (F_GETFL), the others without.
 *   high fd   RESULT.high dup2()ed to fd 1000.
 *   devices   /dev/null, /dev/zero (reads zeros), /dev/urandom (reads), with
 *             the right device numbers.
 *   dir fd    RESULT.d opened O_DIRECTORY: fstat is a directory, fchdir works.
 *   cwd       changed to RESULT.cwd (not the directory the harness started it
 *             in): getcwd must match.
 *   umask     027.
 *   stdio     stdout/stderr are the harness's log (one shared O_APPEND file).
 * Plus the common check that the set of open fds is unchanged.
 */
#include "wl.h"

#include <limits.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#define RW_SIZE 20000
#define RW_OFFSET 12345
#define UNLINKED_SIZE 10000
#define UNLINKED_OFFSET 777
#define HIGH_FD 1000

static char p_rw[PATH_MAX], p_dup[PATH_MAX], p_append[PATH_MAX], p_unlinked[PATH_MAX],
    p_high[PATH_MAX], p_dir[PATH_MAX], p_cwd[PATH_MAX], real_dir[PATH_MAX], real_cwd[PATH_MAX];

static int fd_rw, fd_dup_a, fd_dup_b, fd_dup_other, fd_append, fd_unlinked, fd_null, fd_zero,
    fd_urandom, fd_dir;

static uint8_t byte_at(uint64_t seed, size_t off)
{
    return (uint8_t)((off * 131 + seed * 7 + (off >> 8)) & 0xff);
}

static void write_pattern(const char *path, size_t len, uint64_t seed)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        wl_die("open(%s)", path);
    uint8_t *buf = malloc(len);
    for (size_t i = 0; i < len; i++)
        buf[i] = byte_at(seed, i);
    if (write(fd, buf, len) != (ssize_t)len)
        wl_die("write(%s)", path);
    free(buf);
    close(fd);
}

static int xopen(const char *path, int flags)
{
    int fd = open(path, flags, 0644);
    if (fd < 0)
        wl_die("open(%s)", path);
    return fd;
}

static off_t pos(int fd)
{
    return lseek(fd, 0, SEEK_CUR);
}

static void setup(void)
{
    snprintf(p_rw, sizeof(p_rw), "%s.rw", wl_result);
    snprintf(p_dup, sizeof(p_dup), "%s.dup", wl_result);
    snprintf(p_append, sizeof(p_append), "%s.append", wl_result);
    snprintf(p_unlinked, sizeof(p_unlinked), "%s.unlinked", wl_result);
    snprintf(p_high, sizeof(p_high), "%s.high", wl_result);
    snprintf(p_dir, sizeof(p_dir), "%s.d", wl_result);
    snprintf(p_cwd, sizeof(p_cwd), "%s.cwd", wl_result);

    write_pattern(p_rw, RW_SIZE, 1);
    fd_rw = xopen(p_rw, O_RDWR); /* without O_CLOEXEC */
    if (lseek(fd_rw, RW_OFFSET, SEEK_SET) != RW_OFFSET)
        wl_die("lseek rw");

    write_pattern(p_dup, 4096, 2);
    fd_dup_a = xopen(p_dup, O_RDONLY | O_CLOEXEC);
    fd_dup_b = dup(fd_dup_a); /* dup() clears FD_CLOEXEC on the new fd */
    if (fd_dup_b < 0)
        wl_die("dup");
    if (lseek(fd_dup_a, 100, SEEK_SET) != 100)
        wl_die("lseek dup");
    fd_dup_other = xopen(p_dup, O_RDONLY | O_CLOEXEC);
    if (lseek(fd_dup_other, 2000, SEEK_SET) != 2000)
        wl_die("lseek dup other");

    fd_append = xopen(p_append, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC);
    if (write(fd_append, "abc", 3) != 3)
        wl_die("write append");

    write_pattern(p_unlinked, UNLINKED_SIZE, 3);
    fd_unlinked = xopen(p_unlinked, O_RDWR | O_CLOEXEC);
    if (lseek(fd_unlinked, UNLINKED_OFFSET, SEEK_SET) != UNLINKED_OFFSET)
        wl_die("lseek unlinked");
    if (unlink(p_unlinked) != 0)
        wl_die("unlink");

    write_pattern(p_high, 100, 4);
    int t = xopen(p_high, O_RDONLY | O_CLOEXEC);
    if (dup2(t, HIGH_FD) != HIGH_FD)
        wl_die("dup2");
    close(t);

    fd_null = xopen("/dev/null", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    fd_zero = xopen("/dev/zero", O_RDONLY | O_CLOEXEC);
    fd_urandom = xopen("/dev/urandom", O_RDONLY | O_CLOEXEC);

    if (mkdir(p_dir, 0755) != 0 && errno != EEXIST)
        wl_die("mkdir %s", p_dir);
    fd_dir = xopen(p_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!realpath(p_dir, real_dir))
        wl_die("realpath %s", p_dir);

    if (mkdir(p_cwd, 0755) != 0 && errno != EEXIST)
        wl_die("mkdir %s", p_cwd);
    if (chdir(p_cwd) != 0)
        wl_die("chdir %s", p_cwd);
    if (!getcwd(real_cwd, sizeof(real_cwd)))
        wl_die("getcwd");

    umask(027);
}

static void check_content(int fd, const char *what, off_t off, size_t len, uint64_t seed)
{
    uint8_t buf[256];
    if (len > sizeof(buf))
        len = sizeof(buf);
    ssize_t r = pread(fd, buf, len, off);
    if (r != (ssize_t)len) {
        wl_fail("%s: pread at %lld returned %zd", what, (long long)off, r);
        return;
    }
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != byte_at(seed, (size_t)off + i)) {
            wl_fail("%s: content differs at offset %lld", what, (long long)off + (long long)i);
            return;
        }
    }
}

static void check_fd_flag(int fd, const char *what, int want_cloexec, int want_nonblock)
{
    int fdf = fcntl(fd, F_GETFD), fl = fcntl(fd, F_GETFL);
    if (fdf < 0 || fl < 0) {
        wl_fail("%s: fd %d is not open (%s)", what, fd, strerror(errno));
        return;
    }
    WL_CHECK(!!(fdf & FD_CLOEXEC) == want_cloexec, "%s: fd %d FD_CLOEXEC is %s, expected %s", what,
             fd, (fdf & FD_CLOEXEC) ? "set" : "clear", want_cloexec ? "set" : "clear");
    WL_CHECK(!!(fl & O_NONBLOCK) == want_nonblock, "%s: fd %d O_NONBLOCK is %s, expected %s", what,
             fd, (fl & O_NONBLOCK) ? "set" : "clear", want_nonblock ? "set" : "clear");
}

static void check_same_file(int fd, const char *path, const char *what)
{
    struct stat a, b;
    if (fstat(fd, &a) != 0 || stat(path, &b) != 0) {
        wl_fail("%s: stat failed: %s", what, strerror(errno));
        return;
    }
    WL_CHECK(a.st_dev == b.st_dev && a.st_ino == b.st_ino, "%s: fd %d is not %s", what, fd, path);
}

static void check_device(int fd, const char *path, unsigned maj, unsigned min)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        wl_fail("%s: fstat: %s", path, strerror(errno));
        return;
    }
    WL_CHECK(S_ISCHR(st.st_mode) && major(st.st_rdev) == maj && minor(st.st_rdev) == min,
             "fd %d should be %s (%u:%u), is mode 0%o rdev %u:%u", fd, path, maj, min, st.st_mode,
             major(st.st_rdev), minor(st.st_rdev));
}

static void verify(void)
{
    /* rw: offset, content, access mode */
    WL_CHECK(pos(fd_rw) == RW_OFFSET, "rw: offset %lld, expected %d", (long long)pos(fd_rw),
             RW_OFFSET);
    WL_CHECK((fcntl(fd_rw, F_GETFL) & O_ACCMODE) == O_RDWR, "rw: not O_RDWR");
    check_same_file(fd_rw, p_rw, "rw");
    check_content(fd_rw, "rw", RW_OFFSET, 200, 1);
    uint8_t b;
    WL_CHECK(read(fd_rw, &b, 1) == 1 && b == byte_at(1, RW_OFFSET) && pos(fd_rw) == RW_OFFSET + 1,
             "rw: read at the restored offset gave the wrong byte or did not advance it");

    /* dup pair: one shared offset; the separate open has its own */
    WL_CHECK(pos(fd_dup_a) == 100 && pos(fd_dup_b) == 100, "dup: offsets %lld/%lld, expected 100",
             (long long)pos(fd_dup_a), (long long)pos(fd_dup_b));
    WL_CHECK(pos(fd_dup_other) == 2000, "separate open: offset %lld, expected 2000",
             (long long)pos(fd_dup_other));
    uint8_t buf[64];
    WL_CHECK(read(fd_dup_a, buf, 10) == 10, "dup: read failed");
    WL_CHECK(pos(fd_dup_b) == 110,
             "dup: read on one fd moved the other to %lld, expected 110 (not shared any more?)",
             (long long)pos(fd_dup_b));
    WL_CHECK(pos(fd_dup_other) == 2000, "separate open moved with the dup pair (to %lld)",
             (long long)pos(fd_dup_other));
    check_content(fd_dup_a, "dup", 0, 200, 2);
    check_same_file(fd_dup_b, p_dup, "dup");

    /* append */
    WL_CHECK(fcntl(fd_append, F_GETFL) & O_APPEND, "append: O_APPEND lost");
    lseek(fd_append, 0, SEEK_SET);
    WL_CHECK(write(fd_append, "def", 3) == 3, "append: write failed");
    {
        char got[16] = {0};
        int fd = open(p_append, O_RDONLY | O_CLOEXEC);
        ssize_t r = fd >= 0 ? read(fd, got, sizeof(got) - 1) : -1;
        if (fd >= 0)
            close(fd);
        WL_CHECK(r == 6 && memcmp(got, "abcdef", 6) == 0,
                 "append: file holds \"%s\", expected \"abcdef\"", got);
    }

    /* unlinked but open */
    struct stat st;
    WL_CHECK(fstat(fd_unlinked, &st) == 0 && st.st_nlink == 0 && st.st_size == UNLINKED_SIZE,
             "unlinked: nlink %lu size %lld, expected 0 and %d", (unsigned long)st.st_nlink,
             (long long)st.st_size, UNLINKED_SIZE);
    WL_CHECK(pos(fd_unlinked) == UNLINKED_OFFSET, "unlinked: offset %lld, expected %d",
             (long long)pos(fd_unlinked), UNLINKED_OFFSET);
    for (off_t off = 0; off < UNLINKED_SIZE; off += 250)
        check_content(fd_unlinked, "unlinked", off, 250, 3);
    WL_CHECK(access(p_unlinked, F_OK) != 0, "unlinked: %s exists again", p_unlinked);

    /* descriptor and status flags */
    check_fd_flag(fd_rw, "rw", 0, 0);
    check_fd_flag(fd_dup_a, "dup original", 1, 0);
    check_fd_flag(fd_dup_b, "dup copy", 0, 0);
    check_fd_flag(fd_null, "/dev/null", 1, 1);
    check_fd_flag(fd_zero, "/dev/zero", 1, 0);
    check_fd_flag(HIGH_FD, "high fd", 0, 0);

    /* high fd */
    check_same_file(HIGH_FD, p_high, "high fd");
    check_content(HIGH_FD, "high fd", 0, 100, 4);

    /* devices */
    check_device(fd_null, "/dev/null", 1, 3);
    check_device(fd_zero, "/dev/zero", 1, 5);
    check_device(fd_urandom, "/dev/urandom", 1, 9);
    WL_CHECK(write(fd_null, "x", 1) == 1, "/dev/null: write failed");
    memset(buf, 0xff, sizeof(buf));
    WL_CHECK(read(fd_zero, buf, sizeof(buf)) == (ssize_t)sizeof(buf), "/dev/zero: read failed");
    for (size_t i = 0; i < sizeof(buf); i++)
        if (buf[i] != 0) {
            wl_fail("/dev/zero: byte %zu is 0x%02x", i, buf[i]);
            break;
        }
    WL_CHECK(read(fd_urandom, buf, 16) == 16, "/dev/urandom: read failed");

    /* directory fd */
    WL_CHECK(fstat(fd_dir, &st) == 0 && S_ISDIR(st.st_mode), "dir fd: not a directory");
    check_same_file(fd_dir, p_dir, "dir fd");
    char cwd[PATH_MAX];
    if (fchdir(fd_dir) != 0) {
        wl_fail("fchdir(dir fd): %s", strerror(errno));
    } else {
        WL_CHECK(getcwd(cwd, sizeof(cwd)) && strcmp(cwd, real_dir) == 0,
                 "after fchdir cwd is %s, expected %s", cwd, real_dir);
    }

    /* umask (read it by setting it) */
    mode_t old = umask(022);
    WL_CHECK(old == 027, "umask is 0%03o, expected 027", (unsigned)old);
    umask(old);

    /* stdio: the harness's log file, one shared open file description */
    struct stat s1, s2;
    WL_CHECK(fstat(1, &s1) == 0 && fstat(2, &s2) == 0 && s1.st_ino == s2.st_ino &&
                 s1.st_dev == s2.st_dev && S_ISREG(s1.st_mode),
             "stdout/stderr are not the same regular file");
    WL_CHECK(fcntl(1, F_GETFL) & O_APPEND, "stdout lost O_APPEND");
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "files");
    setup();
    wl_ready();
    while (!wl_term)
        wl_sleep_ns(10 * 1000 * 1000);
    /* cwd before fchdir moves it */
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        wl_fail("getcwd: %s", strerror(errno));
    else
        WL_CHECK(strcmp(cwd, real_cwd) == 0, "cwd is %s, expected %s", cwd, real_cwd);
    wl_verify_common();
    verify();
    wl_finish();
}
