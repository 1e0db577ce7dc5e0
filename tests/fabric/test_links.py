"""Each link kind behaves as specified: shaped rate, delay-line round trip and integrity, reachability."""

import json
import socket
import subprocess
import sys
import threading

import pytest

from qroute.fabric.netns import child_env
from qroute.fabric.probe import HEADER, measure_rate, measure_rtt, read_port, recv_exact, start_server, stop_server
from tests.fabric.conftest import DELAY_US, SHAPED_MBIT, requires_netns

pytestmark = [requires_netns, pytest.mark.netns]

MBIT = 1e6 / 8  # B/s

REACH = """
import json, socket, sys
from qroute.fabric import enter_namespace
from qroute.fabric.probe import HEADER
ns, targets = sys.argv[1], json.loads(sys.argv[2])
enter_namespace(ns)
result = {}
for name, (address, port) in targets.items():
    try:
        with socket.create_connection((address, port), timeout=5) as s:
            s.sendall(HEADER.pack(b"p", 1, 1) + b"x")
            result[name] = s.recv(1) == b"x"
    except OSError as e:
        result[name] = e.__class__.__name__
print(json.dumps(result))
"""


def test_shaped_veth_runs_at_its_rate_and_plain_veth_much_faster(fabric):
    shaped = measure_rate(fabric, "shaped", nbytes=4 << 20, repeats=3)
    fast = measure_rate(fabric, "fast", nbytes=16 << 20, repeats=3)
    assert 0.8 * SHAPED_MBIT * MBIT < shaped < 1.2 * SHAPED_MBIT * MBIT, shaped / MBIT
    assert fast > 5 * shaped, (fast / MBIT, shaped / MBIT)


def test_delay_line_adds_its_delay_each_way(fabric):
    far = measure_rtt(fabric, "far", pings=100)
    fast = measure_rtt(fabric, "fast", pings=100)
    assert far >= 2 * DELAY_US * 1e-6, far
    assert far > fast + 1.5 * DELAY_US * 1e-6, (far, fast)


def test_delay_line_carries_bulk_intact(fabric):
    rate = measure_rate(fabric, "far", nbytes=8 << 20, repeats=2)  # raises if the SHA-256 differs
    assert rate > 0


def echo_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        recv_exact(conn, HEADER.size)
        conn.sendall(recv_exact(conn, 1))


def reach(namespace: str, targets: dict) -> dict:
    cmd = [sys.executable, "-c", REACH, namespace, json.dumps(targets)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=child_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("end", [0, 1])
def test_entered_process_reaches_peer_and_root_store(fabric, end):
    server = start_server(fabric.namespace(1 - end), "0.0.0.0")
    listener = socket.create_server((fabric.control_address(end), 0))
    thread = threading.Thread(target=echo_once, args=(listener,), daemon=True)
    thread.start()
    try:
        port = read_port(server)
        targets = {x.name: (x.peer_address(end), port) for x in fabric.links}
        targets["root"] = listener.getsockname()
        targets["other_end_control"] = (fabric.control_address(1 - end), 1)  # no route: ends only meet over links
        result = reach(fabric.namespace(end), targets)
    finally:
        stop_server(server)
        listener.close()
    assert result == {"fast": True, "shaped": True, "far": True, "root": True,
                      "other_end_control": "OSError"}, result  # fmt: skip
