"""The CPU allocator tuning keeps freed tensor memory for reuse (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mtlora_vision.allocator import ENV_SWITCH, tuning_requested

# Allocates and frees a 64 MiB tensor; prints whether the tuning applied and how many MiB of
# resident memory the free gave back to the kernel.
PROBE = """
from mtlora_vision.allocator import tune_cpu_allocator
applied = tune_cpu_allocator()
import torch
def rss_mib():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
x = torch.ones(64 * 2**20 // 4)
full = rss_mib()
del x
print(applied, full - rss_mib())
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)


def run_probe(**env: str) -> tuple[bool, float]:
    environ = {k: v for k, v in os.environ.items() if k not in (ENV_SWITCH, "LD_PRELOAD")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", float(out[1])


@glibc_only
def test_tuned_process_keeps_freed_memory_for_reuse():
    applied, returned = run_probe()
    assert applied
    assert returned < 8  # the 64 MiB stay in the heap for the next tensor


@glibc_only
def test_switched_off_process_returns_large_blocks():
    applied, returned = run_probe(**{ENV_SWITCH: "0"})
    assert not applied
    assert returned > 56  # glibc's default: the block was mmap'd and is unmapped on free


def test_switch_and_preloaded_allocators():
    assert tuning_requested({})
    assert tuning_requested({ENV_SWITCH: "1"})
    assert not tuning_requested({ENV_SWITCH: "0"})
    assert not tuning_requested({ENV_SWITCH: " Off "})
    assert not tuning_requested({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    assert not tuning_requested({"LD_PRELOAD": "libtcmalloc_minimal.so.4"})
