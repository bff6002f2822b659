"""The [item-embeddings] codec, batch planning and the item cache (pure: no Kafka, no Milvus)."""

from __future__ import annotations

import base64
import json
from typing import Any, NamedTuple

import numpy as np
import pytest

from mind_recall.item_wire import ItemEvent, decode_item_event, encode_item_event, reason_code
from worker.item_writer import Pending, plan_batch
from worker.items import ItemCache
from worker.kafka_io import DeadLetter
from worker.metrics import DLQ_REASONS
from worker.store import LiveCollection


class Rec(NamedTuple):  # the attributes the decoder reads from a kafka record
    key: bytes | None
    value: bytes | None
    topic: str = "items"
    partition: int = 0
    offset: int = 0
    timestamp: int = 5


def _rec(body: Any, key: bytes = b"7", offset: int = 0) -> Rec:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Rec(key, value, offset=offset)


def test_round_trip_json_and_binary() -> None:
    vec = np.arange(8, dtype=np.float32) / 7
    for binary in (False, True):
        key, value = encode_item_event(42, vec, "v1", 123, binary=binary)
        ev = decode_item_event(Rec(key, value), dim=8)
        assert isinstance(ev, ItemEvent)
        assert (ev.item_id, ev.model_version, ev.ts) == (42, "v1", 123)
        np.testing.assert_array_equal(ev.vector, vec)
    assert (
        len(encode_item_event(1, vec, "v", 1, binary=True)[1]) < len(encode_item_event(1, vec, "v", 1)[1]) * 2
    )


def test_deletes_and_tombstones() -> None:
    key, value = encode_item_event(9, None, "v1", 77)
    ev = decode_item_event(Rec(key, value))
    assert isinstance(ev, ItemEvent) and ev.is_delete and ev.item_id == 9 and ev.ts == 77
    tomb = decode_item_event(Rec(b"11", None))
    assert isinstance(tomb, ItemEvent) and tomb.is_delete and tomb.item_id == 11
    bad = decode_item_event(Rec(b"x1", None))
    assert isinstance(bad, DeadLetter) and reason_code(bad) == "bad_id"


GOOD = {"item_id": 7, "vector": [0.5] * 4, "model_version": "v1", "ts": 1}
NAN_B64 = base64.b64encode(np.array([1, np.nan, 0, 0], "<f4").tobytes()).decode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff{not json", "not_json"),
        ({**GOOD, "vector": [0.5] * 5}, "wrong_dim"),
        (b'{"item_id": 7, "vector": [NaN, 1, 2, 3], "model_version": "v1", "ts": 1}', "not_finite"),
        ({**GOOD, "vector": [1e39, 0, 0, 0]}, "not_finite"),
        ({"item_id": 7, "vector_b64": NAN_B64, "model_version": "v1", "ts": 1}, "not_finite"),
        ({**GOOD, "item_id": -3}, "bad_id"),
        ({**GOOD, "item_id": 2**63}, "bad_id"),
        ({k: v for k, v in GOOD.items() if k != "vector"}, "missing_field"),
        ({k: v for k, v in GOOD.items() if k != "model_version"}, "missing_field"),
        ({k: v for k, v in GOOD.items() if k != "item_id"}, "missing_field"),
        ({**GOOD, "item_id": "7"}, "wrong_type"),
        ({**GOOD, "item_id": True}, "wrong_type"),
        ({**GOOD, "vector": ["a", 1, 2, 3]}, "wrong_type"),
        ({**GOOD, "model_version": 3}, "wrong_type"),
        ({**GOOD, "vector_b64": 5, "vector": None}, "wrong_type"),
        ([1, 2], "wrong_type"),
        ({**GOOD, "vector": [0.1] * 4, "pad": "x" * 600}, "oversized"),
    ],
)
def test_each_bad_class_has_its_reason(value: Any, reason: str) -> None:
    out = decode_item_event(_rec(value), dim=4, max_record_bytes=500)
    assert isinstance(out, DeadLetter), out
    assert reason_code(out) == reason and reason in DLQ_REASONS
    assert out.value == (value if isinstance(value, bytes) else json.dumps(value).encode())  # original bytes


def _ev(item: int, version: str = "v1", delete: bool = False, ts: int = 1, dim: int = 4) -> ItemEvent:
    return ItemEvent(item, None if delete else np.full(dim, float(ts), np.float32), version, ts)


def test_plan_last_write_wins_and_routes() -> None:
    routes = {"v1": LiveCollection("items_v1", "v1", 4), "v2": LiveCollection("items_v2", "v2", 4)}
    p = Pending()
    seq = [
        _ev(1, ts=1),
        _ev(1, ts=2),
        _ev(2, ts=3),
        _ev(2, delete=True, ts=4),
        _ev(3, delete=True, ts=5),
        _ev(3, ts=6),
        _ev(4, "v2", ts=7),
        _ev(4, "v1", ts=8),
        _ev(5, "v9", ts=9),
        _ev(6, dim=3, ts=10),
    ]
    for i, ev in enumerate(seq):
        p.add(Rec(str(ev.item_id).encode(), b"{}", offset=i), ev)
    plan = plan_batch(p, routes)
    up = {c: {e.item_id: e.ts for e in evs} for c, evs in plan.upserts.items()}
    assert up == {"items_v1": {1: 2, 3: 6, 4: 8}, "items_v2": {4: 7}}
    assert plan.deletes == [2, 3]  # item 3: deleted, then re-added (deletes run before upserts)
    assert sorted(reason_code(d) for d in plan.dead) == ["wrong_dim", "wrong_model_version"]
    assert p.next_offsets() == {next(iter(p.next_offsets())): len(seq)}


def test_pending_drop_revoked() -> None:
    from worker.kafka_io import TopicPartition

    p = Pending()
    for part in (0, 1, 0):
        p.add(Rec(b"1", b"{}", partition=part, offset=3), _ev(1))
    assert p.drop({TopicPartition("items", 0)}) == 2 and len(p) == 1


def test_item_cache_lookup_delete_and_order() -> None:
    c = ItemCache("v1", 4, capacity=2)
    c.load(np.array([1, 5, 2**40]), np.eye(3, 4, dtype=np.float32), ts=10)
    vec, found = c.lookup(np.array([[1, 3], [5, 2**40]]))
    assert vec.shape == (2, 2, 4) and found.tolist() == [[True, False], [True, True]]
    np.testing.assert_array_equal(vec[1, 1], np.eye(3, 4, dtype=np.float32)[2])
    assert not vec[0, 1].any()
    assert c.apply(_ev(5, delete=True, ts=11))
    assert c.is_live(np.array([1, 5, 9])).tolist() == [True, False, False]
    assert not c.apply(_ev(5, ts=9))  # an older upsert replayed after the delete does not resurrect it
    assert not c.apply(_ev(1, ts=3))  # nor overwrite a newer vector
    assert not c.apply(_ev(7, "v2", ts=20))  # another model version is not this cache's
    assert c.apply(_ev(6, ts=12)) and len(c) == 3  # reuses the freed slot
    assert c.lookup(np.array([6]))[0][0, 0] == 12.0
