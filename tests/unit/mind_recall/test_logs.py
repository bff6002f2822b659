"""mind_recall.logs: SIGUSR1 dumps every thread's stack, even while the main thread waits in a C call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import sys, threading, time
from mind_recall import logs
logs.setup()
print("ready", flush=True)
threading.Event().wait(30)  # the main thread blocks in C: no Python signal handler could run here
"""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_sigusr1_dumps_the_stacks_of_a_blocked_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        assert proc.poll() is None, "SIGUSR1 must not stop the process"
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "Current thread" in err or "Thread 0x" in err, err
    assert 'File "<string>", line 6' in err, err
