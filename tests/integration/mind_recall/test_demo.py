"""Smoke test of the README's first command, reduced: the demo runs end to end on the real local
broker and Milvus Lite, recalls items for real users and exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_reduced_demo_end_to_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "cli", "demo", "--workdir", str(tmp_path / "demo"),
        "--users", "800", "--items", "400", "--epochs", "1", "--requests", "60", "--rate", "60",
        "-o", f"kafka.bootstrap_servers={kafka_bootstrap}", "-o", "runner.progress=false",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    # every shown user got a MIND result with ten scored items
    shown = re.findall(r"-> mind via (\d) interests: ((?:\d+:-?[\d.]+(?:, )?)+)", out)
    assert len(shown) == 3, out
    assert all(len(items.split(", ")) == 10 for _, items in shown)
    assert "400 / 400 item vectors in Milvus" in out
    assert re.search(r"item \d+ visible after [\d.]+ ms", out), out
    assert re.search(r'"received": 60, "errors": 0', out), out
    assert "HTTP POST /rec/recall -> 200" in out
