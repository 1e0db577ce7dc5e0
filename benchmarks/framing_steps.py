"""Where a framed round trip's host time goes, step by step (perf_counter around each host call; no profiler).

Rank 0 sends a first frame (`transport.FIRST` bytes: a 768 B header and a 1152 B MLA row), rank 1 echoes it, as
the exact framing does under NCCL. Per variant, both ranks time each host step and report medians (us):
  empty / r_empty  torch.empty of the frame to send / to receive into
  hdr              the header into the frame: from pageable memory (`pageable`, what transport does), from a fresh
                   page-locked buffer (`pinned`) or from a ring of 8 page-locked buffers (`ring`)
  copy             the payload into the frame (a device copy)
  send / recv      the torch.distributed call (enqueue only under NCCL)
  tolist           the header back on the host (waits for the frame)
  poll             (holder) from looking at a posted receive until it completed: `spin` looks again at once
                   yielding the core, `sleep` sleeps 20 us between looks (the Poller before 2026-11-26)
The holder's wait is `block` (a blocking receive from the one sender: what a holder of one requester does),
`spin` or `sleep` (a posted receive polled: what a holder of several requesters does under NCCL).

Run: python -m benchmarks.framing_steps [--backend nccl|gloo] [--reps 200] [--tag T]
(gloo: CPU buffers, `block` and `pageable` only). Writes benchmarks/results/framing-steps-<tag>-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from benchmarks.common import write_result
from qroute.runtime import launcher, transport
from qroute.runtime.launcher import ClusterSpec, launch

ROW, HB, WARMUP = 1152, transport.HEADER_BYTES, 20
STEPS = ("empty", "hdr", "copy", "send", "r_empty", "recv", "tolist", "poll", "rtt")


def _frame_out(dev, header, payload, mode, steps):
    t0 = time.perf_counter()
    buf = torch.empty(transport.FIRST, dtype=torch.uint8, device=dev)
    t1 = time.perf_counter()
    if mode["hdr"] == "pageable":
        buf[:HB] = header
    else:
        if mode["hdr"] == "pinned":
            staged = torch.empty(HB, dtype=torch.uint8, pin_memory=True)
        else:
            staged = mode["ring"][mode["i"] % len(mode["ring"])]
            mode["i"] += 1
        staged.copy_(header)
        buf[:HB].copy_(staged, non_blocking=True)
    t2 = time.perf_counter()
    buf[HB : HB + payload.numel()].copy_(payload)
    t3 = time.perf_counter()
    steps["empty"].append(t1 - t0), steps["hdr"].append(t2 - t1), steps["copy"].append(t3 - t2)
    return buf


def _send(buf, dst, steps):
    t0 = time.perf_counter()
    dist.send(buf, dst)
    steps["send"].append(time.perf_counter() - t0)


def _recv_blocking(src, dev, steps):
    t0 = time.perf_counter()
    frame = torch.empty(transport.FIRST, dtype=torch.uint8, device=dev)
    t1 = time.perf_counter()
    dist.recv(frame, src)
    t2 = time.perf_counter()
    frame[:HB].view(torch.int64).tolist()
    t3 = time.perf_counter()
    steps["r_empty"].append(t1 - t0), steps["recv"].append(t2 - t1), steps["tolist"].append(t3 - t2)
    return frame


def _recv_polled(mode, steps):
    frame, work = mode["posted"]
    t0 = time.perf_counter()
    while not work.is_completed():
        time.sleep(20e-6) if mode["poll"] == "sleep" else os.sched_yield()
    work.wait()
    t1 = time.perf_counter()
    frame[:HB].view(torch.int64).tolist()
    steps["poll"].append(t1 - t0), steps["tolist"].append(time.perf_counter() - t1)
    return frame


def _post(mode, dev):
    frame = torch.empty(transport.FIRST, dtype=torch.uint8, device=dev)
    mode["posted"] = (frame, dist.irecv(frame, 0))


def _variant(rank, dev, mode, reps):
    steps = {k: [] for k in STEPS}
    header = torch.from_numpy(np.arange(HB, dtype=np.uint8))
    payload = torch.ones(ROW, dtype=torch.uint8, device=dev)
    mode.update(ring=[torch.empty(HB, dtype=torch.uint8, pin_memory=True) for _ in range(8)] if mode["hdr"] == "ring" else [], i=0)
    polled = rank == 1 and mode["poll"] != "block"
    if polled:
        _post(mode, dev)
    for i in range(reps + WARMUP):
        if rank == 0:
            t0 = time.perf_counter()
            _send(_frame_out(dev, header, payload, mode, steps), 1, steps)
            _recv_blocking(1, dev, steps)
            steps["rtt"].append(time.perf_counter() - t0)
            continue
        frame = _recv_polled(mode, steps) if polled else _recv_blocking(0, dev, steps)
        _send(_frame_out(dev, header, frame[HB : HB + ROW], mode, steps), 0, steps)
        if polled and i < reps + WARMUP - 1:  # as the Poller: the next receive only after the reply (one NCCL stream)
            _post(mode, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {k: float(np.median(v[WARMUP:])) * 1e6 for k, v in steps.items() if len(v) > WARMUP}


def _instance(instance, modes, reps):
    return [_variant(instance.rank, launcher.DEVICE, dict(m), reps) for m in modes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("nccl", "gloo"), default="nccl" if torch.cuda.device_count() >= 2 else "gloo")
    ap.add_argument("--reps", type=int, default=200, help="timed round trips per variant (default: %(default)s)")
    ap.add_argument("--tag", default=None, help="machine tag in the file name (default: the host name)")
    args = ap.parse_args()
    if args.reps < 1:
        sys.exit(f"--reps {args.reps}: expected >= 1")
    gpu = args.backend == "nccl"
    modes = [{"hdr": h, "poll": p} for p in (("block", "spin", "sleep") if gpu else ("block",))
             for h in (("pageable", "pinned", "ring") if gpu else ("pageable",))]  # fmt: skip
    out = launch(ClusterSpec(world_size=2, backend=args.backend, timeout_s=120.0), _instance, modes, args.reps)
    rows = [{**m, "rtt_us": r0["rtt"], "requester_us": r0, "holder_us": r1} for m, r0, r1 in zip(modes, out[0], out[1])]
    for r in rows:
        print(f"{r['hdr']:8s} {r['poll']:5s} rtt {r['rtt_us']:6.1f} us | requester "
              + " ".join(f"{k} {v:.1f}" for k, v in r["requester_us"].items() if k != "rtt")
              + " | holder " + " ".join(f"{k} {v:.1f}" for k, v in r["holder_us"].items()))  # fmt: skip
    config = {"backend": args.backend, "reps": args.reps, "warmup": WARMUP, "first_frame_bytes": transport.FIRST,
              "header_bytes": HB, "payload_bytes": ROW}  # fmt: skip
    print("->", write_result("framing-steps", {"config": config, "rows": rows}, args.tag))


if __name__ == "__main__":
    main()
