"""Session fixtures for the recall-path integration tests: one small exported model and its reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from recall_testkit import Reference, build_export


@pytest.fixture(scope="session")
def export_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def reference(export_base: Path) -> Reference:
    return Reference(export_base / "export")
