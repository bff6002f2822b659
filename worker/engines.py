"""The one place that builds a recall engine from an export: the Kafka worker, the HTTP API, a hot rollout
and the benchmarks all go through ``engine_for_export``, so they serve the same cold-start list and the same
collection for a model version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mind_recall.settings import Settings
from worker.recall import PerRequestEngine, RecallEngine, SearchFn, load_popular, store_search

log = logging.getLogger(__name__)


def cold_start_list(settings: Settings, export_dir: str | Path) -> Any:
    """The export's most popular items, as many as a cold-start answer can use (seen items dropped)."""
    return load_popular(export_dir)[: settings.worker.cold_start_size * 4]


def engine_for_export(
    settings: Settings,
    export_dir: str | Path,
    *,
    store: Any,
    items: Any,
    tower: Any = None,
    metrics: Any = None,
    per_request: bool = False,
    wrap_search: Callable[[SearchFn], SearchFn] | None = None,
) -> RecallEngine:
    """An engine for the export's model version: its tower (loaded here unless given), its collection by
    name (never the alias, so hits and ``model_version`` agree), ``items`` (a live ItemCache or the export's
    vectors, of the same version: RecallEngine refuses another). ``per_request``: the unbatched benchmark
    baseline. ``wrap_search``: e.g. the HTTP API's chunking with a deadline."""
    if tower is None:
        from model.tower import UserTower

        tower = UserTower.load(str(export_dir), use_gpu=settings.runner.use_gpu)
    search = store_search(store, store.collection_name(tower.model_version))
    if wrap_search is not None:
        search = wrap_search(search)
    cls = PerRequestEngine if per_request else RecallEngine
    return cls(
        tower,
        search,
        items,
        cold_start_list(settings, export_dir),
        exclude_seen=settings.worker.exclude_seen,
        metrics=metrics,
        min_topn=store.free_topn(),
    )
