"""Measure a built link from end 0 to end 1: TCP round trip (`measure_rtt`) and bulk rate (`measure_rate`).

For tests and diagnostics; calibration measures paths with the runtime's own transport.
Each measurement runs a server process entered into end 1's namespace and a client
process entered into end 0's, both this module:

    python -m qroute.fabric.probe serve --netns NS1 --bind ADDR1          # prints its port, serves until stdin closes
    python -m qroute.fabric.probe ping --netns NS0 --to ADDR1 --port P --count N
    python -m qroute.fabric.probe bulk --netns NS0 --to ADDR1 --port P --nbytes B --repeats R

Wire protocol, one request per connection: 1 mode byte and an 8-byte count. `p`: count
1-byte ping-pongs. `b`: count bytes in, their SHA-256 back (so corruption is caught).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time

from qroute.errors import positive_int
from qroute.fabric.host import FabricError, enter_namespace, one_line

HEADER = struct.Struct("!cQ")
CHUNK = 1 << 20
WARMUP_PINGS = 5
SERVER_IDLE_S = 120.0
CLIENT_TIMEOUT_S = 60.0


# -- library side ------------------------------------------------------------------------------
def measure_rtt(fabric, link: str, pings: int = 200) -> float:
    """Median TCP round trip (s) of a 1-byte ping-pong over `link`, end 0 -> end 1 -> end 0."""
    positive_int("pings", pings)
    samples = run_client(fabric, link, "ping", "--count", str(pings + WARMUP_PINGS))
    return statistics.median(samples[WARMUP_PINGS:])


def measure_rate(fabric, link: str, nbytes: int = 8 << 20, repeats: int = 3) -> float:
    """Median rate (B/s) of sending `nbytes` random bytes end 0 -> end 1 over `link`, one connection each.

    Each transfer is timed from the first send to the receiver's digest coming back, so it
    includes TCP slow start and one round trip. Raises FabricError if any bytes arrive altered.
    """
    positive_int("nbytes", nbytes)
    positive_int("repeats", repeats)
    seconds = run_client(fabric, link, "bulk", "--nbytes", str(nbytes), "--repeats", str(repeats))
    return nbytes / statistics.median(seconds)


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
    return [sys.executable, "-m", "qroute.fabric.probe"]


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


# -- process side ------------------------------------------------------------------------------
def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), CHUNK))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def serve_one(conn: socket.socket) -> None:
    mode, count = HEADER.unpack(recv_exact(conn, HEADER.size))
    if mode == b"p":
        for _ in range(count):
            conn.sendall(recv_exact(conn, 1))
        return
    digest, left = hashlib.sha256(), count
    while left:
        chunk = conn.recv(min(left, CHUNK))
        if not chunk:
            raise ConnectionError(f"peer closed with {left} of {count} bytes missing")
        digest.update(chunk)
        left -= len(chunk)
    conn.sendall(digest.digest())


def serve(bind: str) -> None:
    """Serve requests one connection at a time until stdin closes (or SERVER_IDLE_S without one)."""
    listener = socket.create_server((bind, 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], SERVER_IDLE_S)
        if not ready or sys.stdin in ready:
            return
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                serve_one(conn)
            except (OSError, struct.error) as e:  # a client that gave up or spoke garbage: serve the next
                print(f"probe server: {e}", file=sys.stderr)


def connect(to: str, port: int, mode: bytes, count: int) -> socket.socket:
    sock = socket.create_connection((to, port), timeout=CLIENT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(HEADER.pack(mode, count))
    return sock


def ping(to: str, port: int, count: int) -> list[float]:
    rtts = []
    with connect(to, port, b"p", count) as sock:
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"x")
            recv_exact(sock, 1)
            rtts.append(time.perf_counter() - start)
    return rtts


def bulk(to: str, port: int, nbytes: int) -> float:
    payload = os.urandom(nbytes)
    expected = hashlib.sha256(payload).digest()
    with connect(to, port, b"b", nbytes) as sock:
        start = time.perf_counter()
        sock.sendall(payload)
        got = recv_exact(sock, len(expected))
        seconds = time.perf_counter() - start
    if got != expected:
        raise FabricError(f"bulk transfer of {nbytes} bytes to {to}:{port} arrived altered (SHA-256 mismatch)")
    return seconds


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qroute.fabric.probe", description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("serve", "ping", "bulk"))
    p.add_argument("--netns", required=True)
    p.add_argument("--bind")
    p.add_argument("--to")
    p.add_argument("--port", type=int)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--nbytes", type=int, default=8 << 20)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    enter_namespace(args.netns)
    if args.mode == "serve":
        serve(args.bind)
        return 0
    if args.mode == "ping":
        result = ping(args.to, args.port, args.count)
    else:
        result = [bulk(args.to, args.port, args.nbytes) for _ in range(args.repeats)]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
