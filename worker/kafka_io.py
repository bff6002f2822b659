"""Every Kafka client call goes through this module, so the client choice stays cheap to change. Its types
(``TopicPartition``, ``KafkaError``, ``CommitFailedError``, ``PermanentKafkaError``, ``Record``) are the
boundary's: no client library's types leak past it.

Every client is librdkafka's (confluent-kafka). Consumers never auto-commit: callers commit only after
their effect is durable. kafka-python is a test dependency only: the tests' independent reader
(tests/integration/worker/recall_testkit.py) checks what the workers wrote with another client.
Producers are librdkafka's (confluent-kafka) behind a small kafka-python-like ``send``/``flush``: with
kafka-python's pure-Python producer, publishing cost the recall worker and the load generator more CPU
than anything but the engine (docs/benchmarks.md). acks=all with idempotence, and Java's murmur2
partitioner, so a user's clicks and requests land on the same partition whichever client sent them.
Dead letters keep the original bytes and carry the reason in headers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic

from mind_recall.settings import Settings
from mind_recall.wire import DeadLetter

log = logging.getLogger(__name__)


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class KafkaError(Exception):
    """A Kafka call failed (broker away, timeout, refused): worth waiting out (worker/outage.py)."""


class CommitFailedError(KafkaError):
    """The commit was refused because the group moved on (a rebalance): the partition's new owner re-reads."""


class _Throttle(logging.Filter):
    """librdkafka logs every failed reconnect (several lines a second per client while a broker is down):
    pass each distinct message at most once per ``every_s``, as a warning."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        now = time.monotonic()
        if now - self._last.get(msg, -1e9) < self.every_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[msg] = now
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


rd_log = logging.getLogger(__name__ + ".librdkafka")
rd_log.addFilter(_Throttle())

__all__ = [
    "Clients",
    "CommitFailedError",
    "ConsumerRecordLike",
    "GroupConsumer",
    "KafkaError",
    "PermanentKafkaError",
    "Producer",
    "Record",
    "TopicPartition",
    "committed_offsets",
    "delete_topics",
    "ensure_topics",
    "list_topics",
    "make_group_consumer",
    "make_producer",
    "make_reader",
    "send_dead_letter",
]



class PermanentKafkaError(KafkaError):
    """The broker refused a record for what it is (too large, invalid): sending it again cannot succeed,
    so it is not an outage (worker/outage.py); the caller dead-letters or truncates it instead."""


# librdkafka error codes that no retry can fix (the record itself is refused)
_PERMANENT_CODES = frozenset(
    {
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
        confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE,
        confluent_kafka.KafkaError.INVALID_RECORD,
        confluent_kafka.KafkaError.INVALID_MSG,
        confluent_kafka.KafkaError.INVALID_MSG_SIZE,
    }
)


def _error_code(err: Any) -> int | None:
    """The librdkafka error code of a KafkaError, or of the one a KafkaException wraps (None if neither)."""
    if isinstance(err, confluent_kafka.KafkaException):
        err = err.args[0] if err.args else None
    return err.code() if isinstance(err, confluent_kafka.KafkaError) else None


def _delivery_error(err: Any) -> KafkaError:
    code = _error_code(err)
    cls = PermanentKafkaError if code in _PERMANENT_CODES else KafkaError
    return cls(f"delivery failed: {err}")


def rd_config(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by every client, in librdkafka's names (secrets included)."""
    k = settings.kafka
    cfg: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "client.id": k.client_id,
        "security.protocol": k.security_protocol.lower(),
        "socket.timeout.ms": k.request_timeout_ms,
        "reconnect.backoff.max.ms": 2000,
        # After a broker restart librdkafka can keep a partition whose leader is "not found in cache"
        # (metadata taken while the broker was still starting); nothing then fails, so only the periodic
        # refresh repairs it: 10 s instead of the 5-min default (docs/design.md, known issues).
        "topic.metadata.refresh.interval.ms": 10_000,
    }
    if k.security_protocol.startswith("SASL"):
        cfg.update({"sasl.mechanism": k.sasl_mechanism, "sasl.username": k.sasl_username,
                    "sasl.password": k.sasl_password})
    if k.security_protocol.endswith("SSL") and k.ssl_cafile:
        cfg["ssl.ca.location"] = k.ssl_cafile
    return cfg


class Delivery:
    """The outcome of one ``Producer.send`` (set by ``flush``): the part of kafka-python's future we use."""

    __slots__ = ("_done", "_err")

    def __init__(self) -> None:
        self._err: Exception | None = None
        self._done = False

    def _report(self, err: Any, _msg: Any) -> None:
        self._done = True
        if err is not None:
            self._err = _delivery_error(err)

    @property
    def exception(self) -> Exception | None:
        return self._err if self._done else None

    def succeeded(self) -> bool:
        return self._done and self._err is None

    def failed(self) -> bool:
        return self._done and self._err is not None

    def permanent(self) -> bool:
        """Failed for what the record is (too large, invalid): a retry cannot succeed."""
        return isinstance(self.exception, PermanentKafkaError)


class Producer:
    """librdkafka producer with the kafka-python calls this project uses: send, flush, close."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._p = confluent_kafka.Producer(config, logger=rd_log)

    def send(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Delivery:
        d = Delivery()
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._p.produce(topic, value, key, headers=headers, on_delivery=d._report, **extra)  # type: ignore[arg-type]
                break
            except BufferError:  # local queue full (broker slow or down): serve reports, wait for room
                self._p.poll(0.05)
            except confluent_kafka.KafkaException as e:  # refused before sending (e.g. over message.max.bytes)
                d._report(e.args[0] if e.args else e, None)
                break
        self._p.poll(0)  # serve delivery reports of earlier sends
        return d

    def warm_up(self, topic: str, timeout: float = 10.0) -> None:
        """Fetch ``topic``'s metadata (and so connect) now: a new producer's first sends otherwise wait
        for both, 5-50 ms on an idle machine and ~200 ms under load (docs/benchmarks.md)."""
        try:
            self._p.list_topics(topic, timeout=timeout)
        except confluent_kafka.KafkaException as e:
            raise KafkaError(f"metadata for {topic} not available: {e}") from e

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every send is delivered or failed (bounded by delivery_timeout_ms), or ``timeout`` s."""
        left = self._p.flush(-1 if timeout is None else timeout)
        if left:
            raise KafkaError(f"{left} records not delivered within {timeout}s")

    def close(self, timeout: float | None = None) -> None:
        with contextlib.suppress(KafkaError):
            self.flush(timeout if timeout is not None else 30.0)


def make_producer(
    settings: Settings, *, linger_ms: int = 5, delivery_timeout_ms: int = 120_000, **overrides: Any
) -> Producer:
    """acks=all + idempotence (per-partition order kept across retries); ``overrides`` in librdkafka names."""
    cfg = rd_config(settings)
    cfg.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "message.timeout.ms": delivery_timeout_ms,
            "message.max.bytes": max(1_048_576, settings.worker.max_record_bytes * 2),
            "partitioner": "murmur2_random",  # the Java client's: same key -> same partition as kafka-python
            "socket.nagle.disable": True,
        }
    )
    cfg.update(overrides)
    return Producer(cfg)


class Record:
    """A consumed record with the attributes of kafka-python's ConsumerRecord that the workers read."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, m: Any) -> None:
        self.topic: str = m.topic()
        self.partition: int = m.partition()
        self.offset: int = m.offset()
        self.key: bytes | None = m.key()
        self.value: bytes | None = m.value()
        self.timestamp: int = m.timestamp()[1]
        self.headers: list[tuple[str, bytes]] = m.headers() or []


# A partition leader that is moving or not yet elected (just after a topic is created, or a broker
# restart): the same request succeeds a moment later.
_LEADER_MOVING = frozenset({
    confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION, confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
})


def _rd_tp(tp: TopicPartition, offset: int | None = None) -> Any:
    return confluent_kafka.TopicPartition(tp.topic, tp.partition) if offset is None else \
        confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)


def _tps(parts: list[Any]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in parts]


class GroupConsumer:
    """librdkafka group consumer behind the kafka-python calls the recall worker and the item writer
    make (poll, seek, commit, pause/resume, highwater, position, partitions_for_topic, close).

    Why not kafka-python here: at 500 req/s its IO thread and poll took ~50 % of the recall
    worker's CPU samples and raised an internal timeout exception per poll (garbage for the collector);
    librdkafka fetches in C threads ahead of ``poll``. Rebalance callbacks run inside ``poll`` on the
    caller's thread (blocking calls such as commit are allowed there).

    ``commit`` and ``close`` have a deadline (``call_timeout_s``): librdkafka's synchronous commit waits
    for its reply without one, and after a broker restart that reply was once never delivered, which
    froze the item writer for good (docs/design.md, known issues)."""

    def __init__(self, config: dict[str, Any], call_timeout_s: float = 35.0) -> None:
        self._c = confluent_kafka.Consumer(config, logger=rd_log)
        self.call_timeout_s = call_timeout_s
        self.timed_out_calls = 0  # commits / closes given up on (their helper threads may still be waiting)
        self._paused: set[TopicPartition] = set()  # librdkafka does not say which are paused
        self._eof: dict[TopicPartition, int] = {}  # end-of-partition offsets seen (readers only)

    def subscribe(
        self,
        topics: Iterable[str],
        on_assigned: Callable[[list[TopicPartition]], Mapping[TopicPartition, int] | None],
        on_revoked: Callable[[list[TopicPartition]], None],
        on_lost: Callable[[list[TopicPartition]], None] | None = None,
        after_assigned: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        """``on_assigned`` may return start offsets for some of the partitions (the others start at the
        committed offset). They are set with the assignment itself: a seek right after it can be undone
        by librdkafka's own committed-offset lookup finishing later. ``after_assigned`` runs once the
        partitions are assigned (e.g. to pause them: a partition can be paused only once assigned)."""

        def assign(c: Any, parts: list[Any]) -> None:
            start = on_assigned(_tps(parts))
            if start or after_assigned is not None:
                c.assign([confluent_kafka.TopicPartition(p.topic, p.partition, (start or {}).get(
                    TopicPartition(p.topic, p.partition), confluent_kafka.OFFSET_STORED)) for p in parts])
            if after_assigned is not None:
                after_assigned(_tps(parts))

        def unassigned(parts: list[Any], hook: Callable[[list[TopicPartition]], None]) -> None:
            self._paused -= set(_tps(parts))
            hook(_tps(parts))

        self._c.subscribe(
            list(topics),
            on_assign=assign,
            on_revoke=lambda _c, parts: unassigned(parts, on_revoked),
            on_lost=lambda _c, parts: unassigned(parts, on_lost or on_revoked),
        )

    def assignment(self) -> set[TopicPartition]:
        return set(_tps(self._c.assignment()))

    def pause(self, *tps: TopicPartition) -> None:
        """Stop fetching these partitions; records of theirs already buffered are not returned."""
        if tps:
            self._c.pause([_rd_tp(tp) for tp in tps])
            self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        if tps:
            self._c.resume([_rd_tp(tp) for tp in tps])
            self._paused -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return self._paused & self.assignment()

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset this consumer will read from ``tp`` (None before its first fetch)."""
        try:
            got = self._c.position([_rd_tp(tp)])
        except confluent_kafka.KafkaException:  # e.g. no longer assigned
            return None
        return got[0].offset if got and got[0].offset >= 0 else None

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        """Records buffered now, or the first to arrive within ``timeout_ms``, with what came with it."""
        out: dict[TopicPartition, list[Record]] = {}
        try:
            # consume(n, timeout) waits for n records or the timeout, whichever comes last: not for a batch
            # that must close on time. Wait for the first one, then take what is already buffered.
            first = self._c.poll(timeout_ms / 1000)
            msgs = [] if first is None else [first]
            if first is not None and max_records > 1:
                msgs += self._c.consume(num_messages=max_records - 1, timeout=0)
        except confluent_kafka.KafkaException as e:
            raise KafkaError(f"poll failed: {e}") from e
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == confluent_kafka.KafkaError._PARTITION_EOF:  # enable.partition.eof (readers)
                    self._eof[TopicPartition(str(m.topic()), int(m.partition() or 0))] = m.offset() or 0
                    continue
                if err.fatal():
                    raise KafkaError(f"consumer error: {err}")
                rd_log.warning("consumer: %s", err)  # e.g. a broker that went away: librdkafka retries (throttled)
                continue
            r = Record(m)
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Next record of ``tp`` to return is ``offset``. A partition assigned a moment ago has no fetch
        position yet and librdkafka refuses the seek: it is then re-assigned with its offset (the other
        partitions keep their positions, or the committed offset where they have none yet)."""
        try:
            self._c.seek(_rd_tp(tp, offset))
            return
        except confluent_kafka.KafkaException as e:
            log.info("seek %s:%d -> %d: %s; re-assigning with the offset", tp.topic, tp.partition, offset, e)
        current = self._c.assignment()
        positions = {(p.topic, p.partition): p.offset for p in self._c.position(current)}
        positions[(tp.topic, tp.partition)] = offset
        parts = []
        for p in current:
            off = positions.get((p.topic, p.partition), -1)
            parts.append(confluent_kafka.TopicPartition(p.topic, p.partition, off if off >= 0 else
                                                        confluent_kafka.OFFSET_STORED))
        self._c.assign(parts)

    def assign_from(self, starts: Mapping[TopicPartition, int | None]) -> None:
        """Read exactly these partitions, outside any group: each from its offset (None: the beginning)."""
        self._eof.clear()
        self._c.assign([
            _rd_tp(tp, confluent_kafka.OFFSET_BEGINNING if off is None else off) for tp, off in starts.items()
        ])

    def unassign(self) -> None:
        self._eof.clear()
        self._c.unassign()

    def watermarks(
        self, tps: Iterable[TopicPartition], timeout_s: float = 10.0
    ) -> dict[TopicPartition, tuple[int, int]]:
        """(first, end) offset per partition, asked of the broker. Ask once, at the start of a read, never
        inside a poll loop: the request queues behind the long-poll fetches (it stalled a loop ~2 s)."""
        out = {}
        deadline = time.monotonic() + timeout_s
        for tp in tps:
            while True:
                try:
                    low, high = self._c.get_watermark_offsets(
                        _rd_tp(tp), timeout=max(0.1, deadline - time.monotonic()))
                    break
                except confluent_kafka.KafkaException as e:
                    if _error_code(e) not in _LEADER_MOVING or time.monotonic() >= deadline:
                        raise KafkaError(f"end offsets of {tp.topic}:{tp.partition}: {e}") from e
                    time.sleep(0.1)
            out[tp] = (int(low), int(high))
        return out

    def read_up_to(self, tp: TopicPartition, offset: int) -> bool:
        """True once every record of ``tp`` before ``offset`` has been returned by ``poll``: the position
        got there, or (a reader with enable.partition.eof) the end of the partition was seen at or past
        it, which also covers offsets that compaction left without a record."""
        pos = self.position(tp)
        return (pos is not None and pos >= offset) or self._eof.get(tp, -1) >= offset

    def assign_at_end(self, tps: Iterable[TopicPartition], timeout_s: float = 10.0) -> None:
        """Read these partitions (no group) from their current end: records produced from now on."""
        self.assign_from({tp: high for tp, (_low, high) in self.watermarks(tps, timeout_s).items()})

    # The group moved on (as kafka-python's CommitFailedError); anything else (broker down, timeout) is
    # a KafkaError worth retrying.
    _MOVED_ON = frozenset(
        {
            confluent_kafka.KafkaError.ILLEGAL_GENERATION,
            confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID,
            confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS,
            confluent_kafka.KafkaError._ASSIGNMENT_LOST,
            confluent_kafka.KafkaError._UNKNOWN_PARTITION,
        }
    )

    def _bounded(self, what: str, call: Callable[[], Any]) -> None:
        """Run a blocking librdkafka call on a helper thread (it releases the GIL) and wait at most
        ``call_timeout_s``; past it raise KafkaError. The caller's thread stays responsive: it logs,
        handles signals and applies its outage limit. A call given up on may still finish later; that is
        harmless for what goes through here (a commit is idempotent, a close is the end)."""
        done = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as e:  # handed to the caller's thread
                failed.append(e)
            finally:
                done.set()

        threading.Thread(target=run, name=f"kafka-{what}", daemon=True).start()
        if not done.wait(self.call_timeout_s):
            self.timed_out_calls += 1
            raise KafkaError(f"{what} did not return within {self.call_timeout_s:g}s (librdkafka gave no answer)")
        if failed:
            raise failed[0]

    def commit(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        """Synchronous commit with a deadline; a timeout is a KafkaError (retried like any Kafka outage)."""
        offsets = [_rd_tp(tp, off) for tp, off in next_offsets.items()]
        try:
            self._bounded("commit", lambda: self._c.commit(offsets=offsets, asynchronous=False))
        except confluent_kafka.KafkaException as e:
            if _error_code(e) in self._MOVED_ON:
                raise CommitFailedError(f"commit refused, the group moved on: {e}") from e
            raise KafkaError(f"commit failed: {e}") from e

    def committed(self, tps: Iterable[TopicPartition], timeout_s: float = 10.0) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition (None: nothing committed yet)."""
        try:
            got = self._c.committed([_rd_tp(tp) for tp in tps], timeout=timeout_s)
        except confluent_kafka.KafkaException as e:
            raise KafkaError(f"committed offsets: {e}") from e
        return {TopicPartition(p.topic, p.partition): (p.offset if p.offset >= 0 else None) for p in got}

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as of the last fetch (no broker round trip)."""
        try:
            _low, high = self._c.get_watermark_offsets(_rd_tp(tp), cached=True)
        except confluent_kafka.KafkaException:
            return None
        return high if high is not None and high >= 0 else None

    def partitions_for_topic(self, topic: str, timeout_s: float = 10.0) -> set[int] | None:
        try:
            md = self._c.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except confluent_kafka.KafkaException:
            return None
        return None if md is None or md.error is not None else set(md.partitions)

    def close(self) -> None:
        """Leave the group at once (no session-timeout wait for the others). librdkafka's close waits for
        outstanding commits, so a commit that never answered would hold it too: bounded like commit; past
        the deadline the process goes on shutting down and the broker drops the member after its
        session timeout."""
        try:
            self._bounded("close", self._c.close)
        except KafkaError as e:
            log.warning("consumer close: %s; leaving without it (the group drops this member after "
                        "session.timeout.ms)", e)


def make_group_consumer(
    settings: Settings,
    group_id: str,
    *,
    fetch_max_wait_ms: int = 500,
    session_timeout_ms: int = 10_000,
    heartbeat_interval_ms: int = 3_000,
    max_poll_interval_ms: int = 300_000,
    extra: Mapping[str, Any] | None = None,
) -> GroupConsumer:
    """A manual-commit group consumer (librdkafka); offsets are committed only by the caller."""
    cfg = rd_config(settings)
    cfg.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            "max.poll.interval.ms": max_poll_interval_ms,
            "max.partition.fetch.bytes": max(1_048_576, settings.worker.max_record_bytes * 2),
            "socket.nagle.disable": True,
        }
    )
    cfg.update(extra or {})
    # one request's timeout and a little: a commit whose coordinator is away fails by itself later
    # (~45 s measured), and that is a Kafka outage step either way
    return GroupConsumer(cfg, call_timeout_s=settings.kafka.request_timeout_ms / 1000 + 5)


def make_reader(settings: Settings, fetch_max_wait_ms: int = 100) -> GroupConsumer:
    """A librdkafka consumer for ``assign``-style reading (history restore, item follower, the load
    generator, tools): it joins no group and commits nothing (librdkafka wants a group id all the same).
    It notes where each partition ends (``read_up_to``)."""
    return make_group_consumer(
        settings, f"{settings.kafka.client_id}-reader", fetch_max_wait_ms=fetch_max_wait_ms,
        extra={"enable.partition.eof": True},
    )


@dataclass(frozen=True)
class Clients:
    """How a role builds its Kafka clients. The workers take one (``clients=``) instead of calling the
    ``make_*`` functions, so a test or another client library can hand them something else."""

    settings: Settings

    def producer(self, **overrides: Any) -> Producer:
        return make_producer(self.settings, **overrides)

    def group_consumer(self, group_id: str, **kwargs: Any) -> GroupConsumer:
        return make_group_consumer(self.settings, group_id, **kwargs)

    def reader(self, fetch_max_wait_ms: int = 100) -> GroupConsumer:
        return make_reader(self.settings, fetch_max_wait_ms)


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(rd_config(settings), logger=rd_log)


def list_topics(settings: Settings, timeout_s: float = 10.0) -> set[str]:
    try:
        return set(_admin(settings).list_topics(timeout=timeout_s).topics)
    except confluent_kafka.KafkaException as e:
        raise KafkaError(f"listing topics: {e}") from e


def ensure_topics(
    settings: Settings,
    topics: Mapping[str, int],
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create missing topics (name -> partitions); existing ones are left as they are."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
        new = [
            NewTopic(name, num_partitions=n, replication_factor=1, config=dict((configs or {}).get(name, {})))
            for name, n in topics.items()
            if name not in existing
        ]
        for name, future in (admin.create_topics(new, operation_timeout=timeout_s) if new else {}).items():
            try:
                future.result(timeout=timeout_s)
            except confluent_kafka.KafkaException as e:
                if _error_code(e) != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaError(f"creating topic {name}: {e}") from e
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # metadata and leader election propagate asynchronously
            meta = admin.list_topics(timeout=timeout_s).topics
            missing = {name for name in topics if name not in meta
                       or any(p.leader < 0 for p in meta[name].partitions.values())}
            if not missing:
                return
            time.sleep(0.1)
        raise KafkaError(f"topics not visible (or without a leader) after {timeout_s}s: {sorted(missing)}")
    except confluent_kafka.KafkaException as e:
        raise KafkaError(f"ensure topics: {e}") from e


def delete_topics(settings: Settings, names: Iterable[str], timeout_s: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    admin = _admin(settings)  # held until the futures resolve: a collected client fails them (_DESTROY)
    for name, future in admin.delete_topics(names, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except confluent_kafka.KafkaException as e:
            raise KafkaError(f"deleting topic {name}: {e}") from e


def committed_offsets(settings: Settings, group_id: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (partitions without one are left out). Asked
    by a consumer with the group's id that never joins the group."""
    c = make_group_consumer(settings, group_id)
    try:
        parts = c.partitions_for_topic(topic, timeout_s)
        if parts is None:
            raise KafkaError(f"no metadata for {topic}")
        got = c.committed([TopicPartition(topic, p) for p in sorted(parts)], timeout_s)
        return {tp.partition: off for tp, off in got.items() if off is not None}
    finally:
        c.close()


class ConsumerRecordLike:  # documentation only: the attributes the workers read from kafka records
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]]


def send_dead_letter(producer: Producer, dlq_topic: str, dead: DeadLetter, max_bytes: int) -> Delivery:
    """Queue one dead letter (cut to ``max_bytes``, see DeadLetter.fit); the caller flushes before
    committing the source offset."""
    dead = dead.fit(max_bytes)
    return producer.send(dlq_topic, key=dead.key, value=dead.value, headers=dead.headers())


# -- helpers for the item path (worker/item_writer.py, worker/items.py) ------------------------
def ensure_item_topic(settings: Settings) -> None:
    """[item-embeddings] compacted (key = item id: the topic is the current catalogue) + the DLQ."""
    t = settings.topics
    ensure_topics(
        settings, {t.item_embeddings: t.partitions, t.dlq: 1},
        configs={t.item_embeddings: {"cleanup.policy": "compact"}},
    )


def topic_partitions(consumer: GroupConsumer, topic: str, timeout_s: float = 30.0) -> list[TopicPartition]:
    """Every partition of ``topic``, waiting for its metadata (a topic created a moment ago): for followers."""
    deadline = time.monotonic() + timeout_s
    parts = consumer.partitions_for_topic(topic)
    while not parts and time.monotonic() < deadline:
        time.sleep(0.1)
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise KafkaError(f"topic {topic} has no partitions after {timeout_s}s")
    return [TopicPartition(topic, p) for p in sorted(parts)]
