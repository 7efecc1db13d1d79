"""Tools report a wrong input by its message alone (exit 2); a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from engine_utils import REPO

from mtlora_vision.cli import run_tool
from mtlora_vision.engine.config_check import UnknownConfigKeyError
from mtlora_vision.errors import ConfigError
from mtlora_vision.safe_load import DamagedCheckpointError


def _tool(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=300,
    )


def test_a_mistyped_config_key_is_one_line_naming_it_without_traceback():
    config = str(REPO / "configs" / "mtlora_swin_demo.py")
    result = _tool("train.py", config, "--cfg-options", "train_cfg.max_epoch=3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("train.py: error: --cfg-options 'train_cfg.max_epoch'")
    assert "train_cfg.max_epochs" in result.stderr
    typo = ("--cfg-options", "train_cfg.max_epoch=3")
    shown = _tool("train.py", config, *typo, MTLORA_TRACEBACK="1")
    assert shown.returncode == 1
    assert "Traceback" in shown.stderr
    assert "UnknownConfigKeyError" in shown.stderr


def test_a_missing_checkpoint_is_named_without_traceback(tmp_path):
    missing = tmp_path / "epoch_9.pth"
    result = _tool("test.py", str(REPO / "configs" / "mtlora_swin_demo.py"), str(missing))
    assert (result.returncode, "Traceback" in result.stderr) == (2, False)
    assert f"test.py: error: Checkpoint '{missing}' does not exist" in result.stderr


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("--seed must be in [0, 2**32), got -1."),
        UnknownConfigKeyError("--cfg-options 'x': no such key."),
        DamagedCheckpointError("Checkpoint 'a.pth' is damaged: it is empty."),
        FileNotFoundError("Config file 'b.py' does not exist."),
    ],
)
def test_input_errors_exit_2_with_their_message(error, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tool.py"])
    monkeypatch.delenv("MTLORA_TRACEBACK", raising=False)

    def main():
        raise error

    with pytest.raises(SystemExit) as exit_info:
        run_tool(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"tool.py: error: {error}\n")


def test_other_errors_keep_their_traceback_and_success_exits_0(monkeypatch):
    def bug():
        raise ValueError("a bug, not an input")  # plain ValueError: not marked as input

    with pytest.raises(ValueError, match="a bug"):
        run_tool(bug)
    for returned, status in ((None, 0), ({"semseg/mIoU": 20.1}, 0), (3, 3)):  # test.py: metrics
        with pytest.raises(SystemExit) as exit_info:
            run_tool(lambda returned=returned: returned)
        assert exit_info.value.code == status


@pytest.mark.parametrize("tool", sorted(p.name for p in (REPO / "tools").glob("*.py")))
def test_every_tool_runs_its_main_through_run_tool(tool):
    # So that every tool reports input errors the same way (one line, exit 2).
    import ast

    # The tools that run models or data loading choose the CPU allocator first (mimalloc).
    models = {"train.py", "test.py", "predict.py", "benchmark.py", "benchmark_data.py"}
    preloads = tool in models | {"profile_floor.py"}
    tree = ast.parse((REPO / "tools" / tool).read_text())
    guards = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    call = "run_tool(main, preload_allocator=True)" if preloads else "run_tool(main)"
    assert [ast.unparse(n.body[0]) for n in guards] == [call]
