"""benchmarks.exchange_tails: exchanges grouped from a trace, and the median of a sum against n medians."""

import numpy as np

from benchmarks.exchange_tails import analyse, exchanges, tails


def _route(run, step, layer, holder, rows, wall, compute, first=False):
    return {"kind": "route", "run": run, "step": step, "layer": layer, "holder": holder, "rows": rows, "rtt_s": wall,
            "wall_s": wall, "holder_compute_s": compute, "first_step": first}  # fmt: skip


def test_exchanges_pair_holders_and_skip_first_steps():
    recs = [_route(0, 1, 0, 1, 32, 2e-3, 1e-3), _route(0, 1, 0, 2, 32, 2e-3, 1.5e-3),  # one 2-holder exchange
            _route(0, 1, 1, 1, 32, 1e-3, 0.4e-3), _route(1, 1, 1, 1, 32, 3e-3, 1e-3),  # same step/layer, other run
            _route(0, 2, 0, 1, 32, 9e-3, 1e-3, first=True), {"kind": "merge", "seconds": 1.0}]  # fmt: skip
    got = exchanges(recs)
    assert sorted(got) == [(1, 32), (2, 32)]
    assert np.allclose(got[(2, 32)], [0.5e-3]) and np.allclose(sorted(got[(1, 32)]), [0.6e-3, 2e-3])


def test_no_tail_sums_like_medians_and_a_stall_tail_like_means():
    rng = np.random.default_rng(3)
    body = 1e-3 * (1 + 0.01 * rng.standard_normal(400))
    flat = tails(list(body))
    assert abs(flat["mean_over_median"] - 1) < 0.01
    assert all(abs(v - 1) < 0.01 for v in flat["sum_median_over_n_medians"].values())
    stalled = body.copy()
    stalled[rng.random(400) < 0.2] += 4e-3  # a 4 ms stall in ~20% of the exchanges: mean ~1.8x the median
    t = tails(list(stalled))
    ratio = t["sum_median_over_n_medians"]
    assert abs(ratio["2"] - 1) < 0.1  # two draws: most sums hold no stall
    assert ratio["2"] < ratio["8"] < ratio["32"] <= t["mean_over_median"] + 0.05  # towards the mean as n grows
    assert t["mean_over_median"] > 1.6 and t["p90_over_median"] > 4


def test_analyse_keeps_shapes_with_ten_exchanges_or_more():
    run = [_route(0, s, 0, 1, 16, 1e-3 + 1e-5 * s, 5e-4) for s in range(12)] + [_route(0, 100, 0, 1, 64, 2e-3, 1e-3)]
    out = analyse({"shm": [run]})
    assert [(s["holders"], s["rows"], s["n"]) for s in out["shm"]] == [(1, 16, 12)]
