"""benchmarks.drift reads levels against a profile and separates the machine's drift from a shape bias (synthetic
traces; no cluster)."""

import pytest

from benchmarks.drift import block_levels, record_levels, summarize
from qroute.cost import CostModel, load_profile
from qroute.geometry import preset


@pytest.fixture(scope="module")
def model():
    return CostModel(preset("deepseek-v2-lite"), load_profile("published-h100"))


def _record(model, rows, tokens, holder_level, network_level, t, path="ibgda", **extra):
    c, spec = model.coef, model.profile.path(path)
    exchange = model.route_bytes(rows)
    network = spec.alpha(exchange) + spec.route_move_s(rows * c.q_row_bytes, exchange) + \
        spec.route_move_s(rows * c.o_row_bytes, exchange)  # fmt: skip
    compute = holder_level * model.attention_s(rows, tokens)
    return {"kind": "route", "path": path, "groups": [[rows, tokens]], "parallel": 1, "holder_compute_s": compute,
            "wall_s": compute + network_level * network, "rtt_s": 0.0, "t_post": t, **extra}  # fmt: skip


def test_levels_of_records_and_blocks(model):
    r = _record(model, 32, 512, 1.25, 0.8, 1.0)
    assert record_levels(r, model) == pytest.approx({"holder": 1.25, "network": 0.8})
    trace = [_record(model, rows, 64 * rows, level, 1.0, t) for t, (rows, level) in enumerate([(16, 1.0), (64, 1.1), (256, 1.3)])]
    # first steps, the idle ladder's requests, parallel exchanges and batches (several groups) are not warm singles
    trace += [_record(model, 16, 64, 9.0, 9.0, 5.0, first_step=True), _record(model, 16, 64, 9.0, 9.0, 5.0, ladder=True),
              {**_record(model, 16, 64, 9.0, 9.0, 5.0), "parallel": 2}, {**_record(model, 16, 64, 9.0, 9.0, 5.0),
                                                                         "groups": [[16, 64], [16, 64]]}, {"kind": "merge"}]  # fmt: skip
    got = block_levels(trace, model)
    assert got["n"] == 3 and got["t"] == 1.0
    assert got["holder"] == pytest.approx(1.1) and got["network"] == pytest.approx(1.0)
    assert got["waited"] is None  # records without the holder's CPU time
    cpu = [{**r, "holder_cpu_s": f * r["holder_compute_s"]} for r, f in zip(trace[:3], (1.0, 0.8, 0.9))]
    assert block_levels(cpu, model)["waited"] == pytest.approx(0.1)
    assert block_levels([{"kind": "merge"}], model) == {"n": 0, "t": None, "holder": None, "network": None, "waited": None}


def test_summary_drift_and_shape_bias():
    def block(kind, rnd, holder, network=1.0, path="shm"):
        return {"kind": kind, "round": rnd, "path": path, "n": 10, "t": float(rnd), "holder": holder, "network": network}

    # the machine slows from 1.0 to 1.4 over the run; each validation pass runs 5% faster than the training beside it
    blocks = [block("calibration", 0, 1.0), block("validation", 0, 0.95), block("training", 0, 1.0),
              block("validation", 1, 1.14), block("training", 1, 1.2), block("validation", 2, 1.33), block("training", 2, 1.4),
              block("calibration", 0, 2.0, path="gloo")]  # fmt: skip
    s = summarize(blocks)
    holder = s["shm"]["holder"]
    assert holder["shape_bias"] == pytest.approx(0.95)
    assert holder["drift"] == pytest.approx((1.4 - 0.95) / 1.14)
    assert holder["pairs"] == [[0.95, 1.0], [1.14, 1.2], [1.33, 1.4]]
    assert s["shm"]["network"]["drift"] == 0.0 and s["shm"]["network"]["shape_bias"] == 1.0
    assert s["gloo"]["holder"]["shape_bias"] is None and s["gloo"]["holder"]["drift"] == 0.0


def test_page_faults_of_this_process_and_of_one_gone():
    import mmap
    import os

    from benchmarks.drift import instance_pids, page_faults

    assert os.getpid() in instance_pids()
    before = page_faults([os.getpid()])
    with mmap.mmap(-1, 8 << 20) as fresh:  # a new anonymous mapping: its pages fault on first touch, whatever the
        for i in range(0, len(fresh), mmap.PAGESIZE):  # heap (an earlier test may have retained one)
            fresh[i] = 1
        after = page_faults([os.getpid(), 2**22 + 7])  # a pid that is not there counts 0
    assert after["requester"] > before["requester"] and after["holders"] == 0
