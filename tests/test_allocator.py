"""The CPU allocator tuning keeps freed tensor memory for reuse (glibc only)."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys

import pytest
from mmengine.config import Config

from mtlora_vision import allocator
from mtlora_vision.allocator import (
    ENV_SWITCH,
    describe_allocator,
    tuning_forced,
    tuning_requested,
)
from mtlora_vision.engine.runtime import checkpointing_requested

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


@pytest.mark.parametrize(
    ("checkpointing", "env", "tuned"),
    [(False, None, True), (True, None, False), (True, "1", True), (True, "on", True)],
)
def test_a_checkpointed_run_keeps_glibc_defaults_unless_asked(
    monkeypatch, caplog, checkpointing, env, tuned
):
    calls = []
    monkeypatch.setattr(allocator, "tune_cpu_allocator", lambda: calls.append(1) or True)
    if env is None:
        monkeypatch.delenv(ENV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(ENV_SWITCH, env)
    with caplog.at_level(logging.INFO, logger="mtlora_vision.allocator"):
        assert allocator.tune_for_training(checkpointing) is tuned
    assert len(calls) == int(tuned)
    assert ("activation checkpointing is on" in caplog.text) is not tuned
    assert tuning_forced({ENV_SWITCH: " Yes "})
    assert not tuning_forced({})


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, False), (False, False), (True, True), ([False, True, False], True), ((0,), False)],
)
def test_checkpointing_requested_reads_the_backbone_switch(setting, expected):
    backbone = {} if setting is None else {"grad_checkpointing": setting}
    assert checkpointing_requested(Config({"model": {"backbone": backbone}})) is expected
    assert checkpointing_requested(Config({})) is False


def test_the_start_up_line_names_an_untuned_allocator_only():
    assert describe_allocator(True, grad_checkpointing=True) is None
    assert "checkpointing: memory first" in describe_allocator(False, grad_checkpointing=True)
    assert f"{ENV_SWITCH}=0" in describe_allocator(False)
