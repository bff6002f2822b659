"""The [item-embeddings] wire format: encode and decode item events. Pure: bytes in, values out.

Record value (UTF-8 JSON), key = the item id as a decimal string:
  upsert  {"item_id": int, "vector": [float]*dim, "model_version": str, "ts": epoch_ms}
          or the same with "vector_b64": base64 of little-endian float32 (about 3x smaller, faster to parse)
  delete  {"item_id": int, "op": "delete", "ts": epoch_ms, ...}, or a null value (tombstone: id from the key)
Errors are values: :func:`decode_item_event` returns a ``DeadLetter`` with a bounded reason code
(worker.metrics.DLQ_REASONS) followed by ": detail".
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mind_recall.wire import DeadLetter

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class ItemEvent:
    item_id: int
    vector: np.ndarray | None  # None = delete
    model_version: str
    ts: int

    @property
    def is_delete(self) -> bool:
        return self.vector is None


def now_ms() -> int:
    return int(time.time() * 1000)


# -- encoding (producers, tests, bench) ---------------------------------------------------------
def encode_item_event(
    item_id: int, vector: np.ndarray | None, model_version: str, ts: int, *, binary: bool = False
) -> tuple[bytes, bytes | None]:
    """(key, value) for one event; ``vector=None`` encodes a delete (an explicit op, not a tombstone)."""
    key = str(int(item_id)).encode()
    if vector is None:
        body: dict[str, Any] = {
            "item_id": int(item_id),
            "op": "delete",
            "model_version": model_version,
            "ts": ts,
        }
    elif binary:
        raw = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        body = {
            "item_id": int(item_id),
            "vector_b64": base64.b64encode(raw).decode("ascii"),
            "model_version": model_version,
            "ts": ts,
        }
    else:
        body = {
            "item_id": int(item_id),
            "vector": np.asarray(vector, dtype=np.float32).tolist(),
            "model_version": model_version,
            "ts": ts,
        }
    return key, json.dumps(body, separators=(",", ":")).encode()


# -- decoding -----------------------------------------------------------------------------------
class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _int_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Reject("wrong_type", f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= INT64_MAX:
        raise _Reject("bad_id", f"{what} {value} is not a non-negative int64")
    return value


def _key_id(key: bytes | None) -> int:
    try:
        text = (key or b"").decode("ascii")
        if not text.isdigit():
            raise ValueError
        return _int_id(int(text), "item id from the key")
    except (UnicodeDecodeError, ValueError):
        raise _Reject("bad_id", f"tombstone key {key!r} is not a non-negative integer") from None


def _vector(body: dict[str, Any], dim: int | None) -> np.ndarray:
    if "vector_b64" in body:
        b64 = body["vector_b64"]
        if not isinstance(b64, str):
            raise _Reject("wrong_type", f"vector_b64 must be a string, got {type(b64).__name__}")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise _Reject("wrong_type", "vector_b64 is not valid base64") from None
        if len(raw) % 4:
            raise _Reject("wrong_dim", f"vector_b64 holds {len(raw)} bytes, not a whole number of float32")
        vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif "vector" in body:
        values = body["vector"]
        if not isinstance(values, list) or not values:
            raise _Reject("wrong_type", "vector must be a non-empty list of numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise _Reject("wrong_type", "vector must hold only numbers")
        if not all(math.isfinite(v) for v in values):  # before float32: 1e39 would become inf
            raise _Reject("not_finite", "vector holds NaN or infinity")
        with np.errstate(over="ignore"):  # 1e39 overflows float32 to inf: caught just below
            vec = np.asarray(values, dtype=np.float64).astype(np.float32)
    else:
        raise _Reject("missing_field", "vector (or vector_b64) is missing")
    if dim is not None and vec.shape[0] != dim:
        raise _Reject("wrong_dim", f"vector has {vec.shape[0]} values, the collection needs {dim}")
    if not np.isfinite(vec).all():
        raise _Reject("not_finite", "vector holds NaN or infinity (or overflows float32)")
    return vec


def _decode(record: Any, dim: int | None, max_record_bytes: int | None) -> ItemEvent:
    value: bytes | None = record.value
    if value is None:  # a tombstone
        return ItemEvent(_key_id(record.key), None, "", int(getattr(record, "timestamp", 0) or 0))
    if max_record_bytes is not None and len(value) > max_record_bytes:
        raise _Reject("oversized", f"{len(value)} bytes > worker.max_record_bytes={max_record_bytes}")
    try:
        # NaN/Infinity literals are not JSON: refuse them here as not_finite, with a clear reason.
        body = json.loads(
            value, parse_constant=lambda c: (_ for _ in ()).throw(_Reject("not_finite", f"{c} in JSON"))
        )
    except _Reject:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise _Reject("not_json", str(e)[:200] or type(e).__name__) from None
    if not isinstance(body, dict):
        raise _Reject("wrong_type", f"value must be a JSON object, got {type(body).__name__}")
    if "item_id" not in body:
        raise _Reject("missing_field", "item_id is missing")
    item_id = _int_id(body["item_id"], "item_id")
    if record.key is not None and record.key != str(item_id).encode():
        # the topic is compacted by key: a key other than the item id would keep the wrong event per item
        # and a tombstone of the item id would not delete it
        raise _Reject("key_mismatch", f"record key {record.key[:40]!r} is not the item_id {item_id}")
    ts = body.get("ts", getattr(record, "timestamp", 0) or 0)
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        raise _Reject("wrong_type", "ts must be a non-negative integer (epoch ms)")
    version = body.get("model_version", "")
    op = body.get("op", "upsert")
    if op == "delete":
        if not isinstance(version, str):
            raise _Reject("wrong_type", "model_version must be a string")
        return ItemEvent(item_id, None, version, ts)
    if op != "upsert":
        raise _Reject("wrong_type", f"op must be 'upsert' or 'delete', got {op!r}"[:200])
    if "model_version" not in body:
        raise _Reject("missing_field", "model_version is missing")
    if not isinstance(version, str) or not version:
        raise _Reject("wrong_type", "model_version must be a non-empty string")
    if "ts" not in body:
        raise _Reject("missing_field", "ts is missing")
    return ItemEvent(item_id, _vector(body, dim), version, ts)


def decode_item_event(
    record: Any, *, dim: int | None = None, max_record_bytes: int | None = None
) -> ItemEvent | DeadLetter:
    """Decode and validate one [item-embeddings] record; a bad one becomes a DeadLetter (never raises).

    ``dim`` checks the vector length when the target collection is known; the writer checks the
    model version against its collections (reason ``wrong_model_version``).
    """
    try:
        return _decode(record, dim, max_record_bytes)
    except _Reject as e:  # error_class is the reason code, as on the other DLQs
        return DeadLetter.of(record, e.reason, str(e))
    except Exception as e:
        return DeadLetter.of(record, "other", f"other: {type(e).__name__}: {e}"[:500])


def reason_code(dead: DeadLetter) -> str:
    """The bounded reason code at the start of a dead letter's reason."""
    return dead.reason.split(":", 1)[0]
