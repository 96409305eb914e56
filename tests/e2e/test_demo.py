"""`feedrank demo` shows events flowing, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.kafka.procutil import free_port

from conftest import ROOT

pytestmark = pytest.mark.broker


def _children(pid: int) -> set[int]:
    """All descendants of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")), reason="the demo runs its own broker")
def test_demo_flows_and_ctrl_c_leaves_no_orphan(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Events flow and /score answers within the loop; Ctrl-C then stops broker, worker and simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDRANK_")}
    env.update(FEEDRANK_WEB_PORT=str(free_port()), FEEDRANK_DEMO_RATE="200",
               FEEDRANK_MODEL_DIR=str(tiny_model_dir / "models"),
               FEEDRANK_CALIBRATOR_DIR=str(tiny_model_dir / "calibrators"))
    log = tmp_path / "demo.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo"], cwd=tmp_path, env={
            **env, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        flowing = False
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text()
            events = [int(c.replace(",", "")) for c in re.findall(r"events\s+([\d,]+) \(", text)]
            scored = [int(c.replace(",", "")) for c in re.findall(r" req ([\d,]+) ", text)]
            if events and events[-1] > 0 and scored and scored[-1] > 0:
                flowing = True
                break
            time.sleep(1)
        assert flowing, log.read_text()[-3000:]
        started = _children(proc.pid)
        assert len(started) >= 4, "broker, worker, simulator and producer should be running"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        time.sleep(0.5)
        survivors = [p for p in started if _alive(p)]
        assert not survivors, f"orphans left behind: {survivors}"
        text = log.read_text()
        assert "demo stopped" in text and "final report" in text
    finally:
        if proc.poll() is None:
            proc.kill()
