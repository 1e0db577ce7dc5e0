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


def sleep_then_report(instance, seconds):
    time.sleep(seconds)
    return "done"


def test_a_launch_runs_past_twice_its_timeout_only_when_told_to():
    with pytest.raises(QrouteError, match="cluster did not finish within 6 s"):  # taken as hung: 2 x timeout_s
        launch(ClusterSpec(world_size=1, timeout_s=3.0), sleep_then_report, 8.0)
    assert launch(ClusterSpec(world_size=1, timeout_s=3.0, run_s=15.0), sleep_then_report, 8.0) == ["done"]


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


def test_cpu_sets_are_disjoint_equal_shares_or_a_core_per_holder():
    from qroute.runtime.launcher import cpu_set

    cores = [0, 1, 2, 3, 8, 9, 10, 11, 12]  # any ids, in any order
    sets = [cpu_set(r, 3, reversed(cores)) for r in range(3)]
    assert sets == [{0, 1, 2}, {3, 8, 9}, {10, 11, 12}]  # consecutive ids; the leftover core is nobody's
    assert cpu_set(1, 2, range(4)) == {2, 3}
    # under 2 cores each: the requesters left to the scheduler, each holder on one core, round robin
    assert [cpu_set(r, 3, [4, 7]) for r in range(3)] == [None, {4}, {7}]
    assert [cpu_set(r, 5, [4, 7], requesters=2) for r in range(5)] == [None, None, {4}, {7}, {4}]
    assert [cpu_set(r, 3, range(5)) for r in range(3)] == [None, {0}, {1}]
    assert cpu_set(0, 1, [3]) == {3}  # one instance, one core: it holds the blocks
    assert cpu_set(1, 3, [4, 7], one_per_holder=False) is None  # GPU instances: left to the scheduler


def affinity(instance):
    return sorted(os.sched_getaffinity(0)), os.sched_getscheduler(0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_instances_run_on_their_own_cores_only_when_asked_and_possible():
    from qroute.runtime.launcher import cpu_set

    mine = os.sched_getaffinity(0)
    pinned = launch(ClusterSpec(world_size=2, **SPEC), affinity)
    expected = [cpu_set(r, 2, mine) for r in range(2)]
    # a holder alone on one core (2-3 cores) waits for the requester that woke it to block: SCHED_BATCH
    policy = [os.SCHED_BATCH if e and len(e) == 1 else os.SCHED_OTHER for e in expected]
    assert pinned == [(sorted(e) if e else sorted(mine), p) for e, p in zip(expected, policy)]
    assert launch(ClusterSpec(world_size=2, pin=False, **SPEC), affinity) == [(sorted(mine), os.SCHED_OTHER)] * 2


def exact_echo(instance, first):
    """Under exact framing with first frames of `first` bytes: rank 0 and rank 1 each send rank 2 messages without
    tensors, with a payload inline and with one past the first frame; rank 2 answers whoever's first frame arrives
    first (a Poller: over gloo, one receive from any sender), until both stopped."""
    transport.set_exact(True, first=first)
    if instance.rank == 2:
        with pytest.raises(Exception, match="expected a named sender"):
            transport.recv(None)
        poller, served, stopped = transport.Poller([0, 1]), [], set()
        while stopped != {0, 1}:
            msg = poller.recv()
            served.append(msg.src)
            if msg.kind == 9:
                stopped.add(msg.src)
                poller.drop(msg.src)
            else:
                transport.send(msg.src, 8, msg.meta, msg.tensors)
        return sorted(set(served))
    g = torch.Generator().manual_seed(instance.rank)
    for i in range(4):
        sent = [torch.randn(4, 3, generator=g).to(torch.bfloat16), torch.arange(5 + i)] if i != 1 else []
        sent += [torch.randn(transport.FIRST // 4 + 3, generator=g)] if i == 3 else []
        transport.send(2, 7, [instance.rank, i], sent)
        back = transport.recv(2)
        assert back.kind == 8 and back.meta == [instance.rank, i] and len(back.tensors) == len(sent)
        assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(sent, back.tensors))
    transport.send(2, 9)
    return "ok"


@pytest.mark.parametrize("first", [transport.HEADER_BYTES, transport.FIRST])
def test_exact_framing_with_a_polling_receiver(first):
    assert launch(ClusterSpec(world_size=3, requesters=2, **SPEC), exact_echo, first) == ["ok", "ok", [0, 1]]


def test_nccl_without_enough_gpus_is_one_clear_error():
    if torch.cuda.is_available() and torch.cuda.device_count() >= 3:
        pytest.skip("enough GPUs for 3 NCCL instances")
    with pytest.raises(QrouteError, match="backend nccl: 3 instances on .* GPU\\(s\\): expected one GPU per instance"):
        launch(ClusterSpec(world_size=3, backend="nccl", **SPEC), affinity)
    with pytest.raises(QrouteError, match="frames='eager': expected 'auto' or 'exact'"):
        ClusterSpec(frames="eager")


class FakeWork:
    def __init__(self, polls):
        self.polls = polls

    def is_completed(self):
        self.polls -= 1
        return self.polls < 0

    def wait(self):
        assert self.polls < 0, "waited on before it completed"


def _poller(arrivals):
    """A Poller over senders whose next headers arrive after the given numbers of polls, and the senders posted."""
    posts = []

    def post(frame, src):
        posts.append(src)
        frame[: transport.HEADER_BYTES].view(torch.int64).copy_(transport.encode_header(7, [src], [])[0])
        return FakeWork(arrivals[src].pop(0))

    return transport.Poller(sorted(arrivals), post=post), posts


def test_poller_serves_ready_senders_in_turn():
    """The NCCL polling path (a header receive posted per sender), with receives that complete after given polls."""
    poller, posts = _poller({0: [0] * 3, 1: [0] * 3, 2: [0] * 2})
    assert [poller.recv().src for _ in range(6)] == [0, 1, 2, 0, 1, 2]  # all ready: none served twice in a row
    assert posts == [0, 1, 2, 0, 1, 2, 0, 1]  # a sender's next receive is posted once its message was taken


def test_poller_is_not_held_up_by_a_late_sender_and_forgets_stopped_ones():
    poller, posts = _poller({0: [5], 1: [0, 0, 0, 9], 2: [0]})
    order = [poller.recv().src for _ in range(2)]
    poller.drop(2)  # 2 stopped
    order += [poller.recv().src for _ in range(3)]
    assert order == [1, 2, 1, 1, 0]  # 0's header came after 5 polls; meanwhile 1 and 2 were served
    assert posts == [0, 1, 2, 1, 1, 1]  # 2 never posted again after its STOP


def keep_alive(instance):
    from qroute.runtime import holder, paths
    from qroute.runtime.control import KeepAlive, stop_holders

    if instance.rank == 1:
        return holder.serve(None, None, [0], groups=[]).requesters  # the world group only, as a fabric's holder does
    alive = KeepAlive(0, [1], every_s=0.0)
    alive()  # no path groups: nothing to keep alive, no message
    paths._GROUPS["emulated"] = None  # as if the traffic went on a fabric's path group
    try:
        pinged = [alive.last]
        time.sleep(0.01)
        alive()  # PING on the world group, PONG back
        pinged.append(alive.last)
        alive.every_s = 3600.0
        alive()  # too soon: nothing
        return pinged[1] > pinged[0] and alive.last == pinged[1]
    finally:
        paths._GROUPS.pop("emulated")
        stop_holders(0, [1])


def test_keep_alive_pings_the_idle_world_group_only_under_a_fabric_and_only_when_due():
    assert launch(ClusterSpec(world_size=2, **SPEC), keep_alive) == [True, {0}]


@pytest.mark.parametrize("world", range(1, 8))
def test_pair_connections_in_one_order_never_wait_on_each_other(world):
    """Each rank's first pending pair blocks until its peer reaches the same pair: the order must always progress
    (a rank waiting on a peer that waits on a third, round the circle, is the deadlock it prevents)."""
    from qroute.runtime.launcher import connection_order

    todo = {r: connection_order(r, world) for r in range(world)}
    assert all(len(t) == world - 1 for t in todo.values())  # every peer once
    while any(todo.values()):
        ready = [r for r, t in todo.items() if t and todo[t[0][0]] and todo[t[0][0]][0] == (r, not t[0][1])]
        assert ready, todo
        for r in ready:
            todo[r].pop(0)


def test_poller_pause_yields_first_then_sleeps(monkeypatch):
    """A wait looks again at once (yielding the core) for SPIN_S, then sleeps POLL_S between looks."""
    calls = []
    monkeypatch.setattr(transport.os, "sched_yield", lambda: calls.append("yield"))
    monkeypatch.setattr(transport.time, "sleep", lambda s: calls.append(s))
    for waited in (0.0, transport.SPIN_S, transport.SPIN_S * 1.01, 1.0):
        transport._pause(waited)
    assert calls == ["yield", "yield", transport.POLL_S, transport.POLL_S]


def test_pack_stages_host_tensors_and_header_in_message_layout():
    """Host tensors and the header land where `unpack` reads them, mixed with empty tensors, at 8-byte offsets."""
    ts = [torch.arange(3, dtype=torch.int32), torch.empty(0), torch.randn(2, 3).t(), torch.tensor([True, False])]
    header, nbytes = transport.encode_header(5, [9], ts)
    buf = transport.pack(ts, nbytes, header, size=transport.HEADER_BYTES + nbytes + 16)
    kind, meta, specs, n = transport.decode_header(buf[: transport.HEADER_BYTES].view(torch.int64))
    assert (kind, meta, n) == (5, [9], nbytes) and len(buf) == transport.HEADER_BYTES + nbytes + 16
    for got, want in zip(transport.unpack(buf[transport.HEADER_BYTES :], specs), ts):
        assert got.dtype == want.dtype and torch.equal(got, want)
