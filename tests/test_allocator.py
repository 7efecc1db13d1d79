"""The tools' CPU allocator: mimalloc preloaded by re-execution, else glibc tuned to keep memory."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from mtlora_vision import allocator
from mtlora_vision.allocator import (
    ENV_CHOICE,
    MIMALLOC_SETTINGS,
    RETIRED_SWITCH,
    active_allocator,
    describe_allocator,
    mimalloc_library,
    preload_environment,
    preloaded_allocator,
    requested_allocator,
)
from mtlora_vision.engine.runtime import checkpointing_requested
from mtlora_vision.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MiB tensor; prints the allocator in effect, whether the glibc tuning
# applied and how many MiB of resident memory the free gave back to the kernel.
PROBE = """
from mtlora_vision.allocator import active_allocator, tune_cpu_allocator
applied = tune_cpu_allocator()
import torch
def rss_mib():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
x = torch.ones(64 * 2**20 // 4)
full = rss_mib()
del x
print(active_allocator(), applied, full - rss_mib())
"""

# A tool in miniature: run_tool with the allocator preload, printing what the process runs on.
TOOL = """
import os, sys
from mtlora_vision.allocator import active_allocator
from mtlora_vision.cli import run_tool
def main():
    print(active_allocator(), os.getpid(), os.environ.get("MIMALLOC_PURGE_DELAY"), sys.argv[1:],
          sys.flags.dont_write_bytecode)
run_tool(main, preload_allocator=True)
"""

linux_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs Linux glibc"
)


def clean_env(**env: str) -> dict[str, str]:
    """os.environ without allocator settings, plus ``env``."""
    drop = (ENV_CHOICE, RETIRED_SWITCH, "LD_PRELOAD", *MIMALLOC_SETTINGS)
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **env}


def run_probe(**env: str) -> tuple[str, bool, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=clean_env(**env), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    name, applied, returned = out.stdout.split()
    return name, applied == "True", float(returned)


def run_mini_tool(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run :data:`TOOL`; ``.pid``: the process started (stdout names the one that ran)."""
    script = tmp_path / "mini_tool.py"
    script.write_text(TOOL)
    command = [sys.executable, "-B", str(script), *args]
    env = clean_env(PYTHONPATH=str(REPO), **env)
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        stdout, stderr = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
    result.pid = proc.pid
    return result


@linux_glibc
def test_tuned_process_keeps_freed_memory_for_reuse():
    name, applied, returned = run_probe(**{ENV_CHOICE: "tuned"})
    assert (name, applied) == ("glibc", True)
    assert returned < 8  # the 64 MiB stay in the heap for the next tensor


@linux_glibc
def test_glibc_defaults_return_large_blocks():
    name, applied, returned = run_probe(**{ENV_CHOICE: "glibc"})
    assert (name, applied) == ("glibc", False)
    assert returned > 56  # glibc's default: the block was mmap'd and is unmapped on free


@linux_glibc
def test_mimalloc_is_installed_with_the_package_and_keeps_freed_memory():
    library = mimalloc_library()
    assert library is not None  # a Linux dependency (setup.cfg)
    assert os.path.isfile(library)
    name, applied, returned = run_probe(**preload_environment({}, library))
    assert (name, applied) == ("mimalloc", False)  # glibc's tuning stays out of its way
    assert returned < 8  # MIMALLOC_PURGE_DELAY=-1: kept for reuse


@linux_glibc
def test_a_tool_reexecutes_itself_once_with_mimalloc_and_its_arguments(tmp_path):
    out = run_mini_tool(tmp_path, "--flag", "a b")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 1  # main ran once, in the re-executed process
    name, pid, purge, *rest = lines[0].split(maxsplit=3)
    assert (name, purge) == ("mimalloc", "-1")
    assert int(pid) == out.pid  # the same process (execve), as launchers such as torchrun expect
    assert rest[0] == "['--flag', 'a b'] 1"  # arguments and interpreter options (-B) kept


@linux_glibc
@pytest.mark.parametrize("choice", ["tuned", "glibc"])
def test_a_tool_keeps_glibc_when_asked(tmp_path, choice):
    out = run_mini_tool(tmp_path, **{ENV_CHOICE: choice})
    assert out.returncode == 0, out.stderr[-2000:]
    name, pid, purge = out.stdout.split()[:3]
    # not re-executed (the same process), and no mimalloc settings either
    assert (name, int(pid), purge) == ("glibc", out.pid, "None")


def test_a_tool_names_a_wrong_choice_before_any_work(tmp_path):
    out = run_mini_tool(tmp_path, **{ENV_CHOICE: "jemaloc"})
    assert out.returncode == 2
    assert out.stdout == ""
    assert f"{ENV_CHOICE}='jemaloc' is not an allocator choice" in out.stderr
    out = run_mini_tool(tmp_path, **{RETIRED_SWITCH: "0"})
    assert out.returncode == 2
    assert out.stdout == ""
    assert f"{RETIRED_SWITCH} was replaced by {ENV_CHOICE}" in out.stderr
    assert f"{ENV_CHOICE}=glibc" in out.stderr


def test_requested_allocator_reads_the_choice():
    assert requested_allocator({}) == "auto"
    assert requested_allocator({ENV_CHOICE: " MiMalloc "}) == "mimalloc"
    assert requested_allocator({ENV_CHOICE: ""}) == "auto"
    with pytest.raises(ConfigError, match="use one of auto, mimalloc, tuned, glibc"):
        requested_allocator({ENV_CHOICE: "1"})
    with pytest.raises(ConfigError, match=f"unset {RETIRED_SWITCH}"):
        requested_allocator({RETIRED_SWITCH: "1", ENV_CHOICE: "tuned"})


def test_preloaded_allocators_are_recognised():
    assert preloaded_allocator({}) is None
    assert preloaded_allocator({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "jemalloc"
    assert preloaded_allocator({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}) == "tcmalloc"
    assert preloaded_allocator({"LD_PRELOAD": "/x/libfoo.so:/y/libmimalloc.so.3"}) == "mimalloc"


def test_preload_environment_puts_mimalloc_first_and_keeps_user_settings():
    env = preload_environment({"LD_PRELOAD": "/a/libfoo.so", "HOME": "/h"}, "/m/libmimalloc.so")
    expected = {"LD_PRELOAD": "/m/libmimalloc.so:/a/libfoo.so", "HOME": "/h", **MIMALLOC_SETTINGS}
    assert env == expected
    kept = preload_environment({"MIMALLOC_PURGE_DELAY": "100"}, "/m/libmimalloc.so")
    user = {"LD_PRELOAD": "/m/libmimalloc.so", "MIMALLOC_PURGE_DELAY": "100"}  # the user's wins
    assert kept == {**MIMALLOC_SETTINGS, **user}


def test_asking_for_mimalloc_without_it_is_an_error(monkeypatch):
    monkeypatch.setattr(allocator, "mimalloc_library", lambda: None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv(ENV_CHOICE, "mimalloc")
    with pytest.raises(ConfigError, match="pip install cmeel-mimalloc"):
        allocator.preload_mimalloc()
    monkeypatch.setenv(ENV_CHOICE, "auto")
    assert allocator.preload_mimalloc() is None  # auto falls back to glibc without a word


def test_active_allocator_reads_the_memory_map(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert active_allocator(str(maps)) == "glibc"
    mimalloc = "7f02-7f03 r-xp 0 08:01 2 /site/cmeel.prefix/lib/libmimalloc.so.3\n"
    maps.write_text(maps.read_text() + mimalloc)
    assert active_allocator(str(maps)) == "mimalloc"
    assert active_allocator(str(tmp_path / "absent")).startswith("unknown")


@pytest.mark.parametrize(
    ("checkpointing", "choice", "active", "tuned"),
    [
        (False, None, "glibc", True),
        (True, None, "glibc", False),  # memory first without mimalloc
        (True, "tuned", "glibc", True),
        (True, None, "mimalloc", True),  # tune_cpu_allocator itself declines then
    ],
)
def test_a_checkpointed_run_keeps_glibc_defaults_without_mimalloc_unless_asked(
    monkeypatch, caplog, checkpointing, choice, active, tuned
):
    calls = []
    monkeypatch.setattr(allocator, "tune_cpu_allocator", lambda: calls.append(1) or True)
    monkeypatch.setattr(allocator, "active_allocator", lambda: active)
    if choice is None:
        monkeypatch.delenv(ENV_CHOICE, raising=False)
    else:
        monkeypatch.setenv(ENV_CHOICE, choice)
    with caplog.at_level(logging.INFO, logger="mtlora_vision.allocator"):
        assert allocator.tune_for_training(checkpointing) is tuned
    assert len(calls) == int(tuned)
    assert ("activation checkpointing is on" in caplog.text) is not tuned


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, False), (False, False), (True, True), ([False, True, False], True), ((0,), False)],
)
def test_checkpointing_requested_reads_the_backbone_switch(setting, expected):
    backbone = {} if setting is None else {"grad_checkpointing": setting}
    assert checkpointing_requested(Config({"model": {"backbone": backbone}})) is expected
    assert checkpointing_requested(Config({})) is False


def test_the_start_up_line_names_the_allocator_and_the_way_to_change_it():
    assert describe_allocator("mimalloc", False) == (
        f"mimalloc (LD_PRELOAD; {ENV_CHOICE}=tuned or glibc for glibc's malloc)"
    )
    assert "LD_PRELOAD wins over" in describe_allocator("jemalloc", False, choice="glibc")
    assert describe_allocator("glibc", True).startswith("glibc, tuned")
    checkpointed = describe_allocator("glibc", False, grad_checkpointing=True)
    assert "checkpointing without mimalloc: memory first" in checkpointed
    assert f"{ENV_CHOICE}=glibc" in describe_allocator("glibc", False, choice="glibc")
