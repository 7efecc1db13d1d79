"""Import a command-line tool of ``tools/`` in tests (``tools`` is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` by path as module ``tool_<name>``.

    The module is registered in ``sys.modules`` (dataclasses resolve annotations there); the
    prefix keeps ``tools/test.py`` from clashing with the standard library's ``test``.
    """
    module_name = f"tool_{name}"
    spec = importlib.util.spec_from_file_location(module_name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
