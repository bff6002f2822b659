"""One outage policy for every role: which errors are waited out, how long, and how the wait ends.

Only transport failures of the two things a worker depends on are waited out: Kafka
(``kafka_io.KafkaError``, except ``PermanentKafkaError``) and the item store (``store.StoreError``, except
``SchemaMismatch``), plus ``TimeoutError`` / ``ConnectionError``. Each step that fails keeps an outage clock:
it backs off (``worker.retry_backoff_s``, doubling, capped at 10 s) and past ``worker.outage_limit_s``
raises ``OutageError``; the process then exits 3 for its orchestrator to restart it, nothing uncommitted
being lost (it is read again). Anything else (a Paddle error, a NotImplementedError, a KeyError) is a
bug: it is raised at once, so it crashes loudly instead of being reported as an outage minutes later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from worker.kafka_io import KafkaError, PermanentKafkaError
from worker.store import SchemaMismatch, StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OUTAGE = 3
BACKOFF_CAP_S = 10.0


class OutageError(RuntimeError):
    """Kafka or Milvus stayed unavailable past worker.outage_limit_s: exit 3 for the orchestrator to restart."""


class Stopped(Exception):
    """stop() was called while a step was waiting out an outage: leave without committing (at-least-once)."""


def transient(e: BaseException) -> bool:
    """True for the errors worth waiting out (see the module docstring); False for bugs and permanent errors."""
    if isinstance(e, (PermanentKafkaError, SchemaMismatch, OutageError)):
        return False
    return isinstance(e, (KafkaError, StoreError, TimeoutError, ConnectionError))


class Outage:
    """The outage clock and backoff of one step: started by its first failure, reset by a success."""

    def __init__(self, limit_s: float, backoff_s: float, what: str = "") -> None:
        self.limit_s, self.backoff_s, self.what = limit_s, backoff_s, what
        self.started: float | None = None
        self.attempt = 0

    @property
    def down_s(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def failed(self, e: BaseException, what: str | None = None) -> float:
        """Count one failure; returns the delay before the next try. Raises ``e`` itself when it is not
        transient (a bug is not an outage), and OutageError once the outage outlasts the limit."""
        if not transient(e):
            raise e
        what = what or self.what
        now = time.monotonic()
        if self.started is None:
            self.started = now
            log.warning("%s unavailable (%s: %s); retrying with backoff", what, type(e).__name__, e)
        down = now - self.started
        if down > self.limit_s:
            raise OutageError(
                f"{what} failing for {down:.0f}s > worker.outage_limit_s={self.limit_s:g}: {e}"
            ) from e
        delay = min(self.backoff_s * 2**self.attempt, max(self.backoff_s, BACKOFF_CAP_S), self.limit_s - down + 0.05)
        self.attempt += 1
        return max(0.0, delay)

    def ok(self, what: str | None = None) -> None:
        """The step succeeded: log how long the outage lasted (if there was one) and reset the clock."""
        if self.started is not None:
            log.info("%s is back after %.1fs", what or self.what, self.down_s)
        self.started, self.attempt = None, 0


def retry(fn: Callable[[], T], what: str, limit_s: float, backoff_s: float, wait: Callable[[float], bool]) -> T:
    """Call ``fn`` until it succeeds, waiting out transient errors. ``wait(delay)`` sleeps and returns True
    when the caller was asked to stop (then Stopped is raised: nothing was done, nothing committed)."""
    outage = Outage(limit_s, backoff_s, what)
    while True:
        try:
            result = fn()
        except Exception as e:
            delay = outage.failed(e)
            if wait(delay):
                raise Stopped(what) from e
            continue
        outage.ok()
        return result
