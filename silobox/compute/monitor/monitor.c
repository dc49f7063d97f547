/*
 * silobox-monitor: the per-container monitor, what is left of the shim once a container runs.
 *
 * The Python shim (silobox/compute/shim.py) does everything that needs the engine's code: the
 * job object, the PID namespace, the container's first process parked in the entry helper,
 * the stdio pipes or pty, the log file and the listening shim.sock. Then it execve's this
 * program, which inherits those fds (their numbers are in argv), so the same pid stays the
 * parent and child subreaper of the container's processes. A static C program costs a few
 * private pages where a forked interpreter costs megabytes (docs/architecture.md, "The
 * per-container monitor").
 *
 * It speaks the shim's protocol on shim.sock unchanged (one JSON line in, one JSON line out;
 * attach and exec turn the connection into a stream of Docker stdcopy frames, 3 = the final
 * exit record), keeps the json-file log (with max-size/max-file rotation), writes exit.json
 * atomically when the first process ends, removes the job object, and makes exec processes:
 * fork, join the job object, the namespaces and the root, open the console inside the
 * container, then exec the entry helper (silobox/kernel/entry/helper.c) from its sealed memfd
 * with the spec silod prepared, to which this program only appends the sync fd, the PID
 * namespace fd and the resolved executable's path (the helper takes a record's last value).
 *
 * argv: "silobox-monitor" then key=value words (see parse_args); an empty environment.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#define STDOUT_S 1
#define STDERR_S 2
#define EXIT_S 3
#define CHUNK 32768
#define PARTIAL_MAX 16384
#define STDIN_HIGH (1 << 20)
#define INBUF_MAX (16 << 20)
#define MAX_LIST 16
/* Entry helper spec tags (silobox/kernel/entry/__init__.py). */
#define T_SYNC_FD 2
#define T_PIDNS_FD 4
#define T_PATH 5

/* ----- small buffers --------------------------------------------------------------------- */
struct buf { char *p; size_t n, cap; };

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            abort();
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }
static void buf_fmt(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    buf_add(b, tmp, n < (int)sizeof tmp ? (size_t)n : sizeof tmp - 1);
}
static void buf_free(struct buf *b) { free(b->p); b->p = NULL; b->n = b->cap = 0; }
static void buf_drop(struct buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
}

/* A JSON string (quoted): valid UTF-8 passes through, invalid bytes become U+FFFD. */
static void buf_json(struct buf *b, const unsigned char *s, size_t n)
{
    buf_add(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            char esc[8];
            switch (c) {
            case '"': buf_add(b, "\\\"", 2); break;
            case '\\': buf_add(b, "\\\\", 2); break;
            case '\n': buf_add(b, "\\n", 2); break;
            case '\r': buf_add(b, "\\r", 2); break;
            case '\t': buf_add(b, "\\t", 2); break;
            case '\b': buf_add(b, "\\b", 2); break;
            case '\f': buf_add(b, "\\f", 2); break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    snprintf(esc, sizeof esc, "\\u%04x", c);
                    buf_add(b, esc, 6);
                } else {
                    buf_add(b, &c, 1);
                }
            }
            i++;
            continue;
        }
        size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c < 0xe0 ? 2 : 0;
        int ok = len && i + len <= n;
        for (size_t k = 1; ok && k < len; k++)
            ok = (s[i + k] & 0xc0) == 0x80;
        if (ok && len == 3) {
            unsigned cp = ((c & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            ok = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
        } else if (ok && len == 4) {
            unsigned cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3fu) << 12);
            ok = cp >= 0x10000 && cp <= 0x10ffff;
        }
        if (ok) {
            buf_add(b, s + i, len);
            i += len;
        } else {
            buf_add(b, "\\ufffd", 6);
            i++;
        }
    }
    buf_add(b, "\"", 1);
}
static void buf_jstr(struct buf *b, const char *s) { buf_json(b, (const unsigned char *)s, strlen(s)); }

/* ----- a minimal JSON reader: top-level members of one object ------------------------------ */
struct jv { char type; const char *p; size_t n; };   /* type: s n t f 0 a o; p/n: raw span */

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

static const char *skip_string(const char *p, const char *e)   /* p after the opening quote */
{
    while (p < e) {
        if (*p == '\\') { p += 2; continue; }
        if (*p == '"') return p + 1;
        p++;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *e, struct jv *v)
{
    p = skip_ws(p, e);
    if (p >= e)
        return NULL;
    const char *start = p;
    if (*p == '"') {
        const char *q = skip_string(p + 1, e);
        if (!q) return NULL;
        if (v) { v->type = 's'; v->p = p + 1; v->n = (size_t)(q - p - 2); }
        return q;
    }
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < e) {
            if (*p == '"') { p = skip_string(p + 1, e); if (!p) return NULL; continue; }
            if (*p == '{' || *p == '[') depth++;
            else if (*p == '}' || *p == ']') { if (--depth == 0) { p++; break; } }
            p++;
        }
        if (depth) return NULL;
        if (v) { v->type = *start == '{' ? 'o' : 'a'; v->p = start; v->n = (size_t)(p - start); }
        return p;
    }
    while (p < e && !strchr(",}] \t\r\n", *p))
        p++;
    if (p == start) return NULL;
    if (v) {
        v->p = start; v->n = (size_t)(p - start);
        v->type = *start == 't' ? 't' : *start == 'f' ? 'f' : *start == 'n' ? '0' : 'n';
    }
    return p;
}

/* Find member `key` of the object in [p, e); returns 1 if found. */
static int json_get(const char *p, const char *e, const char *key, struct jv *out)
{
    p = skip_ws(p, e);
    if (p >= e || *p != '{')
        return 0;
    p++;
    size_t klen = strlen(key);
    for (;;) {
        p = skip_ws(p, e);
        if (p >= e || *p == '}')
            return 0;
        if (*p != '"')
            return 0;
        const char *ks = p + 1, *q = skip_string(ks, e);
        if (!q) return 0;
        size_t kn = (size_t)(q - ks - 1);
        p = skip_ws(q, e);
        if (p >= e || *p != ':') return 0;
        struct jv v;
        p = skip_value(p + 1, e, &v);
        if (!p) return 0;
        if (kn == klen && memcmp(ks, key, klen) == 0) { *out = v; return 1; }
        p = skip_ws(p, e);
        if (p < e && *p == ',') p++;
    }
}

static void put_utf8(struct buf *b, unsigned cp)
{
    unsigned char o[4];
    size_t n;
    if (cp < 0x80) { o[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { o[0] = 0xc0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3f); n = 2; }
    else if (cp < 0x10000) { o[0] = 0xe0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3f); o[2] = 0x80 | (cp & 0x3f); n = 3; }
    else { o[0] = 0xf0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3f); o[2] = 0x80 | ((cp >> 6) & 0x3f); o[3] = 0x80 | (cp & 0x3f); n = 4; }
    buf_add(b, o, n);
}

/* A string value, unescaped, as a new C string (NULL if not a string). */
static char *jv_str(const struct jv *v)
{
    if (v->type != 's')
        return NULL;
    struct buf b = {0};
    buf_add(&b, "", 0);
    for (size_t i = 0; i < v->n; i++) {
        char c = v->p[i];
        if (c != '\\' || i + 1 >= v->n) { buf_add(&b, &c, 1); continue; }
        c = v->p[++i];
        switch (c) {
        case 'n': buf_add(&b, "\n", 1); break;
        case 't': buf_add(&b, "\t", 1); break;
        case 'r': buf_add(&b, "\r", 1); break;
        case 'b': buf_add(&b, "\b", 1); break;
        case 'f': buf_add(&b, "\f", 1); break;
        case 'u': {
            if (i + 4 >= v->n) break;
            char hex[5] = {v->p[i + 1], v->p[i + 2], v->p[i + 3], v->p[i + 4], 0};
            unsigned cp = (unsigned)strtoul(hex, NULL, 16);
            i += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && i + 6 < v->n && v->p[i + 1] == '\\' && v->p[i + 2] == 'u') {
                char lo[5] = {v->p[i + 3], v->p[i + 4], v->p[i + 5], v->p[i + 6], 0};
                unsigned l = (unsigned)strtoul(lo, NULL, 16);
                if (l >= 0xdc00 && l < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (l - 0xdc00);
                    i += 6;
                }
            }
            put_utf8(&b, cp);
            break;
        }
        default: buf_add(&b, &c, 1);
        }
    }
    return b.p;
}

static long jv_int(const struct jv *v, long dflt)
{
    if (v->type != 'n')
        return dflt;
    char tmp[32];
    size_t n = v->n < sizeof tmp - 1 ? v->n : sizeof tmp - 1;
    memcpy(tmp, v->p, n);
    tmp[n] = 0;
    return strtol(tmp, NULL, 10);
}

static char *get_str(const char *p, const char *e, const char *key)
{
    struct jv v;
    return json_get(p, e, key, &v) ? jv_str(&v) : NULL;
}
static long get_int(const char *p, const char *e, const char *key, long dflt)
{
    struct jv v;
    return json_get(p, e, key, &v) ? jv_int(&v, dflt) : dflt;
}
static int get_bool(const char *p, const char *e, const char *key)
{
    struct jv v;
    return json_get(p, e, key, &v) && v.type == 't';
}

/* ----- state ------------------------------------------------------------------------------ */
struct conn;

struct proc {
    char *key;
    pid_t pid;
    int tty, stdin_fd, close_stdin_on_detach;
    int out_fd[2], out_stream[2];
    struct buf stdin_buf;
    int has_status, status, reapable, removed;
    int stdin_eof;        /* the client closed stdin: close it once the buffer is written */
    struct proc *next;
};

struct conn {
    int fd, dead, reading, stdin_;
    struct buf in;
    struct proc *proc;
    int waiting;
    struct conn *next;
};

struct pending {
    struct conn *conn;
    char *key;
    int tty, want_stdin, sync_fd, stdin_fd, con_parent, settled;
    int out_fd[2];
    pid_t child, pid;
    double deadline;
    struct buf rest, msgs;
    char *err;            /* the first error message line from the sync pipe (JSON) */
    struct pending *next;
};

static struct {
    int listen_fd, sig_fd, helper_fd, pidns_fd, log_fd, start_w, sync_r;
    int ns_fd[MAX_LIST], ns_flag[MAX_LIST], n_ns;
    const char *procs[MAX_LIST]; int n_procs;
    const char *cg[MAX_LIST]; int n_cg;
    const char *freezer, *oom_file, *cg_kill;
    const char *log_path, *exit_path, *state_dir;
    long long log_size, log_max_size;
    int log_max_files;
    double entry_timeout;
    char started_at[64];
    struct proc *procs_list, *init;
    struct conn *conns;
    struct pending *pending;
    struct buf partial[3];
    pid_t unclaimed_pid[64]; int unclaimed_status[64]; int n_unclaimed;
} M;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void rfc3339(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%09ldZ", ts.tv_nsec);
}

static int write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w; n -= (size_t)w;
    }
    return 0;
}

static int send_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w; n -= (size_t)w;
    }
    return 0;
}

static void kill_pid(pid_t pid) { if (pid > 0) kill(pid, SIGKILL); }
static int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status); }

/* ----- connections ------------------------------------------------------------------------ */
static void close_stdin(struct proc *p, int force);

static void drop(struct conn *c)
{
    if (c->dead)
        return;
    if (c->proc && c->stdin_ && c->proc->close_stdin_on_detach)
        close_stdin(c->proc, 0);
    c->proc = NULL;
    c->waiting = 0;
    c->dead = 1;
    close(c->fd);
    c->fd = -1;
}

static void reply(struct conn *c, struct buf *b)
{
    buf_add(b, "\n", 1);
    if (send_all(c->fd, b->p, b->n) < 0)
        drop(c);
    buf_free(b);
}

static void reply_msg(struct conn *c, int ok, const char *msg)
{
    struct buf b = {0};
    buf_str(&b, ok ? "{\"ok\":true" : "{\"ok\":false");
    if (msg) { buf_str(&b, ",\"msg\":"); buf_jstr(&b, msg); }
    buf_str(&b, "}");
    reply(c, &b);
}

static void send_frame(struct conn *c, int stream, const void *data, size_t n)
{
    unsigned char hdr[8] = {(unsigned char)stream, 0, 0, 0,
                            (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                            (unsigned char)(n >> 8), (unsigned char)n};
    struct iovec iov[2] = {{hdr, 8}, {(void *)data, n}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    size_t left = n + 8;
    while (left) {
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { drop(c); return; }
        left -= (size_t)w;
        while (w > 0 && mh.msg_iovlen) {
            if ((size_t)w >= mh.msg_iov[0].iov_len) {
                w -= (ssize_t)mh.msg_iov[0].iov_len;
                mh.msg_iov++; mh.msg_iovlen--;
            } else {
                mh.msg_iov[0].iov_base = (char *)mh.msg_iov[0].iov_base + w;
                mh.msg_iov[0].iov_len -= (size_t)w;
                w = 0;
            }
        }
    }
}

/* ----- the json-file log ------------------------------------------------------------------ */
static void write_log(const char *data, size_t n)
{
    if (M.log_fd < 0)
        return;
    if (M.log_max_size && M.log_size && M.log_size + (long long)n > M.log_max_size) {
        int keep = M.log_max_files > 1 ? M.log_max_files : 1;
        close(M.log_fd);
        if (keep == 1) {
            if (truncate(M.log_path, 0) < 0 && errno != ENOENT) { /* reopened below anyway */ }
        } else {
            for (int i = keep - 1; i >= 1; i--) {
                char src[4096], dst[4096];
                if (i == 1) snprintf(src, sizeof src, "%s", M.log_path);
                else snprintf(src, sizeof src, "%s.%d", M.log_path, i - 1);
                snprintf(dst, sizeof dst, "%s.%d", M.log_path, i);
                rename(src, dst);
            }
        }
        M.log_fd = open(M.log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        M.log_size = 0;
        if (M.log_fd < 0)
            return;
    }
    write_all(M.log_fd, data, n);
    M.log_size += (long long)n;
}

static void log_record(struct buf *out, int stream, const char *line, size_t n, int nl,
                       const char *now)
{
    struct buf text = {0};
    buf_add(&text, line, n);
    if (nl) buf_add(&text, "\n", 1);
    buf_str(out, "{\"log\":");
    buf_json(out, (const unsigned char *)text.p, text.n);
    buf_str(out, stream == STDOUT_S ? ",\"stream\":\"stdout\",\"time\":\"" : ",\"stream\":\"stderr\",\"time\":\"");
    buf_str(out, now);
    buf_str(out, "\"}\n");
    buf_free(&text);
}

static void flush_records(struct buf *out, int final)
{
    if (!out->n) return;
    if (!M.log_max_size || final) { write_log(out->p, out->n); return; }
    /* Rotation happens between records, as json-file's does. */
    size_t at = 0;
    while (at < out->n) {
        char *nl = memchr(out->p + at, '\n', out->n - at);
        size_t end = nl ? (size_t)(nl - out->p) + 1 : out->n;
        write_log(out->p + at, end - at);
        at = end;
    }
}

static void log_output(int stream, const char *data, size_t n)
{
    if (M.log_fd < 0)
        return;
    struct buf *part = &M.partial[stream];
    buf_add(part, data, n);
    char now[64];
    rfc3339(now, sizeof now);
    struct buf out = {0};
    size_t at = 0;
    for (;;) {
        char *nl = memchr(part->p + at, '\n', part->n - at);
        if (!nl) break;
        log_record(&out, stream, part->p + at, (size_t)(nl - part->p) - at, 1, now);
        at = (size_t)(nl - part->p) + 1;
    }
    buf_drop(part, at);
    if (part->n > PARTIAL_MAX) {
        log_record(&out, stream, part->p, part->n, 0, now);
        part->n = 0;
    }
    flush_records(&out, 0);
    buf_free(&out);
}

static void flush_partials(void)
{
    char now[64];
    rfc3339(now, sizeof now);
    for (int s = STDOUT_S; s <= STDERR_S; s++) {
        if (M.partial[s].n) {
            struct buf out = {0};
            log_record(&out, s, M.partial[s].p, M.partial[s].n, 0, now);
            write_log(out.p, out.n);
            buf_free(&out);
            M.partial[s].n = 0;
        }
    }
}

/* ----- processes -------------------------------------------------------------------------- */
static struct proc *find_proc(const char *key)
{
    for (struct proc *p = M.procs_list; p; p = p->next)
        if (!p->removed && strcmp(p->key, key ? key : "init") == 0)
            return p;
    return NULL;
}

static int proc_done(struct proc *p) { return p->has_status && p->out_fd[0] < 0 && p->out_fd[1] < 0; }

static void emit(struct proc *p, int stream, const char *data, size_t n)
{
    if (p == M.init)
        log_output(stream, data, n);
    for (struct conn *c = M.conns; c; c = c->next)
        if (!c->dead && c->proc == p)
            send_frame(c, stream, data, n);
}

static void close_out(struct proc *p, int i)
{
    int fd = p->out_fd[i];
    if (fd < 0) return;
    p->out_fd[i] = -1;
    if (fd != p->stdin_fd)
        close(fd);
}

static void close_stdin(struct proc *p, int force)
{
    int fd = p->stdin_fd;
    if (fd < 0)
        return;
    /* A terminal has no half-close: a client leaving must not end the shell it leaves. */
    if (p->tty && !force)
        return;
    if (!force && p->stdin_buf.n) {   /* what the client sent before its EOF goes first */
        p->stdin_eof = 1;
        return;
    }
    p->stdin_fd = -1;
    p->stdin_eof = 0;
    buf_free(&p->stdin_buf);
    if (fd == p->out_fd[0] || fd == p->out_fd[1])
        return;    /* a pty master still being read: close_out closes it */
    close(fd);
}

static void flush_stdin(struct proc *p)
{
    while (p->stdin_fd >= 0 && p->stdin_buf.n) {
        ssize_t n = write(p->stdin_fd, p->stdin_buf.p, p->stdin_buf.n);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) { p->stdin_buf.n = 0; break; }
        buf_drop(&p->stdin_buf, (size_t)n);
    }
    if (p->stdin_eof && !p->stdin_buf.n)
        close_stdin(p, 0);
}

static void write_stdin(struct proc *p, const char *data, size_t n)
{
    if (p->stdin_fd < 0) return;
    buf_add(&p->stdin_buf, data, n);
    flush_stdin(p);
}

static void maybe_proc_done(struct proc *p)
{
    if (p == M.init || !proc_done(p) || p->removed)
        return;
    char rec[64];
    int code = p->status >= 0 ? p->status : 128 - p->status;
    int n = snprintf(rec, sizeof rec, "{\"ExitCode\":%d}", code);
    for (struct conn *c = M.conns; c; c = c->next) {
        if (!c->dead && c->proc == p) {
            send_frame(c, EXIT_S, rec, (size_t)n);
            drop(c);
        }
    }
    if (p->stdin_fd >= 0)
        close_stdin(p, 1);
    p->removed = 1;
}

static void on_output(struct proc *p, int i)
{
    static char data[CHUNK];
    ssize_t n = read(p->out_fd[i], data, sizeof data);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {      /* EOF, or EIO from a pty master whose last slave closed */
        close_out(p, i);
        maybe_proc_done(p);
        return;
    }
    emit(p, p->out_stream[i], data, (size_t)n);
}

static void drain_pty(struct proc *p)
{
    while (p->out_fd[0] >= 0) {
        static char data[CHUNK];
        ssize_t n = read(p->out_fd[0], data, sizeof data);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) { close_out(p, 0); break; }
        emit(p, STDOUT_S, data, (size_t)n);
    }
}

/* ----- exec ------------------------------------------------------------------------------- */
static void __attribute__((noreturn)) child_fail(int sync_fd, const char *stage, int err,
                                                 const char *msg)
{
    struct buf b = {0};
    buf_fmt(&b, "{\"t\":\"error\",\"stage\":\"%s\",\"errno\":%d,\"msg\":", stage, err);
    buf_jstr(&b, msg);
    buf_str(&b, "}\n");
    write_all(sync_fd, b.p, b.n);
    _exit(err == ENOENT && strcmp(stage, "exec") == 0 ? 127 : 126);
}

static void __attribute__((noreturn)) child_fail_errno(int sync_fd, const char *stage,
                                                       const char *path)
{
    int err = errno;
    char msg[4200];
    if (path) snprintf(msg, sizeof msg, "%s: %s", strerror(err), path);
    else snprintf(msg, sizeof msg, "%s", strerror(err));
    child_fail(sync_fd, stage, err, msg);
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void close_except(int *keep, int n)
{
    qsort(keep, (size_t)n, sizeof *keep, cmp_int);
    int lo = 3;
    for (int i = 0; i < n; i++) {
        if (keep[i] < lo) continue;
        if (keep[i] > lo) syscall(SYS_close_range, (unsigned)lo, (unsigned)keep[i] - 1, 0);
        lo = keep[i] + 1;
    }
    syscall(SYS_close_range, (unsigned)lo, ~0U, 0);
}

static int is_exec_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

static void spec_u32(struct buf *b, uint16_t tag, uint32_t v)
{
    uint32_t len = 4;
    buf_add(b, &tag, 2); buf_add(b, &len, 4); buf_add(b, &v, 4);
}

/* In the fork: the stages of a process joining the running silo (spawn.child_exec's). */
static void __attribute__((noreturn)) exec_child(int sync_w, int root_fd, int con_child,
                                                 const int stdio[3], const struct buf *spec,
                                                 const char *argv0, const char *search,
                                                 const char *cwd, int h, int w)
{
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    const char *stage = "stdio";
    if (stdio[0] >= 0) {
        for (int t = 0; t < 3; t++)
            if (dup2(stdio[t], t) < 0)
                child_fail_errno(sync_w, stage, NULL);
    }
    for (int s = 1; s < 65; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int keep[MAX_LIST + 6], nk = 0;
    keep[nk++] = sync_w; keep[nk++] = root_fd; keep[nk++] = M.helper_fd;
    for (int i = 0; i < M.n_ns; i++) keep[nk++] = M.ns_fd[i];
    if (M.pidns_fd >= 0) keep[nk++] = M.pidns_fd;
    if (con_child >= 0) keep[nk++] = con_child;
    close_except(keep, nk);
    stage = "jobobject";
    for (int i = 0; i < M.n_procs; i++) {
        int fd = open(M.procs[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1)
            child_fail_errno(sync_w, stage, NULL);
        close(fd);
    }
    stage = "namespaces";
    for (int i = 0; i < M.n_ns; i++) {
        if (setns(M.ns_fd[i], M.ns_flag[i]) < 0)
            child_fail_errno(sync_w, stage, NULL);
        close(M.ns_fd[i]);
    }
    stage = "rootfs";
    if (fchdir(root_fd) < 0 || chroot(".") < 0 || chdir("/") < 0)
        child_fail_errno(sync_w, stage, NULL);
    close(root_fd);
    if (con_child >= 0) {
        /* The pty of the container's own devpts, so that `tty` names /dev/pts/N inside. */
        stage = "console";
        int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
        char name[128];
        if (master < 0) child_fail_errno(sync_w, stage, "/dev/ptmx");
        if (unlockpt(master) < 0 || ptsname_r(master, name, sizeof name) != 0)
            child_fail_errno(sync_w, stage, NULL);
        int slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (slave < 0) child_fail_errno(sync_w, stage, name);
        struct winsize ws = {.ws_row = (unsigned short)(h ? h : 24), .ws_col = (unsigned short)(w ? w : 80)};
        ioctl(master, TIOCSWINSZ, &ws);
        char tag[] = "pty";
        struct iovec iov = {tag, 3};
        char ctl[CMSG_SPACE(sizeof(int))];
        memset(ctl, 0, sizeof ctl);
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                            .msg_controllen = sizeof ctl};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &master, sizeof(int));
        if (sendmsg(con_child, &mh, MSG_NOSIGNAL) < 0)
            child_fail_errno(sync_w, stage, NULL);
        close(master);
        close(con_child);
        for (int t = 0; t < 3; t++)
            if (dup2(slave, t) < 0) child_fail_errno(sync_w, stage, NULL);
        if (slave > 2) close(slave);
    }
    /* The executable, as exec.LookPath finds it, inside the root just entered. */
    char path[4096];
    char msg[4400];
    if (strchr(argv0, '/')) {
        if (argv0[0] == '/') snprintf(path, sizeof path, "%s", argv0);
        else snprintf(path, sizeof path, "%s/%s", cwd, argv0);
        struct stat st;
        if (stat(path, &st) < 0) {
            snprintf(msg, sizeof msg, "exec: \"%s\": stat %s: no such file or directory", argv0, argv0);
            child_fail(sync_w, "exec", ENOENT, msg);
        }
    } else {
        const char *s = search ? search : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        int found = 0;
        while (!found) {
            const char *colon = strchr(s, ':');
            size_t len = colon ? (size_t)(colon - s) : strlen(s);
            if (len == 0) snprintf(path, sizeof path, "./%s", argv0);
            else if (s[len - 1] == '/') snprintf(path, sizeof path, "%.*s%s", (int)len, s, argv0);
            else snprintf(path, sizeof path, "%.*s/%s", (int)len, s, argv0);
            found = is_exec_file(path);
            if (!colon) break;
            s = colon + 1;
        }
        if (!found) {
            snprintf(msg, sizeof msg, "exec: \"%s\": executable file not found in $PATH", argv0);
            child_fail(sync_w, "exec", ENOENT, msg);
        }
    }
    stage = "entry";
    struct stat st;
    if (fstat(M.helper_fd, &st) < 0)
        child_fail_errno(sync_w, stage, NULL);
    if (st.st_mode != 0100555 || st.st_uid != 0 || st.st_gid != 0)
        child_fail(sync_w, stage, EPERM, "the entry helper's mode or owner changed; refusing to run it");
    struct buf full = {0};
    buf_add(&full, spec->p, spec->n);
    spec_u32(&full, T_SYNC_FD, (uint32_t)sync_w);
    if (M.pidns_fd >= 0)
        spec_u32(&full, T_PIDNS_FD, (uint32_t)M.pidns_fd);
    uint16_t tag = T_PATH;
    uint32_t plen = (uint32_t)strlen(path) + 1;
    buf_add(&full, &tag, 2); buf_add(&full, &plen, 4); buf_add(&full, path, plen);
    int spec_fd = memfd_create("silobox-entry-spec", 0);
    if (spec_fd < 0 || write_all(spec_fd, full.p, full.n) < 0)
        child_fail_errno(sync_w, stage, NULL);
    fcntl(sync_w, F_SETFD, 0);
    if (M.pidns_fd >= 0)
        fcntl(M.pidns_fd, F_SETFD, 0);
    char fdarg[16];
    snprintf(fdarg, sizeof fdarg, "%d", spec_fd);
    char *argv[] = {"silobox-entry", fdarg, NULL};
    char *envp[] = {NULL};
    syscall(SYS_execveat, M.helper_fd, "", argv, envp, AT_EMPTY_PATH);
    child_fail_errno(sync_w, stage, NULL);
}

static int hex_decode(const char *hex, struct buf *out)
{
    size_t n = strlen(hex);
    if (n % 2) return -1;
    for (size_t i = 0; i < n; i += 2) {
        char two[3] = {hex[i], hex[i + 1], 0};
        if (!isxdigit((unsigned char)two[0]) || !isxdigit((unsigned char)two[1])) return -1;
        unsigned char c = (unsigned char)strtoul(two, NULL, 16);
        buf_add(out, &c, 1);
    }
    return 0;
}

static int set_nonblock(int fd) { return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* Fork a process that enters the container; the answer waits for its sync pipe. */
static int start_exec(struct conn *c, const char *line, const char *end, const char *rest,
                      size_t rest_n)
{
    if (!M.init || M.init->has_status) {
        reply_msg(c, 0, "container is not running");
        return 0;
    }
    char *key = get_str(line, end, "id");
    char *hex = get_str(line, end, "spec");
    char *argv0 = get_str(line, end, "argv0");
    char *search = get_str(line, end, "search_path");
    char *cwd = get_str(line, end, "cwd");
    int tty = get_bool(line, end, "tty"), want_stdin = get_bool(line, end, "stdin");
    int h = 24, w = 80;
    struct jv cs;
    if (json_get(line, end, "console_size", &cs) && cs.type == 'a') {
        sscanf(cs.p, "[%d , %d]", &h, &w);
    }
    struct buf spec = {0};
    if (!key || !hex || !argv0 || !cwd || hex_decode(hex, &spec) < 0 || spec.n < 8) {
        reply_msg(c, 0, "exec: the request has no entry spec");
        free(key); free(hex); free(argv0); free(search); free(cwd); buf_free(&spec);
        return 0;
    }
    free(hex);
    int stdio[3] = {-1, -1, -1}, stdin_w = -1, out_r[2] = {-1, -1};
    int sv[2] = {-1, -1};
    int ok = 1;
    if (tty) {
        ok = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0;
    } else {
        int p[2];
        if (want_stdin) {
            ok = pipe2(p, O_CLOEXEC) == 0;
            if (ok) { stdio[0] = p[0]; stdin_w = p[1]; set_nonblock(stdin_w); }
        } else {
            stdio[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
            ok = stdio[0] >= 0;
        }
        if (ok && pipe2(p, O_CLOEXEC) == 0) { out_r[0] = p[0]; stdio[1] = p[1]; } else ok = 0;
        if (ok && pipe2(p, O_CLOEXEC) == 0) { out_r[1] = p[0]; stdio[2] = p[1]; } else ok = 0;
    }
    char root[64];
    snprintf(root, sizeof root, "/proc/%d/root", (int)M.init->pid);
    int root_fd = ok ? open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    int sp[2] = {-1, -1};
    ok = ok && root_fd >= 0 && pipe2(sp, O_CLOEXEC) == 0;
    pid_t pid = ok ? fork() : -1;
    if (pid == 0)
        exec_child(sp[1], root_fd, sv[1], stdio, &spec, argv0, search, cwd, h, w);
    int err = errno;
    for (int i = 0; i < 3; i++) if (stdio[i] >= 0) close(stdio[i]);
    if (root_fd >= 0) close(root_fd);
    if (sp[1] >= 0) close(sp[1]);
    if (sv[1] >= 0) close(sv[1]);
    buf_free(&spec); free(argv0); free(search); free(cwd);
    if (pid < 0) {
        for (int i = 0; i < 2; i++) if (out_r[i] >= 0) close(out_r[i]);
        if (stdin_w >= 0) close(stdin_w);
        if (sv[0] >= 0) close(sv[0]);
        if (sp[0] >= 0) close(sp[0]);
        free(key);
        char msg[256];
        snprintf(msg, sizeof msg, "cannot create process: %s", strerror(err));
        reply_msg(c, 0, msg);
        return 0;
    }
    for (int i = 0; i < 2; i++) if (out_r[i] >= 0) set_nonblock(out_r[i]);
    set_nonblock(sp[0]);
    struct pending *pe = calloc(1, sizeof *pe);
    pe->conn = c; pe->key = key; pe->tty = tty; pe->want_stdin = want_stdin;
    pe->sync_fd = sp[0]; pe->stdin_fd = stdin_w; pe->con_parent = sv[0];
    pe->out_fd[0] = out_r[0]; pe->out_fd[1] = out_r[1];
    pe->child = pid;
    pe->deadline = mono() + M.entry_timeout;
    if (rest_n) buf_add(&pe->rest, rest, rest_n);
    pe->next = M.pending;
    M.pending = pe;
    c->reading = 0;     /* nothing more from the client until the exec settled */
    return 1;
}

static int recv_master(int sock)
{
    char data[16];
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {data, sizeof data};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    int fd = -1;
    if (recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) > 0) {
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
                memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    }
    close(sock);
    if (fd >= 0) set_nonblock(fd);
    return fd;
}

static int take_unclaimed(pid_t pid, int *status)
{
    for (int i = 0; i < M.n_unclaimed; i++) {
        if (M.unclaimed_pid[i] == pid) {
            if (status) *status = M.unclaimed_status[i];
            M.unclaimed_pid[i] = M.unclaimed_pid[--M.n_unclaimed];
            M.unclaimed_status[i] = M.unclaimed_status[M.n_unclaimed];
            return 1;
        }
    }
    return 0;
}

/* The exec either execve'd (EOF, no error), failed or timed out: make its process, answer
 * the client and turn its connection into the process's stream. */
static void settle(struct pending *pe, const char *error_json, int do_kill)
{
    if (pe->settled) return;
    pe->settled = 1;
    close(pe->sync_fd);
    pe->sync_fd = -1;
    pid_t pid = pe->pid ? pe->pid : pe->child;
    if (do_kill) { kill_pid(pe->pid); kill_pid(pe->child); }
    if (pid != pe->child)
        take_unclaimed(pe->child, NULL);
    int stdin_fd = pe->stdin_fd;
    struct proc *p = calloc(1, sizeof *p);
    p->out_fd[0] = pe->out_fd[0]; p->out_stream[0] = STDOUT_S;
    p->out_fd[1] = pe->out_fd[1]; p->out_stream[1] = STDERR_S;
    if (pe->con_parent >= 0) {
        int master = recv_master(pe->con_parent);
        if (master >= 0) {
            p->out_fd[0] = master;
            stdin_fd = pe->want_stdin ? master : -1;
        }
    }
    p->key = pe->key; pe->key = NULL;
    p->pid = pid; p->tty = pe->tty; p->stdin_fd = stdin_fd;
    int st;
    if (take_unclaimed(pid, &st)) { p->has_status = 1; p->status = st; }
    else p->reapable = 1;
    p->next = M.procs_list;
    M.procs_list = p;
    int any = 0;
    for (struct pending *o = M.pending; o; o = o->next) any |= !o->settled;
    if (!any) M.n_unclaimed = 0;
    struct conn *c = pe->conn;
    if (c->dead) {
        maybe_proc_done(p);
        return;
    }
    c->proc = p;
    c->stdin_ = stdin_fd >= 0;
    c->reading = 1;
    struct buf b = {0};
    if (error_json) {
        const char *e = error_json + strlen(error_json);
        char *stage = get_str(error_json, e, "stage"), *msg = get_str(error_json, e, "msg");
        buf_fmt(&b, "{\"ok\":false,\"pid\":%d,\"stage\":", (int)pid);
        buf_jstr(&b, stage ? stage : "exec");
        buf_fmt(&b, ",\"errno\":%ld,\"msg\":", get_int(error_json, e, "errno", 0));
        buf_jstr(&b, msg ? msg : "");
        buf_str(&b, "}");
        free(stage); free(msg);
    } else {
        buf_fmt(&b, "{\"ok\":true,\"pid\":%d}", (int)pid);
    }
    reply(c, &b);
    if (!c->dead && pe->rest.n && c->stdin_)
        write_stdin(p, pe->rest.p, pe->rest.n);
    maybe_proc_done(p);
}

static void on_sync(struct pending *pe)
{
    char data[4096];
    ssize_t n = read(pe->sync_fd, data, sizeof data);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 0) {
        buf_add(&pe->msgs, data, (size_t)n);
        char *nl;
        while (pe->msgs.n && (nl = memchr(pe->msgs.p, '\n', pe->msgs.n))) {
            const char *s = pe->msgs.p, *e = nl;
            char *t = get_str(s, e, "t");
            if (t && strcmp(t, "pid") == 0) {
                pe->pid = (pid_t)get_int(s, e, "pid", 0);
            } else if (!pe->err) {
                size_t len = (size_t)(e - s);
                pe->err = malloc(len + 1);
                memcpy(pe->err, s, len);
                pe->err[len] = 0;
                if (!t || strcmp(t, "error") != 0) {   /* garbled */
                    free(pe->err);
                    pe->err = strdup("{\"stage\":\"entry\",\"errno\":0,\"msg\":\"garbled message from the entering process\"}");
                }
            }
            free(t);
            buf_drop(&pe->msgs, (size_t)(nl - pe->msgs.p) + 1);
        }
        return;
    }
    settle(pe, pe->err, 0);
}

/* ----- requests --------------------------------------------------------------------------- */
static void do_start(struct conn *c)
{
    struct buf b = {0};
    if (M.start_w < 0) {
        buf_str(&b, "{\"ok\":true,\"already\":true}");
        if (c) reply(c, &b); else buf_free(&b);
        return;
    }
    write_all(M.start_w, "1", 1);
    close(M.start_w);
    M.start_w = -1;
    /* Read the entry's messages until EOF (it exec'd), an error, or the deadline. */
    struct buf msgs = {0};
    char *err = NULL;
    int timed_out = 0;
    double deadline = mono() + M.entry_timeout;
    while (M.sync_r >= 0 && !err) {
        double left = deadline - mono();
        struct pollfd pfd = {M.sync_r, POLLIN, 0};
        int r = left > 0 ? poll(&pfd, 1, (int)(left * 1000) + 1) : 0;
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { timed_out = 1; break; }
        char data[4096];
        ssize_t n = read(M.sync_r, data, sizeof data);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        buf_add(&msgs, data, (size_t)n);
        char *nl;
        while (!err && msgs.n && (nl = memchr(msgs.p, '\n', msgs.n))) {
            char *t = get_str(msgs.p, nl, "t");
            if (t && strcmp(t, "error") == 0) {
                size_t len = (size_t)(nl - msgs.p);
                err = malloc(len + 1);
                memcpy(err, msgs.p, len);
                err[len] = 0;
            }
            free(t);
            buf_drop(&msgs, (size_t)(nl - msgs.p) + 1);
        }
    }
    buf_free(&msgs);
    if (timed_out && M.init) {
        kill_pid(M.init->pid);
        char tmp[160];
        snprintf(tmp, sizeof tmp, "{\"stage\":\"timeout\",\"errno\":%d,\"msg\":\"the process did not enter the container within %gs\"}",
                 ETIMEDOUT, M.entry_timeout);
        err = strdup(tmp);
    }
    if (M.sync_r >= 0) { close(M.sync_r); M.sync_r = -1; }
    rfc3339(M.started_at, sizeof M.started_at);
    if (err) {
        const char *e = err + strlen(err);
        char *stage = get_str(err, e, "stage"), *msg = get_str(err, e, "msg");
        buf_str(&b, "{\"ok\":false,\"stage\":");
        buf_jstr(&b, stage ? stage : "");
        buf_fmt(&b, ",\"errno\":%ld,\"msg\":", get_int(err, e, "errno", 0));
        buf_jstr(&b, msg ? msg : "");
        buf_str(&b, "}");
        free(stage); free(msg); free(err);
    } else {
        buf_str(&b, "{\"ok\":true,\"started_at\":");
        buf_jstr(&b, M.started_at);
        buf_str(&b, "}");
    }
    if (c) reply(c, &b); else buf_free(&b);
}

/* One request line; returns 1 when the connection became a stream or waits (no more lines). */
static void handle(struct conn *c, const char *line, const char *end, const char *rest,
                   size_t rest_n)
{
    char *op = get_str(line, end, "op");
    if (!op) {
        reply_msg(c, 0, "ValueError: not a request");
        return;
    }
    if (strcmp(op, "exec") == 0) {
        start_exec(c, line, end, rest, rest_n);
        free(op);
        return;
    }
    char *target = get_str(line, end, "target");
    struct proc *p = find_proc(target);
    struct buf b = {0};
    if (strcmp(op, "start") == 0) {
        do_start(c);
    } else if (strcmp(op, "state") == 0) {
        buf_fmt(&b, "{\"ok\":true,\"pid\":%d,\"started\":%s,\"started_at\":",
                M.init ? (int)M.init->pid : 0, M.start_w < 0 ? "true" : "false");
        buf_jstr(&b, M.started_at);
        buf_str(&b, ",\"execs\":{");
        int first = 1;
        for (struct proc *q = M.procs_list; q; q = q->next) {
            if (q == M.init || q->removed) continue;
            if (!first) buf_str(&b, ",");
            first = 0;
            buf_jstr(&b, q->key);
            buf_fmt(&b, ":%d", (int)q->pid);
        }
        buf_str(&b, "}}");
        reply(c, &b);
    } else if (strcmp(op, "attach") == 0) {
        if (!p) {
            reply_msg(c, 0, "no such process");
        } else {
            c->proc = p;
            c->stdin_ = get_bool(line, end, "stdin") && p->stdin_fd >= 0;
            reply_msg(c, 1, NULL);
            if (!c->dead && rest_n && c->stdin_)
                write_stdin(p, rest, rest_n);
        }
    } else if (strcmp(op, "wait") == 0) {
        c->waiting = 1;
    } else if (strcmp(op, "signal") == 0) {
        if (!p || p->has_status) {
            reply_msg(c, 0, "process is not running");
        } else {
            kill(p->pid, (int)get_int(line, end, "signal", SIGTERM));
            reply_msg(c, 1, NULL);
        }
    } else if (strcmp(op, "resize") == 0) {
        int fd = !p ? -1 : p->stdin_fd >= 0 ? p->stdin_fd : p->out_fd[0];
        if (!p || !p->tty || fd < 0) {
            reply_msg(c, 0, "process has no console");
        } else {
            struct winsize ws = {.ws_row = (unsigned short)get_int(line, end, "height", 24),
                                 .ws_col = (unsigned short)get_int(line, end, "width", 80)};
            if (ioctl(fd, TIOCSWINSZ, &ws) < 0) {
                char msg[128];
                snprintf(msg, sizeof msg, "OSError: %s", strerror(errno));
                reply_msg(c, 0, msg);
            } else {
                reply_msg(c, 1, NULL);
            }
        }
    } else if (strcmp(op, "close_stdin") == 0) {
        if (p) close_stdin(p, 0);
        reply_msg(c, 1, NULL);
    } else {
        buf_str(&b, "{\"ok\":false,\"msg\":");
        char msg[128];
        snprintf(msg, sizeof msg, "unknown op '%.64s'", op);
        buf_jstr(&b, msg);
        buf_str(&b, "}");
        reply(c, &b);
    }
    free(target);
    free(op);
}

static void on_conn(struct conn *c)
{
    static char data[CHUNK];
    ssize_t n = recv(c->fd, data, sizeof data, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) n = 0;
    if (c->proc) {     /* a stream: bytes are stdin, EOF closes it */
        if (!n) {
            if (c->stdin_) close_stdin(c->proc, 0);
            c->stdin_ = 0;
            c->reading = 0;    /* keep the connection for output; stop reading it */
            return;
        }
        if (c->stdin_) write_stdin(c->proc, data, (size_t)n);
        return;
    }
    if (!n || c->waiting) { drop(c); return; }
    buf_add(&c->in, data, (size_t)n);
    char *nl = memchr(c->in.p, '\n', c->in.n);
    if (!nl) {
        if (c->in.n > INBUF_MAX) drop(c);
        return;
    }
    struct buf in = c->in;
    c->in = (struct buf){0};
    handle(c, in.p, nl, nl + 1, in.n - (size_t)(nl + 1 - in.p));
    buf_free(&in);
}

static void on_accept(void)
{
    int fd = accept4(M.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct conn *c = calloc(1, sizeof *c);
    c->fd = fd;
    c->reading = 1;
    c->next = M.conns;
    M.conns = c;
}

/* ----- exit ------------------------------------------------------------------------------- */
static void reap(void);

static int read_file(const char *path, char *out, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n, got = 0;
    while ((size_t)got < cap - 1 && (n = read(fd, out + got, cap - 1 - (size_t)got)) > 0)
        got += n;
    close(fd);
    out[got] = 0;
    return (int)got;
}

static int write_str(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = write_all(fd, s, strlen(s));
    close(fd);
    return r;
}

/* Every pid in dir/cgroup.procs and below; signals them with sig. Returns how many. */
static int signal_tree(const char *dir, int sig)
{
    char path[4096];
    static char text[65536];
    int count = 0;
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    if (read_file(path, text, sizeof text) > 0) {
        for (char *s = text; *s;) {
            char *e;
            long pid = strtol(s, &e, 10);
            if (e == s) break;
            if (pid > 0) { count++; if (sig) kill((pid_t)pid, sig); }
            s = e;
            while (*s == '\n') s++;
        }
    }
    DIR *d = opendir(dir);
    if (!d) return count;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_type == DT_DIR && strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            count += signal_tree(path, sig);
        }
    }
    closedir(d);
    return count;
}

static int remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT;
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d))) {
        if (de->d_type == DT_DIR && strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            remove_tree(path);
        }
    }
    closedir(d);
    return rmdir(dir) == 0 || errno == ENOENT;
}

/* The job object's end: OOM state read first, every process killed, the cgroups removed. */
static int cleanup_job(void)
{
    int oom = 0;
    char text[4096];
    if (M.oom_file && read_file(M.oom_file, text, sizeof text) > 0) {
        char *at = strstr(text, "oom_kill ");
        oom = at && strtol(at + 9, NULL, 10) > 0;
    }
    if (!M.n_cg) return oom;
    int left = 0;
    for (int i = 0; i < M.n_cg; i++) left += signal_tree(M.cg[i], 0);
    if (left) {
        if (M.cg_kill) {
            write_str(M.cg_kill, "1");
        } else if (M.freezer) {
            char state[4096];
            snprintf(state, sizeof state, "%s/freezer.state", M.freezer);
            write_str(state, "FROZEN");
            double until = mono() + 1.0;
            while (mono() < until) {
                if (read_file(state, text, sizeof text) > 0 && strncmp(text, "FROZEN", 6) == 0) break;
                usleep(2000);
            }
            for (int i = 0; i < M.n_cg; i++) signal_tree(M.cg[i], SIGKILL);
            write_str(state, "THAWED");
        } else {
            for (int i = 0; i < M.n_cg; i++) signal_tree(M.cg[i], SIGKILL);
        }
    }
    double deadline = mono() + 5.0;
    for (;;) {
        reap();
        int busy = 0;
        for (int i = 0; i < M.n_cg; i++) {
            if (signal_tree(M.cg[i], 0)) signal_tree(M.cg[i], SIGKILL);
            busy += !remove_tree(M.cg[i]);
        }
        if (!busy || mono() >= deadline) break;
        usleep(5000);
    }
    return oom;
}

static void atomic_write(const char *path, const char *data, size_t n)
{
    char tmp[4200];
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path) : 0;
    snprintf(tmp, sizeof tmp, "%.*s/.%s.%d.tmp", (int)dirlen, path, slash ? slash + 1 : path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    int ok = write_all(fd, data, n) == 0 && fsync(fd) == 0;
    close(fd);
    if (!ok || rename(tmp, path) < 0) { unlink(tmp); return; }
    char dir[4200];
    snprintf(dir, sizeof dir, "%.*s", (int)(dirlen ? dirlen : 1), dirlen ? path : "/");
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { fsync(dfd); close(dfd); }
}

static void __attribute__((noreturn)) finish(void)
{
    int status = M.init->status;
    int code = status >= 0 ? status : 128 - status;
    flush_partials();
    int oom = cleanup_job();
    char finished[64];
    rfc3339(finished, sizeof finished);
    struct buf rec = {0};
    buf_fmt(&rec, "{\"ExitCode\":%d,\"OOMKilled\":%s,\"FinishedAt\":\"%s\",\"Pid\":%d,"
                  "\"Started\":%s,\"StartedAt\":", code, oom ? "true" : "false", finished,
            (int)M.init->pid, M.start_w < 0 ? "true" : "false");
    buf_jstr(&rec, M.started_at);
    buf_str(&rec, "}");
    if (M.exit_path)
        atomic_write(M.exit_path, rec.p, rec.n);
    for (struct conn *c = M.conns; c; c = c->next) {
        if (c->dead) continue;
        if (c->proc == M.init) {
            send_frame(c, EXIT_S, rec.p, rec.n);
            drop(c);
        } else if (c->waiting) {
            buf_add(&rec, "\n", 1);
            send_all(c->fd, rec.p, rec.n);
            rec.n--;
            drop(c);
        }
    }
    char sock[4200];
    snprintf(sock, sizeof sock, "%s/shim.sock", M.state_dir);
    unlink(sock);
    if (M.log_fd >= 0) close(M.log_fd);
    _exit(0);
}

static void reap(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) return;
        struct proc *p = NULL;
        for (struct proc *q = M.procs_list; q; q = q->next)
            if (q->reapable && q->pid == pid) { p = q; break; }
        if (!p) {
            int any = 0;
            for (struct pending *o = M.pending; o; o = o->next) any |= !o->settled;
            if (any && M.n_unclaimed < 64) {  /* an exec's process that ended before it settled */
                M.unclaimed_pid[M.n_unclaimed] = pid;
                M.unclaimed_status[M.n_unclaimed++] = exit_code(status);
            }
            continue;
        }
        p->reapable = 0;
        p->has_status = 1;
        p->status = exit_code(status);
        if (p == M.init) {
            /* No exec can enter the container any more: its namespaces go with its last
             * process (its mounts, and with them its sandbox disk), not with this monitor,
             * and before anyone is told it exited. */
            for (int i = 0; i < M.n_ns; i++) close(M.ns_fd[i]);
            M.n_ns = 0;
            if (M.pidns_fd >= 0) { close(M.pidns_fd); M.pidns_fd = -1; }
            /* The kernel kills the rest of the PID namespace now; their output ends with them. */
            for (struct proc *q = M.procs_list; q; q = q->next)
                if (q != M.init && !q->has_status && q->reapable) kill_pid(q->pid);
            for (struct pending *o = M.pending; o; o = o->next)
                if (!o->settled)
                    settle(o, "{\"stage\":\"exec\",\"errno\":0,\"msg\":\"container is not running\"}", 1);
            if (M.init->tty && M.init->out_fd[0] >= 0)
                drain_pty(M.init);
        }
        maybe_proc_done(p);
    }
}

/* ----- the loop --------------------------------------------------------------------------- */
enum kind { K_LISTEN, K_SIG, K_CONN, K_OUT0, K_OUT1, K_STDIN, K_SYNC };
struct slot { enum kind kind; void *obj; };

static void sweep(void)
{
    for (struct conn **pc = &M.conns; *pc;) {
        struct conn *c = *pc;
        if (c->dead) {
            for (struct pending *o = M.pending; o; o = o->next)
                if (o->conn == c && !o->settled) goto keep_conn;   /* freed once settled */
            *pc = c->next;
            buf_free(&c->in);
            free(c);
            continue;
        }
keep_conn:
        pc = &c->next;
    }
    for (struct pending **pp = &M.pending; *pp;) {
        struct pending *o = *pp;
        if (o->settled) {
            *pp = o->next;
            buf_free(&o->rest); buf_free(&o->msgs); free(o->err); free(o->key); free(o);
            continue;
        }
        pp = &o->next;
    }
    for (struct proc **pp = &M.procs_list; *pp;) {
        struct proc *p = *pp;
        if (p->removed && p != M.init) {
            int used = 0;
            for (struct conn *c = M.conns; c; c = c->next) used |= c->proc == p;
            if (!used) {
                *pp = p->next;
                buf_free(&p->stdin_buf); free(p->key); free(p);
                continue;
            }
        }
        pp = &p->next;
    }
}

static void loop(void)
{
    struct pollfd *pfd = NULL;
    struct slot *slot = NULL;
    size_t cap = 0;
    for (;;) {
        reap();
        if (M.init->has_status && proc_done(M.init))
            finish();
        sweep();
        size_t n = 0, need = 2;
        for (struct conn *c = M.conns; c; c = c->next) need++;
        for (struct proc *p = M.procs_list; p; p = p->next) need += 3;
        for (struct pending *o = M.pending; o; o = o->next) need++;
        if (need > cap) {
            cap = need * 2;
            pfd = realloc(pfd, cap * sizeof *pfd);
            slot = realloc(slot, cap * sizeof *slot);
        }
#define ADD(fd_, ev_, kind_, obj_) do { pfd[n] = (struct pollfd){(fd_), (ev_), 0}; \
        slot[n] = (struct slot){(kind_), (obj_)}; n++; } while (0)
        ADD(M.listen_fd, POLLIN, K_LISTEN, NULL);
        ADD(M.sig_fd, POLLIN, K_SIG, NULL);
        for (struct conn *c = M.conns; c; c = c->next) {
            if (c->dead || !c->reading) continue;
            if (c->proc && c->stdin_ && c->proc->stdin_buf.n > STDIN_HIGH) continue;
            ADD(c->fd, POLLIN, K_CONN, c);
        }
        for (struct proc *p = M.procs_list; p; p = p->next) {
            if (p->out_fd[0] >= 0) ADD(p->out_fd[0], POLLIN, K_OUT0, p);
            if (p->out_fd[1] >= 0) ADD(p->out_fd[1], POLLIN, K_OUT1, p);
            if (p->stdin_fd >= 0 && p->stdin_buf.n) ADD(p->stdin_fd, POLLOUT, K_STDIN, p);
        }
        double soonest = 0;
        for (struct pending *o = M.pending; o; o = o->next) {
            if (o->settled) continue;
            ADD(o->sync_fd, POLLIN, K_SYNC, o);
            if (!soonest || o->deadline < soonest) soonest = o->deadline;
        }
        int timeout = 1000;
        if (soonest) {
            double left = soonest - mono();
            timeout = left <= 0 ? 0 : left < 1 ? (int)(left * 1000) + 1 : 1000;
        }
        int r = poll(pfd, n, timeout);
        if (r < 0 && errno != EINTR)
            usleep(10000);
        for (size_t i = 0; r > 0 && i < n; i++) {
            if (!pfd[i].revents) continue;
            struct slot s = slot[i];
            int fd = pfd[i].fd;
            switch (s.kind) {
            case K_LISTEN: on_accept(); break;
            case K_SIG: {
                struct signalfd_siginfo si[8];
                if (read(M.sig_fd, si, sizeof si) < 0) { /* drained */ }
                break;
            }
            case K_CONN: {
                struct conn *c = s.obj;
                if (!c->dead && c->fd == fd && c->reading) on_conn(c);
                break;
            }
            case K_OUT0: case K_OUT1: {
                struct proc *p = s.obj;
                int k = s.kind == K_OUT0 ? 0 : 1;
                if (p->out_fd[k] == fd) on_output(p, k);
                break;
            }
            case K_STDIN: {
                struct proc *p = s.obj;
                if (p->stdin_fd == fd) {
                    if (pfd[i].revents & (POLLERR | POLLHUP) && !(pfd[i].revents & POLLOUT)) {
                        p->stdin_buf.n = 0;
                        if (p->stdin_eof) close_stdin(p, 0);
                    } else {
                        flush_stdin(p);
                    }
                }
                break;
            }
            case K_SYNC: {
                struct pending *o = s.obj;
                if (!o->settled && o->sync_fd == fd) on_sync(o);
                break;
            }
            }
        }
        double now = mono();
        for (struct pending *o = M.pending; o; o = o->next) {
            if (!o->settled && o->deadline <= now) {
                char tmp[160];
                snprintf(tmp, sizeof tmp, "{\"stage\":\"timeout\",\"errno\":%d,\"msg\":\"the process did not enter the container within %gs\"}",
                         ETIMEDOUT, M.entry_timeout);
                settle(o, tmp, 1);
            }
        }
    }
}

/* ----- start-up --------------------------------------------------------------------------- */
static int parse_args(int argc, char **argv)
{
    M.listen_fd = M.helper_fd = M.pidns_fd = M.log_fd = M.start_w = M.sync_r = -1;
    M.entry_timeout = 30;
    M.log_max_files = 1;
    struct proc *init = calloc(1, sizeof *init);
    init->key = strdup("init");
    init->stdin_fd = init->out_fd[0] = init->out_fd[1] = -1;
    init->reapable = 1;
    int nout = 0;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq || eq - argv[i] >= 32) return -1;
        char k[32];
        memcpy(k, argv[i], (size_t)(eq - argv[i]));
        k[eq - argv[i]] = 0;
        const char *v = eq + 1;
        if (!strcmp(k, "listen")) M.listen_fd = atoi(v);
        else if (!strcmp(k, "helper")) M.helper_fd = atoi(v);
        else if (!strcmp(k, "pidns")) M.pidns_fd = atoi(v);
        else if (!strcmp(k, "log")) M.log_fd = atoi(v);
        else if (!strcmp(k, "log_path")) M.log_path = v;
        else if (!strcmp(k, "log_max_size")) M.log_max_size = atoll(v);
        else if (!strcmp(k, "log_max_files")) M.log_max_files = atoi(v);
        else if (!strcmp(k, "exit_path")) M.exit_path = v;
        else if (!strcmp(k, "state_dir")) M.state_dir = v;
        else if (!strcmp(k, "start")) M.start_w = atoi(v);
        else if (!strcmp(k, "sync")) M.sync_r = atoi(v);
        else if (!strcmp(k, "started_at")) snprintf(M.started_at, sizeof M.started_at, "%s", v);
        else if (!strcmp(k, "entry_timeout")) M.entry_timeout = atof(v);
        else if (!strcmp(k, "init")) init->pid = atoi(v);
        else if (!strcmp(k, "tty")) init->tty = atoi(v);
        else if (!strcmp(k, "stdin")) init->stdin_fd = atoi(v);
        else if (!strcmp(k, "stdin_once")) init->close_stdin_on_detach = atoi(v);
        else if (!strcmp(k, "out") && nout < 2) {
            init->out_fd[nout] = atoi(v);
            const char *colon = strchr(v, ':');
            init->out_stream[nout++] = colon ? atoi(colon + 1) : STDOUT_S;
        } else if (!strcmp(k, "ns") && M.n_ns < MAX_LIST) {
            M.ns_fd[M.n_ns] = atoi(v);
            const char *colon = strchr(v, ':');
            M.ns_flag[M.n_ns++] = colon ? atoi(colon + 1) : 0;
        } else if (!strcmp(k, "procs") && M.n_procs < MAX_LIST) M.procs[M.n_procs++] = v;
        else if (!strcmp(k, "cg") && M.n_cg < MAX_LIST) M.cg[M.n_cg++] = v;
        else if (!strcmp(k, "freezer")) M.freezer = v;
        else if (!strcmp(k, "oom")) M.oom_file = v;
        else if (!strcmp(k, "cg_kill")) M.cg_kill = v;
        else return -1;
    }
    if (M.listen_fd < 0 || !init->pid || !M.state_dir)
        return -1;
    M.init = init;
    M.procs_list = init;
    return 0;
}

int main(int argc, char **argv)
{
    prctl(PR_SET_NAME, "silobox-shim", 0, 0, 0);
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
            return 1;
    if (parse_args(argc, argv) < 0) {
        dprintf(2, "silobox-monitor: bad arguments (started by the shim only)\n");
        return 2;
    }
    /* Only what the shim handed over stays open (an fd silod inherited, such as the write end
     * of whoever started it, must not be held for the container's lifetime), and it stays
     * ours, never a child's. */
    int keep[4 * MAX_LIST + 16], nk = 0;
    int singles[] = {M.listen_fd, M.helper_fd, M.pidns_fd, M.log_fd, M.start_w, M.sync_r,
                     M.init->stdin_fd, M.init->out_fd[0], M.init->out_fd[1]};
    for (size_t i = 0; i < sizeof singles / sizeof *singles; i++)
        if (singles[i] >= 0) keep[nk++] = singles[i];
    for (int i = 0; i < M.n_ns; i++) keep[nk++] = M.ns_fd[i];
    close_except(keep, nk);
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    int ignore[] = {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT};
    for (size_t i = 0; i < sizeof ignore / sizeof *ignore; i++)
        signal(ignore[i], SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    M.sig_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    set_nonblock(M.listen_fd);
    if (M.log_fd >= 0) {
        struct stat st;
        M.log_size = fstat(M.log_fd, &st) == 0 ? st.st_size : 0;
    }
    loop();
    return 0;
}
