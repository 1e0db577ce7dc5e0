"""benchmarks.sched_wait reads a perf sched record and a calibration trace right (synthetic lines; no perf needed)."""

import pytest

from benchmarks.sched_wait import Schedule, analyse, pairs


def _switch(cpu, t, prev, nxt, comm="python"):
    name = lambda tid: f"swapper/{cpu}" if tid == 0 else comm  # noqa: E731
    return (f"[{cpu:03d}] {t:.6f}:       sched:sched_switch: prev_comm={name(prev)} prev_pid={prev} prev_prio=120 "
            f"prev_state=S ==> next_comm={name(nxt)} next_pid={nxt} next_prio=120")  # fmt: skip


def _fork(t, parent, child):
    return f"[000] {t:.6f}: sched:sched_process_fork: comm=python pid={parent} child_comm=python child_pid={child}"


def _route(holder, step, post, start, compute, wall=None):
    return {"kind": "route", "holder": holder, "step": step, "layer": 0, "parallel": 2, "t_post": post,
            "holder_start": start, "holder_compute_s": compute, **({"wall_s": wall} if wall else {})}  # fmt: skip


def test_serial_and_overlapped_exchanges_and_who_held_the_cpus():
    # instances 10 (requester), 20 and 30 (holders), each with gloo's I/O thread; 30 also runs a thread 32
    lines = [_fork(0.1, 5, 10), _fork(0.1, 5, 20), _fork(0.1, 5, 30)]
    lines += [_fork(0.2, p, p + 1) for p in (10, 20, 30)] + [_fork(0.2, 30, 32)]
    lines += [_switch(0, 0.3 + i * 1e-3, 0, p + 1, "gloo_tcp_loop") for i, p in enumerate((10, 20, 30))]
    # exchange 1, posted at 1.0: holder 20 computes 1.0002-1.0012 on cpu 0; holder 30 (thread 32) starts at
    # 1.0013 on cpu 0 while cpu 1 ran the requester until 1.0001, then idled
    lines += [_switch(0, 0.5, 31, 0), _switch(1, 0.5, 0, 10), _switch(1, 1.0001, 10, 0), _switch(0, 1.0002, 0, 20),
              _switch(0, 1.0012, 20, 32), _switch(0, 1.0020, 32, 0)]  # fmt: skip
    # exchange 2, posted at 2.0: holder 30 starts at 2.0003 on cpu 1 beside holder 20 (from 2.0002 on cpu 0)
    lines += [_switch(0, 2.0002, 0, 20), _switch(1, 2.0003, 0, 30), _switch(0, 2.0012, 20, 0), _switch(1, 2.0013, 30, 0)]
    schedule = Schedule(sorted(lines, key=lambda s: float(s.split()[1].rstrip(":"))))
    assert schedule.instances() == [10, 20, 30]
    assert schedule.owner(32, [10, 20, 30]) == 30 and schedule.owner(5, [10, 20, 30]) is None
    trace = {"shm": [[_route(1, 0, 1.0, 1.0002, 1e-3, 2.4e-3), _route(2, 0, 1.0, 1.0013, 7e-4, 2.4e-3),
                      _route(1, 1, 2.0, 2.0002, 1e-3, 1.6e-3), _route(2, 1, 2.0, 2.0003, 1e-3, 1.6e-3), {"kind": "route", "parallel": 1, "holder": 1, "step": 2, "layer": 0,
                                                       "holder_start": 3.0}]]}  # fmt: skip
    assert [(a["holder"], b["holder"]) for a, b in pairs(trace["shm"])] == [(1, 2), (1, 2)]
    got = analyse(trace, schedule)["shm"]
    assert (got["exchanges"], got["serial"], got["serial_fraction"]) == (2, 1, 0.5)
    assert got["by_first_compute_ms"] == [{"from": 1.0, "to": 2.0, "exchanges": 2, "serial_fraction": 0.5}]
    serial = got["cpu_ms_per_exchange"]["serial"]  # 1.0 to 1.0013 on two CPUs: 2.6 ms in all
    assert serial["requester"] == pytest.approx(0.1, abs=1e-6) and serial["first holder"] == pytest.approx(1.0, abs=1e-6)
    assert serial["second holder"] == pytest.approx(0.1, abs=1e-6) and serial["idle"] == pytest.approx(1.4, abs=1e-6)
    overlapped = got["cpu_ms_per_exchange"]["overlapped"]  # 2.0 to 2.0003: cpu 0 idle then the first holder, cpu 1 idle
    assert overlapped == pytest.approx({"idle": 0.5, "first holder": 0.1}, abs=1e-6)
    assert got["median_ms"]["gap"] == pytest.approx((0.1 - 0.9) / 2, abs=1e-6)  # +0.1 ms serial, -0.9 ms overlapped
    assert got["median_ms"]["wall"] == pytest.approx(2.0)
