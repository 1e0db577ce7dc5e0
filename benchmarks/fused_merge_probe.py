"""Probe (an experiment, reverted): B x 128 heads x top-2048, the fused merge against the separate one, splits 2..8; the kernel alone and the merge alone (CUDA graph)."""
import json, sys, torch
sys.path.insert(0, '.')
from benchmarks.kernels import timed, sparse_inputs, n_sets, ceilings
from qroute.kernels import sparse_mla
from qroute.kernels import sparse_mla_hopper as hopper
from qroute.kernels.merge import launch_merge
H, D, V, bs, M, N = 128, 576, 512, 64, 32, 4096
cache = torch.randn(N, bs, D, dtype=torch.bfloat16, device="cuda")
ceil = ceilings(); print(ceil, flush=True)
out = {"ceilings": ceil, "rows": []}
for B in (8, 16, 32, 64):
    nbytes = B * M * bs * D * 2 + B * H * (D + V) * 2 + B * H * 4 + B * M * 4
    roof = nbytes / (ceil["copy_GBps"] * 1e3)
    sets = [sparse_inputs(B, H, D, N, M) for _ in range(n_sets(nbytes))]
    for S in (None, 2, 3, 4, 8):
        for merge in ("fused", "separate"):
            if S == 1 and merge == "separate":
                continue
            t = timed(lambda q, tb: sparse_mla(q, cache, tb, D**-0.5, V, num_splits=S, check=False, config={"merge": merge}), sets, graph=True)
            row = dict(B=B, splits=S, merge=merge, us=t, pct=100 * roof / t["median"])
            out["rows"].append(row); print(row, flush=True)
    for S in ((2,) if B == 32 else ()):  # kernel alone (partials only) and the separate merge alone
        per = -(-M // S)
        po = torch.empty(S, B, H, V, dtype=torch.bfloat16, device="cuda"); pl = torch.empty(S, B, H, device="cuda")
        t = timed(lambda q, tb: hopper.launch(q, cache, tb, D**-0.5, po, pl, per), sets, graph=True)
        o = torch.empty(B * H, V, dtype=torch.bfloat16, device="cuda"); l = torch.empty(B * H, device="cuda")
        tm = timed(lambda: launch_merge(po.view(S, B * H, V), pl.view(S, B * H), o, l), [()], graph=True)
        row = dict(B=B, splits=S, kernel_only_us=t, merge_only_us=tm); out["rows"].append(row); print(row, flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
