"""Launcher and transport on real processes over gloo on loopback (bounded in time, nothing left behind)."""

import os
import time

import pytest
import torch

from qroute.errors import QrouteError
from qroute.runtime import transport
from qroute.runtime.launcher import ClusterSpec, launch

SPEC = dict(timeout_s=30.0)


def echo_sizes(instance):
    """Rank 0 sends messages of every dtype to each other rank, which echoes them back."""
    if instance.rank == 0:
        g = torch.Generator().manual_seed(0)
        sent = [torch.randn(3, 5, generator=g).to(torch.bfloat16), torch.arange(7), torch.rand(2, 2, 2, 2, generator=g) > 0.5,
                torch.randn(0, 4), torch.randn(1, generator=g).double()]
        for dst in range(1, instance.world_size):
            transport.send(dst, 7, [dst, -5, 2**40], sent)
            back = transport.recv(dst)
            assert back.kind == 8 and back.meta == [dst, -5, 2**40] and back.src == dst
            for a, b in zip(sent, back.tensors):
                assert a.dtype == b.dtype and torch.equal(a, b)
        return "ok"
    msg = transport.recv(None)
    transport.send(msg.src, 8, msg.meta, msg.tensors)
    return os.getpid()


def test_messages_roundtrip_every_dtype():
    results = launch(ClusterSpec(world_size=3, **SPEC), echo_sizes)
    assert results[0] == "ok"
    time.sleep(0.2)
    for pid in results[1:]:  # the instances are gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def world_of_one(instance):
    return (instance.rank, instance.world_size, instance.is_requester, instance.holders)


def test_world_size_one():
    assert launch(ClusterSpec(world_size=1, **SPEC), world_of_one) == [(0, 1, True, [0])]


def fail_on_rank_one(instance):
    if instance.rank == 1:
        raise QrouteError("holder refused: bad block id 99")
    transport.recv(1)  # would wait forever: the launcher must stop it
    return "unreachable"


def test_a_failing_instance_stops_the_cluster_with_its_message():
    t0 = time.monotonic()
    with pytest.raises(QrouteError, match="instance 1 failed: holder refused: bad block id 99"):
        launch(ClusterSpec(world_size=2, **SPEC), fail_on_rank_one)
    assert time.monotonic() - t0 < 25


def test_bad_cluster_specs():
    with pytest.raises(QrouteError, match="requesters=3: expected <= instances=2"):
        ClusterSpec(world_size=2, requesters=3)
    with pytest.raises(QrouteError, match="instances=0"):
        ClusterSpec(world_size=0)


def test_cpu_sets_are_disjoint_equal_shares_or_none():
    from qroute.runtime.launcher import cpu_set

    cores = [0, 1, 2, 3, 8, 9, 10, 11, 12]  # any ids, in any order
    sets = [cpu_set(r, 3, reversed(cores)) for r in range(3)]
    assert sets == [{0, 1, 2}, {3, 8, 9}, {10, 11, 12}]  # consecutive ids; the leftover core is nobody's
    assert cpu_set(0, 3, [0, 1]) is None and cpu_set(2, 3, range(5)) is None  # under 2 cores each: unpinned
    assert cpu_set(1, 2, range(4)) == {2, 3}


def affinity(instance):
    return sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_instances_run_on_their_own_cores_only_when_asked_and_possible():
    from qroute.runtime.launcher import cpu_set

    mine = os.sched_getaffinity(0)
    pinned = launch(ClusterSpec(world_size=2, **SPEC), affinity)
    expected = [cpu_set(r, 2, mine) for r in range(2)]
    assert pinned == [sorted(e) if e else sorted(mine) for e in expected]
    assert launch(ClusterSpec(world_size=2, pin=False, **SPEC), affinity) == [sorted(mine)] * 2
