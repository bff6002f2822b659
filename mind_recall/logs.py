"""Logging set-up shared by every entry point."""

from __future__ import annotations

import logging
import os


def setup(level: str | None = None) -> None:
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
