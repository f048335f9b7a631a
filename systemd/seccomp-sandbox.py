#!/usr/bin/env python3
"""Run a command under the seccomp filters transcribed.service asks systemd for.

Used to check, without installing the unit, that the daemon, its Moonshine workers (ONNX
runtime, numpy) and ffmpeg work with these settings of systemd/transcribed.service:

    SystemCallFilter=@system-service
    SystemCallFilter=~@privileged @resources
    SystemCallErrorNumber=EPERM
    MemoryDenyWriteExecute=yes

The syscall groups come from `systemd-analyze syscall-filter` (so they match the installed
systemd), and the MemoryDenyWriteExecute rules are the ones systemd's
seccomp_memory_deny_write_execute() installs: mmap with PROT_WRITE|PROT_EXEC, mprotect and
pkey_mprotect adding PROT_EXEC, and shmat with SHM_EXEC fail with EPERM. Filters are inherited
across fork and exec, so every child runs under them too. Needs libseccomp (libseccomp2).

    python3 systemd/seccomp-sandbox.py .venv/bin/transcribed transcribe talk.mp3 --out /tmp/out
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import subprocess
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_EPERM = 0x00050000 | errno.EPERM
SCMP_CMP_MASKED_EQ = 7
SHM_EXEC = 0o100000


class ArgumentComparison(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def syscall_groups() -> dict[str, list[str]]:
    """Every @group of the installed systemd, as `systemd-analyze syscall-filter` lists it."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if line.startswith(" "):
            current.append(entry)
        else:
            current = groups.setdefault(entry, [])
    return groups


def expand(groups: dict[str, list[str]], item: str) -> set[str]:
    if not item.startswith("@"):
        return {item}
    return set().union(*(expand(groups, member) for member in groups[item]))


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    groups = syscall_groups()
    allowed = expand(groups, "@system-service") - expand(groups, "@privileged")
    allowed -= expand(groups, "@resources")

    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]

    def number(name: str) -> int:
        return int(lib.seccomp_syscall_resolve_name(name.encode()))

    # MemoryDenyWriteExecute=yes. Loaded first: the allow-list below does not allow seccomp().
    deny_wx = lib.seccomp_init(SCMP_ACT_ALLOW)
    for name, argument, mask in [
        ("mmap", 2, mmap.PROT_WRITE | mmap.PROT_EXEC),
        ("mprotect", 2, mmap.PROT_EXEC),
        ("pkey_mprotect", 2, mmap.PROT_EXEC),
        ("shmat", 2, SHM_EXEC),
    ]:
        comparison = ArgumentComparison(argument, SCMP_CMP_MASKED_EQ, mask, mask)
        rule = lib.seccomp_rule_add_array(
            deny_wx, SCMP_ACT_EPERM, number(name), 1, ctypes.byref(comparison)
        )
        if rule != 0:
            sys.exit(f"seccomp rule for {name} failed: {rule}")
    if lib.seccomp_load(deny_wx) != 0:
        sys.exit("loading the MemoryDenyWriteExecute filter failed")

    # SystemCallFilter= with SystemCallErrorNumber=EPERM: anything not allowed fails with EPERM.
    allow_list = lib.seccomp_init(SCMP_ACT_EPERM)
    count = 0
    for name in sorted(allowed):
        if number(name) < 0:  # not a syscall on this architecture
            continue
        if lib.seccomp_rule_add_array(allow_list, SCMP_ACT_ALLOW, number(name), 0, None) != 0:
            sys.exit(f"seccomp rule for {name} failed")
        count += 1
    if lib.seccomp_load(allow_list) != 0:
        sys.exit("loading the system call filter failed")

    print(f"seccomp-sandbox: {count} system calls allowed, W+X memory refused", file=sys.stderr)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
