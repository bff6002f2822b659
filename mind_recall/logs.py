"""Logging set-up shared by every entry point."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import signal
import sys


def setup(level: str | None = None) -> None:
    _stack_dumps()
    logging.basicConfig(
        level=(level or os.environ.get("MIND_RECALL_LOG", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python and pymilvus are chatty at INFO; their warnings still show.
    for noisy in ("kafka", "pymilvus", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Milvus Lite's in-process gRPC server logs a traceback for every AllocTimestamp call that pymilvus
    # makes after writes ("Method not implemented"): harmless, and our own code logs real Milvus errors.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    # kafka-python warns whenever one of its I/O tasks ran > 100 ms, which on 2 busy cores is all the time.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def _stack_dumps() -> None:
    """``kill -USR1 <pid>`` writes every thread's Python stack to stderr, even while the main thread is
    stuck inside a C call (a client library waiting on the network), where no Python handler can run:
    how an operator, or a test whose worker did not stop on SIGTERM, finds out where it hangs."""
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None:  # Windows: neither SIGUSR1 nor faulthandler.register
        return
    # stderr without a file descriptor (captured by a test runner): no dumps, nothing else changes
    with contextlib.suppress(ValueError, OSError, io.UnsupportedOperation):
        faulthandler.register(usr1, file=sys.stderr, all_threads=True, chain=False)
