"""The default syscall filter (the Linux counterpart of the Win32k/syscall filter of a silo).

This is silobox's own description of what Docker's default seccomp profile allows, grouped by
what the calls are for. ``seccomp.default_profile()`` turns these groups into a profile in
Docker's JSON format, so the default and user-supplied profiles go through one compiler.

What is denied follows from what is not listed: the default action is ``EPERM``. Notably absent:
keyctl/add_key/request_key (the kernel keyring is not namespaced), io_uring, userfaultfd,
kexec, swapon/swapoff, the new mount API and ``unshare``/``setns`` without CAP_SYS_ADMIN.
"""

from __future__ import annotations

DEFAULT_ERRNO = 1   # EPERM: what a denied call returns
ENOSYS = 38         # clone3 without CAP_SYS_ADMIN: makes libc fall back to clone, which is filtered

# Allowed for every container, whatever its capabilities. Names that do not exist on the running
# architecture (the 32-bit variants on x86_64, ...) are skipped by the compiler.
_ALWAYS: dict[str, str] = {
    "processes": """
        exit exit_group fork vfork execve execveat wait4 waitid waitpid
        kill tkill tgkill getpid getppid gettid getpgid getpgrp getsid setpgid setsid
        set_tid_address set_robust_list get_robust_list restart_syscall rseq prctl
        capget capset pidfd_open pidfd_send_signal process_mrelease seccomp membarrier
        landlock_add_rule landlock_create_ruleset landlock_restrict_self
        set_thread_area get_thread_area getcpu map_shadow_stack uretprobe riscv_hwprobe
    """,
    "identity": """
        getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32
        getresuid getresuid32 getresgid getresgid32 getgroups getgroups32
        setuid setuid32 setgid setgid32 setreuid setreuid32 setregid setregid32
        setresuid setresuid32 setresgid setresgid32 setfsuid setfsuid32 setfsgid setfsgid32
        setgroups setgroups32
    """,
    "scheduling and limits": """
        sched_getaffinity sched_setaffinity sched_getattr sched_setattr sched_getparam
        sched_setparam sched_getscheduler sched_setscheduler sched_get_priority_max
        sched_get_priority_min sched_rr_get_interval sched_rr_get_interval_time64 sched_yield
        getpriority setpriority ioprio_get ioprio_set
        getrlimit setrlimit ugetrlimit prlimit64 getrusage times sysinfo uname
    """,
    "signals": """
        rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
        rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sigaltstack signalfd signalfd4
        sigprocmask sigreturn pause alarm
    """,
    "time and timers": """
        adjtimex clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
        clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 gettimeofday time
        nanosleep getitimer setitimer
        timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
        timer_settime timer_settime64
        timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
    """,
    "memory": """
        brk mmap mmap2 munmap mremap mprotect madvise mincore msync remap_file_pages
        mlock mlock2 mlockall munlock munlockall memfd_create memfd_secret
        pkey_alloc pkey_free pkey_mprotect mseal cachestat
    """,
    "descriptors and data": """
        read readv pread64 preadv preadv2 write writev pwrite64 pwritev pwritev2
        lseek _llseek close close_range dup dup2 dup3 fcntl fcntl64 ioctl flock
        fsync fdatasync sync syncfs sync_file_range readahead fadvise64 fadvise64_64 fallocate
        sendfile sendfile64 splice tee vmsplice copy_file_range pipe pipe2 getrandom
    """,
    "waiting for events": """
        select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
        epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old
        epoll_pwait epoll_pwait2 eventfd eventfd2
        inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
        futex futex_time64 futex_waitv futex_wait futex_wake futex_requeue
        io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
    """,
    "paths and metadata": """
        open openat openat2 creat access faccessat faccessat2
        stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx
        statfs statfs64 fstatfs fstatfs64 statmount listmount
        chdir fchdir getcwd mkdir mkdirat mknod mknodat rmdir
        rename renameat renameat2 link linkat symlink symlinkat unlink unlinkat
        readlink readlinkat truncate truncate64 ftruncate ftruncate64
        chmod fchmod fchmodat fchmodat2 chown chown32 fchown fchown32 fchownat lchown lchown32
        umask utime utimes utimensat utimensat_time64 futimesat getdents getdents64
        name_to_handle_at
    """,
    "extended attributes": """
        getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat
        listxattr llistxattr flistxattr listxattrat
        removexattr lremovexattr fremovexattr removexattrat
    """,
    "sockets": """
        accept accept4 bind connect listen getpeername getsockname getsockopt setsockopt
        recv recvfrom recvmsg recvmmsg recvmmsg_time64 send sendto sendmsg sendmmsg
        shutdown socketpair socketcall
    """,
    "ipc": """
        ipc msgctl msgget msgrcv msgsnd semctl semget semop semtimedop semtimedop_time64
        shmat shmctl shmdt shmget
        mq_open mq_unlink mq_notify mq_getsetattr mq_timedreceive mq_timedreceive_time64
        mq_timedsend mq_timedsend_time64
    """,
}

ALWAYS_ALLOWED: tuple[str, ...] = tuple(sorted({n for block in _ALWAYS.values()
                                               for n in block.split()}))

# Allowed everywhere once the kernel is new enough to check ptrace access for them (4.8).
MIN_KERNEL_ALLOWED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("4.8", ("process_vm_readv", "process_vm_writev", "ptrace")),
)

# Calls that only exist on some architectures (names as Docker profiles spell arches).
ARCH_ALLOWED: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("ppc64le",), ("sync_file_range2", "swapcontext")),
    (("arm", "arm64"), ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                        "breakpoint", "cacheflush", "set_tls")),
    (("amd64", "x32"), ("arch_prctl",)),
    (("amd64", "x32", "x86"), ("modify_ldt",)),
    (("s390", "s390x"), ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr")),
    (("riscv64",), ("riscv_flush_icache",)),
)

# Calls a capability would let a process use anyway: allowed only when the container holds it.
CAPABILITY_ALLOWED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    ("CAP_SYS_ADMIN", ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
                       "fspick", "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules",
                       "lsm_set_self_attr", "mount", "mount_setattr", "move_mount", "open_tree",
                       "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
                       "sethostname", "setns", "syslog", "umount", "umount2", "unshare")),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("delete_module", "init_module", "finit_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE", ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                        "process_vm_writev", "ptrace")),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)

# socket(2): every address family except AF_ALG (38: kernel crypto) and AF_VSOCK (40: the
# hypervisor channel). Each entry is (op, value) on argument 0; any one match allows the call.
AF_ALG, AF_VSOCK = 38, 40
SOCKET_FAMILIES_ALLOWED: tuple[tuple[str, int], ...] = (
    ("SCMP_CMP_LT", AF_ALG),
    ("SCMP_CMP_EQ", AF_ALG + 1),
    ("SCMP_CMP_GT", AF_VSOCK),
)

# personality(2): only the harmless domains (PER_LINUX, PER_LINUX32, with UNAME26) and the query.
PERSONALITIES_ALLOWED: tuple[int, ...] = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

# clone(2) without CAP_SYS_ADMIN: only when no namespace flag is set (creating namespaces is what
# CAP_SYS_ADMIN guards). s390 passes the flags as the second argument.
CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                         | 0x40000000 | 0x02000000)   # NEWNS UTS IPC USER PID NET CGROUP
CLONE_FLAGS_ARG = {"default": 0, "s390": 1, "s390x": 1}

# The architectures a filter covers: the native one plus the compat ABIs it can run.
ARCH_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
    ("SCMP_ARCH_MIPS64", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32")),
    ("SCMP_ARCH_MIPS64N32", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64")),
    ("SCMP_ARCH_MIPSEL64", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32")),
    ("SCMP_ARCH_MIPSEL64N32", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64")),
    ("SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
    ("SCMP_ARCH_RISCV64", ()),
    ("SCMP_ARCH_LOONGARCH64", ()),
)
