"""worker/model_watch.py without a broker: the announcement's format and what the watcher does with one."""

from __future__ import annotations

from typing import Any

import pytest

from mind_recall.settings import load
from worker.metrics import Metrics
from worker.model_watch import Announcement, ModelWatcher, NotServable
from worker.store import StoreError


def test_an_announcement_round_trips_and_bad_ones_are_refused() -> None:
    ann = Announcement("v2", "/exports/v2", 368_000, 1_700_000_000_000, ("v0", "v1"))
    assert Announcement.decode(ann.encode()) == ann
    for bad in (b"", b"null", b"[]", b'{"model_version": "v2"}', b'{"model_version": "", "export_dir": "x",'
                b' "rows": 1, "ts": 1}', b'{"model_version": "v", "export_dir": "x", "rows": -1, "ts": 1}'):
        with pytest.raises(ValueError, match="bad model announcement"):
            Announcement.decode(bad)


class _World:
    """What the watcher is plugged into: the version served, a prepare that can fail, the switches made."""

    def __init__(self, fail: list[BaseException]) -> None:
        self.served, self.fail, self.switched, self.prepared = "v1", fail, [], 0  # type: ignore[var-annotated]

    def prepare(self, ann: Announcement) -> Any:
        self.prepared += 1
        if self.fail:
            raise self.fail.pop(0)
        return ann.model_version

    def switch(self, version: Any) -> None:
        self.switched.append(version)
        self.served = version


def _watcher(world: _World) -> tuple[ModelWatcher, Metrics]:
    m = Metrics()
    return ModelWatcher(load(None, env={}), lambda: world.served, world.prepare, world.switch, m), m


def _value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(f"mind_recall_{name}", labels or None) or 0.0


def test_a_servable_announcement_switches_once() -> None:
    world = _World([])
    w, m = _watcher(world)
    ann = Announcement("v2", "/e/v2", 10, 1)
    w._consider(ann)
    w._consider(ann)  # served now: nothing more
    assert world.switched == ["v2"] and w.switched.is_set()
    assert _value(m, "model_rollouts_total", outcome="ok") == 1 and _value(m, "model_rollout_failed") == 0


def test_a_broken_export_keeps_the_old_model_is_counted_and_not_retried() -> None:
    world = _World([NotServable("collection items_v2 does not hold the announced 10 rows")])
    w, m = _watcher(world)
    ann = Announcement("v2", "/e/v2", 10, 1)
    w._consider(ann)
    w._consider(ann)  # the same announcement again (a reconnect re-reads it): not prepared again
    assert world.served == "v1" and world.switched == [] and world.prepared == 1
    assert _value(m, "model_rollouts_total", outcome="failed") == 1 and _value(m, "model_rollout_failed") == 1
    w._consider(Announcement("v2", "/e/v2-fixed", 10, 2))  # a new announcement is tried
    assert world.served == "v2" and _value(m, "model_rollout_failed") == 0


def test_an_outage_while_preparing_is_tried_again_not_a_failed_rollout() -> None:
    world = _World([StoreError("milvus count failed: connection refused")])
    w, m = _watcher(world)
    ann = Announcement("v2", "/e/v2", 10, 1)
    w._consider(ann)
    assert world.served == "v1" and w._again is not None and w._again[0] == ann and w.failed is None
    assert _value(m, "model_rollouts_total", outcome="failed") == 0
    w._consider(w._again[0])
    assert world.served == "v2"


def test_the_old_version_announced_again_clears_the_failure() -> None:
    world = _World([NotServable("corrupt")])
    w, m = _watcher(world)
    w._consider(Announcement("v2", "/e/v2", 10, 1))
    assert _value(m, "model_rollout_failed") == 1
    w._consider(Announcement("v1", "/e/v1", 10, 2))  # rolled back to what is served
    assert _value(m, "model_rollout_failed") == 0 and w.failed is None
