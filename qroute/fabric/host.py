"""The host side of a fabric: running `ip`/`tc`, preflight checks, TUN devices, entering a namespace."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

from qroute.errors import QrouteError

NETNS_DIR = Path("/run/netns")
TUN_PATH = Path("/dev/net/tun")
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
COMMAND_TIMEOUT_S = 20.0


class FabricError(QrouteError):
    """A fabric could not be built, used or removed; the message is one line."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `cmd`; with `check`, a non-zero exit raises FabricError naming the command and its stderr."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FabricError(f"`{' '.join(cmd)}` could not run: {one_line(str(e))}") from None
    if check and done.returncode != 0:
        raise FabricError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {one_line(done.stderr) or 'no stderr'}")
    return done


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", *args, check=check)


def preflight(*, tun: bool, tc: bool) -> None:
    """Raise FabricError unless this process can build a fabric (root, `ip`, and `tc`/TUN if needed)."""
    if os.geteuid() != 0:
        raise FabricError(f"building a fabric needs root (network namespaces, veth, tc): running as uid {os.geteuid()}")
    for tool, needed in (("ip", True), ("tc", tc)):
        if needed and shutil.which(tool) is None:
            raise FabricError(f"`{tool}` not found on PATH: expected iproute2 installed")
    if tun and not TUN_PATH.exists():
        raise FabricError(f"{TUN_PATH} missing: expected the tun driver for 'delay' links (modprobe tun)")


def netns_available() -> str | None:
    """None when this process can build fabrics, else why not (for skipping tests).

    Beyond `preflight`, it adds and deletes a scratch namespace: root in a container
    without CAP_SYS_ADMIN passes the uid check but cannot make namespaces.
    """
    scratch = f"qroute-check{os.getpid()}"  # not a fabric's name: leftovers() never lists it
    try:
        preflight(tun=True, tc=True)
        ip("netns", "add", scratch)
        ip("netns", "del", scratch)
    except FabricError as e:
        return str(e)
    return None


def open_tun(name: str) -> int:
    """Create TUN device `name` (IP packets, no extra header) in this namespace; return its fd.

    The device lives as long as a descriptor on it is open: moving it into another
    namespace keeps the descriptor working, closing the last one removes the device.
    """
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as e:
        os.close(fd)
        raise FabricError(f"TUNSETIFF {name!r} failed: {e.strerror}") from None
    return fd


def enter_namespace(name: str) -> None:
    """Move the calling thread into network namespace `name` (from `ip netns add`).

    Only the calling thread moves; threads it starts afterwards inherit the namespace.
    Call it first thing in an instance process, before opening sockets or starting
    threads that will (gloo, TCPStore clients).
    """
    path = NETNS_DIR / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise FabricError(f"network namespace {name!r}: {path} {e.strerror}: expected a live fabric's namespace") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise FabricError(f"setns into {name!r} failed: {os.strerror(err)} (needs CAP_SYS_ADMIN)")
    finally:
        os.close(fd)


def namespaces() -> list[str]:
    return sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []


def root_interfaces() -> list[str]:
    """Interface names in this process's namespace (the root one, for a process that builds fabrics)."""
    out = ip("-j", "link", "show").stdout
    return [x["ifname"] for x in json.loads(out or "[]")]


def root_networks() -> list[str]:
    """Destinations of every IPv4 route in this process's namespace, as CIDR strings (`default` dropped)."""
    out = ip("-j", "-4", "route", "show", "table", "all").stdout
    return [x["dst"] for x in json.loads(out or "[]") if x.get("dst", "default") != "default"]


def interfaces_down(namespace: str, names: list[str]) -> list[str]:
    """Which of `names` in `namespace` are missing, down, or without carrier (flags UP and LOWER_UP)."""
    links = json.loads(ip("-j", "-n", namespace, "link", "show").stdout or "[]")
    flags = {x["ifname"]: set(x.get("flags", ())) for x in links}
    return [name for name in names if not {"UP", "LOWER_UP"} <= flags.get(name, set())]


def process_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of live process `pid`; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def process_argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]
