"""benchmarks/p2p.py: its CPU methods over gloo on real processes, and its tables and fits."""

import pytest
import torch

from benchmarks import p2p
from qroute.runtime import transport
from qroute.runtime.launcher import ClusterSpec, launch

pytestmark = pytest.mark.timeout(120)


def test_cpu_methods_time_every_size_over_gloo():
    methods, sizes = ["nccl", "qroute", "qroute-2", "shm"], [8, 3000, transport.FIRST + 8]
    out = launch(ClusterSpec(world_size=2, timeout_s=60.0, frames="exact", shm=True), p2p.instance_main, methods, sizes, 4,
                 "CUDA")  # fmt: skip
    assert out[1] == {"nccl": {s: [] for s in sizes}, "qroute": {}, "qroute-2": {}, "shm": {}}  # rank 1 echoes only
    for method in methods:
        assert sorted(out[0][method]) == sizes
        assert all(len(ts) == 4 and all(0 < t < 5 for t in ts) for ts in out[0][method].values())


def test_rows_and_fits():
    alpha, beta = 50e-6, 400e9  # seconds; bytes/s over both ways
    sizes = [1152, 16 * 1152, 256 * 1152, 4 << 20]
    results = {"put": {s: [alpha + 2 * s / beta] * 5 for s in sizes}, "put-cpu": {"error": "3 of 9 differ"},
               "cuda": {"launch+wait": [30e-6] * 5}}  # fmt: skip
    rows = p2p._rows(results)
    assert [r["size"] for r in rows] == [*sizes, "", "launch+wait"]
    assert rows[4] == {"method": "put-cpu", "size": "", "error": "3 of 9 differ"}
    assert rows[0]["median_us"] == pytest.approx((alpha + 2 * 1152 / beta) * 1e6)
    assert rows[3]["rate_GBps"] == pytest.approx((4 << 20) / ((alpha + 2 * (4 << 20) / beta) / 2) / 1e9)
    fits = p2p._fits(rows)
    assert list(fits) == ["put"]  # an error or named steps have no line
    assert fits["put"]["alpha_us"] == pytest.approx(alpha * 1e6, rel=1e-3)
    assert fits["put"]["beta_GBps"] == pytest.approx(beta / 1e9, rel=1e-3)


def test_put_needs_gpus_and_bad_methods_are_refused(capsys):
    if torch.cuda.device_count() >= 2:
        pytest.skip("two GPUs: every method runs")
    with pytest.raises(SystemExit):
        p2p.parse(["--backend", "gloo", "--methods", "put"])
    assert "method 'put': expected one of nccl, qroute, qroute-2, shm" in capsys.readouterr().err
