"""Every tool: every flag has help text, defaults are shown, and --help answers without importing
torch or mmengine.

The check runs each tool's ``--help`` in a fresh interpreter and records the parser that answered
(argparse's own objects, whatever way the tool builds it). Timing is left to benchmarks; what
makes ``--help`` slow is importing torch / mmengine / matplotlib before the arguments are parsed,
and that is what is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
from engine_utils import REPO

from mtlora_vision.cli import DefaultsHelpFormatter

TOOLS = sorted(p.name for p in (REPO / "tools").glob("*.py"))
HEAVY = ("torch", "mmengine", "matplotlib", "cv2", "timm", "scipy")

PROBE = """
import argparse, json, runpy, sys
parsers = []
original = argparse.ArgumentParser.parse_known_args
def spy(self, *args, **kwargs):
    parsers.append(self)
    return original(self, *args, **kwargs)
argparse.ArgumentParser.parse_known_args = spy
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
missing = [
    "/".join(a.option_strings) or a.dest
    for p in parsers for a in p._actions
    if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS and not a.help
]
print(json.dumps({"parsers": len(parsers), "missing_help": missing,
                  "formatters": [p.formatter_class.__name__ for p in parsers],
                  "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


@pytest.fixture(scope="module")
def probes():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    results = {}
    for tool in TOOLS:
        code = f"HEAVY = {HEAVY!r}\n{PROBE}"
        out = subprocess.run(
            [sys.executable, "-c", code, str(REPO / "tools" / tool)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        results[tool] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("tool", TOOLS)
def test_every_flag_has_help(probes, tool):
    assert probes[tool]["parsers"] >= 1
    assert probes[tool]["missing_help"] == []


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_shows_its_defaults(probes, tool):
    assert set(probes[tool]["formatters"]) == {"DefaultsHelpFormatter"}


def test_defaults_formatter_names_only_real_defaults():
    parser = argparse.ArgumentParser(prog="t", formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=0, help="count")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--path", help="a path")
    parser.add_argument("--sizes", nargs=2, type=int, default=(48, 64), help="size")
    parser.add_argument("--mode", default="a", help="mode (default: a, the fast one)")
    text = " ".join(parser.format_help().split())
    assert "--n N count (default: 0)" in text  # 0 is a default, not "no default"
    assert "--flag a switch --path" in text  # off flags and None say nothing
    assert "--path PATH a path --sizes" in text
    assert "size (default: 48 64)" in text
    assert "mode (default: a, the fast one) " in text + " "  # named already: not twice


@pytest.mark.parametrize("tool", TOOLS)
def test_help_imports_no_heavy_module(probes, tool):
    assert probes[tool]["heavy"] == []


def test_dist_train_script_has_usage_and_checks_its_arguments():
    script = str(REPO / "tools" / "dist_train.sh")
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0
    assert shown.stdout.startswith("usage: tools/dist_train.sh CONFIG NPROC")
    for args in ([], ["configs/mtlora_swin_demo.py"], ["configs/mtlora_swin_demo.py", "two"]):
        bad = subprocess.run(["bash", script, *args], capture_output=True, text=True, check=False)
        assert bad.returncode == 2, args
        assert "error: give a config and a positive number of processes" in bad.stderr
