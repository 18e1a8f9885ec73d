"""This process's own command line as every user of the machine sees it (``ps``,
``/proc/PID/cmdline``): a token or password in an argument (``create web
https://ci:TOKEN@host/repo.git``, ``--ledger postgresql://u:PW@db/x``) is overwritten there
as the CLI starts, for as long as the command runs. The kernel reads that text from the
process's own memory (its argument block), which Python copied into ``sys.argv`` at start,
so the command itself still has the secret. Before the overwrite (the interpreter's start,
tens of milliseconds) the secret is visible: ``sync`` from a config file has no such window."""

import os
import sys


def scrub() -> bool:
    """Mask, in place and character for character, what ``redact`` would mask in each
    argument of the argument block; True when something was masked."""
    if not any("@" in arg or "password" in arg.lower() for arg in sys.argv):
        return False  # nothing to hide: no file read, no ctypes (every command comes here)
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5))
    except (OSError, ValueError, IndexError):
        return False
    import ctypes  # lazy: only when an argument may hold a secret

    block = (ctypes.c_char * (end - start)).from_address(start)
    before = block.raw
    after = b"\0".join(_masked(arg) for arg in before.split(b"\0"))
    if after == before:
        return False
    ctypes.memmove(start, after, len(after))
    return True


def _masked(arg: bytes) -> bytes:
    """``arg`` with what ``redact`` masks in it replaced by as many ``*``: the same length,
    so the block keeps its layout (between the first and the last masked character, all
    is masked)."""
    from necropool.ground.redact import redact  # lazy: only an argument that may hold one

    text = os.fsdecode(arg)
    shown = redact(text)
    if shown == text:
        return arg
    most = min(len(text), len(shown))
    head = 0
    while head < most and text[head] == shown[head]:
        head += 1
    tail = 0
    while tail < most - head and text[-1 - tail] == shown[-1 - tail]:
        tail += 1
    before, after = os.fsencode(text[:head]), os.fsencode(text[len(text) - tail:])
    return before + b"*" * (len(arg) - len(before) - len(after)) + after
