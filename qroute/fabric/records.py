"""Ownership of fabrics: one record file per live fabric, leftovers of crashed runs, and their removal.

A `Fabric` writes `/run/qroute-fabric/{tag}.json` (owner pid and start time, control
slot) before it creates anything, and removes it after everything else is gone. So any
qroute namespace, root-side interface or forwarder whose record is missing, or whose
owner is dead, belongs to a crashed run. /run is a tmpfs, like /run/netns, so records
and namespaces vanish together at reboot. The empty directory itself is kept (it is the lock).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import signal
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from qroute.fabric import host
from qroute.fabric.host import FabricError
from qroute.fabric.spec import NAMESPACE_RE, ROOT_IF_RE, check_tag, control_slot_net

RECORD_DIR = Path("/run/qroute-fabric")
FORWARDER_MODULE = "qroute.fabric.delayline"
SLOTS = 256


@dataclass(frozen=True)
class Record:
    tag: str
    owner_pid: int
    owner_start: int
    slot: int

    @property
    def path(self) -> Path:
        return RECORD_DIR / f"{self.tag}.json"

    def owner_alive(self) -> bool:
        return host.process_start(self.owner_pid) == self.owner_start


@contextmanager
def locked():
    """Hold the fabric lock (an flock on the record directory) across tag/slot allocation."""
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(RECORD_DIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_records() -> dict[str, Record]:
    found = {}
    for path in sorted(RECORD_DIR.glob("*.json")) if RECORD_DIR.is_dir() else []:
        try:
            found[path.stem] = Record(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a half-written or foreign file: its objects count as ownerless
    return found


def claim(tag: str | None) -> Record:
    """Reserve a tag and a control slot for this process, and write the record."""
    pid = os.getpid()
    with locked():
        records = read_records()
        busy = set(records) | set(leftover_tags())
        if tag is None:
            tag = next(t for t in default_tags(pid) if t not in busy)
        check_tag(tag)
        if tag in busy:
            owner = records[tag].owner_pid if tag in records else "none"
            raise FabricError(f"fabric tag {tag!r} is in use (owner pid {owner}): expected a free tag, "
                              "or call qroute.fabric.cleanup_stale() after a crash")  # fmt: skip
        record = Record(tag, pid, host.process_start(pid), free_slot({r.slot for r in records.values()}))
        record.path.write_text(json.dumps(asdict(record)))
    return record


def default_tags(pid: int):
    yield str(pid)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        yield f"{pid}{letter}"
    raise FabricError(f"pid {pid} already holds 27 fabrics: expected fewer at once")


def free_slot(taken: set[int]) -> int:
    """The first /24 of the control range that no record holds and no root route overlaps."""
    routes = [ipaddress.ip_network(dst, strict=False) for dst in host.root_networks()]
    for slot in range(SLOTS):
        net = control_slot_net(slot)
        if slot not in taken and not any(net.overlaps(r) for r in routes):
            return slot
    raise FabricError(f"no free control slot in 10.213.0.0/16: {len(taken)} fabrics recorded, expected < {SLOTS}")


def release(record: Record) -> None:
    record.path.unlink(missing_ok=True)


def forwarder_tag(argv: list[str]) -> str | None:
    if FORWARDER_MODULE not in argv or "--tag" not in argv[:-1]:
        return None
    return argv[argv.index("--tag") + 1]


def forwarders() -> dict[int, str]:
    """pid -> fabric tag of every delay-line forwarder running on this host."""
    found = {}
    for pid in host.pids():
        tag = forwarder_tag(host.process_argv(pid))
        if tag is not None:
            found[pid] = tag
    return found


def objects() -> list[tuple[str, str, str]]:
    """(tag, kind, name) of every qroute namespace, root-side interface, forwarder and record."""
    found = [(m[1], "netns", name) for name in host.namespaces() if (m := NAMESPACE_RE.fullmatch(name))]
    found += [(m[1], "link", name) for name in host.root_interfaces() if (m := ROOT_IF_RE.fullmatch(name))]
    found += [(tag, "process", str(pid)) for pid, tag in forwarders().items()]
    found += [(tag, "record", str(r.path)) for tag, r in read_records().items()]
    return found


def leftover_tags() -> set[str]:
    return {tag for tag, kind, _ in objects() if kind != "record"}


def leftovers(tag: str | None = None) -> list[str]:
    """What of qroute's fabrics (all, or tag `tag`'s) is still on this host, one line per object."""
    return [f"{kind} {name} (fabric {t})" for t, kind, name in objects() if tag is None or t == tag]


def remove_object(kind: str, name: str) -> None:
    """Remove one object; one already gone is not an error (an owner may be removing it too)."""
    if kind == "process":
        pid = int(name)
        if host.process_argv(pid) and FORWARDER_MODULE in host.process_argv(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    elif kind == "link" and name in host.root_interfaces():
        host.ip("link", "del", "dev", name)
    elif kind == "netns" and name in host.namespaces():
        host.ip("netns", "del", name)
    elif kind == "record":
        Path(name).unlink(missing_ok=True)


ORDER = {"process": 0, "link": 1, "netns": 2, "record": 3}


def cleanup_stale() -> list[str]:
    """Remove the objects of every fabric whose owner is dead (or unrecorded); return what was removed."""
    found = objects()
    records = read_records()
    stale = {t for t, _, _ in found if t not in records or not records[t].owner_alive()}
    removed = []
    for tag, kind, name in sorted((x for x in found if x[0] in stale), key=lambda x: ORDER[x[1]]):
        remove_object(kind, name)
        removed.append(f"{kind} {name} (fabric {tag})")
    return removed
