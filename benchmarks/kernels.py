"""Triton kernels vs torch eager on one CUDA GPU, against the copy and matmul ceilings (issue 5).

Run (CUDA + triton): python -m benchmarks.kernels --out DIR [--check] [--sweep]
Writes DIR/kernels-<gpu>-<date>.json and .csv and prints a table last. Per case, in us:
`launch_us` = `triton.testing.do_bench` (L2 flushed per call; Python wrapper and launch
overhead included: what an eager caller sees), `gpu_us` = the same call replayed in a CUDA
graph (GPU time, what a graph-captured decode step sees), `eager_us` = the torch reference
under do_bench; each median with p20/p80. Inputs rotate over several sets larger than L2
together. Roofline time = max(bytes / copy bandwidth, flops / matmul rate), both measured
first in the same run; % roofline and targets use gpu_us. Targets are reported, never
asserted. `--sweep` also times sparse_mla over a grid of block sizes, warps and stages.
"""

import argparse
import csv
import datetime as dt
import itertools
import json
import math
import socket
from pathlib import Path

import torch

try:
    import triton
    from triton.testing import do_bench, do_bench_cudagraph
except ImportError:  # importable on CPU without triton; main() needs both
    triton = None

from qroute.attention import RopeSpec, YarnScaling

L2_BYTES = 50 * 2**20
QUANTILES = [0.5, 0.2, 0.8]
YARN = RopeSpec(64, yarn=YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=1.0))


def timed(fn, sets, graph=False):
    """Median/p20/p80 in us of `fn(*args)` cycling over `sets`."""
    it = itertools.cycle(sets)
    call = lambda: fn(*next(it))  # noqa: E731
    try:
        ms = do_bench_cudagraph(call, rep=50, quantiles=QUANTILES) if graph else do_bench(call, quantiles=QUANTILES)
    except Exception as e:  # a graph capture that fails is reported, not fatal
        return {"error": f"{type(e).__name__}: {e}"[:200]}
    return {"median": ms[0] * 1e3, "p20": ms[1] * 1e3, "p80": ms[2] * 1e3}


def n_sets(bytes_per_set, cap=16):
    """Enough input sets that together they overflow L2 twice."""
    return max(2, min(cap, math.ceil(2 * L2_BYTES / max(bytes_per_set, 1))))


def copy_us(nbytes, cold=False):
    """GPU time of a plain device-to-device copy of `nbytes` (the fair ceiling for small gathers): one buffer pair
    (L2-resident when small), or with `cold` pairs that overflow L2 twice, like a gather's inputs."""
    count = n_sets(2 * nbytes) if cold else 1
    pairs = [torch.empty(2, nbytes // 2, dtype=torch.bfloat16, device="cuda").unbind() for _ in range(count)]
    return timed(lambda x, y: y.copy_(x), pairs, graph=True).get("median")


def ceilings():
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate."""
    a = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    b = torch.empty_like(a)
    copy_us = timed(lambda x, y: y.copy_(x), [(a, b)])["median"]
    del a, b
    m = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_us = timed(lambda x: x @ x, [(m,)])["median"]
    return {"copy_GBps": 2 * 2**30 / copy_us / 1e3, "matmul_TFLOPs": 2 * 8192**3 / mm_us / 1e6}


# ---- cases: each returns (name, shape, sets, triton fn, eager fn, bytes, flops, target, check fn)


def sparse_inputs(B, H, D, N, M):
    """q [B, H, D] bf16 and a block table [B, M] int32 of distinct random blocks of an N-block cache."""
    q = torch.randn(B, H, D, dtype=torch.bfloat16, device="cuda") * 0.3
    return q, torch.stack([torch.randperm(N, device="cuda")[:M] for _ in range(B)]).int()


def sparse_cases(K):
    """The issue's decode cases with the default kernel (the Hopper one on an H100 from B=8), and the Triton kernel
    again from B=8 (`sparse_mla-triton`), for the comparison in one run."""
    from qroute.kernels.sparse_mla import default_config, resolve_kernel

    H, D, V, bs, M, N = 128, 576, 512, 64, 32, 4096
    cache = torch.randn(N, bs, D, dtype=torch.bfloat16, device="cuda")
    for B, config in [(B, None) for B in (1, 8, 32, 64, 128)] + [(B, {"kernel": "triton"}) for B in (8, 32, 64, 128)]:
        nbytes = B * M * bs * D * 2 + B * H * (D + V) * 2 + B * H * 4 + B * M * 4
        flops = 2 * B * H * M * bs * (D + V)
        sets = [sparse_inputs(B, H, D, N, M) for _ in range(n_sets(nbytes))]
        tri = lambda q, t, c=config: K.sparse_mla(q, cache, t, D**-0.5, V, check=False, config=c)  # noqa: E731
        ref = lambda q, t: K.sparse_mla_reference(q, cache, t, D**-0.5, V, check=False)  # noqa: E731
        target = ("pct_roofline>=60", lambda r, t: r["pct_roofline"] >= 60) if B >= 32 else None
        target = ("gpu_us<=20", lambda r, t: t <= 20) if B == 1 else target
        used = resolve_kernel({**default_config(torch.bfloat16, H, B * M, q_device()), **(config or {})}, sets[0][0],
                              cache, V, config or {})  # fmt: skip
        shape = {"B": B, "H": H, "D": D, "v_dim": V, "block_size": bs, "blocks": M, "cache_blocks": N, "kernel": used}
        name = "sparse_mla" if config is None else "sparse_mla-triton"
        yield (f"{name} B={B}", shape, sets, tri, ref, nbytes, flops, target if config is None else None,
               _state_check(tri, ref, sets[0]))  # fmt: skip


def merge_inputs(P, B, H, V):
    """Input sets (o [P, B, H, V] bf16, lse [P, B, H] with 10% empty partials) overflowing L2, and the bytes a merge
    moves (P partials read, one state written)."""
    nbytes = (P + 1) * B * H * (V * 2 + 4)
    sets = []
    for _ in range(n_sets(nbytes)):
        lse = torch.randn(P, B, H, device="cuda") * 3
        lse[torch.rand(P, B, H, device="cuda") < 0.1] = float("-inf")
        sets.append((torch.randn(P, B, H, V, dtype=torch.bfloat16, device="cuda"), lse))
    return sets, nbytes


def merge_cases(K):
    B, H, V = 64, 128, 512
    for P in (8, 2):
        sets, nbytes = merge_inputs(P, B, H, V)
        target = ("gpu_us<=10", lambda r, t: t <= 10) if P == 8 else None
        tri = lambda o, lse: K.merge_partials(o, lse)  # noqa: E731
        yield (f"merge P={P}", {"P": P, "B": B, "H": H, "Dv": V}, sets, tri, K.merge_partials_reference,
               nbytes, 2 * P * B * H * V, target, _state_check(tri, K.merge_partials_reference, sets[0]))  # fmt: skip


def splice_cases(K):
    L, D = 61, 576
    for T in (2048, 128):
        nbytes = L * T * 64 * 2 * 2  # rope part read + written; the latent is not touched
        sets = [(torch.randn(L, T, D, dtype=torch.bfloat16, device="cuda"),) for _ in range(n_sets(L * T * D * 2))]
        tri = lambda kv: K.splice_rope_(kv, 4096, YARN)  # noqa: E731
        ref = lambda kv: K.splice_rope_(kv, 4096, YARN, backend="torch")  # noqa: E731
        target = ("gpu_us<=50", lambda r, t: t <= 50) if T == 2048 else None
        check = lambda kv=sets[0][0]: _err(K.splice_rope(kv, 4096, YARN), K.splice_rope_reference(kv, 4096, YARN))  # noqa: E731
        yield (f"splice T={T} L={L}", {"L": L, "T": T, "D": D, "offset": 4096, "yarn": True}, sets, tri, ref,
               nbytes, 3 * L * T * 64, target, check)  # fmt: skip


def gather_cases(K, copy_GBps):
    D, stores = 576, {}
    for bs, n in ((16, 1), (64, 1), (64, 8), (64, 56)):
        L, N = 61, 256
        if bs not in stores:
            stores[bs] = torch.randn(L, N, bs, D, dtype=torch.bfloat16, device="cuda")
        kv, size = stores[bs], L * n * bs * D * 2
        sets = [(torch.randperm(N, device="cuda")[:n], torch.empty(L, n * bs, D, dtype=torch.bfloat16, device="cuda"))
                for _ in range(n_sets(2 * size, cap=4 if size > 2**27 else 16))]  # fmt: skip
        tri = lambda ids, out, kv=kv: K.gather_store(kv, ids, out=out, check=False)  # noqa: E731
        ref = lambda ids, out, kv=kv: K.gather_store_reference(kv, ids)  # noqa: E731
        target = ("GBps>=70%copy", lambda r, t, c=copy_GBps: r["achieved_GBps"] >= 0.7 * c)
        check = lambda tri=tri, ref=ref, s=sets[0]: _err(tri(*s), ref(*s))  # noqa: E731
        yield (f"gather {size / 2**20:.1f}MB", {"L": L, "block_size": bs, "blocks": n, "D": D, "bytes_sent": size,
                                                "same_size_copy_gpu_us": copy_us(size),
                                                "same_size_cold_copy_gpu_us": copy_us(size, cold=True)},
               sets, tri, ref, 2 * size, 0, target, check)  # fmt: skip
    kv, size = stores[64], 61 * 8 * 64 * D * 2
    sets = [(torch.randperm(256, device="cuda")[:8], torch.randn(61, 8 * 64, D, dtype=torch.bfloat16, device="cuda"))
            for _ in range(4)]  # fmt: skip
    tri = lambda ids, buf: K.scatter_store(kv, ids, buf, check=False)  # noqa: E731
    ref = lambda ids, buf: K.scatter_store_reference(kv, ids, buf)  # noqa: E731
    check = lambda s=sets[0]: _err(tri(*s)[:, s[0]].reshape(s[1].shape), s[1])  # noqa: E731
    yield (f"scatter {size / 2**20:.1f}MB", {"L": 61, "block_size": 64, "blocks": 8, "D": D}, sets, tri, ref, 2 * size, 0,
           ("GBps>=70%copy", lambda r, t: r["achieved_GBps"] >= 0.7 * copy_GBps), check)  # fmt: skip


def _err(got, ref):
    diff = float((got.double() - ref.double()).abs().max())
    return {"max_abs": diff, "max_rel": diff / max(float(ref.double().abs().max()), 1e-30)}


def _state_check(tri, ref, args):
    def check():
        a, b = tri(*args), ref(*args)
        seen = torch.isfinite(b.lse)
        out = _err(a.o, b.o)
        out["lse_max_abs"] = float((a.lse[seen] - b.lse[seen]).abs().max()) if bool(seen.any()) else 0.0
        out["lse_inf_match"] = bool(torch.equal(torch.isfinite(a.lse), seen))
        return out

    return check


def run_case(case, ceil, do_check):
    name, shape, sets, tri, ref, nbytes, flops, target, check = case
    row = {"kernel": name.split()[0], "case": name, "shape": shape, "bytes": nbytes, "flops": flops}
    if do_check and check is not None:
        row["check"] = check()
        row["check"]["ok"] = row["check"]["max_rel"] <= 1e-2 and row["check"].get("lse_inf_match", True)
        print(f"check {name:24s} max_abs {row['check']['max_abs']:.3g} max_rel {row['check']['max_rel']:.3g}"
              f"{'' if row['check']['ok'] else '  FAIL'}", flush=True)  # fmt: skip
    row["launch_us"] = timed(tri, sets)
    row["gpu_us"] = timed(tri, sets, graph=True)
    row["eager_us"] = timed(ref, sets)
    t = row["gpu_us"].get("median") or row["launch_us"]["median"]  # GPU time; launch-inclusive if capture failed
    roof = max(nbytes / (ceil["copy_GBps"] * 1e3), flops / (ceil["matmul_TFLOPs"] * 1e6))
    row.update(achieved_GBps=nbytes / t / 1e3, achieved_TFLOPs=flops / t / 1e6, roofline_us=roof,
               pct_roofline=100 * roof / t, pct_roofline_launch=100 * roof / row["launch_us"]["median"],
               speedup_vs_eager=row["eager_us"]["median"] / row["launch_us"]["median"])  # fmt: skip
    if "same_size_copy_gpu_us" in shape:
        row["pct_same_size_copy"] = 100 * shape["same_size_copy_gpu_us"] / t
        row["pct_same_size_cold_copy"] = 100 * shape["same_size_cold_copy_gpu_us"] / t
    if row["kernel"].startswith("sparse_mla"):
        from qroute.kernels.sparse_mla import default_config

        row["kernel_config"] = default_config(torch.bfloat16, shape["H"], shape["B"] * shape["blocks"], q_device())
    if target is not None:
        row["target"], row["target_met"] = target[0], bool(target[1](row, t))
    return row


def sweep_sparse(K):
    """GPU time of sparse_mla over a grid of configs, per batch size (what `sparse_mla.CONFIGS` came from)."""
    H, D, V, bs, M, N = 128, 576, 512, 64, 32, 4096
    cache = torch.randn(N, bs, D, dtype=torch.bfloat16, device="cuda")
    # (BLOCK_H, BLOCK_N, num_warps, num_stages); 128 heads with 16 warps crashed ptxas with triton 3.6 on an H100
    grid = [(32, 32, 4, 2), (32, 64, 8, 1), (32, 64, 8, 2), (32, 64, 4, 2), (64, 32, 8, 2), (64, 32, 8, 3),
            (64, 64, 8, 2), (64, 64, 8, 3), (64, 64, 16, 2), (64, 32, 16, 3), (128, 32, 8, 1)]  # fmt: skip
    rows = []
    for B in (1, 8, 32, 64, 128):
        sets = [sparse_inputs(B, H, D, N, M) for _ in range(4)]
        for bh, bn, w, st in grid:
            cfg = {"BLOCK_H": bh, "BLOCK_N": bn, "num_warps": w, "num_stages": st}
            fn = lambda q, t, cfg=cfg: K.sparse_mla(q, cache, t, D**-0.5, V, config=cfg, check=False)  # noqa: E731
            t = timed(fn, sets, graph=True)  # a config that does not compile (shared memory) records its error
            rows.append({"B": B, **cfg, "gpu_us": t.get("median"), **({"error": t["error"]} if "error" in t else {})})
        best = min((r for r in rows if r["B"] == B and r.get("gpu_us")), key=lambda r: r["gpu_us"], default=None)
        print(f"sweep B={B}: best {best}", flush=True)
    return rows


def q_device():
    return torch.device("cuda", torch.cuda.current_device())


def machine():
    import numpy

    return {"gpu": torch.cuda.get_device_name(0), "host": socket.gethostname(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "numpy": numpy.__version__}  # fmt: skip


def write(out_dir: Path, result: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in result["machine"]["gpu"]).strip("-").lower()
    stem = out_dir / f"kernels-{slug}-{result['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cols = ["case", "bytes", "flops", "gpu_median_us", "gpu_p20_us", "gpu_p80_us", "launch_median_us", "launch_p20_us",
            "launch_p80_us", "eager_median_us", "achieved_GBps", "pct_roofline", "speedup_vs_eager", "target", "target_met"]  # fmt: skip
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in (r for r in result["cases"] if "error" not in r):
            w.writerow([r["case"], r["bytes"], r["flops"], *_us(r["gpu_us"]), *_us(r["launch_us"]),
                        r["eager_us"].get("median"), f"{r['achieved_GBps']:.1f}", f"{r['pct_roofline']:.1f}",
                        f"{r['speedup_vs_eager']:.2f}", r.get("target", ""), r.get("target_met", "")])  # fmt: skip
    return stem


def _us(t):
    return [t.get("median"), t.get("p20"), t.get("p80")]


def print_table(result):
    c = result["ceilings"]
    print(f"\n{result['machine']['gpu']}: copy {c['copy_GBps']:.0f} GB/s, bf16 matmul {c['matmul_TFLOPs']:.0f} TFLOP/s")
    head = f"{'gpu us (p20-p80)':>22s} {'launch us':>10s} {'eager us':>9s} {'GB/s':>6s} {'%roof':>6s}"
    print(f"{'case':24s} {head}  target (on gpu us)")
    for r in result["cases"]:
        if "error" in r:
            print(f"{r['case']:24s} ERROR {r['error'][:90]}")
            continue
        g = r["gpu_us"] if "median" in r["gpu_us"] else r["launch_us"]
        tgt = f"{r['target']} {'met' if r['target_met'] else 'MISSED'}" if "target" in r else ""
        print(f"{r['case']:24s} {g['median']:8.1f} ({g['p20']:.1f}-{g['p80']:.1f}) {r['launch_us']['median']:10.1f} "
              f"{r['eager_us']['median']:9.1f} {r['achieved_GBps']:6.0f} {r['pct_roofline']:6.1f}  {tgt}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for the JSON and CSV")
    ap.add_argument("--check", action="store_true", help="first compare every kernel with its reference (bf16 tolerance)")
    ap.add_argument("--sweep", action="store_true", help="also time sparse_mla over a grid of configs (~1 min more)")
    ap.add_argument("--only", default="sparse_mla,merge,splice,gather", help="comma list of kernels to time")
    args = ap.parse_args()
    if triton is None or not torch.cuda.is_available():
        raise SystemExit("benchmarks.kernels needs a CUDA device and triton")
    import qroute.kernels as K

    torch.manual_seed(0)
    ceil = ceilings()
    print(f"ceilings: {ceil}", flush=True)
    rows = []
    kinds = {"sparse_mla": lambda: sparse_cases(K), "merge": lambda: merge_cases(K), "splice": lambda: splice_cases(K),
             "gather": lambda: gather_cases(K, ceil["copy_GBps"])}  # fmt: skip
    wanted = [k for k in args.only.split(",") if k]
    if set(wanted) - set(kinds):
        raise SystemExit(f"--only {args.only!r}: expected names among {', '.join(kinds)}")
    for case in itertools.chain.from_iterable(kinds[k]() for k in wanted):
        try:  # one failing case (compile error, out of memory) is recorded, not fatal
            rows.append(run_case(case, ceil, args.check))
            gpu, launch = rows[-1]["gpu_us"].get("median") or math.nan, rows[-1]["launch_us"]["median"]
            print(f"{case[0]}: gpu {gpu:.1f} us, launch {launch:.1f} us", flush=True)
        except Exception as e:
            rows.append({"case": case[0], "error": f"{type(e).__name__}: {e}"[:500]})
            print(f"{case[0]}: FAILED {rows[-1]['error']}", flush=True)
        torch.cuda.empty_cache()
    sweep = sweep_sparse(K) if args.sweep else None
    result = {"kind": "kernels", "date": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": machine(),
              "config": {"quantiles": QUANTILES, "l2_bytes_assumed": L2_BYTES, "dtype": "bfloat16",
                         "time_basis": "gpu_us = CUDA-graph replay; launch_us = do_bench incl. Python and launch"},
              "ceilings": ceil, "cases": rows, "sparse_mla_sweep": sweep}  # fmt: skip
    stem = write(args.out, result)
    print_table(result)
    print(f"-> {stem}.json, {stem}.csv")
    if any("error" in r for r in rows) or (args.check and not all(r["check"]["ok"] for r in rows if "check" in r)):
        raise SystemExit("some case failed or did not match its reference: see 'error' / 'check' in the JSON")


if __name__ == "__main__":
    main()
