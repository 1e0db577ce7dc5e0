"""`Fabric`: two network namespaces (end 0, end 1) joined by several links, built on enter, removed on exit.

    spec = FabricSpec((LinkSpec("fast", "veth", rate_mbit=200), LinkSpec("far", "delay", delay_us=500)))
    with Fabric(spec) as fabric:
        ns = fabric.namespace(1)              # an instance process calls enter_namespace(ns) first
        fabric.link("far").address(1)         # where end 0 reaches end 1 over "far"
        fabric.link("far").interface(0)       # the interface end 0 binds for "far" (gloo device)
        fabric.control_address(0)             # root-namespace address end 0 uses to reach a store

A link's interface is named after the link in both namespaces (gloo binds "far" at each
end); the control link's is "ctl". Names and addresses: see `qroute.fabric.spec`.

Build order: record (ownership) -> namespaces -> control links -> links -> wait until the
delay-line forwarders run and every interface has carrier. Teardown, on exit and on any
error while building: root-side veth ends (their namespace peers go with them) ->
forwarders (their TUNs go with them) -> namespaces -> record; it leaves nothing behind.
After a SIGKILL of the owner, forwarders exit by themselves and `cleanup_stale()` removes the rest.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from qroute.errors import QrouteError
from qroute.fabric import host, records
from qroute.fabric.host import FabricError, ip
from qroute.fabric.spec import CONTROL_IF, ENDS, FabricSpec, LinkSpec
from qroute.fabric import spec as names

# Bytes per packet through a delay line. The forwarder's cost is per packet, so a jumbo
# MTU lifts its ceiling (measured on 2 cores: ~4.8 Gbit/s at 9000 vs ~2.1 at 1500, 500 us delay).
TUN_MTU = 9000
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Link:
    """One built link: per end (index 0 or 1) its interface name and address."""

    spec: LinkSpec
    index: int
    interfaces: tuple[str, str]
    addresses: tuple[str, str]

    @property
    def name(self) -> str:
        return self.spec.name

    def interface(self, end: int) -> str:
        return self.interfaces[check_end(end)]

    def address(self, end: int) -> str:
        return self.addresses[check_end(end)]

    def peer_address(self, end: int) -> str:
        """The address end `end` connects to, to reach the other end over this link."""
        return self.addresses[1 - check_end(end)]


@dataclass(frozen=True)
class Control:
    """End `end`'s veth to the root namespace: `root_address` is how that end reaches a root-side store."""

    namespace: str
    interface: str
    address: str
    root_interface: str
    root_address: str


def check_end(end) -> int:
    if end not in ENDS or isinstance(end, bool):
        raise QrouteError(f"fabric end {end!r}: expected 0 or 1")
    return end


class Fabric:
    """Context manager that builds the fabric of `spec` (a FabricSpec or a sequence of LinkSpec).

    Queries work while it is built. `endpoint(end)` packs what an instance process at that
    end needs (namespace, control address, per-link interface and addresses) as JSON-able data.
    """

    def __init__(self, spec: FabricSpec | Sequence[LinkSpec]) -> None:
        self.spec = spec if isinstance(spec, FabricSpec) else FabricSpec(tuple(spec))
        self._record: records.Record | None = None  # set while built
        self._tag: str | None = None  # kept after exit, for leftovers(fabric.tag)
        self._forwarders: list[tuple[subprocess.Popen, int]] = []  # (process, ready pipe read end)
        self.links: tuple[Link, ...] = ()

    # -- queries ---------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        if self._tag is None:
            raise FabricError("fabric not built yet: expected use inside `with Fabric(spec) as fabric:`")
        return self._tag

    @property
    def built(self) -> bool:
        return self._record is not None

    def namespace(self, end: int) -> str:
        return names.namespace_name(self._built_record().tag, check_end(end))

    def link(self, name: str) -> Link:
        self._built_record()
        for link in self.links:
            if link.name == name:
                return link
        raise QrouteError(f"link {name!r}: expected one of {', '.join(x.name for x in self.links)}")

    def control(self, end: int) -> Control:
        root, inside = names.control_addresses(self._built_record().slot, check_end(end))
        return Control(self.namespace(end), CONTROL_IF, inside, names.control_root_if(self.tag, end), root)

    def control_address(self, end: int) -> str:
        return self.control(end).root_address

    def control_interface(self, end: int) -> str:
        return self.control(end).interface

    def forwarder_pids(self) -> list[int]:
        return [p.pid for p, _ in self._forwarders]

    def endpoint(self, end: int) -> dict:
        """Everything an instance process at `end` needs, as plain JSON-able data."""
        links = {x.name: {"interface": x.interface(end), "address": x.address(end), "peer_address": x.peer_address(end),
                          "kind": x.spec.kind, "rate_mbit": x.spec.rate_mbit, "delay_us": x.spec.delay_us}
                 for x in self.links}  # fmt: skip
        c = self.control(end)
        return {"namespace": c.namespace, "control": {"interface": c.interface, "address": c.address,
                "root_address": c.root_address}, "links": links}  # fmt: skip

    def _built_record(self) -> records.Record:
        if self._record is None:
            state = "removed" if self._tag else "not built yet"
            raise FabricError(f"fabric {state}: expected use inside `with Fabric(spec) as fabric:`")
        return self._record

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Fabric:
        if self._record is not None:
            raise FabricError(f"fabric {self.tag} is already built: expected one `with` per Fabric")
        delay = any(x.kind == "delay" for x in self.spec.links)
        host.preflight(tun=delay, tc=any(x.rate_mbit is not None for x in self.spec.links))
        self._record = records.claim(self.spec.tag)
        self._tag = self._record.tag
        try:
            self._build()
        except BaseException:
            problems = self._teardown()
            if problems:
                warnings.warn(f"fabric {self.tag}: teardown after a failed build left: {'; '.join(problems)}")
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._record is not None and os.getpid() != self._record.owner_pid:
            return  # a forked child leaving the `with`: the fabric belongs to the parent
        tag, problems = self.tag, self._teardown()
        if problems and exc_type is None:
            raise FabricError(f"fabric {tag}: teardown left: {'; '.join(problems)}")
        if problems:
            warnings.warn(f"fabric {tag}: teardown left: {'; '.join(problems)}")

    def _build(self) -> None:
        for end in ENDS:
            ip("netns", "add", self.namespace(end))
            ip("-n", self.namespace(end), "link", "set", "dev", "lo", "up")
            self._build_control(end)
        built = []
        for index, spec in enumerate(self.spec.links):
            build = self._build_veth if spec.kind == "veth" else self._build_delay
            built.append(build(index, spec))
            self.links = tuple(built)
        self._wait_forwarders()
        self._wait_running()

    def _build_control(self, end: int) -> None:
        c = self.control(end)
        ip("link", "add", "name", c.root_interface, "type", "veth", "peer", "name", c.interface, "netns", c.namespace)
        ip("addr", "add", f"{c.root_address}/30", "dev", c.root_interface)
        ip("link", "set", "dev", c.root_interface, "up")
        ip("-n", c.namespace, "addr", "add", f"{c.address}/30", "dev", c.interface)
        ip("-n", c.namespace, "link", "set", "dev", c.interface, "up")

    def _build_veth(self, index: int, spec: LinkSpec) -> Link:
        ns = [self.namespace(e) for e in ENDS]
        ip("link", "add", "name", spec.name, "netns", ns[0], "type", "veth", "peer", "name", spec.name, "netns", ns[1])
        for end in ENDS:
            ip("-n", ns[end], "addr", "add", f"{names.link_address(index, end)}/30", "dev", spec.name)
            self._finish_interface(ns[end], spec)
        return self._link(index, spec)

    def _build_delay(self, index: int, spec: LinkSpec) -> Link:
        temp = [names.tun_root_if(self.tag, index, e) for e in ENDS]
        fds = []
        try:
            fds = [host.open_tun(name) for name in temp]
            self._start_forwarder(spec, fds)
        finally:
            for fd in fds:
                os.close(fd)  # the forwarder holds them now; the TUNs live as long as it does
        for end in ENDS:
            ns, peer = self.namespace(end), names.link_address(index, 1 - end)
            ip("link", "set", "dev", temp[end], "netns", ns)
            ip("-n", ns, "link", "set", "dev", temp[end], "name", spec.name, "mtu", str(TUN_MTU))
            ip("-n", ns, "addr", "add", names.link_address(index, end), "peer", peer, "dev", spec.name)
            self._finish_interface(ns, spec)
        return self._link(index, spec)

    def _finish_interface(self, ns: str, spec: LinkSpec) -> None:
        ip("-n", ns, "link", "set", "dev", spec.name, "up")
        if spec.rate_mbit is not None:
            burst, latency_ms = names.tbf_params(spec.rate_mbit)
            host.run("tc", "-n", ns, "qdisc", "replace", "dev", spec.name, "root", "tbf", "rate",
                     f"{spec.rate_mbit:g}mbit", "burst", str(burst), "latency", f"{latency_ms:g}ms")  # fmt: skip

    def _link(self, index: int, spec: LinkSpec) -> Link:
        addresses = (names.link_address(index, 0), names.link_address(index, 1))
        return Link(spec, index, (spec.name, spec.name), addresses)

    # -- delay-line forwarders ---------------------------------------------------------------
    def _start_forwarder(self, spec: LinkSpec, fds: list[int]) -> None:
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, "-m", records.FORWARDER_MODULE, "--fds", f"{fds[0]},{fds[1]}", "--ready", str(ready_w),
               "--delay-us", repr(float(spec.delay_us)), "--owner", str(os.getpid()), "--tag", self.tag,
               "--link", spec.name]  # fmt: skip
        try:
            proc = subprocess.Popen(cmd, pass_fds=(*fds, ready_w), stdin=subprocess.DEVNULL, env=child_env())
        except OSError as e:
            os.close(ready_r)
            raise FabricError(f"`{' '.join(cmd)}` could not start: {e.strerror}") from None
        finally:
            os.close(ready_w)
        self._forwarders.append((proc, ready_r))

    def _wait_forwarders(self) -> None:
        """Return once every forwarder is in its loop (it writes one byte to its ready pipe)."""
        for proc, ready_r in self._forwarders:
            ready, _, _ = select.select([ready_r], [], [], READY_TIMEOUT_S)
            if not ready or os.read(ready_r, 1) != b"1":
                raise FabricError(f"delay-line forwarder pid {proc.pid} did not start within {READY_TIMEOUT_S:g}s "
                                  f"(exit code {proc.poll()}): see its stderr above")  # fmt: skip

    def _wait_running(self) -> None:
        """Return once every interface is up with carrier (flags UP, LOWER_UP) in both namespaces.

        Not operstate: the kernel updates a veth's operstate up to 1 s later (linkwatch
        batches non-urgent events), while it carries packets as soon as it has carrier.
        """
        interfaces = [CONTROL_IF, *(x.name for x in self.spec.links)]
        deadline = time.monotonic() + READY_TIMEOUT_S
        for ns in (self.namespace(e) for e in ENDS):
            while (down := host.interfaces_down(ns, interfaces)) and time.monotonic() < deadline:
                time.sleep(0.005)
            if down:
                raise FabricError(f"interfaces {', '.join(down)} in {ns} not running after {READY_TIMEOUT_S:g}s")

    def _stop_forwarders(self) -> list[str]:
        problems = []
        for proc, ready_r in self._forwarders:
            os.close(ready_r)
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    problems.append(f"forwarder pid {proc.pid} survived SIGKILL")
        self._forwarders = []
        return problems

    # -- teardown ----------------------------------------------------------------------------
    def _teardown(self) -> list[str]:
        """Remove everything this fabric made; return what could not be removed (empty: all gone)."""
        tag = self.tag
        problems = self._delete_root_interfaces() + self._stop_forwarders() + self._delete_namespaces()
        if not problems:
            records.release(self._record)
            problems = records.leftovers(tag)
        self.links, self._record = (), None
        return problems

    def _delete_root_interfaces(self) -> list[str]:
        """Delete the root-side control ends (their namespace peers go with them) and unmoved TUNs.

        Explicitly, because `ip netns del` only drops the name: the kernel destroys the
        namespace's devices later, and never while a process still lives in it.
        """
        ours = [names.control_root_if(self.tag, e) for e in ENDS]
        ours += [names.tun_root_if(self.tag, i, e) for i in range(len(self.spec.links)) for e in ENDS]
        try:
            present = set(host.root_interfaces())
        except FabricError as e:
            return [str(e)]
        return [p for name in ours if name in present and (p := problem_of(ip, "link", "del", "dev", name))]

    def _delete_namespaces(self) -> list[str]:
        present = set(host.namespaces())
        ours = [self.namespace(e) for e in ENDS]
        return [p for ns in ours if ns in present and (p := problem_of(ip, "netns", "del", ns))]


def problem_of(fn, *args) -> str | None:
    """Run fn(*args); its FabricError's message, or None when it succeeded."""
    try:
        fn(*args)
    except FabricError as e:
        return str(e)
    return None


def child_env() -> dict:
    """This environment, with qroute importable in children even when it is not installed."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the qroute package
    env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
    return env
