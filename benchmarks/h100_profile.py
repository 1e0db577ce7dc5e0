"""Build the `h100-kernels` profile from a kernel benchmark result (`python -m benchmarks.kernels` on an H100).

    python -m benchmarks.h100_profile [benchmarks/results/kernels-<gpu>-<date>.json]

Fits the cost model's compute coefficients to qroute's own kernels as measured (GPU
time of CUDA-graph replays: what a decode step captured in a graph pays; an eager launch
adds the `launch_us - gpu_us` of the result file):

    attention  sparse MLA decode at B = 1..128 queries x 128 heads x top-2048:  fixed + bytes/copy + flops/rate
    merge      P = 2 and 8 partial states of 64 x 128 rows:                      fixed + rows * P * o_bytes / Bps
    splice     128 and 2048 tokens x 61 layers, one launch:                      fixed + tokens * layers * per_entry
    gather     16..3584 tokens x 61 layers of a paged store:                     fixed + tokens * layers * per_entry

Paths (IBGDA, NVLink) and re-prefill are not measured here: they are copied from
`published-h100` and say so in their `source`. Writes qroute/cost/profiles/h100-kernels.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from qroute.calibration.fit import nonneg_lstsq, rate
from qroute.cost import load_profile
from qroute.cost.profile import SCHEMA_ID, validate
from qroute.geometry import preset

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "qroute" / "cost" / "profiles" / "h100-kernels.json"


def _cases(result: dict, kernel: str) -> list[dict]:
    return [c for c in result["cases"] if c["kernel"] == kernel]


def _fit(rows, seconds) -> tuple[np.ndarray, float]:
    fit = nonneg_lstsq(np.array(rows, dtype=float), np.array(seconds))
    return fit.coef, fit.max_ape


def coefficients(result: dict) -> tuple[dict, dict]:
    """Compute coefficients (profile JSON form) and each fit's largest relative residual."""
    g = preset("deepseek-v3")  # 576-wide latent rows, 512-wide values: the benchmark's geometry
    o_bytes = g.coefficients("bf16", "bf16").o_row_bytes
    gpu = lambda c: c["gpu_us"]["median"] * 1e-6  # noqa: E731
    kernels = sorted({c["shape"].get("kernel", "triton") for c in _cases(result, "sparse_mla")})
    where = f"measured: qroute's kernels on {result['machine'].get('gpu', 'a GPU')}, {result['date'][:10]}, "
    # Each benchmark query reads its own 2048 tokens, so bytes and FLOPs grow together and one fit cannot split
    # them: the bytes are priced at the measured copy rate, the rest of the time is per-row work (FLOPs), which
    # is how a request of many rows over one selection scales (the kernel re-reads the tokens per query).
    copy = result["ceilings"]["copy_GBps"] * 1e9
    mla = _cases(result, "sparse_mla")
    a, a_err = _fit([[1.0, c["flops"]] for c in mla], [gpu(c) - c["bytes"] / copy for c in mla])
    a = [a[0], 1.0 / copy, a[1]]
    merge = _cases(result, "merge")
    m, m_err = _fit([[1.0, c["shape"]["B"] * c["shape"]["H"] * c["shape"]["P"] * o_bytes] for c in merge], [gpu(c) for c in merge])
    splice = _cases(result, "splice")
    s, s_err = _fit([[1.0, c["shape"]["T"] * c["shape"]["L"]] for c in splice], [gpu(c) for c in splice])
    gather = _cases(result, "gather")
    gt, g_err = _fit([[1.0, c["shape"]["blocks"] * c["shape"]["block_size"] * c["shape"]["L"]] for c in gather],
                     [gpu(c) for c in gather])  # fmt: skip
    attention = {"fixed_s": float(a[0]), "read_Bps": rate(a[1]), "flops_per_s": rate(a[2]),
                 "source": where + f"sparse MLA decode ({' / '.join(kernels)}), B = 1..128 x 128 heads x top-2048: fixed + FLOPs "
                 "(bytes at the measured copy rate; the two grow together in this sweep)"}  # fmt: skip
    compute = {
        "attention": attention,
        "local_attention": {**attention, "source": "assumed: the same kernel as the holder's partial attention"},
        "merge": {"fixed_s": float(m[0]), "Bps": rate(m[1]), "source": where + "merge of P = 2 and 8 states"},
        "splice": {"fixed_s": float(s[0]), "per_layer_s": 0.0, "per_token_layer_s": float(s[1]),
                   "source": where + "fused splice of all layers in one launch, 128 and 2048 tokens x 61 layers"},
        "gather": {"fixed_s": float(gt[0]), "per_holder_layer_s": 0.0, "per_entry_s": float(gt[1]),
                   "source": where + "paged-store gather, 16..3584 tokens x 61 layers"},
    }  # fmt: skip
    return compute, {"attention": a_err, "merge": m_err, "splice": s_err, "gather": g_err}


def build(result: dict, source_file: str) -> dict:
    base = load_profile("published-h100").to_dict()
    compute, errors = coefficients(result)
    reprefill = {**base["compute"]["reprefill"], "source": "from published-h100 (not measured here): " + base["compute"]["reprefill"]["source"]}
    paths = {n: {**p, "source": "from published-h100 (not measured here): " + p["source"]} for n, p in base["paths"].items()}
    data = {
        "schema": SCHEMA_ID, "name": "h100-kernels", "provenance": "measured",
        "description": "published-h100 with the compute coefficients of qroute's own kernels measured on an H100 "
        "(attention, merge, splice, gather; GPU time of CUDA-graph replays; attention's flops_per_s is what is left after the "
        "bytes at the measured copy rate, not a tensor-core rate). Paths and re-prefill are the paper's "
        "published or assumed figures, copied from published-h100: not measured here.",
        "machine": {**result["machine"], "benchmark": source_file}, "created": result["date"],
        "paths": paths, "default_paths": base["default_paths"], "compute": {**compute, "reprefill": reprefill},
        "fits": {"max_rel_residual": errors, "ceilings": result["ceilings"]},
    }  # fmt: skip
    validate(data, str(OUT))
    return data


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else sorted((ROOT / "benchmarks" / "results").glob("kernels-*.json"))[-1]
    data = build(json.loads(path.read_text()), path.name)
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    for name, err in data["fits"]["max_rel_residual"].items():
        print(f"{name:10s} max fit residual {err:.1%}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
