"""Every public name resolves; nothing private leaks; supervisors never import whispr."""

from __future__ import annotations

import importlib
import subprocess
import sys

import supervisors


def test_all_names_resolve_and_are_public() -> None:
    for name in supervisors.__all__:
        assert not name.startswith("_")
        assert getattr(supervisors, name) is not None


def test_submodules_declare_their_exports() -> None:
    for module in ("spec", "intensity", "errors", "reports", "supervisor", "dynamic", "shutdown", "tree"):
        mod = importlib.import_module(f"supervisors.{module}")
        for name in mod.__all__:
            assert hasattr(mod, name)


def test_importing_supervisors_does_not_import_whispr() -> None:
    code = "import sys, supervisors; print(sorted(m for m in sys.modules if m.split('.')[0] == 'whispr'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
