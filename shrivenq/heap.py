"""Keep glibc's malloc from handing block-sized buffers back to the kernel between blocks.

Every WAL block passes through buffers of about a megabyte: zstd's output, the tick codec's
output, the parsed rows, the writer's packed block. glibc serves them from the heap and by
default gives the heap's top back to the kernel as soon as more than twice the largest
recent buffer lies free there, so the next block takes a fresh page fault for every 4 KiB it
touches. Page faults cost several microseconds each on a virtual machine (the development
VM: 5,000 faults a replay of 150,000 Kite ticks, about a fifth of its time; see
docs/PERFORMANCE.md, "Memory").

``retain_freed_memory()`` raises the trim threshold to 16 MiB, so up to that much freed heap
stays with the process, and fixes the mmap threshold at 8 MiB (glibc stops adapting it once
either is set, and its 128 KiB start would send every block buffer to mmap). Importing
``shrivenq.wal`` calls it. It changes nothing when:

- the C library is not glibc;
- ``SHRIVENQ_MALLOC=system`` is set (the process keeps glibc's defaults);
- the user already tuned malloc: ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TOP_PAD_`` or a ``glibc.malloc`` entry in ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import ctypes
import os
import warnings

ENV_SWITCH = "SHRIVENQ_MALLOC"
TRIM_THRESHOLD = 16 << 20
MMAP_THRESHOLD = 8 << 20

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_USER_TUNING = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: bool | None = None


def _wanted(environ) -> bool:
    switch = environ.get(ENV_SWITCH, "").strip().lower() or "retain"   # empty: as unset
    if switch not in ("retain", "system"):
        warnings.warn(f"{ENV_SWITCH}={switch!r} is not 'retain' or 'system'; leaving malloc "
                      f"as glibc configures it", RuntimeWarning, stacklevel=3)
        return False
    if switch == "system":
        return False
    if any(name in environ for name in _USER_TUNING):
        return False
    return "glibc.malloc" not in environ.get("GLIBC_TUNABLES", "")


def _glibc() -> bool:
    # confstr answers at once; platform.libc_ver() would read the interpreter's binary to
    # find out on any other C library.
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def retain_freed_memory(environ=None) -> bool:
    """Apply the thresholds above once per process; True if they are in force."""
    global _applied
    if _applied is not None:
        return _applied
    environ = os.environ if environ is None else environ
    _applied = False
    if not _glibc() or not _wanted(environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a bad value.
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
