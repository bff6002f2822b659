"""User history memory and speed: the columnar HistoryState vs the dict-of-objects one it replaced.

    .venv/bin/python bench/history.py [--users 1000000] [--partitions 4] [--maxlen 20] [--ops 100000] [--runs 3]
                                      [--traced]

``--users`` users spread over ``--partitions`` partitions, each with ``--maxlen`` items, loaded through
``restore_entry`` (the state a worker holds after restoring its partitions; after ``maxlen`` clicks per
user a live worker holds the same rows). One process holds both states: RSS per user as each is loaded
(after malloc_trim), then runs alternating between them: ``apply`` (a click of an
existing user at a new offset), ``apply_drain`` (the same, ``drain_dirty`` every 256 clicks), ``get`` (an
existing user), ``restore_entry`` (overwriting an existing user): ``--ops`` calls per run, the median of
``--runs`` runs; plus the rate of the initial load (one run). ``--traced``: also, one process per
implementation, the bytes per user tracemalloc counts (what the state allocated; peak: during the load);
slow (tracemalloc hooks every JSON temporary): ~4 more minutes at 1M on 2 busy vCPUs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mind_recall.wire import Click, user_key  # noqa: E402
from worker.history import HistoryState  # noqa: E402

# ---- the baseline: worker/history.py's HistoryState as of commit 8002999, verbatim but for the restore loop ----


@dataclass
class UserHistory:
    items: list[int]
    last_offset: int
    ts: int = 0


@dataclass
class DictHistoryState:
    """The former layout: per partition a dict user -> UserHistory (a list of Python ints)."""

    maxlen: int
    _parts: dict[int, dict[int, UserHistory]] = field(default_factory=dict)
    _where: dict[int, int] = field(default_factory=dict)
    _dirty: dict[int, set[int]] = field(default_factory=dict)

    def apply(self, partition: int, offset: int, click: Click) -> bool:
        users = self._parts.setdefault(partition, {})
        h = users.get(click.user_id)
        if h is None:
            h = users[click.user_id] = UserHistory([], -1)
            self._where[click.user_id] = partition
        elif offset <= h.last_offset:
            return False
        h.items.append(click.item_id)
        if len(h.items) > self.maxlen:
            del h.items[: len(h.items) - self.maxlen]
        h.last_offset, h.ts = offset, click.ts
        self._dirty.setdefault(partition, set()).add(click.user_id)
        return True

    def get(self, user_id: int) -> np.ndarray | None:
        p = self._where.get(user_id)
        h = None if p is None else self._parts.get(p, {}).get(user_id)
        return None if h is None or not h.items else np.asarray(h.items, dtype=np.int64)

    def drain_dirty(self) -> list[tuple[int, bytes, bytes]]:
        out = []
        for p, users in self._dirty.items():
            part = self._parts.get(p, {})
            for u in users:
                h = part.get(u)
                if h is not None:
                    value = json.dumps(
                        {"user_id": int(u), "items": h.items, "offset": h.last_offset, "ts": h.ts},
                        separators=(",", ":"),
                    ).encode()
                    out.append((p, user_key(u), value))
        self._dirty.clear()
        return out

    def restore_entry(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        try:
            user = int(key) if key is not None else None
        except ValueError:
            user = None
        if value is None:
            if user is not None:
                self._parts.get(partition, {}).pop(user, None)
                self._where.pop(user, None)
            return
        try:
            obj = json.loads(value)
            user = int(obj["user_id"])
            items = [int(i) for i in obj["items"]][-self.maxlen :]
            h = UserHistory(items, int(obj.get("offset", -1)), int(obj.get("ts", 0)))
        except (ValueError, KeyError, TypeError):
            return
        self._parts.setdefault(partition, {})[user] = h
        self._where[user] = partition

    def users(self) -> int:
        return len(self._where)


IMPLS: dict[str, Any] = {"dict": DictHistoryState, "columnar": HistoryState}

# ---- workload -----------------------------------------------------------------------------------------


def _users(n: int, seed: int = 7) -> np.ndarray:
    """``n`` distinct random user ids below 2^40 (not small ints: CPython caches those)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(0, 2**40, size=n + n // 8 + 16))
    rng.shuffle(ids)
    return ids[:n]


def _entries(users: np.ndarray, parts: int, maxlen: int, start: int, stop: int, offset: int) -> list:
    """Changelog records (partition, key, value) of users[start:stop], ``maxlen`` items below 10^6 each."""
    rng = np.random.default_rng(start + 1)
    pool = [",".join(map(str, r)) for r in rng.integers(1, 1_000_000, size=(4096, maxlen)).tolist()]
    out = []
    for i in range(start, stop):
        u = int(users[i])
        v = f'{{"user_id":{u},"items":[{pool[i & 4095]}],"offset":{offset + i},"ts":{1_764_800_000_000 + i}}}'
        out.append((i % parts, str(u).encode(), v.encode()))
    return out


def _load(state: Any, users: np.ndarray, parts: int, maxlen: int, traced: bool = False) -> tuple[float, int]:
    """Restore every user (in chunks, so the records never all live at once).

    Returns the seconds spent in restore_entry and, when tracing, the peak bytes the state itself held at
    any moment (its transient copies included, the chunk of records excluded)."""
    spent, peak = 0.0, 0
    for start in range(0, len(users), 100_000):
        before = tracemalloc.get_traced_memory()[0] if traced else 0
        chunk = _entries(users, parts, maxlen, start, min(start + 100_000, len(users)), 0)
        if traced:
            records = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.reset_peak()
        t0 = time.perf_counter()
        for p, k, v in chunk:
            state.restore_entry(p, k, v)
        spent += time.perf_counter() - t0
        if traced:
            peak = max(peak, tracemalloc.get_traced_memory()[1] - records)
    return spent, peak


def _rss() -> int:
    """Resident bytes, after handing the allocator's free memory back, so that memory freed by earlier
    steps and reused by the state does not hide the state's cost, nor freed records add to it."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_memory(impl: str, users: int, parts: int, maxlen: int) -> dict:
    ids = _users(users)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    state = IMPLS[impl](maxlen=maxlen)
    _spent, peak = _load(state, ids, parts, maxlen, traced=True)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert state.users() == users
    out = {
        "traced_bytes": held - base,
        "traced_bytes_per_user": round((held - base) / users, 1),
        "traced_peak_bytes_per_user": round((peak - base) / users, 1),  # while loading: growth copies
    }
    if impl == "columnar":
        out["nbytes_per_user"] = round(state.nbytes() / users, 1)
    return out


def child_speed(users: int, parts: int, maxlen: int, ops: int, runs: int) -> dict:
    """Both states in this process, their runs alternating (the cores are shared: drift hits both alike)."""
    ids = _users(users)
    states: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for impl in ("columnar", "dict"):  # the compact one first: the other's RSS may reuse freed record chunks
        rss0 = _rss()
        states[impl] = IMPLS[impl](maxlen=maxlen)
        load_s, _ = _load(states[impl], ids, parts, maxlen)
        out[impl] = {
            "rss_bytes_per_user": round((_rss() - rss0) / users, 1),
            "rates": {"initial_load": {"ops_per_s": round(users / load_s), "runs_s": [round(load_s, 3)]}},
        }
        if impl == "columnar":
            out[impl]["nbytes_per_user"] = round(states[impl].nbytes() / users, 1)
    rng = np.random.default_rng(11)
    picks = [rng.integers(0, users, size=ops).tolist() for _ in range(runs)]
    lookups = [[int(ids[i]) for i in p] for p in picks]
    offset = users

    def clicks(r: int) -> list[tuple[int, int, Click]]:
        nonlocal offset
        offset += ops
        return [(i % parts, offset + n, Click(int(ids[i]), n % 999_983 + 1, n)) for n, i in enumerate(picks[r])]

    def apply(state: Any, batch: Iterable[tuple[int, int, Click]]) -> None:
        for p, off, c in batch:
            state.apply(p, off, c)

    def apply_drain(state: Any, batch: list[tuple[int, int, Click]]) -> None:
        for s in range(0, len(batch), 256):  # the worker drains once per micro-batch
            apply(state, batch[s : s + 256])
            state.drain_dirty()

    def get(state: Any, batch: list[int]) -> None:
        for u in batch:
            state.get(u)

    def restore(state: Any, batch: list[tuple[int, bytes, bytes]]) -> None:
        for p, k, v in batch:
            state.restore_entry(p, k, v)

    for r in range(runs):
        # the same inputs for both; a fresh offset per run and measure, so no click is a replay
        work: dict[str, tuple[Callable[[Any, Any], None], list[Any]]] = {
            "apply": (apply, clicks(r)),
            "apply_drain": (apply_drain, clicks(r)),
            "get": (get, lookups[r]),
            "restore_entry": (restore, _entries(ids, parts, maxlen, 0, ops, 10**9 + r * ops)),
        }
        for name, (fn, batch) in work.items():
            for impl in ("dict", "columnar") if r % 2 else ("columnar", "dict"):
                gc.collect()
                t0 = time.perf_counter()
                fn(states[impl], batch)
                out[impl]["rates"].setdefault(name, {"runs_s": []})["runs_s"].append(round(time.perf_counter() - t0, 3))
        for st in states.values():
            st.drain_dirty()
    for impl in out:
        for name, rate in out[impl]["rates"].items():
            if name != "initial_load":
                rate["ops_per_s"] = round(ops / statistics.median(rate["runs_s"]))
    return out


def _run_child(args: argparse.Namespace, measure: str, impl: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", measure]
    if impl:
        cmd += ["--impl", impl]
    for name in ("users", "partitions", "maxlen", "ops", "runs"):
        cmd += [f"--{name}", str(getattr(args, name))]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out: dict = json.loads(res.stdout)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--maxlen", type=int, default=20)
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--traced", action="store_true", help="also count bytes with tracemalloc (minutes at 1M)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--impl", choices=sorted(IMPLS), help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=["memory", "speed"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "memory":
        print(json.dumps(child_memory(args.impl, args.users, args.partitions, args.maxlen)))
        return
    if args.child == "speed":
        print(json.dumps(child_speed(args.users, args.partitions, args.maxlen, args.ops, args.runs)))
        return
    res: dict[str, Any] = {
        "users": args.users,
        "partitions": args.partitions,
        "maxlen": args.maxlen,
        "ops": args.ops,
        "runs": args.runs,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
    }
    speed = _run_child(args, "speed")
    res["speed_wall_s"] = speed.pop("wall_s")
    for impl in ("dict", "columnar"):
        res[impl] = {**(_run_child(args, "memory", impl) if args.traced else {}), **speed[impl]}
    old, new = res["dict"], res["columnar"]
    res["bytes_per_user"] = {"rss_before": old["rss_bytes_per_user"], "rss_after": new["rss_bytes_per_user"]}
    if args.traced:
        res["bytes_per_user"].update(
            traced_before=old["traced_bytes_per_user"], traced_after=new["traced_bytes_per_user"]
        )
    res["throughput_ratio_after_over_before"] = {
        k: round(new["rates"][k]["ops_per_s"] / old["rates"][k]["ops_per_s"], 2) for k in old["rates"]
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
