"""mind_recall.logs: SIGUSR1 dumps every thread's stack, even while the main thread waits in a C call."""

from __future__ import annotations

import os
import select
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
main = threading.get_ident()
def at_wait() -> bool:
    f = sys._current_frames()[main]
    while f.f_back is not None:  # the innermost frame is threading's; the module frame is the outermost
        f = f.f_back
    return f.f_lineno == 16
def tell() -> None:  # "ready" only once the main thread is inside the wait on line 16, not before
    while not at_wait():
        time.sleep(0.01)
    print("ready", flush=True)
threading.Thread(target=tell, daemon=True).start()
threading.Event().wait(30)  # the main thread blocks in C: no Python signal handler could run here
"""


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 on this platform")
def test_sigusr1_dumps_the_stacks_of_a_blocked_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err = ""
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        # Wait for the dump itself rather than a fixed time: on a loaded box the child may not run
        # for a while (a fixed 1 s sleep failed beside three training processes on 2 cores).
        deadline = time.monotonic() + 20
        while 'File "<string>", line 16' not in err and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 0.5)
            if ready:
                err += os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
        assert proc.poll() is None, "SIGUSR1 must not stop the process"
    finally:
        proc.kill()
        _, rest = proc.communicate(timeout=10)
    err += rest
    assert "Current thread" in err or "Thread 0x" in err, err
    assert 'File "<string>", line 16' in err, err
