"""FlashInfer's MLA decode and merge_states vs qroute's Triton kernels and torch eager, in one process (issue 5).

Run (CUDA + triton + flashinfer-python): python -m benchmarks.flashinfer_mla --out DIR [--backends fa3,fa2]
Writes DIR/flashinfer-<gpu>-<date>.json and .csv and prints a table last.

Cases (the issue's): sparse MLA decode, B in {1, 32, 64, 128} queries x H=128 heads x 32 selected
blocks of 64 tokens (top-k 2048) of a 4096-block paged latent cache, q [B, H, 576] bf16, values =
the first 512 columns; and the exact merge of P=8 partial states (and P=2) of B=64 x H=128 x 512.

FlashInfer mapping. Decode: `flashinfer.mla.BatchMLAPagedAttentionWrapper` with page_size = block
size 64, one request per query, and that query's selected blocks as its page list (kv_indices =
the block-table row, kv_len = 32 * 64); query and cache passed packed ([..., 512 | 64], no copy);
planned once per input set outside the timings (`plan` is host work per batch, like our block
table upload); LSE asked in natural log (`lse_mode="basee"`, `return_lse_base_on_e=True`), so it
compares with ours directly. Merge: `flashinfer.merge_states(v [B, P, H, Dv], s [B, P, H])` for
P=8 and `flashinfer.merge_state(v_a, s_a, v_b, s_b)` for P=2. FlashInfer's merge takes the LSE in
base 2 and its layout is state-minor, ours is `o [P, B, H, Dv]`, natural log: its inputs are
converted (lse * log2(e), permuted contiguous copy) before timing, its output lse * ln(2) after.
With H=128 and Dv=512 its launch (one block of Dv/16 x num_heads threads per position) exceeds
1024 threads and fails; that is recorded under `errors` (so the exit status is 1), and the B x H
rows are also timed regrouped as positions of 1, 8 and 32 heads (`flashinfer_h1/_h8/_h32`).

Timings as in benchmarks.kernels: `launch_us` = triton.testing.do_bench (L2 flushed, Python and
launch included), `gpu_us` = the same calls replayed in a CUDA graph; median with p20/p80, inputs
rotating over sets larger than L2 together. FlashInfer's JIT build (nvcc, at first use) runs first,
its wall time per module is reported under `compile` and excluded from every timing.
"""

import argparse
import csv
import datetime as dt
import json
import math
import subprocess
import threading
import time
import traceback
from pathlib import Path

import torch

from benchmarks.kernels import QUANTILES, _err, ceilings, machine, merge_inputs, n_sets, sparse_inputs, timed, triton

H, D, V, BS, M, N = 128, 576, 512, 64, 32, 4096  # heads, latent+rope, value width, block size, blocks per query, cache blocks
BATCHES = (1, 32, 64, 128)
LOG2E = 1.0 / math.log(2.0)
WORKSPACE_BYTES = 128 * 2**20  # FlashInfer's suggested float workspace


def import_flashinfer():
    """flashinfer, or a one-line exit naming why it cannot be imported."""
    try:
        import flashinfer
        import flashinfer.mla  # noqa: F401
    except Exception as e:  # ImportError, or a missing dependency raised as something else
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise SystemExit(f"benchmarks.flashinfer_mla: cannot import flashinfer ({msg}); carry its wheel, see docs/kernels.md")
    return flashinfer


def versions(fi) -> dict:
    out = {"flashinfer": fi.__version__}
    try:
        import tvm_ffi

        out["apache_tvm_ffi"] = getattr(tvm_ffi, "__version__", "?")
    except ImportError:
        pass
    try:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30).stdout
        out["nvcc"] = next((ln.strip() for ln in nvcc.splitlines() if "release" in ln), nvcc.strip()[-80:])
    except Exception as e:
        out["nvcc"] = f"not found ({type(e).__name__})"
    return out


# ---- FlashInfer calls


def csr(table):
    """CSR page metadata of a block table [B, M]: one request of one query row per table row."""
    B, m = table.shape
    return fi_mla().MLAPlanMetadata.csr(
        torch.arange(B + 1, dtype=torch.int32, device=table.device),
        torch.arange(B + 1, dtype=torch.int32, device=table.device) * m,
        table.reshape(-1).int().contiguous(),
        torch.full((B,), m * BS, dtype=torch.int32, device=table.device),
    )


def fi_mla():
    import flashinfer.mla

    return flashinfer.mla


def planned(backend, table, workspace):
    """A BatchMLAPagedAttentionWrapper planned for `table` (the JIT build happens at the first plan)."""
    w = fi_mla().BatchMLAPagedAttentionWrapper(workspace, backend=backend)
    w.plan(metadata=csr(table), num_heads=H, head_dim_ckv=V, head_dim_kpe=D - V, page_size=BS, causal=False,
           sm_scale=D**-0.5, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, lse_mode="basee")  # fmt: skip
    return w


def fi_run(w, q, cache):
    return w.run(query=q, kv_cache=cache, return_lse=True, return_lse_base_on_e=True)


def compile_all(fi, backends, workspace):
    """Build every FlashInfer module used, concurrently (ninja/nvcc run as subprocesses); wall seconds each."""
    cache = torch.randn(4, BS, D, dtype=torch.bfloat16, device="cuda")
    table = torch.arange(2, dtype=torch.int32, device="cuda").reshape(1, 2)
    q = torch.randn(1, H, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(2, 2, 8, V, dtype=torch.bfloat16, device="cuda")  # [seq, states, heads, dim]; 8 heads: see merge_case
    s = torch.randn(2, 2, 8, device="cuda")
    va, vb, sa, sb = (x.contiguous() for x in (v[:, 0], v[:, 1], s[:, 0], s[:, 1]))
    jobs = {f"mla_{b}": lambda b=b: fi_run(planned(b, table, workspace), q, cache) for b in backends}
    jobs["cascade (merge_states, merge_state)"] = lambda: (fi.merge_states(v, s), fi.merge_state(va, sa, vb, sb))  # fmt: skip
    out = {}

    def job(name, fn):
        t0 = time.perf_counter()
        try:
            fn()
            torch.cuda.synchronize()
            out[name] = {"seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:
            out[name] = {"seconds": round(time.perf_counter() - t0, 1), "error": _tail(e)}

    t0 = time.perf_counter()
    threads = [threading.Thread(target=job, args=kv) for kv in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["wall_seconds_all_concurrent"] = round(time.perf_counter() - t0, 1)
    return out


def _tail(e, n=1500):
    """Exception text, the end kept (nvcc's error is at the end of a build log)."""
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= n else "..." + text[-n:]


# ---- cases


def check_state(o, lse, ref):
    """Max abs/rel error of o and max abs error of lse (finite entries) against a reference state."""
    seen = torch.isfinite(ref.lse)
    out = _err(o, ref.o)
    out["lse_max_abs"] = float((lse[seen] - ref.lse[seen]).abs().max()) if bool(seen.any()) else 0.0
    out["lse_inf_match"] = bool(torch.equal(torch.isfinite(lse), seen))
    out["nonfinite_o"] = int((~torch.isfinite(o.float())).sum())
    out["ok"] = out["max_rel"] <= 1e-2 and out["lse_max_abs"] <= 1e-2 and out["lse_inf_match"]
    return out


def sparse_case(K, B, cache, backends, workspace):
    scale = D**-0.5
    nbytes = B * M * BS * D * 2 + B * H * (D + V) * 2 + B * H * 4 + B * M * 4
    sets = [sparse_inputs(B, H, D, N, M) for _ in range(n_sets(nbytes))]
    impls = {
        "qroute": (lambda q, t: K.sparse_mla(q, cache, t, scale, V, check=False), sets),  # the default kernel
        "qroute_triton": (lambda q, t: K.sparse_mla(q, cache, t, scale, V, check=False, config={"kernel": "triton"}), sets),
        "torch_eager": (lambda q, t: K.sparse_mla_reference(q, cache, t, scale, V, check=False), sets),
    }
    errors = {}
    for b in backends:
        try:
            impls[f"flashinfer_{b}"] = (lambda q, w: fi_run(w, q, cache), [(q, planned(b, t, workspace)) for q, t in sets])
        except Exception as e:
            errors[f"flashinfer_{b}"] = _tail(e)
    q0, t0 = sets[0]
    ref = K.sparse_mla_reference(q0, cache, t0, scale, V, check=False)
    checks = {}
    for name, (fn, s) in impls.items():
        if name == "torch_eager":
            continue
        try:
            got = fn(*s[0])
            o, lse = (got.o, got.lse) if hasattr(got, "o") else got
            checks[name] = check_state(o, lse, ref)
        except Exception as e:
            errors[name] = _tail(e)
            clear_cuda_error()
    shape = {"B": B, "H": H, "D": D, "v_dim": V, "block_size": BS, "blocks": M, "tokens": M * BS, "cache_blocks": N,
             "input_sets": len(sets)}  # fmt: skip
    flops = 2 * B * H * M * BS * (D + V)
    return run_impls(f"sparse_mla B={B}", shape, nbytes, flops, impls, checks, errors)


def fi_merge_inputs(o, lse, h):
    """FlashInfer's merge inputs for ours (o [P, B, H, Dv], lse [P, B, H] natural log), with h heads per row.

    Rows are independent, so the B x H rows may be regrouped as (B*H/h) "positions" of h heads:
    merge_state (P=2) takes views of ours, merge_states takes a permuted contiguous copy."""
    P, B, Hm, Dv = o.shape
    s2 = lse * LOG2E  # FlashInfer's lse is base 2
    if P == 2:  # merge_state(v_a, s_a, v_b, s_b): [seq, h, Dv] / [seq, h]
        return (o[0].reshape(-1, h, Dv), s2[0].reshape(-1, h).contiguous(), o[1].reshape(-1, h, Dv),
                s2[1].reshape(-1, h).contiguous())  # fmt: skip
    # merge_states(v [seq, P, h, Dv], s [seq, P, h])
    return (o.reshape(P, -1, h, Dv).permute(1, 0, 2, 3).contiguous(), s2.reshape(P, -1, h).permute(1, 0, 2).contiguous())


def clear_cuda_error():
    """Reset CUDA's last error after a failed FlashInfer launch (it reports the launch's status but leaves the
    error set, and the next torch op would raise it as its own)."""
    import ctypes

    paths = {ln.split()[-1] for ln in open("/proc/self/maps") if "libcudart.so" in ln}
    for path in paths:
        try:
            ctypes.CDLL(path).cudaGetLastError()
        except OSError:
            pass
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1)  # a stale error left anyway surfaces (and is dropped) here
        torch.cuda.synchronize()
    except Exception:
        pass


def merge_case(K, fi, P, merge_ok):
    B, Hm, Dv = 64, H, V
    sets, nbytes = merge_inputs(P, B, Hm, Dv)
    impls = {"qroute_triton": (lambda o, lse: K.merge_partials(o, lse), sets),
             "torch_eager": (K.merge_partials_reference, sets)}  # fmt: skip
    # FlashInfer's merge launches one block of (Dv / vec) x num_heads threads per position: 32 x 128 = 4096 for
    # Dv = 512, H = 128, over CUDA's 1024 (its error: "invalid argument"). Tried with the B x H rows regrouped
    # as positions of 1, 8 and 32 heads (32 to 1024 threads a block), and as is (last: it fails).
    variants = {"flashinfer_h1": 1, "flashinfer_h8": 8, "flashinfer_h32": 32, "flashinfer": Hm} if merge_ok else {}
    fi_fn = fi.merge_state if P == 2 else fi.merge_states
    for name, h in variants.items():
        impls[name] = (fi_fn, [fi_merge_inputs(o, lse, h) for o, lse in sets])
    errors = {}
    ref = K.merge_partials_reference(*sets[0])
    checks = {}
    for name in (n for n in impls if n != "torch_eager"):
        fn, s = impls[name]
        try:
            got = fn(*s[0])
            o, lse = (got.o, got.lse) if hasattr(got, "o") else got
            if name.startswith("flashinfer"):
                o, lse = o.reshape(B, Hm, Dv), lse.reshape(B, Hm) / LOG2E  # back to [B, H], natural log
            checks[name] = check_state(o, lse, ref)
        except Exception as e:
            errors[name] = _tail(e)
            clear_cuda_error()
    api = "merge_state(v_a, s_a, v_b, s_b)" if P == 2 else "merge_states(v [B,P,H,Dv], s [B,P,H])"
    shape = {"P": P, "B": B, "H": Hm, "Dv": Dv, "neg_inf_fraction": 0.1, "input_sets": len(sets), "flashinfer_api": api,
             "flashinfer_heads_per_position": variants}  # fmt: skip
    return run_impls(f"merge P={P}", shape, nbytes, 2 * P * B * Hm * Dv, impls, checks, errors)


def run_impls(name, shape, nbytes, flops, impls, checks, errors):
    row = {"case": name, "shape": shape, "bytes": nbytes, "flops": flops, "impls": {}, "check": checks, "errors": errors}
    for impl, (fn, s) in impls.items():
        if impl in errors:
            continue
        # the torch reference is timed eagerly only (as benchmarks.kernels' eager_us): no graph capture of it
        graph = {"note": "not captured"} if impl == "torch_eager" else timed(fn, s, graph=True)
        row["impls"][impl] = {"launch_us": timed(fn, s), "gpu_us": graph}
        torch.cuda.synchronize()
    line = ", ".join(f"{k} {_med(v['gpu_us']):.1f}/{_med(v['launch_us']):.1f}" for k, v in row["impls"].items())
    print(f"{name}: gpu/launch us: {line}" + (f"; errors: {list(errors)}" if errors else ""), flush=True)
    return row


def _med(t):
    return t.get("median", math.nan)


# ---- output


def write(out_dir: Path, result: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in result["machine"]["gpu"]).strip("-").lower()
    stem = out_dir / f"flashinfer-{slug}-{result['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cols = ["case", "impl", "gpu_median_us", "gpu_p20_us", "gpu_p80_us", "launch_median_us", "launch_p20_us",
            "launch_p80_us", "check_max_abs", "check_max_rel", "check_lse_max_abs", "check_ok", "error"]  # fmt: skip
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in result["cases"]:
            names = list(r.get("impls", {})) + [k for k in r.get("errors", {}) if k not in r.get("impls", {})]
            for impl in names:
                t, c = r.get("impls", {}).get(impl, {}), r.get("check", {}).get(impl, {})
                g, la = t.get("gpu_us", {}), t.get("launch_us", {})
                err = r.get("errors", {}).get(impl) or g.get("error") or la.get("error") or ""
                w.writerow([r["case"], impl, g.get("median"), g.get("p20"), g.get("p80"), la.get("median"), la.get("p20"),
                            la.get("p80"), c.get("max_abs"), c.get("max_rel"), c.get("lse_max_abs"), c.get("ok"),
                            err.replace("\n", " ")[:300]])  # fmt: skip
    return stem


def print_table(result):
    print(f"\n{result['machine']['gpu']}  flashinfer {result['versions']['flashinfer']}  compile: "
          + ", ".join(f"{k} {v['seconds'] if isinstance(v, dict) else v}s" for k, v in result["compile"].items()))  # fmt: skip
    print(f"{'case':18s} {'impl':16s} {'gpu us (p20-p80)':>24s} {'launch us':>10s}  check")
    for r in result["cases"]:
        if "error" in r:
            print(f"{r['case']:18s} ERROR {r['error'][:100]}")
            continue
        for impl, t in r["impls"].items():
            g = t["gpu_us"]
            gs = f"{g['median']:8.1f} ({g['p20']:.1f}-{g['p80']:.1f})" if "median" in g else g.get("note", "capture failed")
            c = r["check"].get(impl)
            cs = "" if c is None else f"max_rel {c['max_rel']:.2g} lse {c['lse_max_abs']:.2g} {'ok' if c['ok'] else 'FAIL'}"
            print(f"{r['case']:18s} {impl:16s} {gs:>24s} {_med(t['launch_us']):10.1f}  {cs}")
        for impl, e in r["errors"].items():
            print(f"{r['case']:18s} {impl:16s} ERROR {e.splitlines()[-1][:100] if e else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="directory for the JSON and CSV")
    ap.add_argument("--backends", default="fa3,fa2", help="FlashInfer MLA backends to time (fa3 = Hopper's default, fa2)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="decode batch sizes")
    ap.add_argument("--no-ceilings", action="store_true", help="skip the copy / matmul ceiling measurement")
    args = ap.parse_args()
    t0 = time.perf_counter()
    fi = import_flashinfer()
    import_s = round(time.perf_counter() - t0, 1)
    if triton is None or not torch.cuda.is_available():
        raise SystemExit("benchmarks.flashinfer_mla needs a CUDA device and triton")
    import qroute.kernels as K

    torch.manual_seed(0)
    workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device="cuda")
    wanted = [b for b in args.backends.split(",") if b]
    print(f"flashinfer {fi.__version__}: building {wanted} + cascade (JIT, excluded from timings)...", flush=True)
    comp = {"import_flashinfer": {"seconds": import_s}, **compile_all(fi, wanted, workspace)}
    print(f"compile: {json.dumps(comp)}", flush=True)
    backends = [b for b in wanted if "error" not in comp.get(f"mla_{b}", {})]
    merge_ok = "error" not in comp["cascade (merge_states, merge_state)"]
    ceil = None if args.no_ceilings else ceilings()
    rows = []
    result = {"kind": "flashinfer_mla", "date": dt.datetime.now(dt.timezone.utc).isoformat(), "machine": machine(),
              "versions": versions(fi), "compile": comp, "ceilings": ceil,
              "config": {"quantiles": QUANTILES, "dtype": "bfloat16", "sm_scale": D**-0.5, "backends_requested": wanted,
                         "time_basis": "gpu_us = CUDA-graph replay; launch_us = do_bench incl. Python and launch; "
                                       "torch_eager is timed by do_bench only",
                         "flashinfer_decode": "BatchMLAPagedAttentionWrapper, page_size 64, one request per query, "
                                              "its selected blocks as pages, packed q/cache, lse_mode basee (natural log); "
                                              "plan() once per input set, outside the timings",
                         "flashinfer_merge": "lse converted to base 2 and inputs permuted to [B, P, H, *] before timing; "
                                             "output lse converted back to natural log for the check",
                         "check": "against the torch reference on the first input set; ok = o max_rel <= 1e-2, "
                                  "lse max_abs <= 1e-2, same -inf pattern"},
              "cases": rows}  # fmt: skip
    cache = torch.randn(N, BS, D, dtype=torch.bfloat16, device="cuda")
    cases = [("sparse", int(b)) for b in args.batches.split(",") if b] + [("merge", 8), ("merge", 2)]
    for kind, n in cases:
        try:
            rows.append(sparse_case(K, n, cache, backends, workspace) if kind == "sparse" else merge_case(K, fi, n, merge_ok))
        except Exception as e:
            rows.append({"case": f"{kind} {n}", "error": _tail(e), "traceback": traceback.format_exc()[-2000:]})
            print(f"{kind} {n}: FAILED {rows[-1]['error'][:300]}", flush=True)
        torch.cuda.empty_cache()
        write(args.out, result)  # after every case, so that a run cut short keeps what it measured
    stem = write(args.out, result)
    print_table(result)
    print(f"-> {stem}.json, {stem}.csv")
    bad = [r["case"] for r in rows if "error" in r or r.get("errors") or not all(c["ok"] for c in r["check"].values())]
    if bad or any("error" in v for v in comp.values() if isinstance(v, dict)):
        raise SystemExit(f"some case, build or check failed ({', '.join(bad) or 'build'}): see 'errors' / 'compile' / 'check' in the JSON")


if __name__ == "__main__":
    main()
