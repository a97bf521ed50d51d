"""Landlock, through its three system calls, for the worker to restrict itself.

The PyPI binding covers filesystem rights only, and the worker also needs the TCP rules (ABI 4) and
the signal and abstract-socket scoping (ABI 6), so the calls are made directly with ctypes. The
layout of the structures and the access bits follow <linux/landlock.h>.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterable

# The same numbers on x86_64 and aarch64 (both use the generic syscall table from 5.13 on).
_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_FILE_ONLY_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class LandlockUnavailable(Exception):
    """The kernel or architecture has no usable Landlock."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall_numbers() -> tuple[int, int, int]:
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise LandlockUnavailable(f"no Landlock syscall numbers known for {machine}")
    return _SYSCALLS[machine]


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is absent or disabled."""
    try:
        create, _, _ = _syscall_numbers()
    except LandlockUnavailable:
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(create), None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def handled_fs_rights(abi: int) -> int:
    rights = (FS_MAKE_SYM << 1) - 1  # every right of ABI 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def restrict_self(
    read_only: Iterable[str],
    read_write: Iterable[str],
    read_write_files: Iterable[str] = (),
) -> str:
    """Confine this process (and any thread it starts later) for good; return a summary of the rules.

    Everything not listed is denied: other files, /proc included, TCP bind and connect (ABI 4), and
    signals or abstract unix sockets reaching outside the sandbox (ABI 6). Paths that do not exist
    are skipped. The caller must have set no_new_privs first.
    """
    abi = abi_version()
    if abi < 1:
        raise LandlockUnavailable("Landlock is not enabled in this kernel")
    create, add_rule, restrict = _syscall_numbers()
    libc = _libc()
    libc.syscall.restype = ctypes.c_long

    fs_rights = handled_fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=fs_rights)
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset_fd = libc.syscall(ctypes.c_long(create), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset_fd < 0:
        raise LandlockUnavailable(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        for path in read_only:
            _allow(libc, add_rule, ruleset_fd, path, READ_ONLY & fs_rights)
        for path in read_write:
            _allow(libc, add_rule, ruleset_fd, path, fs_rights)
        for path in read_write_files:
            _allow(libc, add_rule, ruleset_fd, path, (FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE) & fs_rights)
        if libc.syscall(ctypes.c_long(restrict), ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)) != 0:
            raise LandlockUnavailable(f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset_fd)
    parts = [f"ABI {abi}", "filesystem limited to read-only runtime and data, read-write scratch"]
    parts.append("TCP bind/connect denied" if abi >= 4 else "TCP not covered (ABI < 4)")
    parts.append("signals and abstract sockets scoped" if abi >= 6 else "signals not scoped (ABI < 6)")
    return "; ".join(parts)


def _allow(libc: ctypes.CDLL, add_rule: int, ruleset_fd: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_ONLY_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        result = libc.syscall(
            ctypes.c_long(add_rule),
            ctypes.c_int(ruleset_fd),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.byref(rule),
            ctypes.c_uint32(0),
        )
        if result != 0:
            code = ctypes.get_errno()
            raise LandlockUnavailable(f"landlock_add_rule({path}) failed: {errno.errorcode.get(code, code)}")
    finally:
        os.close(fd)
