/*
 * vfubench: a raw vfio-user client in C for `just bench-reference`, which measures vfu-server
 * and a device on the reference C library (refdev.c) with the same client, next to the same
 * message pattern over a bare UNIX socketpair to a forked peer. Each mode prints one number.
 *
 *   vfubench rtt SOCKET N              ns per 8-byte REGION_READ of region 0 (N round trips)
 *   vfubench bare-rtt N                ns per round trip of the same 32/40-byte messages
 *   vfubench fill SOCKET REGION BYTES  writes BYTES of data to REGION from offset 0, 1 MiB a message
 *   vfubench mig SOCKET CHUNK N        MiB/s of a whole STOP_COPY stream read in CHUNK-byte reads:
 *                                      the median of N streams after a first one not counted
 *   vfubench bare-mig BYTES CHUNK N    the same for BYTES in the same request/reply pattern, the
 *                                      peer sending from a BYTES-byte buffer of data of its own
 *   vfubench report SOCKET GIB PAGE N  us per DMA_LOGGING_REPORT of GIB GiB of memfd RAM, logged at
 *                                      4 KiB, reported at PAGE bytes (N reports)
 *   vfubench bare-report GIB N         us per round trip of the same request and the reply of a
 *                                      4 KiB report, the peer copying and clearing that bitmap first
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { CMD_VERSION = 1, CMD_DMA_MAP = 2, CMD_REGION_READ = 9, CMD_REGION_WRITE = 10, CMD_DEVICE_FEATURE = 16,
       CMD_MIG_DATA_READ = 17 };
enum { FLAG_REPLY = 0x1, FLAG_ERROR = 0x20 };
enum { FEATURE_GET = 1 << 16, FEATURE_SET = 1 << 17, FEATURE_MIG_STATE = 2, FEATURE_LOG_START = 6,
       FEATURE_LOG_REPORT = 8 };
enum { STATE_STOP = 1, STATE_RUNNING = 2, STATE_STOP_COPY = 3 };

struct header {
    uint16_t msg_id, cmd;
    uint32_t msg_size, flags, error_no;
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "vfubench: %s\n", what);
    exit(2);
}

/* All `n` bytes, or -1 at EOF or an error. */
static int full_io(int fd, void *buf, size_t n, int reading)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = reading ? read(fd, (char *)buf + done, n - done) : write(fd, (char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

/* One request (with `fd` attached when >= 0); the reply's payload goes to `reply` (at most
 * `room` bytes). Returns the payload length, or -errno for an error reply. */
static long call(int sock, uint16_t cmd, const void *payload, uint32_t len, int fd, void *reply, size_t room)
{
    static uint16_t next_id;
    struct header h = { next_id++, cmd, (uint32_t)sizeof h + len, 0, 0 };
    struct iovec iov[2] = { { &h, sizeof h }, { (void *)payload, len } };
    struct msghdr m = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    if (fd >= 0) {
        m.msg_control = control.buf;
        m.msg_controllen = sizeof control.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    if (sendmsg(sock, &m, 0) != (ssize_t)(sizeof h + len))
        die("sending a request failed");
    struct header r;
    if (full_io(sock, &r, sizeof r, 1) != 0 || r.msg_size < sizeof r || r.msg_size - sizeof r > room)
        die("bad reply");
    size_t n = r.msg_size - sizeof r;
    if (n && full_io(sock, reply, n, 1) != 0)
        die("reply cut short");
    return (r.flags & FLAG_ERROR) ? -(long)r.error_no : (long)n;
}

static int connect_to(const char *path)
{
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof addr.sun_path)
        die("socket path too long");
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0)
        die("cannot connect");
    static const char caps[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
    char version[4 + sizeof caps] = { 0, 0, 1, 0 }; /* major 0, minor 1 */
    memcpy(version + 4, caps, sizeof caps);
    static char reply[4096];
    if (call(sock, CMD_VERSION, version, sizeof version, -1, reply, sizeof reply) < 0)
        die("VERSION refused");
    return sock;
}

static long set_state(int sock, uint32_t state)
{
    struct { uint32_t argsz, flags, state; int32_t data_fd; } q = { 16, FEATURE_SET | FEATURE_MIG_STATE, state, -1 };
    char reply[64];
    return call(sock, CMD_DEVICE_FEATURE, &q, sizeof q, -1, reply, sizeof reply);
}

/* A forked peer serving the other end of a socketpair with `serve`; returns our end. */
static int peer(void (*serve)(int))
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        die("socketpair");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(sv[0]);
        serve(sv[1]);
        _exit(0);
    }
    close(sv[1]);
    return sv[0];
}

static void end_peer(int sock)
{
    close(sock);
    wait(NULL);
}

/* Bare round trips: a 32-byte request, a 40-byte reply. */
static void serve_rtt(int sock)
{
    char buf[40] = { 0 };
    while (full_io(sock, buf, 32, 1) == 0) {
        struct header *h = (struct header *)buf;
        h->flags = FLAG_REPLY;
        h->msg_size = sizeof buf;
        if (full_io(sock, buf, sizeof buf, 0) != 0)
            return;
    }
}

struct region_access { uint64_t offset; uint32_t region, count; };

static double rtt(int sock, long n)
{
    struct region_access q = { 0, 0, 8 };
    char reply[64];
    for (long i = 0; i < n / 10 + 1; i++) /* warm-up */
        if (call(sock, CMD_REGION_READ, &q, sizeof q, -1, reply, sizeof reply) < 0)
            die("REGION_READ refused");
    double t = now();
    for (long i = 0; i < n; i++)
        call(sock, CMD_REGION_READ, &q, sizeof q, -1, reply, sizeof reply);
    return (now() - t) * 1e9 / (double)n;
}

/* `a` then `b`, gathered: every byte, or -1. */
static int write_both(int sock, const void *a, size_t alen, const void *b, size_t blen)
{
    struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };
    struct iovec *v = iov;
    int count = 2;
    while (count > 0) {
        ssize_t r = writev(sock, v, count);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        size_t done = (size_t)r;
        while (count > 0 && done >= v->iov_len) {
            done -= v->iov_len;
            v++;
            count--;
        }
        if (count > 0) {
            v->iov_base = (char *)v->iov_base + done;
            v->iov_len -= done;
        }
    }
    return 0;
}

static size_t bare_bytes, bare_chunk;

/* Replies to 24-byte MIG_DATA_READ-sized requests with a 24-byte head and the next chunk of a
 * bare_bytes buffer of data, then a short reply. */
static unsigned char *bare_source;

static void serve_stream(int sock)
{
    unsigned char *source = bare_source, *out = malloc(24 + bare_chunk);
    if (out == NULL)
        die("malloc");
    size_t at = 0;
    unsigned char q[24];
    while (full_io(sock, q, sizeof q, 1) == 0) {
        size_t n = bare_bytes - at < bare_chunk ? bare_bytes - at : bare_chunk;
        struct header *h = (struct header *)out;
        memcpy(h, q, sizeof *h);
        h->flags = FLAG_REPLY;
        h->msg_size = (uint32_t)(24 + n);
        uint32_t head[2] = { (uint32_t)(8 + n), (uint32_t)n };
        memcpy(out + 16, head, sizeof head);
        /* Head and data gathered, as a server sends them. */
        if (write_both(sock, out, 24, source + at, n) != 0)
            return;
        /* After the short read, the next request starts the stream again. */
        at = n < bare_chunk ? 0 : at + n;
        continue;
        at += n;
    }
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return v[n / 2];
}

/* Reads a stream to its short read; returns MiB/s from `start`. */
static double read_stream(int sock, size_t chunk, double start)
{
    static char *buf;
    static size_t room;
    if (room < 8 + chunk) {
        free(buf);
        room = 8 + chunk;
        buf = malloc(room);
        if (buf == NULL)
            die("malloc");
    }
    struct { uint32_t argsz, size; } q = { (uint32_t)(8 + chunk), (uint32_t)chunk };
    long total = 0;
    for (;;) {
        long n = call(sock, CMD_MIG_DATA_READ, &q, sizeof q, -1, buf, 8 + chunk);
        if (n < 8)
            die("MIG_DATA_READ refused");
        uint32_t got;
        memcpy(&got, buf + 4, sizeof got);
        total += got;
        if (got < chunk)
            break;
    }
    return (double)total / (now() - start) / 1048576.0;
}

static size_t bitmap_bytes;

/* Replies to DMA_LOGGING_REPORT-sized requests with a reply of a 4 KiB report, after copying
 * and clearing its bitmap, as a server's report of an untouched log does at least. */
static void serve_report(int sock)
{
    unsigned char *log = calloc(1, bitmap_bytes), *out = malloc(48 + bitmap_bytes);
    if (log == NULL || out == NULL)
        die("malloc");
    unsigned char q[48];
    while (full_io(sock, q, sizeof q, 1) == 0) {
        memcpy(out, q, sizeof q);
        ((struct header *)out)->flags = FLAG_REPLY;
        ((struct header *)out)->msg_size = (uint32_t)(48 + bitmap_bytes);
        memcpy(out + 48, log, bitmap_bytes);
        memset(log, 0, bitmap_bytes);
        __asm__ volatile("" ::: "memory");
        if (full_io(sock, out, 48 + bitmap_bytes, 0) != 0)
            return;
    }
}

struct report_request { uint32_t argsz, flags; uint64_t iova, length, page_size; };

static double reports(int sock, uint64_t len, uint64_t page, long n)
{
    size_t bitmap = (size_t)((len / page + 63) / 64 * 8);
    struct report_request q = { (uint32_t)(sizeof q + bitmap), FEATURE_GET | FEATURE_LOG_REPORT, 0, len, page };
    char *reply = malloc(64 + bitmap);
    if (reply == NULL)
        die("malloc");
    if (call(sock, CMD_DEVICE_FEATURE, &q, sizeof q, -1, reply, 64 + bitmap) < 0)
        die("DMA_LOGGING_REPORT refused");
    double t = now();
    for (long i = 0; i < n; i++)
        call(sock, CMD_DEVICE_FEATURE, &q, sizeof q, -1, reply, 64 + bitmap);
    free(reply);
    return (now() - t) * 1e6 / (double)n;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "rtt") && argc == 4) {
        printf("%.0f\n", rtt(connect_to(argv[2]), atol(argv[3])));
    } else if (!strcmp(mode, "bare-rtt") && argc == 3) {
        int sock = peer(serve_rtt);
        printf("%.0f\n", rtt(sock, atol(argv[2])));
        end_peer(sock);
    } else if (!strcmp(mode, "fill") && argc == 5) {
        int sock = connect_to(argv[2]);
        uint32_t region = (uint32_t)atoi(argv[3]);
        long bytes = atol(argv[4]);
        size_t chunk = 1 << 20;
        unsigned char *m = malloc(sizeof(struct region_access) + chunk);
        char reply[64];
        if (m == NULL)
            die("malloc");
        for (long off = 0; off < bytes; off += (long)chunk) {
            struct region_access q = { (uint64_t)off, region, (uint32_t)chunk };
            memcpy(m, &q, sizeof q);
            for (size_t i = 0; i < chunk; i++)
                m[sizeof q + i] = (unsigned char)(i * 31 + (size_t)off / chunk + 1);
            if (call(sock, CMD_REGION_WRITE, m, (uint32_t)(sizeof q + chunk), -1, reply, sizeof reply) < 0)
                die("REGION_WRITE refused");
        }
        printf("%ld\n", bytes);
    } else if (!strcmp(mode, "mig") && argc == 5) {
        int sock = connect_to(argv[2]), n = atoi(argv[4]);
        double v[64];
        if (n < 1 || n > 64)
            die("N: 1 to 64");
        for (int i = -1; i < n; i++) {
            /* The STOP_COPY stream is timed from the SET that starts it, as the Rust bench does. */
            if (set_state(sock, STATE_STOP) < 0)
                die("-> STOP refused");
            double start = now();
            if (set_state(sock, STATE_STOP_COPY) < 0)
                die("STOP -> STOP_COPY refused");
            double mib_s = read_stream(sock, (size_t)atol(argv[3]), start);
            if (i >= 0)
                v[i] = mib_s;
            if (set_state(sock, STATE_STOP) < 0 || set_state(sock, STATE_RUNNING) < 0)
                die("-> RUNNING refused");
        }
        printf("%.0f\n", median(v, n));
    } else if (!strcmp(mode, "bare-mig") && argc == 5) {
        bare_bytes = (size_t)atol(argv[2]);
        bare_chunk = (size_t)atol(argv[3]);
        int n = atoi(argv[4]);
        double v[64];
        if (n < 1 || n > 64)
            die("N: 1 to 64");
        /* Written before the fork, so the peer starts with its data in memory. */
        bare_source = malloc(bare_bytes ? bare_bytes : 1);
        if (bare_source == NULL)
            die("malloc");
        for (size_t i = 0; i < bare_bytes; i++)
            bare_source[i] = (unsigned char)(i * 7 + i / 4096);
        int sock = peer(serve_stream);
        for (int i = -1; i < n; i++) {
            double mib_s = read_stream(sock, bare_chunk, now());
            if (i >= 0)
                v[i] = mib_s;
        }
        printf("%.0f\n", median(v, n));
        end_peer(sock);
    } else if (!strcmp(mode, "report") && argc == 6) {
        int sock = connect_to(argv[2]);
        uint64_t len = (uint64_t)atol(argv[3]) << 30, page = (uint64_t)atol(argv[4]);
        int ram = memfd_create("vfubench-ram", MFD_CLOEXEC);
        if (ram < 0 || ftruncate(ram, (off_t)len) != 0)
            die("memfd");
        struct { uint32_t argsz, flags; uint64_t offset, addr, size; } map = { 32, 3, 0, 0, len };
        char reply[256];
        if (call(sock, CMD_DMA_MAP, &map, sizeof map, ram, reply, sizeof reply) < 0)
            die("DMA_MAP refused");
        struct { uint32_t argsz, flags; uint64_t page_size; uint32_t ranges, reserved; uint64_t iova, length; } start = {
            40, FEATURE_SET | FEATURE_LOG_START, 4096, 1, 0, 0, len
        };
        if (call(sock, CMD_DEVICE_FEATURE, &start, sizeof start, -1, reply, sizeof reply) < 0)
            die("DMA_LOGGING_START refused");
        printf("%.1f\n", reports(sock, len, page, atol(argv[5])));
    } else if (!strcmp(mode, "bare-report") && argc == 4) {
        uint64_t len = (uint64_t)atol(argv[2]) << 30;
        bitmap_bytes = (size_t)(len / 4096 / 8);
        int sock = peer(serve_report);
        printf("%.1f\n", reports(sock, len, 4096, atol(argv[3])));
        end_peer(sock);
    } else {
        fprintf(stderr, "usage: see the comment at the top of vfubench.c\n");
        return 2;
    }
    return 0;
}
