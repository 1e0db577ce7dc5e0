"""Instances never outlive the launcher, even when it is killed outright."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting to be reaped counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_killing_the_launcher_kills_its_instances(tmp_path):
    launcher = subprocess.Popen([sys.executable, str(HERE / "orphan_launcher.py"), str(tmp_path)], cwd=HERE.parent.parent)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert time.monotonic() < deadline, "instances did not start"
        assert launcher.poll() is None
        time.sleep(0.1)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert all(alive(p) for p in pids)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [p for p in pids if alive(p)]
    for p in leftover:  # don't leave them behind even if the test fails
        os.kill(p, signal.SIGKILL)
    assert not leftover
