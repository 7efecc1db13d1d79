"""Every tool: every flag has help text, and --help answers without importing torch or mmengine.

The check runs each tool's ``--help`` in a fresh interpreter and records the parser that answered
(argparse's own objects, whatever way the tool builds it). Timing is left to benchmarks; what
makes ``--help`` slow is importing torch / mmengine / matplotlib before the arguments are parsed,
and that is what is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from engine_utils import REPO

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
def test_help_imports_no_heavy_module(probes, tool):
    assert probes[tool]["heavy"] == []
