"""Session fixtures for the recall-path integration tests: one small exported model and its reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from recall_testkit import Reference, build_export

from mind_recall.settings import Settings
from worker.recall import load_into_store
from worker.store import ItemStore


@pytest.fixture(scope="session")
def export_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def reference(export_base: Path) -> Reference:
    return Reference(export_base / "export")


@pytest.fixture
def store(settings: Settings, export_base: Path) -> Iterator[ItemStore]:
    """This test's Milvus Lite, holding the session's exported item vectors."""
    s = ItemStore(settings.milvus)
    load_into_store(s, export_base / "export")
    yield s
    s.close()
