"""The streaming recall worker: clicks -> history, recall requests -> micro-batches -> results.

One consumer group subscribes to clicks and recall-requests (co-partitioned by user_id; the
range assignor gives a member the same partition numbers of both). Per micro-batch:
records in arrival order (a click updates the in-memory history before a later request reads it),
ONE engine call for all requests, then changelog + results + dead letters are produced, the
producer is flushed, and only then are the offsets committed (at-least-once; results carry the
request_id so consumers can dedupe).

Pipelined: the engine call (mostly waiting on Milvus) runs on one engine thread while this thread
publishes the previous batch and collects the next one; at most ``worker.pipeline_depth`` batches are
in flight and they are finished (published, flushed, offsets queued for commit) strictly in order.
Offsets are committed every ``worker.commit_interval_ms``. A rebalance (inside poll) makes every batch
still in flight stale: it is dropped unpublished and its records are read again (``_drop_inflight``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mind_recall.settings import Settings
from mind_recall.wire import (
    DeadLetter,
    Limits,
    RecallRequest,
    RequestError,
    cut,
    decode_click,
    decode_request,
    encode_error,
    encode_result,
    user_key,
)
from worker import kafka_io
from worker.history import HistoryState, restore
from worker.kafka_io import TopicPartition
from worker.ledger import Ledger
from worker.outage import Stopped, retry
from worker.recall import Encoded, Query, Recall, RecallEngine

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Pending:
    """One result to produce: (request_id, user_id, request_ts) plus where it came from."""

    request_id: str
    user_id: int
    request_ts: int


@dataclass
class _Batch:
    """A micro-batch between prepare (decoded, history applied, engine call submitted) and finish."""

    offsets: dict[TopicPartition, int]  # next offset to read, per partition
    first: dict[TopicPartition, int]  # lowest offset in the batch, per partition (to read it again)
    answers: list[_Pending | RequestError] = field(default_factory=list)  # arrival order; results for _Pending
    dead: list[tuple[str, DeadLetter]] = field(default_factory=list)
    changelog: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    results: Future[list[Recall]] | None = None  # one per _Pending in answers, in order
    engine: RecallEngine | None = None  # the engine (so the model version) that answers this whole batch

    def results_done(self) -> bool:
        return self.results is None or self.results.done()


def now_ms() -> int:
    return int(time.time() * 1000)


class RecallWorker:
    def __init__(
        self, settings: Settings, engine: RecallEngine, metrics: Any = None, clients: kafka_io.Clients | None = None
    ) -> None:
        self.s = settings
        self.clients = clients or kafka_io.Clients(settings)
        self.engine = engine
        self.metrics = metrics
        self.limits = Limits.of(settings)
        self.state = HistoryState(maxlen=settings.hyper_parameters.maxlen)
        self.stop_event = threading.Event()
        self.ledger = Ledger(settings.topics.clicks)  # offsets and rebalance bookkeeping (worker/ledger.py)
        self._nearline_last: dict[int, float] = {}
        self._last_lag = 0.0
        self._inflight: deque[_Batch] = deque()
        self._last_commit = time.monotonic()
        self._engine_pool: ThreadPoolExecutor | None = None
        self._encode_pool: ThreadPoolExecutor | None = None  # worker.overlap_encode
        self.ready = threading.Event()  # set once partitions are assigned and restored
        self.batches = 0
        self._loop_thread: threading.Thread | None = None  # the thread in run(): the only one using the consumer
        t = settings.topics
        self.topics = (t.clicks, t.recall_requests)
        self.consumer: Any = None
        self.restore_consumer: Any = None
        self.producer: Any = None

    # -- setup -----------------------------------------------------------------------------------
    def ensure_topics(self) -> None:
        t = self.s.topics
        kafka_io.ensure_topics(
            self.s,
            {
                t.clicks: t.partitions,
                t.recall_requests: t.partitions,
                t.history_changelog: t.partitions,
                t.recall_results: t.partitions,
                t.dlq: 1,
            },
            configs={t.history_changelog: {"cleanup.policy": "compact"}},
        )

    def open(self) -> None:
        self.ensure_topics()
        w = self.s.worker
        self.producer = self.clients.producer()
        self.restore_consumer = self.clients.reader()
        self.consumer = self.clients.group_consumer(
            w.group_id,
            # a broker-side wait of 500 ms (the clients' default) held requests back when partitions were idle
            fetch_max_wait_ms=w.fetch_max_wait_ms,
            session_timeout_ms=w.session_timeout_ms,
            heartbeat_interval_ms=max(1000, w.session_timeout_ms // 5),
            # a batch may wait up to outage_limit_s in _retry without polling: stay in the group meanwhile
            max_poll_interval_ms=int(max(300.0, w.outage_limit_s + 60.0) * 1000),
        )
        self._check_copartitioned()
        self.consumer.subscribe(self.topics, self._on_assigned, self._on_revoked, self._on_lost)

    def _check_copartitioned(self) -> None:
        """clicks, recall-requests and the changelog must have the same partition count: the worker owning
        a user's clicks serves that user's requests and restores that user's history by partition number."""
        t = self.s.topics
        counts = {
            name: len(self.restore_consumer.partitions_for_topic(name) or ())
            for name in (t.clicks, t.recall_requests, t.history_changelog)
        }
        for name in self.topics:
            # the group consumer's own metadata too: subscribing before it knows the topics gave a first
            # assignment of nothing and an extra rebalance (seen with kafka-python, where it once hung)
            self.consumer.partitions_for_topic(name)
        if len(set(counts.values())) != 1:
            raise RuntimeError(
                f"topics are not co-partitioned: {counts}; give them the same partition count "
                f"(topics.partitions={t.partitions})"
            )

    def close(self) -> None:
        for c in (self.consumer, self.restore_consumer):
            if c is not None:
                try:
                    c.close()
                except Exception as e:
                    log.warning("closing a consumer: %s", e)
        if self.producer is not None:
            self.producer.close()

    # -- rebalance (runs inside poll, on this thread; the restore itself happens in the loop) ----------
    # The decisions are the ledger's (worker/ledger.py, unit-tested); here only the Kafka calls around them.
    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        # Batches in flight are not finished here (the engine may be busy for a while); _collect drops
        # them and reads them again (see _drop_inflight).
        done = self.ledger.revoking(revoked)
        if done:
            try:
                self.consumer.commit(done)
                self.ledger.committed(done)
            except kafka_io.KafkaError as e:
                log.warning("commit on revoke failed: %s", e)
                self.ledger.revoked_commit_failed(done)
        self.ledger.revoke(revoked)
        log.info("revoked %s", sorted((tp.topic, tp.partition) for tp in revoked))

    def _on_lost(self, lost: list[TopicPartition]) -> None:
        self.state.drop_partitions(self.ledger.lose(lost))
        log.warning("partitions lost (evicted from the group): %s", sorted((tp.topic, tp.partition) for tp in lost))

    def _on_assigned(self, assigned: list[TopicPartition]) -> dict[TopicPartition, int]:
        start, gone, resumed = self.ledger.assign(assigned, self.state.partitions(), self._committed_or_none)
        self.state.drop_partitions(gone)
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))
        if resumed:
            where = sorted((t.topic, t.partition, o) for t, o in resumed.items())
            log.info("resuming after published offsets %s", where)
        return start

    def _committed_or_none(self, tps: list[TopicPartition]) -> dict[TopicPartition, int | None] | None:
        try:
            return self.consumer.committed(tps)  # type: ignore[no-any-return]
        except kafka_io.KafkaError as e:
            log.warning("committed offsets unavailable after a lost assignment (%s); re-reading from them", e)
            return None

    def _restore_pending(self) -> None:
        if not self.ledger.pending_restore:
            return
        parts = sorted(self.ledger.pending_restore)
        t0 = time.perf_counter()
        n = self._retry(
            lambda: restore(self.restore_consumer, self.s.topics.history_changelog, parts, self.state),
            "history restore",
        )
        self.ledger.pending_restore.clear()
        log.info(
            "restored %d changelog records for partitions %s in %.2fs (%d users)",
            n,
            parts,
            time.perf_counter() - t0,
            self.state.users(),
        )

    # -- loop ------------------------------------------------------------------------------------
    def run(self, max_seconds: float | None = None) -> None:
        """Serve until stop() (or max_seconds); raises OutageError after a long outage (worker/outage.py)
        and lets a bug's exception through."""
        self._loop_thread = threading.current_thread()
        if self.consumer is None:
            self.open()
        self._engine_pool = ThreadPoolExecutor(1, thread_name_prefix="recall-engine")
        if self.s.worker.overlap_encode:
            self._encode_pool = ThreadPoolExecutor(1, thread_name_prefix="recall-encode")
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        depth = self.s.worker.pipeline_depth
        try:
            while not self.stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
                while self._inflight and self._inflight[0].results_done():
                    self._finish(self._inflight.popleft())
                batch = self._collect()
                if self.ledger.assigned and not self.ledger.pending_restore:
                    self.ready.set()
                if batch:
                    self._inflight.append(self._prepare(batch))
                if self._inflight and (len(self._inflight) >= depth or not batch):
                    self._finish(self._inflight.popleft())  # waits for its engine call
                self._commit()
                self._update_lag()
            self._drain()  # a clean stop publishes and commits what is in flight
        except Stopped as e:
            log.info("stopped while retrying %s; the uncommitted batches will be redelivered", e)
        finally:
            self.stop_event.set()  # an engine call still retrying gives up at once
            self._engine_pool.shutdown(wait=True, cancel_futures=True)
            if self._encode_pool is not None:
                self._encode_pool.shutdown(wait=True, cancel_futures=True)
            self.close()

    def stop(self) -> None:
        self.stop_event.set()

    def swap_engine(self, engine: RecallEngine) -> RecallEngine:
        """Serve the next batches with ``engine`` (a hot rollout, worker/model_watch.py); batches already in
        flight finish with the engine they started with. Returns the previous engine."""
        old, self.engine = self.engine, engine
        log.info("recall worker: model %s -> %s from the next batch", old.model_version, engine.model_version)
        return old

    def owned_partitions(self) -> set[int]:
        """Clicks partitions this member owns with their history restored (for health checks and tests)."""
        clicks = {tp.partition for tp in self.ledger.assigned if tp.topic == self.s.topics.clicks}
        return clicks - self.ledger.pending_restore

    def _collect(self) -> list[Any]:
        """Records of one micro-batch: up to batch_max, or what arrived within batch_ms of the first."""
        w = self.s.worker
        batch: list[Any] = []
        first = 0.0
        gen = self.ledger.generation
        while not self.stop_event.is_set():
            if batch:
                left_ms = w.batch_ms - (time.monotonic() - first) * 1000
                if len(batch) >= w.batch_max:
                    break
                if left_ms > 0:
                    timeout = max(0, int(left_ms))
                elif self._wait_engine(0.05):
                    # The engine could not start it yet: keep gathering (batches grow with load). Waiting on
                    # the engine, not in 1 ms polls, leaves the GIL to the engine thread; records arriving
                    # meanwhile wait in the client's buffer and are taken below without waiting.
                    timeout = 0
                else:
                    break
            else:
                timeout = 0 if self._inflight else 100  # in flight: take what is buffered, else go finish it
            polled = self.consumer.poll(timeout_ms=timeout, max_records=w.batch_max - len(batch))
            if self.ledger.generation != gen:
                # A rebalance ran inside poll: records gathered before it may belong to partitions now
                # owned by another member. Drop them, and what this poll returned too (it may hold records
                # from before the revoke and from after the assignment, which are not told apart), and
                # rewind the partitions still ours to the lowest dropped offset.
                # The same goes for every batch still in flight (prepared before the rebalance).
                self._rewind(batch + [r for recs in polled.values() for r in recs], self._drop_inflight())
                batch, gen, first, polled = [], self.ledger.generation, 0.0, {}
            self._restore_pending()
            for recs in polled.values():
                batch.extend(recs)
            if not batch:
                return []
            if not first:
                first = time.monotonic()
        return batch

    def _wait_engine(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for an engine call in flight to end; False if none was running."""
        running = [b.results for b in self._inflight if b.results is not None and not b.results.done()]
        if not running:
            return False
        wait(running, timeout=timeout_s, return_when=FIRST_COMPLETED)
        return True

    def _rewind(self, records: list[Any], low: dict[TopicPartition, int] | None = None) -> None:
        """Seek the partitions that are ours back to the lowest of these records / offsets (Ledger.rewind)."""
        offsets = [(TopicPartition(r.topic, r.partition), r.offset) for r in records] + list((low or {}).items())
        for tp, off in self.ledger.rewind(offsets).items():
            self.consumer.seek(tp, off)

    def _drop_inflight(self) -> dict[TopicPartition, int]:
        """After a rebalance: drop every batch in flight unpublished; returns the lowest offset each held per
        partition (to read them again). Their engine calls run on and are ignored (Ledger.drop_inflight)."""
        dropped = sum(len(b.answers) for b in self._inflight)
        batches = list(self._inflight)
        self._inflight.clear()
        for b in batches:
            if b.results is not None:
                b.results.cancel()  # not started yet: never runs; running: its result is ignored
        if dropped:
            log.info("rebalance: %d requests in flight dropped unpublished; their records are read again", dropped)
        return self.ledger.drop_inflight(((b.first, b.changelog) for b in batches), self.state.partitions())

    def _prepare(self, batch: list[Any]) -> _Batch:
        """Decode and validate, apply clicks to the history in arrival order, submit the engine call."""
        m, t = self.metrics, self.s.topics
        t0 = time.perf_counter()
        b = _Batch(offsets={}, first={})
        queries: list[Query] = []
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            b.offsets[tp] = max(b.offsets.get(tp, 0), r.offset + 1)
            b.first[tp] = min(b.first.get(tp, r.offset), r.offset)
            if r.topic == t.clicks:
                c = decode_click(r, self.limits.max_record_bytes)
                if isinstance(c, DeadLetter):
                    b.dead.append(("clicks", c))
                    continue
                if self.state.apply(r.partition, r.offset, c) and m is not None:
                    m.clicks.inc()
                if self.s.worker.nearline and self._nearline_due(c.user_id):
                    queries.append(Query(c.user_id, self.s.worker.default_top_k, self.state.get(c.user_id)))
                    b.answers.append(_Pending(f"nearline:{c.user_id}:{r.partition}:{r.offset}", c.user_id, c.ts))
            else:
                q = decode_request(r, self.limits)
                if isinstance(q, DeadLetter):
                    b.dead.append(("recall_requests", q))
                elif isinstance(q, RequestError):
                    b.answers.append(q)
                else:
                    queries.append(self._query(q))
                    b.answers.append(_Pending(q.request_id, q.user_id, q.ts))
        b.changelog = self.state.drain_dirty()  # this batch's history changes, published with its results
        self._stage("decode", t0)
        # One engine per batch: a rollout (swap_engine) takes effect between batches, so a batch's results,
        # its tower, collection, item cache and model_version all come from one model version.
        engine = b.engine = self.engine
        if queries:
            if m is not None:
                m.recall_batch_size.observe(len(queries))
            assert self._engine_pool is not None
            if self._encode_pool is None:
                b.results = self._engine_pool.submit(self._retry, lambda: engine.recall(queries), "recall")
            else:
                # Two single-thread stages: this batch's tower runs while the previous batch waits on
                # Milvus (one search in flight at a time, in batch order). A failed encode surfaces in
                # the search stage's future, as a failed recall did.
                encoded = self._encode_pool.submit(self._retry, lambda: engine.encode(queries), "encode")
                b.results = self._engine_pool.submit(self._search_stage, engine, encoded)
        return b

    def _search_stage(self, engine: RecallEngine, encoded: Future[Encoded]) -> list[Recall]:
        enc = encoded.result()  # a failed encode ends this batch's future with its exception
        return self._retry(lambda: engine.search_merge(enc), "recall")

    def _finish(self, b: _Batch) -> None:
        """Wait for the batch's results, produce changelog + results + errors + dead letters, flush, and
        only then queue its offsets for commit (the engine call's exceptions surface here)."""
        m, t = self.metrics, self.s.topics
        while b.results is not None and not b.results.done():  # an engine call waiting out an outage:
            wait([b.results], timeout=1.0)  # keep consumer_lag current meanwhile (a stuck consumer shows)
            self._update_lag()
        results = b.results.result() if b.results is not None else []
        t1 = time.perf_counter()
        version = (b.engine or self.engine).model_version
        produced = now_ms()
        sends: list[tuple[str, bytes | None, bytes | None, int | None, list[tuple[str, bytes]] | None]] = []
        carry = self.ledger.take_changelog_carry()
        for p, key, value in carry + b.changelog:
            sends.append((t.history_changelog, key, value, p, None))
        answered: list[tuple[_Pending, Recall]] = []
        errors = 0
        result_of = iter(results)
        for a in b.answers:  # arrival order, so a user's answers keep the order of their requests
            if isinstance(a, RequestError):
                errors += 1
                err_key = user_key(a.user_id) if a.user_id is not None else None
                sends.append((t.recall_results, err_key, encode_error(a, version, produced), None, None))
                continue
            res = next(result_of)
            answered.append((a, res))
            value = encode_result(
                a.request_id, a.user_id, res.items, version, res.n_interests, res.source, a.request_ts, produced
            )
            sends.append((t.recall_results, user_key(a.user_id), value, None, None))
        for _, d in b.dead:
            d = d.fit(self.s.worker.dlq_max_bytes)
            sends.append((t.dlq, d.key, d.value, None, d.headers()))
        self._retry(lambda: self._send_all(sends), "publish")
        self._stage("publish", t1)
        self.ledger.finish_batch(b.offsets)
        self.batches += 1
        if m is not None:
            done = now_ms()
            for pend, res in answered:
                m.recall_latency.observe(max(0, done - pend.request_ts) / 1000)
                m.recall_requests.labels(outcome="ok" if res.source == "mind" else "cold_start").inc()
            if errors:
                m.recall_requests.labels(outcome="error").inc(errors)
            for role, d in b.dead:
                m.dead_letter(role, d.error_class)
                if role == "recall_requests":
                    m.recall_requests.labels(outcome="dead_letter").inc()

    def _drain(self) -> None:
        """Finish every batch in flight and commit now (on a clean stop)."""
        while self._inflight:
            self._finish(self._inflight.popleft())
        self._commit(force=True)

    def _commit(self, force: bool = False) -> None:
        """Commit the offsets of finished (flushed) batches, at most every worker.commit_interval_ms."""
        if not self.ledger.to_commit:
            return
        if not force and (time.monotonic() - self._last_commit) * 1000 < self.s.worker.commit_interval_ms:
            return
        t1 = time.perf_counter()
        offsets = self.ledger.due()
        self._last_commit = time.monotonic()
        try:
            self.consumer.commit(offsets)
            self.ledger.committed(offsets)
        except kafka_io.KafkaError as e:  # e.g. rebalanced meanwhile: the new owner redoes these (at-least-once)
            log.warning("offset commit failed; retried with the next commit where the partition is still ours: %s", e)
            self.ledger.commit_failed(offsets)
        self._stage("commit", t1)

    def _query(self, q: RecallRequest) -> Query:
        return Query(q.user_id, q.top_k, q.hist_item if q.hist_item is not None else self.state.get(q.user_id))

    def _nearline_due(self, user_id: int) -> bool:
        now = time.monotonic()
        gap = self.s.worker.nearline_min_interval_s
        last = self._nearline_last.get(user_id)
        if last is not None and now - last < gap:
            return False
        if len(self._nearline_last) > 100_000:  # bounded: forget users outside the window
            self._nearline_last = {u: ts for u, ts in self._nearline_last.items() if now - ts < gap}
        self._nearline_last[user_id] = now
        return True

    def _send_all(self, sends: list[tuple[str, bytes | None, bytes | None, int | None, Any]]) -> None:
        futures = [(s, self.producer.send(s[0], key=s[1], value=s[2], partition=s[3], headers=s[4])) for s in sends]
        self.producer.flush()
        failed = [n for n, (_, f) in enumerate(futures) if f.failed()]
        if failed:
            # retry from the first failure on, in order: re-sending only the failed ones could put a
            # user's older result or changelog entry after a newer one
            first = futures[failed[0]][1]
            for n in failed:  # a record the broker refuses for what it is goes on as a (cut) dead letter
                if futures[n][1].permanent():
                    sends[n] = self._undeliverable(sends[n], str(futures[n][1].exception))
            del sends[: failed[0]]
            raise kafka_io.KafkaError(f"{len(failed)} of {len(futures)} sends failed: {first.exception}")

    def _undeliverable(self, send: tuple[str, bytes | None, bytes | None, int | None, Any], why: str) -> tuple[
        str, bytes | None, bytes | None, int | None, Any
    ]:
        """The DLQ record that replaces a send the broker refused (too large, invalid): sent again as it is
        it would block the partition forever. A dead letter that was refused is cut to its prefix."""
        topic, key, value, _partition, headers = send
        if topic == self.s.topics.dlq:  # already a dead letter: keep its headers, cut key and value
            short_key, short_value, meta = cut(key, value)
            headers = list(headers or [])
            if not any(name == "truncated" for name, _ in headers):  # else they describe the original already
                headers += list(meta)
            return (topic, short_key, short_value, None, headers)
        d = DeadLetter(topic, -1, -1, key, value, "undeliverable", f"undeliverable: {why}")
        d = d.fit(self.s.worker.dlq_max_bytes)
        log.error("a %s record (%d bytes) was refused by the broker (%s); sent to the DLQ instead",
                  topic, len(value or b""), why)
        return (self.s.topics.dlq, d.key, d.value, None, d.headers())

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """Wait out a Kafka/Milvus outage with backoff (never drop); bugs and the outage limit raise."""
        w = self.s.worker
        wait = self._wait_lagging if threading.current_thread() is self._loop_thread else self.stop_event.wait
        return retry(fn, what, w.outage_limit_s, w.retry_backoff_s, wait)

    def _wait_lagging(self, delay_s: float) -> bool:
        """The loop thread's wait while a step retries: keeps consumer_lag current, so a stuck consumer
        shows (the lag grows while nothing is committed). True if stop() was called."""
        end = time.monotonic() + delay_s
        while not self.stop_event.wait(max(0.0, min(1.0, end - time.monotonic()))):
            self._update_lag()
            if time.monotonic() >= end:
                return False
        return True

    def _stage(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        if self.metrics is not None:
            self.metrics.recall_stage.labels(stage=name).observe(t1 - t0)
        return t1

    def _update_lag(self) -> None:
        if self.metrics is None or time.monotonic() - self._last_lag < 2.0:
            return
        self._last_lag = time.monotonic()
        # label by role, as the item writer and dead_letters_total do (bounded, the same on every deployment)
        role = {self.s.topics.clicks: "clicks", self.s.topics.recall_requests: "recall_requests"}
        lag: dict[str, int] = dict.fromkeys(role.values(), 0)
        positions = self.ledger.positions
        unknown = [tp for tp in self.ledger.assigned if tp not in positions]
        if unknown:
            # nothing committed by this member yet: measure from the group's committed offset (else the
            # partition's start), so a consumer stuck since its start shows its lag instead of 0
            try:
                committed = self.consumer.committed(unknown, timeout_s=2.0)
                starts = {tp: off for tp, off in committed.items() if off is not None}
                missing = [tp for tp in unknown if tp not in starts]
                if missing:
                    starts.update({tp: low for tp, (low, _high) in self.consumer.watermarks(missing, 2.0).items()})
                positions.update(starts)
            except kafka_io.KafkaError as e:
                log.debug("lag: committed offsets unavailable: %s", e)
        for tp in list(self.ledger.assigned):
            hw = self.consumer.highwater(tp)
            pos = positions.get(tp)
            if hw is not None and pos is not None and tp.topic in role:
                lag[role[tp.topic]] += max(0, hw - pos)
        for topic, n in lag.items():
            self.metrics.consumer_lag.labels(topic=topic).set(n)


def build_engine(
    settings: Settings,
    export_dir: str | Path,
    *,
    store: Any = None,
    items: Any = None,
    metrics: Any = None,
    load_items: bool = False,
    per_request: bool = False,
) -> tuple[RecallEngine, Any, Any]:
    """Tower + item lookup + Milvus search for one export (worker/engines.py); returns (engine, store, item
    follower or None)."""
    from worker.engines import engine_for_export
    from worker.recall import load_into_store

    follower = None
    if items is None:
        from worker.items import start_item_cache

        items, follower = start_item_cache(settings, str(export_dir), metrics)
    if store is None:
        from worker.store import ItemStore

        store = ItemStore(settings.milvus, metrics)
    if load_items:
        load_into_store(store, export_dir)  # it logs what it loaded, or why it did not
    engine = engine_for_export(settings, export_dir, store=store, items=items, metrics=metrics, per_request=per_request)
    coll = store.collection_name(engine.model_version)
    if metrics is not None:
        metrics.model_info.info({"model_version": engine.model_version})
    t0 = time.perf_counter()
    try:
        if coll not in store.list_collections():  # items still to come through the item topic (the demo)
            log.info("collection %s does not exist yet: no warm-up; the first batches pay the set-up", coll)
        else:
            engine.warm_up()
            log.info("engine warmed up in %.2fs", time.perf_counter() - t0)
    except Exception as e:  # e.g. Milvus not up yet: serving retries with backoff, nothing to do here
        log.warning("engine warm-up failed (%s); the first batches will pay the set-up", e)
    return engine, store, follower
