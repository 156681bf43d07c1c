/* sseload: the fan-out benchmark's load client and publisher (bench/fanout.py drives it).
 *
 * sseload sub HOST PORT PATH N [MAX_CONNECTING [TOPICS PER PREFIX]]
 *   Opens N HTTP/1.1 GET streams (epoll, non-blocking, one thread), reads each response head,
 *   decodes chunked bodies and reads `data:` lines. Prints `ready {json}` once all N have their
 *   response head. Then takes commands on stdin, one per line:
 *     start RUN            count events of run RUN from sequence 0 (others are ignored)
 *     end LAST TIMEOUT_MS  wait until every stream saw LAST (or the timeout), print `report {json}`
 *     quit                 exit
 *   Every event's data is `RUN:SEQ:TS_US:padding`; TS_US is the publisher's CLOCK_REALTIME at
 *   publish. Every stream must see every SEQ: a gap is a loss, a repeat a duplicate.
 *   With TOPICS and PER: streams on several topics. Stream i asks for PATH?topic=PREFIX<j>&...
 *   for PER distinct topics j of 0..TOPICS-1 (picked pseudo-randomly from i); the publisher
 *   sends SEQ to topic SEQ % TOPICS, so each stream must see, per topic, every SEQ of it in
 *   order (topics interleave freely: each is its own stream).
 *
 * sseload pub MODE HOST PORT TARGET RATE SECONDS RUN SIZE [TOPICS]
 *   Publishes RATE events/s for SECONDS, each SIZE bytes of data, paced every millisecond, and
 *   prints `published {json}`. With TOPICS (redis mode), event SEQ goes to the key TARGET with
 *   its `%d` replaced by SEQ % TOPICS. MODE:
 *     redis  XADD TARGET MAXLEN ~ 100000 * d DATA, pipelined per tick (TARGET is the key)
 *     post   one POST TARGET per event, pipelined per tick (Nchan's publisher: one message each)
 *     lines  one POST TARGET per tick, events separated by "\n" (the sse-starlette peer)
 *
 * SSELOAD_ACCEPT_ENCODING=gzip (or deflate, or "gzip, deflate"): the streams ask for it, and
 * a stream answered `Content-Encoding: gzip` or `deflate` (raw deflate, as ssedge sends it) is
 * inflated as it arrives (zlib, one inflater per stream); `bytes` in the report stays what
 * came over the wire, `inflate_errors` counts streams whose bytes did not decode.
 * SSELOAD_RX_AT_WAKE=1: an event's receipt is timed when epoll_wait returned its stream's
 * readiness, not when this one thread got round to reading it: the latency then leaves out
 * the client's own work on the streams read before it in the same wake-up (a browser inflates
 * its one stream; this client inflates a thousand, one after another).
 * SSELOAD_DEFER=MIB: from `start` to `end`, each stream's reads go straight into one arena of
 * MIB MiB (below 64: 1 GiB), mapped and faulted in at start-up, with the time they came, and
 * are decoded (chunks, inflating, lines, checks) after `end`, once no stream brought bytes for
 * 0.5 s (or at END's timeout): during the measured window this client only reads (no copy,
 * no allocation), so its own decoding takes no core from the servers and delays no wake-up
 * (every event keeps the time of the read that brought it). An arena too small is decoded
 * when full, inside the window (`arena_full` in the report counts it).
 * SSELOAD_SOURCES=K: connection i is made from 127.0.1.(1 + i % K) (IP_BIND_ADDRESS_NO_PORT):
 * one source address has one ephemeral port range towards a relay's address and port (about
 * 28,000 here), so more streams than that to one relay need more source addresses.
 * SSELOAD_HIST=1: the report also carries the latency histogram, `"hist": [[UPPER_US, COUNT],
 * ...]` (its non-empty buckets, ~3 % wide), so that several clients' figures merge exactly.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* -- latency histogram: 32 sub-buckets per power of two of microseconds (~3 %) ---------- */

#define SUB_BITS 5
#define SUB (1 << SUB_BITS)
#define NBUCKETS ((40 - SUB_BITS + 1) * SUB + SUB)
static uint64_t hist[NBUCKETS];

static int bucket_of(uint64_t v) {
    if (v < SUB) return (int)v;
    int m = 63 - __builtin_clzll(v);
    if (m >= 40) return NBUCKETS - 1;
    return (m - SUB_BITS + 1) * SUB + (int)((v >> (m - SUB_BITS)) - SUB);
}

static uint64_t bucket_value(int i) { /* the bucket's upper bound */
    if (i < SUB) return (uint64_t)i;
    int m = i / SUB - 1 + SUB_BITS;
    uint64_t sub = (uint64_t)(i % SUB) + SUB;
    return ((sub + 1) << (m - SUB_BITS)) - 1;
}

static double quantile_ms(double q) {
    uint64_t total = 0;
    for (int i = 0; i < NBUCKETS; i++) total += hist[i];
    if (!total) return -1;
    uint64_t want = (uint64_t)(q * (double)total);
    if (want >= total) want = total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += hist[i];
        if (seen > want) return bucket_value(i) / 1000.0;
    }
    return -1;
}

/* -- subscriber --------------------------------------------------------------------- */

enum { IDLE, CONNECTING, HEAD, BODY, CLOSED };
enum { CH_SIZE, CH_EXT, CH_DATA, CH_CR, CH_LF };

#define CARRY_MAX 1024
#define HEAD_MAX 4096
#define MAX_PER 16

struct conn {
    int fd;
    uint8_t state, chunked, cstate, retries;
    uint32_t chunk_left;
    uint16_t carry_len, head_len;
    char *carry;  /* a partial line, until its end arrives */
    char *head;   /* the response head, until it is complete */
    int64_t next; /* the next sequence number this stream should see */
    uint64_t lost, dup;
    uint8_t done;              /* saw everything up to end_last (several topics) */
    uint8_t topics[MAX_PER];   /* several topics: the topics it follows ... */
    int64_t tnext[MAX_PER];    /* ... and the next sequence number of each */
    z_stream *z;               /* a compressed stream's inflater */
};

static struct conn *conns;
static int nconns;
static int mtopics, mper;        /* several topics: how many in all, how many per stream */
static const char *mprefix = "";
static struct sockaddr_in addr;
static char request[1024];
static int request_len;
static int ep;

static int64_t run = -1;      /* the run being counted */
static int64_t end_last = -1; /* waiting for every stream to see this sequence number */
static int64_t done_count;    /* streams that saw end_last */
static uint64_t events, stale, bytes_in, recvs, bad_status, closed, connect_failures;
static uint64_t inflate_errors, compressed_streams;
static const char *accept_encoding; /* SSELOAD_ACCEPT_ENCODING */
static double t_start, t_first, t_last, cpu_start;
static int64_t rx_us; /* wall clock at the current recv */
static int rx_at_wake;  /* SSELOAD_RX_AT_WAKE */
static int64_t wake_us; /* wall clock when epoll_wait returned */
static int defer, deferring; /* SSELOAD_DEFER, and between start and end */
static int sources;          /* SSELOAD_SOURCES */
static int hist_out;         /* SSELOAD_HIST */

static void multi_seq(struct conn *c, int64_t seq);

static void process_line(struct conn *c, const char *p, size_t n) {
    if (n && p[n - 1] == '\r') n--;
    if (n < 5 || memcmp(p, "data:", 5) != 0) return;
    p += 5;
    n -= 5;
    if (n && *p == ' ') p++, n--;
    int64_t f[3] = {0, 0, 0};
    int k = 0;
    for (size_t i = 0; i < n && k < 3; i++) {
        char ch = p[i];
        if (ch >= '0' && ch <= '9') f[k] = f[k] * 10 + (ch - '0');
        else if (ch == ':') k++;
        else return;
    }
    if (k < 3) return;
    if (f[0] != run) { stale++; return; }
    int64_t seq = f[1];
    events++;
    int64_t lat = rx_us - f[2];
    hist[bucket_of(lat < 0 ? 0 : (uint64_t)lat)]++;
    if (mtopics) { multi_seq(c, seq); return; }
    if (seq == c->next) c->next++;
    else if (seq > c->next) { c->lost += (uint64_t)(seq - c->next); c->next = seq + 1; }
    else { c->dup++; return; }
    if (end_last >= 0 && seq >= end_last && c->next - 1 == seq) done_count++;
}

/* the last sequence number of topic j at or below `last`, or -1 when it has none */
static int64_t last_of(int j, int64_t last) {
    if (last < j) return -1;
    return last - ((last - j) % mtopics);
}

static int multi_complete(struct conn *c) {
    for (int s = 0; s < mper; s++)
        if (c->tnext[s] <= last_of(c->topics[s], end_last)) return 0;
    return 1;
}

/* one event of a stream on several topics: checked against its own topic's sequence */
static void multi_seq(struct conn *c, int64_t seq) {
    int j = (int)(seq % mtopics), s = 0;
    while (s < mper && c->topics[s] != j) s++;
    if (s == mper) { stale++; return; } /* a topic it does not follow */
    if (seq == c->tnext[s]) c->tnext[s] += mtopics;
    else if (seq > c->tnext[s]) {
        c->lost += (uint64_t)((seq - c->tnext[s]) / mtopics);
        c->tnext[s] = seq + mtopics;
    } else { c->dup++; return; }
    /* only a topic's last event can complete a stream: check near the end only */
    if (end_last >= 0 && !c->done && seq > end_last - mtopics && multi_complete(c)) {
        c->done = 1;
        done_count++;
    }
}

static void multi_reset(struct conn *c) {
    c->done = 0;
    for (int s = 0; s < mper; s++) c->tnext[s] = c->topics[s];
}

/* PER distinct topics for stream i, the same on every run (xorshift seeded by i) */
static void pick_topics(struct conn *c, int i) {
    uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
    int n = 0;
    while (n < mper) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int j = (int)(x % (uint64_t)mtopics), seen = 0;
        for (int k = 0; k < n; k++) seen |= c->topics[k] == j;
        if (!seen) c->topics[n++] = (uint8_t)j;
    }
    multi_reset(c);
}

static void feed_lines(struct conn *c, const char *p, size_t n) {
    if (c->carry_len) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) : n;
        size_t room = CARRY_MAX - c->carry_len;
        memcpy(c->carry + c->carry_len, p, take < room ? take : room);
        c->carry_len += (uint16_t)(take < room ? take : room);
        if (!nl) return;
        process_line(c, c->carry, c->carry_len);
        c->carry_len = 0;
        p = nl + 1;
        n -= take + 1;
    }
    const char *nl;
    while (n && (nl = memchr(p, '\n', n)) != NULL) {
        process_line(c, p, (size_t)(nl - p));
        n -= (size_t)(nl - p) + 1;
        p = nl + 1;
    }
    if (n) {
        if (!c->carry) c->carry = malloc(CARRY_MAX);
        size_t keep = n < CARRY_MAX ? n : CARRY_MAX;
        memcpy(c->carry, p, keep);
        c->carry_len = (uint16_t)keep;
    }
}

static char zbuf[1 << 18];
static char rbuf[1 << 18];

/* the body's bytes as they came: inflated first when the stream is compressed */
/* SSELOAD_DEFER: reads go straight from the socket into one arena, mapped and faulted in at
   start-up (no copy, no allocation, no page fault while measured), as records in arrival order:
   [head][bytes], 8-byte aligned; decoded (chunks, inflating, lines) after the window */
struct kept_head { int64_t rx_us; double t; uint32_t conn, len; };
static char *arena;
static size_t arena_cap, arena_len;
static double last_kept; /* when the last read was kept */
static uint64_t arena_full; /* decodings forced inside a window: the arena was too small */

static void feed_body(struct conn *c, const char *p, size_t n);

static double cpu_window = -1; /* the client's CPU from start to end, with SSELOAD_DEFER */

/* every kept read decoded now, with the time it came */
static void decode_kept(void) {
    size_t at = 0;
    while (at < arena_len) {
        struct kept_head h;
        memcpy(&h, arena + at, sizeof h);
        at += sizeof h;
        rx_us = h.rx_us;
        uint64_t before = events;
        struct conn *c = &conns[h.conn];
        if (c->state == BODY || c->state == CLOSED) feed_body(c, arena + at, h.len);
        if (events != before) {
            if (t_first == 0) t_first = h.t;
            if (h.t > t_last) t_last = h.t;
        }
        at += (h.len + 7) & ~(size_t)7;
    }
    arena_len = 0;
    for (int i = 0; i < nconns; i++) { /* closed while their reads were kept */
        struct conn *c = &conns[i];
        if (c->state == CLOSED && c->z) { inflateEnd(c->z); free(c->z); c->z = NULL; }
    }
}

static void end_window(void) {
    deferring = 0;
    cpu_window = cpu_s() - cpu_start;
    decode_kept();
}

/* one read of a stream's body into the arena; its result as read() gives it */
static ssize_t read_kept(struct conn *c) {
    size_t room = arena_cap - arena_len;
    if (room < sizeof(struct kept_head) + 65536) { /* full: decode now, in the window */
        arena_full++;
        decode_kept();
        room = arena_cap;
    }
    room -= sizeof(struct kept_head);
    if (room > sizeof rbuf) room = sizeof rbuf;
    char *at = arena + arena_len + sizeof(struct kept_head);
    ssize_t n = read(c->fd, at, room);
    if (n > 0) {
        struct kept_head h = {rx_at_wake ? wake_us : wall_us(), now_s(), (uint32_t)(c - conns),
                              (uint32_t)n};
        last_kept = h.t;
        memcpy(arena + arena_len, &h, sizeof h);
        arena_len += sizeof h + (((size_t)n + 7) & ~(size_t)7);
    }
    return n;
}

static void feed_decoded(struct conn *c, const char *p, size_t n) {
    z_stream *z = c->z;
    if (!z) { feed_lines(c, p, n); return; }
    if (z->opaque) return; /* broke earlier */
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = (Bytef *)zbuf;
        z->avail_out = sizeof zbuf;
        int r = inflate(z, Z_SYNC_FLUSH);
        size_t out = sizeof zbuf - z->avail_out;
        if (out) feed_lines(c, zbuf, out);
        if (r == Z_STREAM_END) return;
        if (r != Z_OK && r != Z_BUF_ERROR) { inflate_errors++; z->opaque = (voidpf)1; return; }
        if (z->avail_in == 0 && z->avail_out != 0) return;
    }
}

static void feed_body(struct conn *c, const char *p, size_t n) {
    if (!c->chunked) { feed_decoded(c, p, n); return; }
    while (n) {
        switch (c->cstate) {
        case CH_SIZE: {
            char ch = *p++; n--;
            int v = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                  : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
            if (v >= 0) c->chunk_left = c->chunk_left * 16 + (uint32_t)v;
            else c->cstate = ch == '\n' ? (c->chunk_left ? CH_DATA : CH_CR) : CH_EXT;
            break;
        }
        case CH_EXT: {
            const char *nl = memchr(p, '\n', n);
            if (!nl) return;
            n -= (size_t)(nl - p) + 1; p = nl + 1;
            c->cstate = c->chunk_left ? CH_DATA : CH_CR;
            break;
        }
        case CH_DATA: {
            size_t take = n < c->chunk_left ? n : c->chunk_left;
            feed_decoded(c, p, take);
            p += take; n -= take; c->chunk_left -= (uint32_t)take;
            if (!c->chunk_left) c->cstate = CH_CR;
            break;
        }
        case CH_CR: /* the CRLF after a chunk's data */
            if (*p == '\r') { p++; n--; c->cstate = CH_LF; }
            else { c->cstate = CH_LF; }
            break;
        case CH_LF:
            if (*p == '\n') { p++; n--; }
            c->cstate = CH_SIZE;
            break;
        }
    }
}

static int connecting, max_connecting, opened, heads;
static double t_connect0, t_ready;

static void start_connect(struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (sources) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000101u + (uint32_t)((c - conns) % sources));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind source");
    }
    c->fd = fd;
    c->state = CONNECTING;
    c->head_len = 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) die("connect");
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    connecting++;
}

static void close_conn(struct conn *c, int retry) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->z && !deferring) { inflateEnd(c->z); free(c->z); c->z = NULL; } /* else: kept reads */
    int was_connecting = c->state == CONNECTING || c->state == HEAD;
    if (was_connecting) connecting--;
    if (was_connecting && retry && c->retries < 20) { /* refused or reset during a storm */
        c->retries++;
        connect_failures++;
        start_connect(c);
        return;
    }
    if (was_connecting) heads++; /* given up: counted so `ready` still comes */
    if (c->state == BODY) closed++;
    c->state = CLOSED;
}

static void on_head(struct conn *c, char *buf, size_t n) {
    /* append to the head until the blank line */
    size_t room = HEAD_MAX - c->head_len;
    size_t take = n < room ? n : room;
    if (!c->head) c->head = malloc(HEAD_MAX + 1);
    memcpy(c->head + c->head_len, buf, take);
    c->head_len += (uint16_t)take;
    c->head[c->head_len] = 0;
    char *end = strstr(c->head, "\r\n\r\n");
    if (!end) {
        if (c->head_len >= HEAD_MAX) close_conn(c, 0);
        return;
    }
    size_t head_size = (size_t)(end + 4 - c->head);
    *end = 0;
    if (strncmp(c->head, "HTTP/1.1 200", 12) != 0 && strncmp(c->head, "HTTP/1.0 200", 12) != 0) {
        bad_status++;
        if (bad_status <= 3) fprintf(stderr, "sseload: bad answer: %.200s\n", c->head);
        close_conn(c, 0);
        return;
    }
    c->chunked = strcasestr(c->head, "transfer-encoding: chunked") != NULL;
    int gz = strcasestr(c->head, "content-encoding: gzip") != NULL;
    if (gz || strcasestr(c->head, "content-encoding: deflate")) {
        c->z = calloc(1, sizeof *c->z);
        if (!c->z || inflateInit2(c->z, gz ? 31 : -15) != Z_OK) die("inflateInit2");
        compressed_streams++;
    }
    c->state = BODY;
    connecting--;
    heads++;
    size_t already = c->head_len - head_size; /* body bytes that came with the head */
    size_t rest = n - take;
    free(c->head);
    c->head = NULL;
    if (already) feed_body(c, end + 4, already);
    if (rest) feed_body(c, buf + take, rest);
}

static const char *req_host, *req_port, *req_path;

/* the request of a stream on several topics: its own set in the query */
static int multi_request(struct conn *c, char *out, size_t size) {
    int n = snprintf(out, size, "GET %s", req_path);
    for (int s = 0; s < mper && (size_t)n < size; s++)
        n += snprintf(out + n, size - (size_t)n, "%stopic=%s%d", s ? "&" : "?", mprefix,
                      c->topics[s]);
    if ((size_t)n < size)
        n += snprintf(out + n, size - (size_t)n, " HTTP/1.1\r\nHost: %s:%s\r\nAccept: "
                      "text/event-stream\r\nCache-Control: no-cache\r\n\r\n", req_host, req_port);
    return (size_t)n < size ? n : (int)size - 1;
}

static void on_event(struct conn *c, uint32_t events_mask) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events_mask & (EPOLLERR | EPOLLHUP))) { close_conn(c, 1); return; }
        const char *req = request;
        int req_len = request_len;
        char own[4096];
        if (mtopics) { req_len = multi_request(c, own, sizeof own); req = own; }
        if (write(c->fd, req, (size_t)req_len) != req_len) { close_conn(c, 1); return; }
        c->state = HEAD;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return;
    }
    for (;;) {
        int kept = deferring && c->state == BODY;
        ssize_t n = kept ? read_kept(c) : read(c->fd, rbuf, sizeof rbuf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) { close_conn(c, c->state == HEAD); return; }
        recvs++;
        bytes_in += (uint64_t)n;
        if (kept) { if ((size_t)n < sizeof rbuf) return; continue; }
        if (c->state == HEAD) { on_head(c, rbuf, (size_t)n); }
        else {
            rx_us = rx_at_wake ? wake_us : wall_us();
            uint64_t before = events;
            feed_body(c, rbuf, (size_t)n);
            if (events != before) {
                double t = now_s();
                if (t_first == 0) t_first = t;
                t_last = t;
            }
        }
        if ((size_t)n < sizeof rbuf) return;
    }
}

static void report(int64_t last) {
    uint64_t lost = 0, dup = 0, live = 0, complete = 0;
    uint64_t expected = 0;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        lost += c->lost;
        dup += c->dup;
        if (mtopics) {
            int whole = 1;
            for (int s = 0; s < mper; s++) {
                int64_t end = last_of(c->topics[s], last);
                if (end >= 0) expected += (uint64_t)((end - c->topics[s]) / mtopics + 1);
                if (c->tnext[s] <= end) {
                    lost += (uint64_t)((end - c->tnext[s]) / mtopics + 1);
                    whole = 0;
                }
            }
            complete += (uint64_t)whole;
        } else {
            expected += (uint64_t)(last + 1);
            if (c->next <= last) lost += (uint64_t)(last + 1 - c->next);
            else complete++;
        }
        if (c->state == BODY) live++;
    }
    double span = t_last > t_start ? t_last - t_start : 0;
    printf("report {\"events\": %lu, \"expected\": %lu, \"lost\": %lu, \"dup\": %lu, "
           "\"stale\": %lu, \"complete_streams\": %lu, \"live\": %lu, \"closed\": %lu, "
           "\"first_s\": %.4f, \"last_s\": %.4f, \"deliveries_per_s\": %.0f, "
           "\"p50_ms\": %.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, "
           "\"max_ms\": %.3f, \"bytes\": %lu, \"reads\": %lu, \"cpu_s\": %.3f, "
           "\"compressed_streams\": %lu, \"inflate_errors\": %lu, \"window_cpu_s\": %.3f, "
           "\"arena_full\": %lu",
           events, expected, lost, dup, stale, complete, live,
           closed, t_first ? t_first - t_start : -1, t_last ? t_last - t_start : -1,
           span > 0 ? events / span : 0, quantile_ms(0.5), quantile_ms(0.9), quantile_ms(0.99),
           quantile_ms(0.999), quantile_ms(1.0), bytes_in, recvs, cpu_s() - cpu_start,
           compressed_streams, inflate_errors, cpu_window >= 0 ? cpu_window : cpu_s() - cpu_start,
           arena_full);
    if (hist_out) { /* the latency histogram itself: several clients' merge exactly */
        printf(", \"hist\": [");
        int first = 1;
        for (int i = 0; i < NBUCKETS; i++)
            if (hist[i]) {
                printf("%s[%lu, %lu]", first ? "" : ", ", bucket_value(i), hist[i]);
                first = 0;
            }
        printf("]");
    }
    printf("}\n");
    fflush(stdout);
}

static void count_done(void) {
    done_count = 0;
    for (int i = 0; i < nconns; i++) {
        if (mtopics) {
            conns[i].done = (uint8_t)multi_complete(&conns[i]);
            done_count += conns[i].done;
        } else if (conns[i].next > end_last) done_count++;
    }
}

static char cmdbuf[4096];
static size_t cmdlen;
static double end_deadline;

/* returns 0 to quit */
static int on_command(char *line) {
    long long a, b;
    if (strncmp(line, "quit", 4) == 0) return 0;
    if (sscanf(line, "start %lld", &a) == 1) {
        if (arena_len) decode_kept(); /* an earlier run's reads, before this one counts */
        run = a;
        end_last = -1;
        events = stale = bytes_in = recvs = 0;
        closed = 0;
        t_first = t_last = 0;
        memset(hist, 0, sizeof hist);
        for (int i = 0; i < nconns; i++) {
            conns[i].next = 0, conns[i].lost = conns[i].dup = 0;
            if (mtopics) multi_reset(&conns[i]);
        }
        t_start = now_s();
        cpu_start = cpu_s();
        deferring = defer;
        printf("started\n");
        fflush(stdout);
    } else if (sscanf(line, "end %lld %lld", &a, &b) == 2) {
        end_last = a;
        end_deadline = now_s() + b / 1000.0;
        if (!deferring) count_done();
        /* else: decoded once the streams have been quiet a while (the main loop): the last
           events are still coming, and decoding now would stall their reads */
    }
    return 1;
}

static int sub_main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: sseload sub HOST PORT PATH N [MAX_CONNECTING [TOPICS PER PREFIX]]\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[3]));
    inet_pton(AF_INET, argv[2], &addr.sin_addr);
    nconns = atoi(argv[5]);
    max_connecting = argc > 6 ? atoi(argv[6]) : 1000;
    accept_encoding = getenv("SSELOAD_ACCEPT_ENCODING");
    rx_at_wake = getenv("SSELOAD_RX_AT_WAKE") != NULL;
    defer = getenv("SSELOAD_DEFER") != NULL;
    if (defer) { /* MiB of arena; anything below 64 (SSELOAD_DEFER=1) is 1 GiB */
        long mib = atol(getenv("SSELOAD_DEFER"));
        arena_cap = (size_t)(mib < 64 ? 1024 : mib) << 20;
        arena = mmap(NULL, arena_cap, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE, -1, 0);
        if (arena == MAP_FAILED) die("mmap SSELOAD_DEFER arena");
    }
    sources = getenv("SSELOAD_SOURCES") ? atoi(getenv("SSELOAD_SOURCES")) : 0;
    hist_out = getenv("SSELOAD_HIST") != NULL;
    if (sources < 0 || sources > 254) { fprintf(stderr, "sseload: SSELOAD_SOURCES 0-254\n"); return 2; }
    request_len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: %s:%s\r\nAccept: text/event-stream\r\n"
                           "%s%s%sCache-Control: no-cache\r\n\r\n", argv[4], argv[2], argv[3],
                           accept_encoding ? "Accept-Encoding: " : "",
                           accept_encoding ? accept_encoding : "", accept_encoding ? "\r\n" : "");
    conns = calloc((size_t)nconns, sizeof *conns);
    req_host = argv[2], req_port = argv[3], req_path = argv[4];
    if (argc > 7) {
        if (argc < 10) { fprintf(stderr, "sseload: TOPICS PER PREFIX go together\n"); return 2; }
        mtopics = atoi(argv[7]), mper = atoi(argv[8]), mprefix = argv[9];
        if (mtopics < 1 || mtopics > 256 || mper < 1 || mper > MAX_PER || mper > mtopics) {
            fprintf(stderr, "sseload: TOPICS 1-256, PER 1-%d (at most TOPICS), PREFIX\n", MAX_PER);
            return 2;
        }
        for (int i = 0; i < nconns; i++) pick_topics(&conns[i], i);
    }
    ep = epoll_create1(0);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    t_connect0 = now_s();
    double cpu0 = cpu_s();
    struct epoll_event evs[1024];
    int ready_sent = 0;
    for (;;) {
        while (opened < nconns && connecting < max_connecting) start_connect(&conns[opened++]);
        if (!ready_sent && heads >= nconns) {
            t_ready = now_s();
            int live = 0;
            for (int i = 0; i < nconns; i++) live += conns[i].state == BODY;
            printf("ready {\"connected\": %d, \"connect_s\": %.3f, \"retried\": %lu, "
                   "\"bad_status\": %lu, \"cpu_s\": %.3f}\n", live, t_ready - t_connect0,
                   connect_failures, bad_status, cpu_s() - cpu0);
            fflush(stdout);
            ready_sent = 1;
        }
        int n = epoll_wait(ep, evs, 1024, 20);
        if (rx_at_wake) wake_us = wall_us();
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c) { on_event(c, evs[i].events); continue; }
            ssize_t r = read(0, cmdbuf + cmdlen, sizeof cmdbuf - cmdlen - 1);
            if (r == 0) return 0;
            if (r < 0) continue;
            cmdlen += (size_t)r;
            char *nl;
            while ((nl = memchr(cmdbuf, '\n', cmdlen)) != NULL) {
                *nl = 0;
                if (!on_command(cmdbuf)) return 0;
                size_t used = (size_t)(nl - cmdbuf) + 1;
                memmove(cmdbuf, nl + 1, cmdlen - used);
                cmdlen -= used;
            }
        }
        if (end_last >= 0 && deferring) {
            double t = now_s();
            if (t - last_kept < 0.5 && t < end_deadline) continue;
            end_window();
            count_done();
        }
        if (end_last >= 0) {
            int64_t live = 0;
            for (int i = 0; i < nconns; i++) live += conns[i].state == BODY;
            if (done_count >= live || now_s() > end_deadline) {
                report(end_last);
                end_last = -1;
            }
        }
    }
}

/* -- publisher ---------------------------------------------------------------------------- */

static int dial(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("publisher connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; die("publisher write"); }
        p += w; n -= (size_t)w;
    }
}

/* a buffered reader for the replies */
static char pbuf[1 << 16];
static size_t plen, ppos;

static int read_more(int fd) {
    if (ppos) { memmove(pbuf, pbuf + ppos, plen - ppos); plen -= ppos; ppos = 0; }
    ssize_t r = read(fd, pbuf + plen, sizeof pbuf - plen);
    if (r <= 0) die("publisher read");
    plen += (size_t)r;
    return 1;
}

static char *read_line(int fd) { /* a line without its CRLF, valid until the next read */
    for (;;) {
        char *nl = memchr(pbuf + ppos, '\n', plen - ppos);
        if (nl) {
            char *line = pbuf + ppos;
            *nl = 0;
            if (nl > line && nl[-1] == '\r') nl[-1] = 0;
            ppos = (size_t)(nl - pbuf) + 1;
            return line;
        }
        read_more(fd);
    }
}

static void skip_bytes(int fd, size_t n) {
    while (n) {
        if (ppos == plen) read_more(fd);
        size_t take = plen - ppos < n ? plen - ppos : n;
        ppos += take; n -= take;
    }
}

static uint64_t failures;

static void read_redis_reply(int fd) {
    char *line = read_line(fd);
    if (line[0] == '-') { failures++; if (failures < 4) fprintf(stderr, "redis: %s\n", line); }
    else if (line[0] == '$') { long n = atol(line + 1); if (n >= 0) skip_bytes(fd, (size_t)n + 2); }
}

static void read_http_reply(int fd) {
    char *line = read_line(fd);
    int status = atoi(line + 9);
    if (status < 200 || status >= 300) { failures++; if (failures < 4) fprintf(stderr, "publish: %s\n", line); }
    long length = 0;
    for (;;) {
        line = read_line(fd);
        if (!*line) break;
        if (strncasecmp(line, "content-length:", 15) == 0) length = atol(line + 15);
    }
    skip_bytes(fd, (size_t)length);
}

static int pub_main(int argc, char **argv) {
    if (argc < 10) {
        fprintf(stderr, "usage: sseload pub redis|post|lines HOST PORT TARGET RATE SECONDS RUN SIZE [TOPICS]\n");
        return 2;
    }
    const char *mode = argv[2], *host = argv[3], *target = argv[5];
    int port = atoi(argv[4]);
    double rate = atof(argv[6]), seconds = atof(argv[7]);
    long run_id = atol(argv[8]);
    int size = atoi(argv[9]);
    int m = strcmp(mode, "redis") == 0 ? 0 : strcmp(mode, "post") == 0 ? 1 : 2;
    int topics = argc > 10 ? atoi(argv[10]) : 0;
    const char *mark = topics ? strstr(target, "%d") : NULL;
    if (topics && (m != 0 || !mark)) {
        fprintf(stderr, "sseload: TOPICS needs redis mode and a TARGET with %%d\n");
        return 2;
    }
    char key[512];
    int fd = dial(host, port);
    int64_t total = (int64_t)(rate * seconds);
    size_t cap = 1 << 20;
    char *out = malloc(cap), *body = malloc(cap), data[4096];
    char pad[4096];
    memset(pad, 'x', sizeof pad);
    double t0 = now_s(), c0 = cpu_s();
    int64_t seq = 0;
    uint64_t requests = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (seq < total) {
        double elapsed = now_s() - t0;
        int64_t due = (int64_t)(rate * elapsed) + 1;
        if (due > total) due = total;
        size_t olen = 0, blen = 0;
        int pending = 0;
        for (; seq < due; seq++) {
            int dlen = snprintf(data, sizeof data, "%ld:%ld:%ld:", run_id, (long)seq, (long)wall_us());
            int padn = size - dlen > 0 ? size - dlen : 0;
            memcpy(data + dlen, pad, (size_t)padn);
            dlen += padn;
            if (olen + (size_t)dlen + 512 > cap || blen + (size_t)dlen + 2 > cap) break;
            if (m == 0) {
                const char *k = target;
                if (topics) { /* TARGET with its %d as this event's topic */
                    snprintf(key, sizeof key, "%.*s%ld%s", (int)(mark - target), target,
                             (long)(seq % topics), mark + 2);
                    k = key;
                }
                olen += (size_t)sprintf(out + olen,
                    "*8\r\n$4\r\nXADD\r\n$%zu\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$6\r\n100000\r\n"
                    "$1\r\n*\r\n$1\r\nd\r\n$%d\r\n", strlen(k), k, dlen);
                memcpy(out + olen, data, (size_t)dlen); olen += (size_t)dlen;
                memcpy(out + olen, "\r\n", 2); olen += 2;
                pending++;
            } else if (m == 1) {
                olen += (size_t)sprintf(out + olen, "POST %s HTTP/1.1\r\nHost: %s\r\n"
                    "Content-Type: text/plain\r\nAccept: text/plain\r\nContent-Length: %d\r\n\r\n",
                    target, host, dlen);
                memcpy(out + olen, data, (size_t)dlen); olen += (size_t)dlen;
                pending++;
            } else {
                if (blen) body[blen++] = '\n';
                memcpy(body + blen, data, (size_t)dlen); blen += (size_t)dlen;
            }
        }
        if (m == 2 && blen) {
            olen = (size_t)sprintf(out, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\n"
                                   "Content-Length: %zu\r\n\r\n", target, host, blen);
            memcpy(out + olen, body, blen); olen += blen;
            pending = 1;
        }
        if (olen) write_all(fd, out, olen);
        requests += (uint64_t)pending;
        for (int i = 0; i < pending; i++) {
            if (m == 0) read_redis_reply(fd);
            else read_http_reply(fd);
        }
        next.tv_nsec += 1000000;
        if (next.tv_nsec >= 1000000000) { next.tv_sec++; next.tv_nsec -= 1000000000; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    printf("published {\"events\": %ld, \"last_seq\": %ld, \"requests\": %lu, \"failures\": %lu, "
           "\"seconds\": %.3f, \"cpu_s\": %.3f}\n", (long)seq, (long)seq - 1, requests, failures,
           now_s() - t0, cpu_s() - c0);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "sub") == 0) return sub_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "pub") == 0) return pub_main(argc, argv);
    fprintf(stderr, "usage: sseload sub|pub ...\n");
    return 2;
}
