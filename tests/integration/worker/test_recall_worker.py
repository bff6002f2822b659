"""The streaming recall worker on the real broker, Milvus Lite and a small trained+exported MIND model."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from recall_testkit import (
    Reference,
    Running,
    committed_total,
    read_topic,
    results_by_id,
    same_ranking,
    spawn_recall_worker,
    train_histories,
)

from mind_recall.settings import Settings
from mind_recall.wire import encode_click, encode_request, user_key
from worker import kafka_io
from worker.recall_worker import RecallWorker
from worker.store import ItemStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def _settings(settings: Settings, export_base: Path, *extra: str) -> Settings:
    return settings.replace(
        f"worker.export_dir={export_base / 'export'}",
        "topics.partitions=2",
        "worker.batch_ms=5",
        "worker.session_timeout_ms=6000",
        *extra,
    )


def _send(settings: Settings, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    p = kafka_io.make_producer(settings)
    for key, value in items:
        p.send(topic, key=key, value=value)
    p.flush()
    p.close()


def _clicks(settings: Settings, hist: dict[int, np.ndarray]) -> None:
    _send(
        settings,
        settings.topics.clicks,
        [(user_key(u), encode_click(u, int(i), 1000 + n)) for u, h in hist.items() for n, i in enumerate(h)],
    )


def _requests(settings: Settings, reqs: list[tuple[str, int, int, list[int] | None]]) -> None:
    _send(
        settings,
        settings.topics.recall_requests,
        [(user_key(u), encode_request(rid, u, k, int(time.time() * 1000), h)) for rid, u, k, h in reqs],
    )


def _wait(cond: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _results(settings: Settings, ids: set[str], timeout_s: float = 40.0) -> dict[str, dict[str, Any]]:
    recs = read_topic(
        settings,
        settings.topics.recall_results,
        len(ids),
        timeout_s,
        match=lambda r: json.loads(r.value)["request_id"] in ids,
    )
    return results_by_id(recs)


def test_results_match_the_evaluation_path_and_bad_input_is_answered(
    settings: Settings,
    export_base: Path,
    store: ItemStore,
    reference: Reference,
) -> None:
    s = _settings(settings, export_base, "worker.exclude_seen=false", "worker.max_top_k=100", "worker.max_hist=30")
    hist = {u: h[-25:] for u, h in sorted(train_histories(export_base).items())[:12]}
    run = Running(s, store)
    try:
        _clicks(s, hist)
        _wait(
            lambda: all(
                run.worker.state.get(u) is not None and run.worker.state.get(u).size == min(20, len(h))
                for u, h in hist.items()
            )
        )
        good = [(f"r{u}", u, 10 + u % 7, None) for u in hist]
        override = [1, 2, 3, 4, 5, 6]
        good += [("override", 3, 15, override), ("cold", 10_000, 8, None)]
        bad_with_id = [
            json.dumps({"request_id": "bad-topk", "user_id": 1, "top_k": 0}),
            json.dumps({"request_id": "big-topk", "user_id": 1, "top_k": 101}),
            json.dumps({"request_id": "bad-type", "user_id": "one", "top_k": 5}),
            json.dumps({"request_id": "big-hist", "user_id": 1, "top_k": 5, "hist_item": list(range(1, 32))}),
            json.dumps({"request_id": "bad-hist", "user_id": 1, "top_k": 5, "hist_item": [1, "x"]}),
        ]
        # poison pills: not JSON, no request_id, and JSON nested past Python's recursion limit
        no_id = [b"{not json", json.dumps({"user_id": 1, "top_k": 5}).encode(), b"[" * 100_000]
        _send(
            s,
            s.topics.recall_requests,
            [(b"1", v.encode()) for v in bad_with_id] + [(b"1", v) for v in no_id],
        )
        _send(s, s.topics.clicks, [(b"1", b'{"user_id": 1, "item_id": 0}')])
        _requests(s, good)
        want_ids = {g[0] for g in good} | {json.loads(b)["request_id"] for b in bad_with_id}
        got = _results(s, want_ids)
        assert set(got) == want_ids
        for rid, u, k, _ in good[:-2]:
            r = got[rid]
            assert r["source"] == "mind" and r["model_version"] == reference.tower.model_version
            assert same_ranking(r["items"], reference.recall(hist[u], k, exclude_seen=False)), rid
        assert same_ranking(got["override"]["items"], reference.recall(np.array(override), 15, False))
        cold = got["cold"]
        assert (
            cold["source"] == "cold_start" and [i["item_id"] for i in cold["items"]] == reference.popular[:8].tolist()
        )
        for rid, reason in [
            ("bad-topk", "bad_top_k"),
            ("big-topk", "bad_top_k"),
            ("bad-type", "wrong_type"),
            ("big-hist", "oversized"),
            ("bad-hist", "wrong_type"),
        ]:
            assert got[rid]["error"].startswith(reason) and got[rid]["items"] == [], rid
        dlq = read_topic(s, s.topics.dlq, 4, 20)
        reasons = sorted(dict(r.headers)["error_class"].decode() for r in dlq)
        assert reasons == ["bad_id", "missing_field", "not_json", "not_json"]
        # still serving after all that
        _requests(s, [("after", 2, 5, None)])
        assert _results(s, {"after"})["after"]["source"] == "mind"
        m = run.metrics.registry
        assert m.get_sample_value("mind_recall_recall_requests_total", {"outcome": "error"}) == 5
        assert m.get_sample_value("mind_recall_recall_requests_total", {"outcome": "dead_letter"}) == 3
        assert m.get_sample_value("mind_recall_clicks_total") == sum(len(h) for h in hist.values())
        assert m.get_sample_value("mind_recall_recall_latency_seconds_count") >= len(good)
    finally:
        run.stop()


def test_restart_restores_history_and_nearline(
    settings: Settings,
    export_base: Path,
    store: ItemStore,
    reference: Reference,
) -> None:
    s = _settings(settings, export_base)
    hist = {u: h[-12:] for u, h in sorted(train_histories(export_base).items())[20:28]}
    run = Running(s, store)
    try:
        _clicks(s, hist)
        _wait(
            lambda: (
                all(run.worker.state.get(u) is not None for u in hist)
                and sum(run.worker.state.get(u).size for u in hist) == sum(len(h) for h in hist.values())
            )
        )
        _wait(lambda: run.worker.batches > 0)
    finally:
        run.stop()
    # A new worker (new state) in the same group: histories come back from the changelog.
    s2 = s.replace("worker.nearline=true", "worker.nearline_min_interval_s=60")
    run = Running(s2, store)
    try:
        # a slow leave of the first member can hand this one half the partitions first
        _wait(lambda: run.worker.owned_partitions() == set(range(s2.topics.partitions)))
        assert {u: run.worker.state.get(u).tolist() for u in hist} == {u: h.tolist() for u, h in hist.items()}
        _requests(s2, [(f"q{u}", u, 20, None) for u in hist])
        got = _results(s2, {f"q{u}" for u in hist})
        for u, h in hist.items():
            assert same_ranking(got[f"q{u}"]["items"], reference.recall(h, 20, exclude_seen=True))
            assert not {i["item_id"] for i in got[f"q{u}"]["items"]} & set(h.tolist())
        # near-line: a click triggers a recall for that user (once per interval)
        u = next(iter(hist))
        _send(
            s2,
            s2.topics.clicks,
            [(user_key(u), encode_click(u, 77, 5)), (user_key(u), encode_click(u, 78, 6))],
        )
        recs = read_topic(
            s2,
            s2.topics.recall_results,
            1,
            20,
            match=lambda r: json.loads(r.value)["request_id"].startswith("nearline:"),
        )
        assert len(recs) == 1
        body = json.loads(recs[0].value)
        # the history as of the triggering click (77), not later ones
        want = reference.recall(np.r_[hist[u], 77][-20:], s2.worker.default_top_k, exclude_seen=True)
        assert body["user_id"] == u and body["source"] == "mind" and same_ranking(body["items"], want)
    finally:
        run.stop()


def test_pipelined_batches_answer_in_order_and_commit_what_was_published(
    settings: Settings,
    export_base: Path,
    store: ItemStore,
    reference: Reference,
) -> None:
    """Depth 3, batches of at most 3 records, an engine that takes 40 ms, so several batches are in
    flight while new clicks arrive. Each answer must use every click applied before its request was
    sent and a history that only grows from one request of a user to the next (Kafka orders nothing
    across topics, so a later click may legitimately land first); every request is answered once; a
    clean stop publishes what is in flight and commits every offset."""
    s = _settings(
        settings, export_base, "worker.pipeline_depth=3", "worker.batch_max=3", "worker.commit_interval_ms=300",
        "worker.exclude_seen=false",
    )
    hist = {u: h[-6:] for u, h in sorted(train_histories(export_base).items())[40:46]}
    rounds = 3
    per_user = {u: np.array_split(h, rounds) for u, h in hist.items()}
    run = Running(s, store, engine_delay_s=0.04)
    try:
        for n in range(rounds):
            _send(s, s.topics.clicks, [(user_key(u), encode_click(u, int(i), 1000 + n))
                                       for u in hist for i in per_user[u][n]])
            applied = {u: sum(len(x) for x in per_user[u][: n + 1]) for u in hist}
            _wait(lambda a=applied: all((h := run.worker.state.get(u)) is not None and h.size >= a[u] for u in hist))
            _requests(s, [(f"p{u}-{n}", u, 10, None) for u in hist])  # answered while the next clicks arrive
        want = {f"p{u}-{n}" for u in hist for n in range(rounds)}
        got = _results(s, want)
        assert set(got) == want
        for u, h in hist.items():
            used = []
            for n in range(rounds):
                items = got[f"p{u}-{n}"]["items"]
                lo = sum(len(x) for x in per_user[u][: n + 1])
                m = [m for m in range(lo, len(h) + 1) if same_ranking(items, reference.recall(h[:m], 10, False))]
                assert m, f"p{u}-{n}: no history of >= {lo} clicks gives this answer"
                used.append(m[0])
            assert used == sorted(used), (u, used)
        _wait(lambda: run.worker.batches >= rounds)
    finally:
        run.stop()
    assert len(read_topic(s, s.topics.recall_results, len(want) + 1, 3)) == len(want)  # answered once
    assert _committed(s, s.topics.recall_requests) == len(want)
    assert _committed(s, s.topics.clicks) == sum(len(h) for h in hist.values())


def test_rebalance_with_batches_in_flight_drops_and_rereads_them(
    settings: Settings,
    export_base: Path,
    store: ItemStore,
    reference: Reference,
) -> None:
    """A second member joins while the first has micro-batches in flight (slow engine, depth 3): the
    first drops them unpublished and reads them again, the second restores full histories from the
    changelog (the clicks' entries are published even when their batch was dropped), and every request
    gets its correct answer."""
    s = _settings(settings, export_base, "worker.pipeline_depth=3", "worker.batch_max=2", "worker.exclude_seen=false")
    hist = {u: h[-8:] for u, h in sorted(train_histories(export_base).items())[50:58]}
    a = Running(s, store, engine_delay_s=0.15)
    b = None
    try:
        # clicks and requests together: the click batches are in flight too when the rebalance comes
        _clicks(s, hist)
        _wait(lambda: all((h := a.worker.state.get(u)) is not None and h.size == len(hist[u]) for u in hist))
        reqs = [(f"x{u}-{n}", u, 10, None) for n in range(4) for u in hist]
        _requests(s, reqs)
        _wait(lambda: a.worker.batches >= 1)
        b = Running(s, store, engine_delay_s=0.15)  # joins: both rebalance with batches in flight on `a`
        got = _results(s, {r[0] for r in reqs}, timeout_s=60)
        assert set(got) == {r[0] for r in reqs}
        for rid, u, k, _ in reqs:
            assert same_ranking(got[rid]["items"], reference.recall(hist[u], k, exclude_seen=False)), rid
        pa, pb = a.worker.owned_partitions(), b.worker.owned_partitions()
        assert pa | pb == set(range(s.topics.partitions)) and not pa & pb and pa and pb
    finally:
        a.stop()
        if b is not None:
            b.stop()


def _committed(s: Settings, topic: str) -> int:
    """Sum of the worker group's committed offsets on ``topic`` (-1 while the broker cannot tell)."""
    return committed_total(s, s.worker.group_id, topic)


def _spawn(s: Settings, name: str, tmp: Path, export: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"{name}.log"
    return spawn_recall_worker(s, export, log, f"milvus.uri={tmp / f'{name}.db'}", "topics.partitions=4"), log


def test_two_workers_one_killed_survivor_serves_full_histories(
    settings: Settings,
    export_base: Path,
    reference: Reference,
    tmp_path: Path,
) -> None:
    s = settings.replace("topics.partitions=4", f"worker.group_id=g-{uuid.uuid4().hex[:8]}")
    RecallWorker(s, engine=None).ensure_topics()  # type: ignore[arg-type]
    hist = {u: h[-15:] for u, h in sorted(train_histories(export_base).items())[40:72]}
    procs = [_spawn(s, n, tmp_path, export_base / "export") for n in ("a", "b")]
    try:
        # "restored" is logged only after a non-empty assignment: both members own partitions
        _wait(lambda: all(b"restored" in log.read_bytes() for _, log in procs), 90)
        _clicks(s, hist)
        n_clicks = sum(len(h) for h in hist.values())
        _wait(lambda: _committed(s, s.topics.clicks) == n_clicks, 60)  # histories applied before asking
        _requests(s, [(f"before-{u}", u, 10, None) for u in hist])
        got = _results(s, {f"before-{u}" for u in hist}, 60)
        assert len(got) == len(hist)
        victim, _ = procs[0]
        survivor_log = procs[1][1]
        seen_before = len(survivor_log.read_bytes())
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        _requests(s, [(f"after-{u}", u, 10, None) for u in hist])
        got |= _results(s, {f"after-{u}" for u in hist}, 60)
        takeover = survivor_log.read_bytes()[seen_before:].decode()
        assert "restored" in takeover  # the survivor restored the victim's partitions from the changelog
        for u, h in hist.items():
            want = reference.recall(h, 10, exclude_seen=True)
            for phase in ("before", "after"):
                r = got[f"{phase}-{u}"]
                assert r["source"] == "mind", (phase, u)
                assert same_ranking(r["items"], want), (phase, u)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, log in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
            print(log.read_text()[-3000:])
