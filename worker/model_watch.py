"""Hot model rollout: `items rollout` announces the live model on a small compacted control topic
(``topics.model_control``, key ``live``); every worker follows it, prepares the announced version in the
background while serving the old one, and switches between two micro-batches once it is servable.

Why a control topic and not the alias alone: the alias names the collection, but a worker also needs the
new version's user tower and item vectors, i.e. where its export is. The announcement carries the export
directory and the row count the collection must hold. Kafka delivers it to every worker at once, with no
polling of Milvus, and a worker that starts later reads the last announcement.

Servable means:
- the export loads and is of the announced version;
- its item cache is loaded and caught up with the item topic;
- its collection exists and holds the announced rows (a Strong count);
- a warm-up search on it answers.
Anything else (a corrupt or missing export, a collection not filled) leaves the old version serving. The
error is logged, ``model_rollouts_total{outcome="failed"}`` is counted and ``model_rollout_failed`` is 1 until
a later announcement succeeds. The same announcement is not retried; a new one is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from worker import kafka_io
from worker.outage import Outage, OutageError, transient

log = logging.getLogger(__name__)

KEY = b"live"


@dataclass(frozen=True)
class Announcement:
    """The live model: its version, its export, the rows its collection holds, and the versions retired."""

    model_version: str
    export_dir: str
    rows: int
    ts: int  # epoch ms of the switch
    retired: tuple[str, ...] = field(default=())

    def encode(self) -> bytes:
        d = asdict(self)
        d["retired"] = list(self.retired)
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Announcement:
        """Raises ValueError on anything but a well-formed announcement."""
        try:
            d = json.loads(raw or b"")
            if not isinstance(d, dict):
                raise TypeError("not an object")
            ann = cls(str(d["model_version"]), str(d["export_dir"]), int(d["rows"]), int(d["ts"]),
                      tuple(str(v) for v in d.get("retired", ())))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"bad model announcement: {e}") from None
        if not ann.model_version or ann.rows < 0:
            raise ValueError(f"bad model announcement: {ann}")
        return ann


def ensure_control_topic(settings: Any) -> None:
    kafka_io.ensure_topics(settings, {settings.topics.model_control: 1},
                           configs={settings.topics.model_control: {"cleanup.policy": "compact"}})


def latest(settings: Any, timeout_s: float = 10.0) -> Announcement | None:
    """The last well-formed announcement on the control topic (None: none yet)."""
    ensure_control_topic(settings)
    reader = kafka_io.make_reader(settings)
    tp = kafka_io.TopicPartition(settings.topics.model_control, 0)
    try:
        (low, high), = reader.watermarks([tp], timeout_s).values()
        if high <= low:
            return None
        reader.assign_from({tp: None})
        last: Announcement | None = None
        deadline = time.monotonic() + timeout_s
        while not reader.read_up_to(tp, high) and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=200, max_records=1000).values():
                for r in records:
                    try:
                        last = Announcement.decode(r.value)
                    except ValueError as e:
                        log.warning("model control topic: offset %d skipped: %s", r.offset, e)
        return last
    finally:
        reader.close()


def announce(settings: Any, ann: Announcement) -> None:
    """Publish the live model (``items rollout`` calls this after the alias switch)."""
    ensure_control_topic(settings)
    producer = kafka_io.make_producer(settings)
    d = producer.send(settings.topics.model_control, key=KEY, value=ann.encode(), partition=0)
    producer.flush(30)
    if not d.succeeded():
        raise kafka_io.KafkaError(f"announcing model {ann.model_version} failed: {d.exception}")


class NotServable(RuntimeError):
    """The announced model is not servable (its export, its item cache or its collection): a failed
    rollout, not an outage; the old model goes on serving."""


class ModelWatcher:
    """Follows the control topic; ``prepare(ann)`` builds what serves that version (raising if it cannot),
    ``switch(prepared)`` swaps it in, ``current()`` is the version served now. ``fatal`` is set when the
    watcher itself stops (a bug, or Kafka away past worker.outage_limit_s): the App then exits."""

    def __init__(
        self,
        settings: Any,
        current: Callable[[], str],
        prepare: Callable[[Announcement], Any],
        switch: Callable[[Any], None],
        metrics: Any = None,
    ) -> None:
        self.s, self.current, self.prepare, self.switch, self.metrics = settings, current, prepare, switch, metrics
        self.failed: Announcement | None = None  # the last announcement that could not be served
        self._again: tuple[Announcement, float] | None = None  # prepare met an outage: try again at this time
        self.fatal: BaseException | None = None
        self.switched = threading.Event()  # set after each switch (tests)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watch", daemon=True)

    def start(self) -> ModelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        s = self.s
        outage = Outage(s.worker.outage_limit_s, s.worker.retry_backoff_s, "model watch (kafka)")
        tp = kafka_io.TopicPartition(s.topics.model_control, 0)
        offset: int | None = None  # next offset to read, kept across reconnects
        while not self._stop.is_set():
            reader = None
            try:
                ensure_control_topic(s)
                reader = kafka_io.make_reader(s, fetch_max_wait_ms=500)
                reader.assign_from({tp: offset})
                outage.ok()
                while not self._stop.is_set():
                    last = None
                    for records in reader.poll(timeout_ms=500, max_records=1000).values():
                        for r in records:
                            offset = r.offset + 1
                            try:
                                last = Announcement.decode(r.value)
                            except ValueError as e:
                                log.warning("model control topic: offset %d skipped: %s", r.offset, e)
                    if last is None and self._again is not None and time.monotonic() >= self._again[1]:
                        last = self._again[0]
                    if last is not None:
                        self._again = None
                        self._consider(last)
            except Exception as e:
                try:
                    delay = outage.failed(e)
                except BaseException as fatal:  # a bug, or Kafka away past the outage limit
                    self.fatal = fatal
                    log.error("model watch stopped: %s: %s", type(fatal).__name__, fatal, exc_info=fatal)
                    return
                self._stop.wait(delay)
            finally:
                if reader is not None:
                    reader.close()

    def _consider(self, ann: Announcement) -> None:
        """Switch to ``ann`` unless it is served already or failed before."""
        if ann.model_version == self.current():  # served already (this process started with it, or back to it)
            self.failed = None
            if self.metrics is not None:
                self.metrics.model_rollout_failed.set(0)
            return
        if ann == self.failed:
            return
        t0 = time.monotonic()
        log.info("model %s announced (export %s, %d rows): preparing it while %s serves",
                 ann.model_version, ann.export_dir, ann.rows, self.current())
        try:
            prepared = self.prepare(ann)
        except OutageError:
            raise
        except Exception as e:  # the export and the collection are input: whatever is wrong with them
            if transient(e):  # Milvus or Kafka away meanwhile: not the new model's fault, try it again
                self._again = (ann, time.monotonic() + max(1.0, self.s.worker.retry_backoff_s * 4))
                log.warning("model %s: preparing it met an outage (%s: %s); trying again",
                            ann.model_version, type(e).__name__, e)
                return
            self.failed = ann
            log.error("model %s cannot be served, still serving %s: %s: %s",
                      ann.model_version, self.current(), type(e).__name__, e)
            if self.metrics is not None:
                self.metrics.model_rollouts.labels(outcome="failed").inc()
                self.metrics.model_rollout_failed.set(1)
            return
        old = self.current()
        self.switch(prepared)
        self.failed = None
        log.info("model %s -> %s in %.1fs", old, ann.model_version, time.monotonic() - t0)
        if self.metrics is not None:
            self.metrics.model_rollouts.labels(outcome="ok").inc()
            self.metrics.model_rollout_failed.set(0)
            self.metrics.model_info.info({"model_version": ann.model_version})
        self.switched.set()
