"""The import layers of pyproject.toml hold: no module of latentgen imports from a layer above its own
(`make lint` runs the same check as `lint-imports`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import latentgen
from tests.helpers import ROOT

importlinter_cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the dev extra")


def test_the_import_layer_contracts_are_kept(monkeypatch, capsys):
    # The contracts are checked on the package this process imported: it must be this checkout's.
    assert Path(latentgen.__file__).resolve().is_relative_to(ROOT / "src"), latentgen.__file__
    monkeypatch.chdir(ROOT)
    exit_code = importlinter_cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True,
                                             no_logo=True)  # fmt: skip
    assert exit_code == 0, capsys.readouterr().out
