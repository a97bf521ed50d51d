"""A seccomp deny-list for the worker, through libseccomp (the `pyseccomp` ctypes binding).

A deny-list rather than an allow-list: numpy, OpenCV and CPython make a long, version-dependent
set of ordinary calls, and an allow-list that misses one breaks metrics at random. What a metric
must never do is small and stable: start programs or processes, open sockets, signal or trace
other processes, change namespaces or mounts, or reach kernel surfaces with a history of
exploits (io_uring, bpf, userfaultfd, keyrings, perf). Denied calls fail with EPERM, so Python
raises PermissionError and the item is recorded as an ordinary metric error. A call made with a
foreign architecture's numbering (i386 `int 0x80` on x86_64) kills the worker.
"""

from __future__ import annotations

import errno
import os

# CLONE_THREAD: a clone without it creates a process, not a thread.
_CLONE_THREAD = 0x00010000

DENIED_SYSCALLS: tuple[str, ...] = (
    # programs and processes
    "execve", "execveat", "fork", "vfork",
    # networking and IPC endpoints
    "socket", "socketpair",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "tkill",
    # namespaces, mounts, roots
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    # kernel attack surface
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "userfaultfd", "perf_event_open",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "name_to_handle_at", "open_by_handle_at", "iopl", "ioperm", "settimeofday", "clock_settime",
    "adjtimex", "clock_adjtime", "sethostname", "setdomainname", "personality", "lookup_dcookie",
    "fanotify_init", "landlock_create_ruleset",
    # memory that the address-space rlimit does not count, and that may outlive the worker
    "memfd_create", "memfd_secret", "shmget", "shmat", "shmctl", "msgget", "semget",
    # file metadata, which Landlock does not cover: modes, owners, times, extended attributes
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "utimensat", "futimesat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "setxattrat", "removexattrat",
)  # fmt: skip

# fcntl and ioctl commands that make the kernel signal a chosen process (F_SETOWN, F_SETOWN_EX,
# FIOSETOWN, SIOCSPGRP): a way to kill another process without calling kill().
_FCNTL_SET_OWNER = (8, 15)
_IOCTL_SET_OWNER = (0x8901, 0x8902)


class SeccompUnavailable(Exception):
    """libseccomp or the kernel's seccomp filter mode is missing."""


def _load_binding():  # type: ignore[no-untyped-def]
    try:
        import pyseccomp  # the binding loads libseccomp.so.2 when imported
    except (ImportError, OSError, RuntimeError) as error:
        raise SeccompUnavailable(f"libseccomp not usable ({error}); install libseccomp2") from None
    return pyseccomp


def available() -> tuple[bool, str]:
    """Whether a filter could be built here, without installing one."""
    try:
        binding = _load_binding()
        binding.SyscallFilter(binding.ALLOW)
    except SeccompUnavailable as error:
        return False, str(error)
    except Exception as error:
        return False, f"libseccomp failed: {error}"
    return True, "libseccomp found"


def install_deny_list() -> str:
    """Install the filter on this process for good; return a one-line summary."""
    sc = _load_binding()
    own_pid = os.getpid()
    deny = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    denied: list[str] = []
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
            denied.append(name)
        except (RuntimeError, ValueError, OSError):
            continue  # not a system call on this architecture
    # clone3 passes its flags in memory, which seccomp cannot read: refuse it as "not implemented"
    # so that glibc falls back to clone, whose flags seccomp can check.
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    by_argument = [
        ("clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0)),  # a new process, not a thread
        # Signals only to this very process (its own threads included).
        ("kill", sc.Arg(0, sc.NE, own_pid)),
        ("tgkill", sc.Arg(0, sc.NE, own_pid)),
        ("rt_sigqueueinfo", sc.Arg(0, sc.NE, own_pid)),
        ("rt_tgsigqueueinfo", sc.Arg(0, sc.NE, own_pid)),
        # Resource limits of this process only: prlimit64 on another pid could starve or kill the host.
        ("prlimit64", sc.Arg(0, sc.NE, 0)),
        *(("fcntl", sc.Arg(1, sc.EQ, command)) for command in _FCNTL_SET_OWNER),
        *(("ioctl", sc.Arg(1, sc.EQ, request)) for request in _IOCTL_SET_OWNER),
    ]
    for name, condition in by_argument:
        flt.add_rule(deny, name, condition)
    try:
        flt.load()
    except Exception as error:
        raise SeccompUnavailable(f"the kernel refused the seccomp filter: {error}") from None
    return (
        f"{len(denied) + 1} calls denied outright, {len(by_argument)} by argument: exec, fork and non-thread "
        "clone, sockets, ptrace, signals and rlimits of other processes, namespaces and mounts, io_uring, "
        "bpf, keyrings, shared memory, file metadata; foreign architectures killed"
    )
