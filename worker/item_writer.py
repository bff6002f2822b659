"""The item writer: [item-embeddings] -> Milvus, nothing lost, nothing stale.

One consumer group (``worker.item_writer_group``). The loop reads like its steps:
poll -> decode/validate -> batch -> write -> flush the DLQ producer -> commit.

* A batch closes at ``worker.item_batch_max`` events or ``worker.item_batch_ms`` after its first.
  Within a batch the last event per item wins (a delete included); each collection gets at most one
  delete and one upsert call.
* Offsets are committed only after Milvus acknowledged the batch and the DLQ producer flushed.
* Milvus errors: back off (``worker.retry_backoff_s``, doubling, capped), pause the partitions but
  keep polling (group membership), never commit; past ``worker.outage_limit_s`` exit with
  EXIT_OUTAGE: nothing of the failed batch was committed, a restart re-reads it.
* Kafka errors after the write (DLQ send, commit; the broker went away): the same pause/backoff and
  outage limit; only offsets of written records are committed, a refused commit (the group moved on)
  leaves them to be re-read. While idle, the consumer's poll just returns nothing during an outage.
  A commit that gets no answer counts as failed after ``kafka.request_timeout_ms`` + 5 s (kafka_io).
* Stop (SIGTERM) during an outage wait: leave at once without committing the batch (re-read on restart).
* Rebalance: records of revoked partitions are dropped from the uncommitted batch (the new owner
  re-reads them; upserts are idempotent).

Routing (which collection a record goes to): an upsert goes to the collection of its
``model_version`` if that collection exists (the live one or one being rolled out), else to the DLQ
as ``wrong_model_version``. A delete (or tombstone) removes the item from every item collection:
an item leaves the catalogue whatever the model. Bootstrap: when no item collection exists at all,
the first upsert's version gets a collection (dim ``hyper_parameters.embedding_dim``) and the alias.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mind_recall import logs
from mind_recall.item_wire import ItemEvent, decode_item_event, now_ms, reason_code
from mind_recall.settings import ConfigError, Settings, load
from mind_recall.wire import DeadLetter
from worker import kafka_io
from worker.metrics import Metrics
from worker.outage import EXIT_OUTAGE, Outage, OutageError, Stopped
from worker.store import ItemStore, LiveCollection, SchemaMismatch, StoreError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
DLQ_ROLE = "item_embeddings"


@dataclass
class Pending:
    """Records read but not yet committed, in read order."""

    items: list[tuple[Any, ItemEvent | DeadLetter]] = field(default_factory=list)
    started: float = 0.0  # monotonic time of the first record

    def add(self, record: Any, decoded: ItemEvent | DeadLetter) -> None:
        if not self.items:
            self.started = time.monotonic()
        self.items.append((record, decoded))

    def drop(self, partitions: set[Any]) -> int:
        """Forget the records of revoked partitions; returns how many."""
        keep = [
            (r, d) for r, d in self.items if kafka_io.TopicPartition(r.topic, r.partition) not in partitions
        ]
        dropped = len(self.items) - len(keep)
        self.items = keep
        return dropped

    def next_offsets(self) -> dict[Any, int]:
        out: dict[Any, int] = {}
        for r, _ in self.items:
            tp = kafka_io.TopicPartition(r.topic, r.partition)
            out[tp] = max(out.get(tp, 0), r.offset + 1)
        return out

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Plan:
    """What one batch does: deletes everywhere, then one upsert per collection, plus dead letters."""

    deletes: list[int] = field(default_factory=list)
    upserts: dict[str, list[ItemEvent]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    applied: list[ItemEvent] = field(default_factory=list)


def plan_batch(pending: Pending, routes: dict[str, LiveCollection]) -> Plan:
    """Validate against the collections and collapse to the last event per item (pure)."""
    plan = Plan()
    deleted: dict[int, ItemEvent] = {}
    upserts: dict[int, dict[str, ItemEvent]] = {}
    for record, ev in pending.items:
        if isinstance(ev, DeadLetter):
            plan.dead.append(ev)
            continue
        if ev.vector is None:
            deleted[ev.item_id] = ev
            upserts.pop(ev.item_id, None)  # an earlier upsert in this batch is superseded
            continue
        route = routes.get(ev.model_version)
        if route is None:
            known = ", ".join(sorted(routes)) or "none"
            plan.dead.append(
                DeadLetter.of(
                    record,
                    "wrong_model_version",
                    f"wrong_model_version: {ev.model_version!r} has no collection (known: {known})"[:500],
                )
            )
            continue
        if ev.vector.shape[0] != route.dim:
            plan.dead.append(
                DeadLetter.of(
                    record,
                    "wrong_dim",
                    f"wrong_dim: {ev.vector.shape[0]} values, {route.collection} needs {route.dim}",
                )
            )
            continue
        upserts.setdefault(ev.item_id, {})[ev.model_version] = ev
    plan.deletes = sorted(deleted)
    plan.applied.extend(deleted.values())
    for per_version in upserts.values():
        for version, ev in per_version.items():
            plan.upserts.setdefault(routes[version].collection, []).append(ev)
            plan.applied.append(ev)
    return plan


class ItemWriter:
    """Consumes [item-embeddings] in the writer group and applies it to Milvus."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        store: ItemStore | None = None,
        on_ack: Callable[[list[ItemEvent], int], None] | None = None,
        clients: kafka_io.Clients | None = None,
    ) -> None:
        self.s = settings
        self.clients = clients or kafka_io.Clients(settings)
        self.metrics = metrics or Metrics(namespace=settings.metrics.namespace)
        self.store = store or ItemStore(settings.milvus, self.metrics)
        self.on_ack = on_ack  # (applied events, ack epoch ms): the benchmark's freshness probe
        self.stop_event = threading.Event()
        self.routes: dict[str, LiveCollection] = {}
        self.pending = Pending()
        self.paused = False
        self.committed = 0  # records committed (a progress figure for tests and logs)
        self._consumer: Any = None
        self._last_lag = 0.0
        self._last_rows = 0.0
        self._last_probe = 0.0
        self._unreachable_since: float | None = None
        self._assigned_at = 0.0

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, idle_exit_s: float | None = None) -> int:
        """Run until stopped (or idle for ``idle_exit_s``); returns the process exit code."""
        s = self.s
        kafka_io.ensure_item_topic(s)
        consumer = self.clients.group_consumer(
            s.worker.item_writer_group, session_timeout_ms=10_000, heartbeat_interval_ms=2_000
        )
        self._consumer = consumer
        consumer.subscribe(
            [s.topics.item_embeddings], lambda _parts: None, self._on_revoked, after_assigned=self._on_assigned
        )
        producer = self.clients.producer()
        last_record = time.monotonic()
        try:
            self._startup_routes()
            while not self.stop_event.is_set():
                got = self._poll(consumer)  # poll + decode/validate + batch
                if got:
                    last_record = time.monotonic()
                if self._batch_ready():
                    self._flush(consumer, producer)  # write -> flush DLQ -> commit
                elif idle_exit_s is not None and self._idle_for(last_record) > idle_exit_s:
                    break
                self._housekeeping(consumer)
            if self.pending:
                self._flush(consumer, producer)
            return EXIT_OK
        except Stopped as e:
            log.warning("stopped while waiting out %s; the batch (%d records) is not committed and is read "
                        "again on restart (writes are idempotent)", e, len(self.pending))
            return EXIT_OK
        except OutageError as e:
            log.error("%s; exiting without committing the pending batch (%d records)", e, len(self.pending))
            return EXIT_OUTAGE
        except SchemaMismatch as e:
            log.error("%s", e)
            return EXIT_CONFIG
        finally:
            producer.close(timeout=5)
            consumer.close()  # never commits: offsets are committed only after Milvus acknowledged
            self.store.close()

    def _idle_for(self, last_record: float) -> float:
        """Seconds without records while owning partitions (waiting for an assignment is not idle)."""
        if self.pending or not self._consumer.assignment():
            return 0.0
        return time.monotonic() - max(last_record, self._assigned_at)

    def stop(self) -> None:
        self.stop_event.set()

    def _poll(self, consumer: Any) -> int:
        left_ms = self.s.worker.item_batch_ms
        if self.pending:
            left_ms = max(0.0, self.s.worker.item_batch_ms - (time.monotonic() - self.pending.started) * 1000)
        room = self.s.worker.item_batch_max - len(self.pending)
        polled = consumer.poll(timeout_ms=int(max(1.0, min(left_ms, 200.0))), max_records=max(1, room))
        n = 0
        limit = self.s.worker.max_record_bytes
        for records in polled.values():
            for r in records:
                self.pending.add(r, decode_item_event(r, max_record_bytes=limit))
                n += 1
        return n

    def _batch_ready(self) -> bool:
        if not self.pending:
            return False
        if len(self.pending) >= self.s.worker.item_batch_max:
            return True
        return (time.monotonic() - self.pending.started) * 1000 >= self.s.worker.item_batch_ms

    def _flush(self, consumer: Any, producer: Any) -> None:
        """write (retrying through outages) -> flush DLQ -> commit (retrying through Kafka outages)."""
        plan = self._write_with_retry(consumer)
        if plan is None:  # everything was revoked meanwhile
            return
        for dead in plan.dead:
            self.metrics.dead_letter(DLQ_ROLE, reason_code(dead))
        self._dead_letters_with_retry(consumer, producer, plan.dead)
        if self._commit_with_retry(consumer):
            self.committed += len(self.pending)
        self.pending = Pending()

    # -- Kafka outages (the broker went away between poll and commit) --------------------------------
    def _kafka_down(self, consumer: Any, outage: Outage, what: str, e: Exception) -> None:
        """Pause and wait one backoff step (worker/outage.py: OutageError past the limit, a bug at once;
        Stopped when stop() was called: a SIGTERM during an outage is not held up by it)."""
        self._pause(consumer)
        self._wait_polling(consumer, outage.failed(e, f"kafka ({what})"), keep=False)
        if self.stop_event.is_set():
            raise Stopped(f"kafka ({what})")

    def _dead_letters_with_retry(self, consumer: Any, producer: Any, dead: list[DeadLetter]) -> None:
        """Every dead letter acknowledged before the commit: a failed send is re-sent, never skipped. One the
        broker refuses for its size is cut to its prefix (DeadLetter.fit): a poison record never blocks."""
        outage = self._outage("kafka (dead letters)")
        limit = self.s.worker.dlq_max_bytes
        while dead:
            sent = [(d, kafka_io.send_dead_letter(producer, self.s.topics.dlq, d, limit)) for d in dead]
            producer.flush()  # bounded by the producer's delivery_timeout_ms
            failed = [(d, f) for d, f in sent if not f.succeeded()]
            dead = [d.fit(0) if f.permanent() else d for d, f in failed]
            transient = [f.exception for _, f in failed if not f.permanent()]
            if transient:
                self._kafka_down(consumer, outage, "dead letters", transient[0] or kafka_io.KafkaError("not delivered"))
        outage.ok()

    def _outage(self, what: str) -> Outage:
        return Outage(self.s.worker.outage_limit_s, self.s.worker.retry_backoff_s, what)

    def _commit_with_retry(self, consumer: Any) -> bool:
        """Commit what was written; False if the group moved on (the new owner re-reads: writes are idempotent).

        Only offsets of records already in Milvus are committed, and only for partitions still assigned.
        """
        written = self.pending.next_offsets()
        outage = self._outage("kafka (commit)")
        while True:
            owned = consumer.assignment()
            offsets = {tp: off for tp, off in written.items() if tp in owned}
            if not offsets:  # revoked (or lost: broker away past the session timeout): nothing of ours
                if outage.started is not None and self._unreachable_since is None:
                    self._unreachable_since = outage.started  # the outage goes on counting in _probe_broker
                self._resume(consumer)
                return False
            try:
                consumer.commit(offsets)  # a coordinator that is away fails it after ~10 s (_WAIT_COORD)
            except kafka_io.CommitFailedError as e:
                log.warning("commit refused, the group rebalanced (records are re-read, writes are idempotent): %s", e)
                self._resume(consumer)
                return False
            except kafka_io.KafkaError as e:
                self._kafka_down(consumer, outage, "commit", e)
                continue
            outage.ok()
            self._resume(consumer)
            return True

    # -- write with retry -------------------------------------------------------------------------
    def _write_with_retry(self, consumer: Any) -> Plan | None:
        """Write the batch to Milvus, waiting out an outage (worker/outage.py) with the partitions paused."""
        outage = self._outage("milvus")
        while True:
            if not self.pending:
                self._resume(consumer)
                return None
            try:
                plan = self._write(self.pending)
            except StoreError as e:
                self.routes = {}  # re-learn them when Milvus answers again (a collection may be gone)
                delay = outage.failed(e)  # SchemaMismatch and bugs raise here, OutageError past the limit
                self._pause(consumer)
                self._wait_polling(consumer, delay)
                if self.stop_event.is_set():
                    raise Stopped("milvus") from e
                continue
            outage.ok()
            self._resume(consumer)
            return plan

    def _wait_polling(self, consumer: Any, delay_s: float, keep: bool = True) -> None:
        """Sleep by polling the paused consumer: heartbeats and rebalances go on.

        ``keep=False`` (after the batch was written): records that still arrive are not part of it, so
        they are handed back (seek) instead of joining a batch whose offsets are about to be committed.
        """
        end = time.monotonic() + delay_s
        while True:
            self._update_lag(consumer)  # a writer stuck retrying shows in consumer_lag
            left = end - time.monotonic()
            if left <= 0 or self.stop_event.is_set():
                return
            polled = consumer.poll(timeout_ms=int(min(left, 0.5) * 1000) + 1)
            for tp, records in polled.items():  # only from partitions assigned since the pause
                if records and not keep:
                    consumer.seek(tp, min(r.offset for r in records))
                    continue
                for r in records:
                    self.pending.add(r, decode_item_event(r, max_record_bytes=self.s.worker.max_record_bytes))

    def _write(self, pending: Pending) -> Plan:
        """Resolve routes, then deletes and upserts; raises StoreError (nothing is half-committed)."""
        needs = {
            ev.model_version
            for _, ev in pending.items
            if isinstance(ev, ItemEvent) and ev.vector is not None and ev.model_version not in self.routes
        }
        if needs or not self.routes:
            self._refresh_routes(min(needs) if needs else None)
        plan = plan_batch(pending, self.routes)
        t_write = time.perf_counter()
        if plan.deletes:
            ids = np.asarray(plan.deletes, np.int64)
            for route in self.routes.values():
                self.store.delete(route.collection, ids)
        for collection, events in plan.upserts.items():
            self.store.upsert(
                collection,
                np.fromiter((e.item_id for e in events), np.int64, len(events)),
                np.stack([e.vector for e in events]),  # type: ignore[misc]
                np.fromiter((e.ts for e in events), np.int64, len(events)),
            )
        ack = now_ms()
        m = self.metrics
        n_up = sum(len(v) for v in plan.upserts.values())
        m.items_upserted.inc(n_up)
        m.items_deleted.inc(len(plan.deletes))
        m.item_batch_size.observe(len(pending))
        for ev in plan.applied:
            if ev.ts > 0:
                m.item_freshness.observe(max(0.0, (ack - ev.ts) / 1000.0))
        if self.on_ack is not None:
            self.on_ack(plan.applied, ack)
        log.debug(
            "batch: %d records, %d upserts, %d deletes, %d dead, %.1f ms",
            len(pending),
            n_up,
            len(plan.deletes),
            len(plan.dead),
            (time.perf_counter() - t_write) * 1000,
        )
        return plan

    # -- routes (model_version -> collection) ----------------------------------------------------
    def _startup_routes(self) -> None:
        """Learn the collections at start; a dim/metric conflict is a startup error, an outage is not."""
        try:
            self.routes = self.store.versions()
            log.info("item collections: %s", {v: r.collection for v, r in self.routes.items()} or "none yet")
        except SchemaMismatch:
            raise
        except StoreError as e:
            log.warning("milvus not reachable at start (will retry per batch): %s", e)

    def _refresh_routes(self, first_unknown: str | None) -> None:
        self.routes = self.store.versions()
        if (
            not self.routes and first_unknown is not None
        ):  # bootstrap: the very first collection, and the alias
            dim = self.s.hyper_parameters.embedding_dim
            name = self.store.ensure_collection(first_unknown, dim)
            self.store.set_alias(name)
            log.info("bootstrapped collection %s for model_version %s (dim %d)", name, first_unknown, dim)
            self.routes = self.store.versions()

    # -- partitions -------------------------------------------------------------------------------
    def _on_assigned(self, assigned: list[Any]) -> None:
        log.info("item writer assigned %d partitions", len(assigned))
        self._assigned_at = time.monotonic()
        if self.paused and assigned:
            self._consumer.pause(*assigned)

    def _on_revoked(self, revoked: list[Any]) -> None:
        dropped = self.pending.drop(set(revoked))
        if dropped:
            log.info(
                "rebalance: dropped %d uncommitted records of revoked partitions (re-read by the new owner)",
                dropped,
            )

    def _probe_broker(self, consumer: Any, now: float) -> None:
        """Without partitions, nothing fails when the broker is away: librdkafka declares the assignment
        lost after the session timeout (the uncommitted batch is dropped, to be re-read) and then waits.
        Ask for metadata instead, so an outage past worker.outage_limit_s still ends the process."""
        if consumer.partitions_for_topic(self.s.topics.item_embeddings, timeout_s=1.0) is not None:
            if self._unreachable_since is not None:
                log.info("kafka is back after %.1fs", now - self._unreachable_since)
            self._unreachable_since = None
            return
        if self._unreachable_since is None:
            self._unreachable_since = now
            log.warning("kafka unavailable: no partitions assigned and no metadata from the broker; waiting")
        down, limit = now - self._unreachable_since, self.s.worker.outage_limit_s
        if down > limit:
            raise OutageError(f"kafka (metadata) failing for {down:.0f}s > worker.outage_limit_s={limit:g}")

    def _update_lag(self, consumer: Any) -> None:
        """consumer_lag: records not yet read + read but not committed (so a stuck writer's lag grows)."""
        now = time.monotonic()
        if now - self._last_lag < 5.0:
            return
        self._last_lag = now
        parts = consumer.assignment()
        if parts:
            # the end offsets of the last fetch responses (no broker call, so no error while it is away):
            # asking the broker (ListOffsets) queued behind the long-poll fetches and stalled the loop
            # ~2 s every 5 s
            lag = 0
            for tp in parts:
                end, pos = consumer.highwater(tp), consumer.position(tp)
                if end is not None and pos is not None:
                    lag += max(0, end - pos)
            self.metrics.consumer_lag.labels(topic=DLQ_ROLE).set(lag + len(self.pending))

    def _pause(self, consumer: Any) -> None:
        if not self.paused:
            consumer.pause(*consumer.assignment())
            self.paused = True

    def _resume(self, consumer: Any) -> None:
        if self.paused:
            consumer.resume(*consumer.paused())
            self.paused = False

    def _housekeeping(self, consumer: Any) -> None:
        now = time.monotonic()
        if now - self._last_probe >= 1.0:
            self._last_probe = now
            if not consumer.assignment():
                self._probe_broker(consumer, now)
        self._update_lag(consumer)
        if now - self._last_rows >= 10.0 and not self.pending:
            self._last_rows = now
            try:
                self.routes = self.store.versions()  # sees collections a rollout created
                if self.store.live() is not None:
                    self.store.count()  # sets milvus_rows
            except StoreError:
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m worker.item_writer [-m CFG] [-o k=v ...]``: the same as ``mind-recall items write``."""
    from worker.metrics import serve

    p = argparse.ArgumentParser(prog="python -m worker.item_writer", description=__doc__.splitlines()[0])
    p.add_argument("-m", "--config", metavar="FILE")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--idle-exit-s", type=float, default=None, help="exit 0 after this long without records")
    args = p.parse_args(argv)
    logs.setup(None)
    try:
        settings = load(args.config, overrides=args.override)
    except ConfigError as e:
        print(f"item_writer: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return run_writer(settings, idle_exit_s=args.idle_exit_s, serve_metrics=serve)


def run_writer(settings: Settings, idle_exit_s: float | None = None, serve_metrics: Any = None) -> int:
    metrics = Metrics(namespace=settings.metrics.namespace)
    if serve_metrics is not None:
        serve_metrics(metrics, settings)
    writer = ItemWriter(settings, metrics)

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current batch", signum)
        writer.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    return writer.run(idle_exit_s=idle_exit_s)


if __name__ == "__main__":
    sys.exit(main())
