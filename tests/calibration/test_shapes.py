"""The warm-up before timed work: speed probes until two in a row agree, bounded in rounds and seconds."""

import pytest

from qroute.calibration import shapes


def probes(monkeypatch, seq, seconds_each=0.0, first_s=None):
    """Make `speed_probe` return the given route seconds in turn (fetch and local steady), advancing a fake clock by
    `seconds_each` a probe (`first_s` for the first, where given)."""
    seen, clock = [], [0.0]

    def probe(executor, world, reps=3):
        assert reps == 1  # the warm-up times nothing: one run per probe
        clock[0] += first_s if first_s is not None and not seen else seconds_each
        seen.append(seq[len(seen)])
        return {"route": seen[-1], "fetch": 1.0, "local": 2.0}

    monkeypatch.setattr(shapes, "speed_probe", probe)
    monkeypatch.setattr(shapes.time, "perf_counter", lambda: clock[0])
    return seen


@pytest.mark.parametrize(
    "seq, rounds",
    [
        ([1.0, 1.02], 2),  # warm from the start: two probes
        ([3.0, 1.8, 1.2, 1.01, 1.0], 5),  # a cold GPU speeding up: until two agree within 5%
        ([3.0, 2.0, 1.0, 1.5, 1.2, 1.4, 1.1, 1.3, 9.9], 8),  # never steady: at most 8 probes
    ],
)
def test_warm_up_probes_until_two_in_a_row_agree(monkeypatch, seq, rounds):
    seen = probes(monkeypatch, seq)
    out = shapes.warm_up(None, None)
    assert len(out) == len(seen) == rounds
    assert [p["route"] for p in out] == seq[:rounds]


def test_warm_up_stops_at_its_time_budget_counted_after_the_first_probe(monkeypatch):
    seen = probes(monkeypatch, [3.0, 2.0, 1.0, 0.5, 0.25, 0.1], seconds_each=8.0)
    shapes.warm_up(None, None)
    assert len(seen) == 4  # 8, 16, 24 s after the first: past the 20 s budget after the fourth probe
    seen = probes(monkeypatch, [3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05], seconds_each=0.3, first_s=5.0)
    shapes.warm_up(None, None, budget_s=1.0)  # quick's budget: a first probe that loads kernels does not spend it
    assert len(seen) == 5  # 0.3, 0.6, 0.9, 1.2 s after the first


def test_forced_executor_serves_the_primitive_it_is_told_with_any_profile():
    """What warms a cluster before a quick calibration: no profile of this machine exists yet, so its plans come
    from a built-in one and only the primitive asked for runs (here local, which needs no holder process)."""
    from qroute.runtime.world import WorldSpec, build_world
    from qroute.workload.corpus import CorpusSpec

    world = build_world(WorldSpec(corpus=CorpusSpec(max_tokens=2048, chunk_blocks=8)), [1], device="cpu")
    executor = shapes.forced_executor(world)
    request = shapes.shaped_request(world, 1, 2, 6, 1, seed=3)
    session = shapes.serve(executor, request, "local")
    assert executor.rank == 0 and executor.cost.profile.name == "published-h100"
    assert session.measured.total > 0 and session.measured.messages == 0
    assert {h.primitive for h in session.plan.holders} == {"local"}
