"""Request/click codecs: every bad-input class maps to its documented outcome."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mind_recall.wire import (
    Click,
    Limits,
    RecallRequest,
    RequestError,
    decode_click,
    decode_request,
    encode_error,
    encode_request,
    encode_result,
)
from model.merge import Candidate
from worker.kafka_io import DeadLetter

LIMITS = Limits(max_top_k=100, max_hist=5, default_top_k=7, max_record_bytes=2000)


def rec(value: object, *, raw: bytes | None = None, ts: int = 1234) -> SimpleNamespace:
    b = raw if raw is not None else json.dumps(value).encode()
    return SimpleNamespace(topic="t", partition=0, offset=3, key=b"1", value=b, timestamp=ts, headers=[])


def test_click_ok_and_default_ts() -> None:
    assert decode_click(rec({"user_id": 5, "item_id": 9, "ts": 77})) == Click(5, 9, 77)
    assert decode_click(rec({"user_id": 5, "item_id": 9})) == Click(5, 9, 1234)


@pytest.mark.parametrize(
    "value,reason",
    [
        ({"user_id": 5}, "missing_field"),
        ({"user_id": "5", "item_id": 9}, "wrong_type"),
        ({"user_id": 5, "item_id": True}, "wrong_type"),
        ({"user_id": 5, "item_id": 0}, "bad_id"),
        ({"user_id": -1, "item_id": 3}, "bad_id"),
        ([1, 2], "not_json"),
    ],
)
def test_bad_clicks_dead_letter(value: object, reason: str) -> None:
    d = decode_click(rec(value))
    assert isinstance(d, DeadLetter) and d.error_class == reason and d.offset == 3


def test_click_not_json_and_null() -> None:
    assert decode_click(rec(None, raw=b"{nope")).error_class == "not_json"  # type: ignore[union-attr]
    r = rec(None)
    r.value = None
    assert decode_click(r).error_class == "not_json"  # type: ignore[union-attr]


def test_request_ok_with_and_without_history() -> None:
    r = decode_request(rec({"request_id": "a", "user_id": 1, "top_k": 10, "ts": 5}), LIMITS)
    assert isinstance(r, RecallRequest) and r.hist_item is None and (r.top_k, r.ts) == (10, 5)
    r = decode_request(rec({"request_id": "a", "user_id": 1, "hist_item": [3, 4]}), LIMITS)
    assert isinstance(r, RecallRequest) and r.top_k == 7 and r.hist_item.tolist() == [3, 4]


@pytest.mark.parametrize(
    "value,reason",
    [
        ({"request_id": "a", "user_id": 1, "top_k": 0}, "bad_top_k"),
        ({"request_id": "a", "user_id": 1, "top_k": 101}, "bad_top_k"),
        ({"request_id": "a", "user_id": 1, "top_k": 2.5}, "wrong_type"),
        ({"request_id": "a", "user_id": "x"}, "wrong_type"),
        ({"request_id": "a"}, "missing_field"),
        ({"request_id": "a", "user_id": 1, "hist_item": [1, 2, 3, 4, 5, 6]}, "oversized"),
        ({"request_id": "a", "user_id": 1, "hist_item": "1 2"}, "wrong_type"),
        ({"request_id": "a", "user_id": 1, "hist_item": [1, "2"]}, "wrong_type"),
        ({"request_id": "a", "user_id": 1, "hist_item": [1, 0]}, "bad_history"),
    ],
)
def test_bad_request_with_id_gets_error_result(value: dict, reason: str) -> None:
    r = decode_request(rec(value), LIMITS)
    assert isinstance(r, RequestError) and r.reason == reason and r.request_id == "a"
    body = json.loads(encode_error(r, "v1", 99))
    assert body["request_id"] == "a" and body["error"].startswith(reason) and body["items"] == []


@pytest.mark.parametrize(
    "raw,reason",
    [
        (b"not json", "not_json"),
        (json.dumps({"user_id": 1}).encode(), "missing_field"),
        (json.dumps({"request_id": 5, "user_id": 1}).encode(), "wrong_type"),
        (json.dumps({"request_id": "a", "pad": "x" * 3000}).encode(), "oversized"),
    ],
)
def test_bad_request_without_id_dead_letters(raw: bytes, reason: str) -> None:
    d = decode_request(rec(None, raw=raw), LIMITS)
    assert isinstance(d, DeadLetter) and d.error_class == reason and d.value == raw


def test_result_and_request_encoding_round_trip() -> None:
    body = json.loads(encode_result("r", 4, [Candidate(7, 0.5, 1)], "v", 2, "mind", 10, 20))
    assert body == {
        "request_id": "r",
        "user_id": 4,
        "items": [{"item_id": 7, "score": 0.5, "interest": 1}],
        "model_version": "v",
        "n_interests": 2,
        "source": "mind",
        "request_ts": 10,
        "produced_ts": 20,
    }
    r = decode_request(rec(None, raw=encode_request("q", 3, 9, 11, [1, 2])), LIMITS)
    assert isinstance(r, RecallRequest) and (r.request_id, r.user_id, r.top_k, r.ts) == ("q", 3, 9, 11)
