"""shrivenq.heap: block-sized buffers reuse the process's pages instead of faulting in fresh
ones, unless the user opts out or tuned malloc already. Each case runs in a fresh
interpreter, because the setting is process-wide and applied once on import."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from shrivenq.heap import _wanted

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="the malloc thresholds are glibc's")

# Buffers the size of a WAL block, three alive at a time as the reader's read-ahead keeps
# them, each one zero-filled (every page touched): the minor page faults this costs.
CHURN = """
import resource, sys
import shrivenq.wal
from shrivenq.heap import retain_freed_memory
alive = []
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(200):
    alive.append(bytearray((1 << 20) + 4096 * (i % 7)))
    if len(alive) > 3:
        alive.pop(0)
print(retain_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(**env) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "SHRIVENQ_MALLOC")}
    out = subprocess.run([sys.executable, "-c", CHURN], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@glibc_only
def test_block_buffers_stop_faulting_in_fresh_pages():
    applied, faults = churn()
    kept, system_faults = churn(SHRIVENQ_MALLOC="system")
    assert applied and not kept
    # 200 MiB through the heap: glibc's defaults fault most of it in again (about 16,000
    # faults here); kept pages fault only the first few buffers (about 1,300).
    assert faults * 4 < system_faults, (faults, system_faults)


@glibc_only
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_a_user_who_tuned_malloc_keeps_their_settings(env):
    applied, _ = churn(**env)
    assert not applied


def test_the_switch_is_checked():
    assert _wanted({}) is True
    assert _wanted({"SHRIVENQ_MALLOC": " Retain "}) is True
    assert _wanted({"SHRIVENQ_MALLOC": ""}) is True
    assert _wanted({"SHRIVENQ_MALLOC": "system"}) is False
    assert _wanted({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}) is True
    with pytest.warns(RuntimeWarning, match="SHRIVENQ_MALLOC='sometimes'"):
        assert _wanted({"SHRIVENQ_MALLOC": "sometimes"}) is False
