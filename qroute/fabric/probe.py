"""Measure a built link from end 0 to end 1: TCP round trip (`measure_rtt`) and bulk rate (`measure_rate`).

For tests and diagnostics; calibration measures paths with the runtime's own transport.
Each measurement runs a server process entered into end 1's namespace and a client
process entered into end 0's, both `python -m qroute.fabric.pingpong` (not imported
here, so that `-m` runs it cleanly).

Wire protocol, one request per connection: a mode byte, a count and a size (8 bytes each).
`p`: count 1-byte ping-pongs. `b`: count times, size bytes in and their SHA-256 back (so
corruption is caught). The first pings and the first transfer warm the connection up (TCP
slow start) and are not counted: the medians describe a connection in use, as the runtime's are.
"""

from __future__ import annotations

import json
import select
import socket
import statistics
import struct
import subprocess
import sys

from qroute.errors import positive_int
from qroute.fabric.host import FabricError, one_line

HEADER = struct.Struct("!cQQ")
CHUNK = 1 << 20
WARMUP_PINGS = 5
WARMUP_TRANSFERS = 1
CLIENT_TIMEOUT_S = 60.0


def measure_rtt(fabric, link: str, pings: int = 200) -> float:
    """Median TCP round trip (s) of a 1-byte ping-pong over `link`, end 0 -> end 1 -> end 0."""
    positive_int("pings", pings)
    samples = run_client(fabric, link, "ping", "--count", str(pings + WARMUP_PINGS))
    return statistics.median(samples[WARMUP_PINGS:])


def measure_rate(fabric, link: str, nbytes: int = 8 << 20, repeats: int = 3) -> float:
    """Median rate (B/s) of sending `nbytes` random bytes end 0 -> end 1 over `link`, one connection each.

    All transfers share one connection, after one warm-up transfer (not counted). Each is
    timed from its first send to the receiver's digest coming back, so it includes one
    round trip. Raises FabricError if any bytes arrive altered.
    """
    positive_int("nbytes", nbytes)
    positive_int("repeats", repeats)
    seconds = run_client(fabric, link, "bulk", "--nbytes", str(nbytes), "--repeats", str(repeats + WARMUP_TRANSFERS))
    return nbytes / statistics.median(seconds[WARMUP_TRANSFERS:])


def run_client(fabric, link: str, mode: str, *args: str) -> list[float]:
    built = fabric.link(link)
    server = start_server(fabric.namespace(1), built.address(1))
    try:
        port = read_port(server)
        cmd = [*module_cmd(), mode, "--netns", fabric.namespace(0), "--to", built.address(1), "--port", str(port), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FabricError(f"probe {mode} over link {link!r} did not finish within {CLIENT_TIMEOUT_S:g}s") from None
    finally:
        stop_server(server)
    if done.returncode != 0:
        raise FabricError(f"probe {mode} over link {link!r} failed (exit {done.returncode}): {one_line(done.stderr)}")
    return json.loads(done.stdout)


def module_cmd() -> list[str]:
    return [sys.executable, "-m", "qroute.fabric.pingpong"]


def start_server(namespace: str, address: str) -> subprocess.Popen:
    from qroute.fabric.netns import child_env

    cmd = [*module_cmd(), "serve", "--netns", namespace, "--bind", address]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())


def read_port(server: subprocess.Popen) -> int:
    ready, _, _ = select.select([server.stdout], [], [], CLIENT_TIMEOUT_S)
    line = server.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        raise FabricError(f"probe server pid {server.pid} did not report a port (exit {server.poll()})")
    return int(line)


def stop_server(server: subprocess.Popen) -> None:
    server.stdin.close()
    try:
        server.wait(5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    server.stdout.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), CHUNK))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
