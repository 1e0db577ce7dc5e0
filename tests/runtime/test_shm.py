"""The shared-memory path on real processes: messages of every size and dtype, route / fetch / local over it exact
against the single-instance reference, nothing left in /dev/shm, and a silent peer a clear error."""

import os

import pytest
import torch

from qroute.cost.model import PRIMITIVES
from qroute.errors import QrouteError
from qroute.runtime import paths, shm, transport
from qroute.runtime.launcher import ClusterSpec, launch
from tests.runtime.primitives import primitives_over

pytestmark = pytest.mark.timeout(180)
SPEC = dict(timeout_s=60.0, shm=True)
SIZES = (0, 8, 1000, shm.SLOT - transport.HEADER_BYTES, shm.SLOT, 2 * shm.SLOT + 123)  # inline to 3 chunks


def ours() -> set[str]:
    d = shm._dir()
    return {f for f in os.listdir(d) if f.startswith("qroute-")}


def echo(instance):
    """Rank 0 sends each holder messages of every size and dtype over the shared-memory path and checks the echo;
    the holders answer whoever sent first."""
    group = paths.group(shm.NAME)
    assert paths.names() == [paths.LOOPBACK, shm.NAME] and paths.group(paths.LOOPBACK) is None
    if instance.rank != 0:
        seen = []
        while (msg := transport.recv(None, group)).kind != 9:
            seen.append(msg.nbytes)
            transport.send(msg.src, 8, msg.meta, msg.tensors, group)
        return seen
    g = torch.Generator().manual_seed(0)
    for size in SIZES:
        sent = [torch.randint(0, 255, (size,), dtype=torch.uint8, generator=g), torch.randn(3, 5, generator=g).to(torch.bfloat16),
                torch.arange(7), torch.rand(2, 2, generator=g) > 0.5] if size else []  # fmt: skip
        for dst in (1, 2):
            assert transport.isend(dst, 7, [size, -dst], sent, group) == []  # copied out before it returned
            back = transport.recv(dst, group)
            assert back.kind == 8 and back.src == dst and back.meta == [size, -dst]
            assert len(back.tensors) == len(sent) and all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(sent, back.tensors))
    for dst in (1, 2):
        transport.send(dst, 9, [], [], group)
    return "ok"


def test_messages_of_every_size_round_trip_and_leave_nothing_behind():
    before = ours()
    out = launch(ClusterSpec(world_size=3, **SPEC), echo)
    assert out[0] == "ok" and out[1] == out[2] and len(out[1]) == len(SIZES)
    assert ours() == before


def test_route_fetch_and_local_over_shared_memory_match_the_reference():
    errors, used, _ = launch(ClusterSpec(world_size=3, **SPEC), primitives_over, shm.NAME)[0]
    assert set(errors) == set(PRIMITIVES) and max(errors.values()) < 1e-5, errors
    assert used == {shm.NAME}


@pytest.mark.parametrize("cores, world, spare", [(16, 3, True), (6, 3, True), (5, 3, False), (2, 3, False), (2, 2, False)])
def test_a_wait_looks_longer_where_every_instance_has_two_cores(cores, world, spare):
    assert shm.spin_window(cores, world) == (shm.SPARE_SPIN_S if spare else shm.SPIN_S)


@pytest.mark.parametrize("spin_s, sleeps", [(0.5, False), (0.0, True)])
def test_a_wait_sleeps_on_the_doorbell_only_after_its_spin(monkeypatch, spin_s, sleeps):
    """A message that comes 20 ms into the wait: looked for all along within a 0.5 s spin, slept for without one."""
    import time

    read, write = os.pipe()
    os.set_blocking(read, False)  # as a doorbell: drained without blocking
    group = object.__new__(shm.ShmGroup)
    group.rank, group.bells, group.timeout_s, group.spin_s = 0, [read], 5.0, spin_s
    slept = []
    monkeypatch.setattr(shm.select, "select", lambda r, w, x, t: slept.append(t) or time.sleep(0.005) or ([], [], []))
    due = time.perf_counter() + 0.02
    try:
        group._wait(lambda: time.perf_counter() >= due, "a test message")
    finally:
        os.close(read), os.close(write)
    assert bool(slept) == sleeps


def spin_of(instance):
    return paths.group(shm.NAME).spin_s


def test_the_cluster_picks_the_spin_for_its_host():
    spin = shm.spin_window(len(os.sched_getaffinity(0)), 2)
    assert launch(ClusterSpec(world_size=2, **SPEC), spin_of) == [spin, spin]


@pytest.mark.parametrize("cores, spin", [(16, shm.SPARE_SPIN_S), (2, shm.SPIN_S)])
def test_the_spin_follows_the_cores_before_pinning(monkeypatch, cores, spin):
    """`_open_shm` counts the cores the instance had before `_pin` took its share (16: 5 each for 3 instances)."""
    from qroute.runtime import launcher

    opened, registered = [], []
    monkeypatch.setattr(launcher, "AVAILABLE", list(range(cores)))
    monkeypatch.setattr(shm.ShmGroup, "open", lambda rank, world, timeout_s, spin_s: opened.append(spin_s) or "group")
    monkeypatch.setattr(paths, "register", lambda name, group: registered.append(name))
    launcher._open_shm(0, ClusterSpec(world_size=3, **SPEC))
    assert opened == [spin] and registered == [paths.LOOPBACK, shm.NAME]


def silent(instance):
    if instance.rank == 0:
        transport.recv(1, paths.group(shm.NAME))  # rank 1 never sends
    return "done"


def test_a_silent_peer_is_a_clear_error_after_the_timeout():
    with pytest.raises(QrouteError, match=r"instance 0 failed: shared-memory path: waited \d+ s for a message from "
                                          r"instance 1: expected it within the cluster timeout \(2 s\)"):  # fmt: skip
        launch(ClusterSpec(world_size=2, timeout_s=2.0, shm=True, run_s=60.0), silent)


def idle_paths(instance, world_only: bool):
    """Rank 0 sends no request for 3 s on a 2 s cluster timeout: both holders idle on the world and the shm group alike
    (as the idle second holder of a 1-holder `validate --shm` sweep), kept alive on every group or on the world only
    (what `KeepAlive` did before it pinged the path groups)."""
    import time

    from qroute.runtime import holder
    from qroute.runtime.control import KeepAlive, stop_holders

    if instance.rank != 0:
        return sorted(holder.serve(None, None, [0]).requesters)
    if world_only:
        paths.groups = lambda: []  # this process only (forked): the keep-alive sees no path group
    alive = KeepAlive(0, [1, 2], every_s=0.5)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.0:
        time.sleep(0.1)
        alive()
    stop_holders(0, [1, 2])
    return "done"


def test_keep_alive_pings_every_path_group_and_a_holder_that_lost_a_path_fails():
    # run_s: the 3 s idle loop plus start-up on a loaded 2-core CI machine outlasts the default 2 x timeout_s
    spec = ClusterSpec(world_size=3, **{**SPEC, "timeout_s": 2.0, "run_s": 60.0})
    assert launch(spec, idle_paths, False) == ["done", [0], [0]]
    with pytest.raises(QrouteError, match=r"instance [12] failed: shared-memory path: waited \d+ s for a message from "
                                          r"instance 0: expected it within the cluster timeout \(2 s\)"):  # fmt: skip
        launch(spec, idle_paths, True)


@pytest.mark.parametrize("bad", [dict(backend="nccl"), dict(links=("veth",), world_size=2)])
def test_shared_memory_only_between_gloo_instances_of_one_host(bad):
    with pytest.raises(QrouteError, match="the shared-memory path: expected backend gloo without an emulated fabric"):
        ClusterSpec(**{"world_size": 3, "shm": True, **bad})
