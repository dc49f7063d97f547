/*
 * silobox-entry: the last stage of entering a container.
 *
 * The Python side of a start or an exec (silobox/kernel/spawn) prepares everything that
 * needs the engine's code and is invisible to the container (stdio, job object, namespaces,
 * rootfs, console, the executable's path), then execs this program from a sealed memfd. From
 * here on the process that the container can see is this small static program, whose
 * /proc/self/exe is that memfd, never a host file. It does the steps that end in the
 * container's own program: (exec: join the PID namespace and fork into it;) park until start
 * (a container's first process); rlimits, seccomp, capabilities, user, working directory,
 * no_new_privs, execve. Docs: docs/security.md, "Entering a container".
 *
 * Invocation: argv = {"silobox-entry", "<spec fd>"}, an empty environment. The spec is a
 * binary blob on that fd, see silobox/kernel/entry/__init__.py (encode_spec):
 *   "SBXE" u32 version, then records: u16 tag, u32 length, bytes (little endian).
 * Failures go to the sync pipe as one JSON line, {"t":"error","stage":...,"errno":...,"msg":...};
 * a successful execve closes the (close-on-exec) pipe.
 *
 * Standalone on purpose (no engine code, glibc only, static): a native per-container monitor
 * can embed or exec it unchanged.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#define EXIT_CANNOT_INVOKE 126
#define EXIT_NOT_FOUND 127
#define SPEC_MAX (8 << 20)

enum tag {
    T_MODE = 1, T_SYNC_FD, T_START_FD, T_PIDNS_FD, T_PATH, T_ARGV, T_ENV, T_CWD, T_UID, T_GID,
    T_GROUPS, T_CAPS, T_LAST_CAP, T_NNP, T_SECCOMP, T_RLIMITS, T_UMASK, T_OOM_SCORE_ADJ, T_TTY,
};
enum mode { M_PARK = 1, M_FORK = 2 };   /* bits */

struct spec {
    uint32_t mode;
    int sync_fd, start_fd, pidns_fd;
    const char *path, *cwd;
    char **argv, **env;
    uint32_t uid, gid, ngroups, last_cap, nnp, umask_, nrlimits, tty;
    const uint32_t *groups;
    uint64_t caps;
    const unsigned char *seccomp;
    uint32_t seccomp_len;
    const unsigned char *rlimits;   /* u32 resource, u64 soft, u64 hard; packed */
    int has_oom;
    int32_t oom;
};

static int sync_fd = -1;

static void write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

/* Append s to out as the inside of a JSON string (bytes >= 0x80 pass through). */
static size_t json_str(char *out, size_t cap, size_t at, const char *s)
{
    for (; *s && at + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[at++] = '\\';
            out[at++] = (char)c;
        } else if (c < 0x20) {
            at += (size_t)snprintf(out + at, cap - at, "\\u%04x", c);
        } else {
            out[at++] = (char)c;
        }
    }
    return at;
}

static void report(const char *line)
{
    if (sync_fd >= 0)
        write_all(sync_fd, line, strlen(line));
}

static void __attribute__((noreturn)) fail_code(const char *stage, int err, const char *msg,
                                                int code)
{
    char buf[4096];
    size_t at = (size_t)snprintf(buf, sizeof buf, "{\"t\":\"error\",\"stage\":\"%s\",\"errno\":%d,"
                                 "\"msg\":\"", stage, err);
    at = json_str(buf, sizeof buf - 4, at, msg);
    memcpy(buf + at, "\"}\n", 4);
    if (sync_fd >= 0)
        report(buf);
    else
        dprintf(2, "silobox-entry: %s: %s\n", stage, msg);
    _exit(code);
}

/* A failed step: "<what>: <strerror>" (plus ": <path>"), as the Python stages word it. */
static void __attribute__((noreturn)) fail(const char *stage, const char *what, const char *path)
{
    int err = errno;
    char msg[2048];
    if (path)
        snprintf(msg, sizeof msg, "%s: %s: %s", what, strerror(err), path);
    else
        snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
    fail_code(stage, err, msg, EXIT_CANNOT_INVOKE);
}

static char **string_list(const unsigned char *p, uint32_t len)
{
    size_t n = 0;
    for (uint32_t i = 0; i < len; i++)
        n += p[i] == 0;
    char **out = calloc(n + 1, sizeof *out);
    if (!out)
        return NULL;
    size_t k = 0;
    for (uint32_t i = 0; i < len && k < n; k++) {
        out[k] = (char *)p + i;
        i += (uint32_t)strlen((const char *)p + i) + 1;
    }
    return out;
}

static uint32_t u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static const char *parse(unsigned char *buf, size_t len, struct spec *s)
{
    memset(s, 0, sizeof *s);
    s->sync_fd = s->start_fd = s->pidns_fd = -1;
    if (len < 8 || memcmp(buf, "SBXE", 4) != 0 || u32(buf + 4) != 1)
        return "bad spec header";
    size_t at = 8;
    while (at < len) {
        if (len - at < 6)
            return "truncated record";
        uint16_t tag;
        memcpy(&tag, buf + at, 2);
        uint32_t n = u32(buf + at + 2);
        at += 6;
        if (n > len - at)
            return "truncated record";
        unsigned char *v = buf + at;
        at += n;
        int need4 = 0, need8 = 0;
        switch (tag) {
        case T_MODE: need4 = 1; if (n == 4) s->mode = u32(v); break;
        case T_SYNC_FD: need4 = 1; if (n == 4) s->sync_fd = (int)u32(v); break;
        case T_START_FD: need4 = 1; if (n == 4) s->start_fd = (int)u32(v); break;
        case T_PIDNS_FD: need4 = 1; if (n == 4) s->pidns_fd = (int)u32(v); break;
        case T_UID: need4 = 1; if (n == 4) s->uid = u32(v); break;
        case T_GID: need4 = 1; if (n == 4) s->gid = u32(v); break;
        case T_LAST_CAP: need4 = 1; if (n == 4) s->last_cap = u32(v); break;
        case T_NNP: need4 = 1; if (n == 4) s->nnp = u32(v); break;
        case T_UMASK: need4 = 1; if (n == 4) s->umask_ = u32(v); break;
        case T_TTY: need4 = 1; if (n == 4) s->tty = u32(v); break;
        case T_OOM_SCORE_ADJ: need4 = 1; if (n == 4) { s->has_oom = 1; s->oom = (int32_t)u32(v); } break;
        case T_CAPS: need8 = 1; if (n == 8) s->caps = u64(v); break;
        case T_PATH:
        case T_CWD:
            if (n == 0 || v[n - 1] != 0)
                return "unterminated string";
            if (tag == T_PATH) s->path = (const char *)v; else s->cwd = (const char *)v;
            break;
        case T_ARGV:
        case T_ENV:
            if (n && v[n - 1] != 0)
                return "unterminated list";
            if (tag == T_ARGV) s->argv = string_list(v, n); else s->env = string_list(v, n);
            if (!(tag == T_ARGV ? s->argv : s->env))
                return "out of memory";
            break;
        case T_GROUPS:
            if (n % 4) return "bad groups";
            s->groups = (const uint32_t *)v; s->ngroups = n / 4;
            break;
        case T_SECCOMP:
            if (n % 8 || n / 8 > 0xffff) return "bad seccomp program";
            s->seccomp = v; s->seccomp_len = n;
            break;
        case T_RLIMITS:
            if (n % 20) return "bad rlimits";
            s->rlimits = v; s->nrlimits = n / 20;
            break;
        default:
            return "unknown record";
        }
        if ((need4 && n != 4) || (need8 && n != 8))
            return "bad record length";
    }
    if (!s->mode || s->sync_fd < 0 || !s->path || !s->argv || !s->argv[0] || !s->env || !s->cwd)
        return "incomplete spec";
    if ((s->mode & M_PARK) && s->start_fd < 0)
        return "incomplete spec";
    return NULL;
}

static unsigned char *read_spec(int fd, size_t *len)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size > SPEC_MAX)
        return NULL;
    unsigned char *buf = malloc((size_t)st.st_size);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NULL;
        got += (size_t)n;
    }
    *len = got;
    return buf;
}

static void load_seccomp(const struct spec *s)
{
    struct sock_fprog prog = { .len = (unsigned short)(s->seccomp_len / 8),
                               .filter = (struct sock_filter *)s->seccomp };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
        fail("seccomp", "seccomp", NULL);
}

static void capset_all(uint64_t mask)
{
    struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    for (int i = 0; i < 2; i++) {
        data[i].effective = data[i].permitted = (uint32_t)(mask >> (32 * i));
        data[i].inheritable = 0;
    }
    if (syscall(SYS_capset, &hdr, data) < 0)
        fail("capabilities", "capset", NULL);
}

/* The sandbox, in the order silobox/kernel/sandbox documents (and runc uses). */
static void sandbox(const struct spec *s)
{
    if (s->has_oom) {
        char num[16];
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        int n = snprintf(num, sizeof num, "%d", s->oom);
        if (fd < 0 || write(fd, num, (size_t)n) != n)
            fail("oom_score_adj", "oom_score_adj", NULL);
        close(fd);
    }
    for (uint32_t i = 0; i < s->nrlimits; i++) {
        const unsigned char *r = s->rlimits + 20 * i;
        struct rlimit rl = { (rlim_t)u64(r + 4), (rlim_t)u64(r + 12) };
        if (setrlimit((int)u32(r), &rl) < 0)
            fail("rlimits", "setrlimit", NULL);
    }
    /* Without no_new_privs the kernel takes a filter only while we hold CAP_SYS_ADMIN. */
    if (s->seccomp_len && !s->nnp)
        load_seccomp(s);
    for (uint32_t cap = 0; cap <= s->last_cap && cap < 64; cap++) {
        if (!(s->caps & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
            && errno != EINVAL)
            fail("capabilities", "prctl", NULL);
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        fail("capabilities", "prctl", NULL);
    /* Keep the permitted set across setuid so the capset below still works. */
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        fail("user", "prctl", NULL);
    gid_t groups[s->ngroups + 1];
    for (uint32_t i = 0; i < s->ngroups; i++)
        groups[i] = s->groups[i];
    if (syscall(SYS_setgroups, (size_t)s->ngroups, groups) < 0)
        fail("user", "setgroups", NULL);
    if (syscall(SYS_setresgid, s->gid, s->gid, s->gid) < 0)
        fail("user", "setgid", NULL);
    if (syscall(SYS_setresuid, s->uid, s->uid, s->uid) < 0)
        fail("user", "setuid", NULL);
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
        fail("user", "prctl", NULL);
    capset_all(s->uid == 0 ? s->caps : 0);
    if (chdir(s->cwd) < 0)
        fail("cwd", "chdir", s->cwd);
    umask((mode_t)s->umask_);
    if (s->nnp) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            fail("no_new_privs", "prctl", NULL);
        if (s->seccomp_len)
            load_seccomp(s);
    }
}

static void __attribute__((noreturn)) exec_target(const struct spec *s)
{
    execve(s->path, s->argv, s->env);
    int err = errno;
    char msg[2048];
    if (err == ENOENT) {
        snprintf(msg, sizeof msg, "exec: \"%s\": no such file or directory", s->argv[0]);
        fail_code("exec", err, msg, EXIT_NOT_FOUND);
    }
    char low[256];
    snprintf(low, sizeof low, "%s", strerror(err));
    for (char *c = low; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    snprintf(msg, sizeof msg, "exec: \"%s\": %s", s->argv[0], low);
    fail_code("exec", err, msg, EXIT_CANNOT_INVOKE);
}

int main(int argc, char **argv)
{
    /* First: nothing may ptrace us or open our /proc files from here to execve. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_NAME, "silobox-entry", 0, 0, 0);   /* not the memfd's "/dev/fd/N" */
    /* Only silobox runs this, as full root. A set-id bit or file capabilities (AT_SECURE), or
     * a run as anyone else (the binary reached as "#!/proc/self/exe"), is refused. */
    if (getauxval(AT_SECURE) || getuid() != 0 || geteuid() != 0 || argc != 2) {
        dprintf(2, "silobox-entry: not a container entry\n");
        return EXIT_CANNOT_INVOKE;
    }
    char *end;
    long spec_fd = strtol(argv[1], &end, 10);
    if (*end || spec_fd < 3 || spec_fd > 1 << 20) {
        dprintf(2, "silobox-entry: bad spec fd\n");
        return EXIT_CANNOT_INVOKE;
    }
    size_t len = 0;
    unsigned char *buf = read_spec((int)spec_fd, &len);
    close((int)spec_fd);
    struct spec s;
    const char *bad = buf ? parse(buf, len, &s) : "cannot read spec";
    if (bad) {
        /* Tell the parent if we know its pipe. */
        if (buf && len >= 8)
            sync_fd = s.sync_fd;
        fail_code("entry", EINVAL, bad, EXIT_CANNOT_INVOKE);
    }
    sync_fd = s.sync_fd;
    /* Whatever else we inherited does not reach the container's program. */
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        for (int fd = 3; fd < 1024; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }

    if (s.mode & M_FORK) {
        /* An exec: only now join the container's PID namespace, and only this program does. */
        if (s.pidns_fd >= 0) {
            if (setns(s.pidns_fd, CLONE_NEWPID) < 0)
                fail("namespaces", "setns", NULL);
            close(s.pidns_fd);
        }
        pid_t pid = fork();
        if (pid < 0)
            fail("namespaces", "fork", NULL);
        if (pid > 0) {
            char line[64];
            snprintf(line, sizeof line, "{\"t\":\"pid\",\"pid\":%d}\n", (int)pid);
            report(line);
            _exit(0);
        }
        /* The exec leads its own session (and owns its terminal), as a first process does;
         * the parent, which exits now, must not be the one whose exit hangs the terminal up. */
        if (setsid() < 0)
            fail("stdio", "setsid", NULL);
        if (s.tty && ioctl(0, TIOCSCTTY, 0) < 0)
            fail("console", "ioctl(TIOCSCTTY)", NULL);
    }
    if (s.mode & M_PARK) {
        /* A container's first process: parked until Start; EOF means the start was abandoned. */
        char c;
        ssize_t n;
        report("{\"t\":\"ready\"}\n");
        do
            n = read(s.start_fd, &c, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1)
            _exit(EXIT_CANNOT_INVOKE);
        close(s.start_fd);
    }
    sandbox(&s);
    exec_target(&s);
}
