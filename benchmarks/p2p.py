"""Round trips between two instances by each way of moving bytes between them, at decode sizes (issue 8).

Methods (each message is `size` bytes each way; rank 0 times, rank 1 echoes):
  nccl      torch.distributed send / recv of one device tensor each way; the echoing instance's CPU waits for
            the data before it replies, as a holder that must read a request does (gloo: the same on the CPU)
  qroute    qroute's framed PING / PONG served by the holder's loop (what `qroute calibrate` sweeps), with one
            first frame per small message (`transport.FIRST`)
  qroute-2  the same with every payload in a frame of its own (header frame, then payload frame)
  shm       qroute's PING / PONG over the shared-memory path (`--shm`; CPU instances of one host)
  qroute-symm  qroute's PING / PONG over the symmetric-memory path (`--symm`; GPUs of one host): the payload
            copied into the peer GPU's inbox and signalled there, the header through host memory (its own launch:
            that path carries every message of its cluster)
  put       one-sided copies into the peer's symmetric memory over NVLink, then a signal
            (torch.distributed._symmetric_memory; `--symm-backend NVSHMEM` allocates it from NVSHMEM, whose
            payloads failed the check on two H100s); the echo is enqueued on the peer's GPU ahead of time, so no
            CPU is in the peer's loop
  put-cpu   the same, but the peer's CPU waits for each arrival before it replies
  nvshmem   NVSHMEM (nvshmem4py: `pip install -e '.[nvshmem]'`) put-with-signal on the stream both ways; the echo
            waits for the signal on the peer's GPU (nvshmem-cpu: on its CPU); not in the default set
  cuda      what one CUDA step costs here (kernel launch and wait, 768 B to and from the device), for context
The effective rate is the bytes one way over half the round trip. Default sizes are MLA rows of 1152 B (576
bf16 values): 1, 16, 64, 256 and 1024 rows, then 4 and 16 MiB. NVLink multicast stays off.

Writes benchmarks/results/p2p-<machine>-<date>.{json,csv,png}.
Run: python -m benchmarks.p2p [--backend nccl|gloo] [--reps 100] [--symm-backend CUDA|NVSHMEM] [--tag T]
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from benchmarks.common import summary, write_result
from qroute.runtime import launcher, transport
from qroute.runtime.launcher import ClusterSpec, launch

ROW = 1152
SIZES = (ROW, 16 * ROW, 64 * ROW, 256 * ROW, 1024 * ROW, 4 << 20, 16 << 20)
WARMUP = 5
for _var, _val in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[_var] = _val  # never NVLink multicast (the instances inherit this)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def nccl(rank: int, peer: int, device, sizes, reps: int, **_) -> dict:
    rows = {}
    for size in sizes:
        buf, ts = torch.zeros(size, dtype=torch.uint8, device=device), []
        for _ in range(reps + WARMUP):
            if rank == 0:
                _sync()
                t0 = time.perf_counter()
                dist.send(buf, peer)
                dist.recv(buf, peer)
                _sync()
                ts.append(time.perf_counter() - t0)
            else:
                dist.recv(buf, peer)
                _sync()
                dist.send(buf, peer)
        _sync()
        rows[size] = ts[WARMUP:]
    return rows


def framed(rank: int, peer: int, device, sizes, reps: int, first: int = transport.FIRST, path: str | None = None,
           **_) -> dict:  # fmt: skip
    from qroute.calibration.sweeps import ping_pong
    from qroute.runtime import holder, paths

    group = paths.group(path)  # None: the world group
    if transport.exact():
        transport.set_exact(True, device, first)
    if rank == 1:
        holder.serve(None, None, [0], groups=[group] if group is not None else [])  # PONG every PING until STOP
        return {}
    rows = {}
    for size in sizes:
        payload = [torch.zeros(size, dtype=torch.uint8, device=device)]
        _sync()
        rows[size] = [ping_pong(peer, payload, group) for _ in range(reps + WARMUP)][WARMUP:]
    transport.send(peer, holder.STOP, group=paths.group(None))  # the world group, or the one path that carries everything
    if group is not None and paths.world_carries_messages():
        transport.send(peer, holder.STOP, group=group)
    return rows


def put(rank: int, peer: int, device, sizes, reps: int, cpu_echo: bool = False, symm_backend: str = "CUDA", **_) -> dict:
    """Rank 0 writes each request into the peer's request region and signals; the peer copies it into rank 0's reply
    region and signals back. Rank 0 clears its reply region before and checks it after every round trip (untimed),
    so a write that never left its GPU fails the check instead of timing as a fast transfer."""
    import torch.distributed._symmetric_memory as symm_mem

    if symm_backend != "CUDA" and symm_mem.get_backend(device) != symm_backend:
        symm_mem.set_backend(symm_backend)
    top = max(sizes)
    mine = symm_mem.empty(2 * top, dtype=torch.uint8, device=device)  # [request region | reply region]
    handle = symm_mem.rendezvous(mine, dist.group.WORLD.group_name)
    theirs = handle.get_buffer(peer, (2 * top,), torch.uint8)
    src = torch.zeros(top, dtype=torch.uint8, device=device)
    rows, wrong = {}, 0
    for size in sizes:
        ts = []
        for i in range(reps + WARMUP):
            if rank == 0:
                src[:size].fill_(i % 250 + 1)
                mine[top : top + size].zero_()
                _sync()
                t0 = time.perf_counter()
                theirs[:size].copy_(src[:size])
                handle.put_signal(peer, channel=0)
                handle.wait_signal(peer, channel=1)
                _sync()
                ts.append(time.perf_counter() - t0)
                wrong += not torch.equal(mine[top : top + size], src[:size])
            else:
                handle.wait_signal(peer, channel=0)
                if cpu_echo:
                    _sync()
                theirs[top : top + size].copy_(mine[:size])
                handle.put_signal(peer, channel=1)
        _sync()
        rows[size] = ts[WARMUP:]
    dist.barrier()
    if wrong:  # reported, not raised: both instances go on to the next method together
        return {"error": f"{wrong} of {len(sizes) * (reps + WARMUP)} echoed payloads differ from what was sent"}
    return rows


class _StreamHandle:
    """A torch stream under the CUDA stream protocol (what nvshmem4py's on-stream calls take)."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream = stream

    def __cuda_stream__(self):
        return (0, self.stream.cuda_stream)


def nvshmem(rank: int, peer: int, device, sizes, reps: int, cpu_echo: bool = False, **_) -> dict:
    """NVSHMEM (nvshmem4py, bootstrapped by a unique id sent over torch.distributed): rank 0 puts each request with
    a signal into the peer's symmetric request buffer (`putmem_signal_on_stream`: the put and the signal are issued
    by the GPU, in stream order); the peer waits for the signal on its stream and puts the request back into rank
    0's reply buffer with a signal of its own. Checked like `put`: the reply buffer is cleared before and compared
    after every round trip (untimed)."""
    os.environ.setdefault("NVSHMEM_REMOTE_TRANSPORT", "none")  # one host: NVLink only, no network transport
    import nvshmem.core as nv
    from cuda.core import Device

    dev = Device(device.index)
    dev.set_current()
    uid = [nv.get_unique_id(empty=rank != 0)]
    dist.broadcast_object_list(uid, src=0)
    nv.init(device=dev, uid=uid[0], rank=rank, nranks=2, initializer_method="uid")
    stream = _StreamHandle(torch.cuda.current_stream())
    flags = [nv.tensor((1,), dtype=torch.int64) for _ in range(2)]  # request arrived, reply arrived
    for f in flags:
        f.zero_()
    request_flag, reply_flag = (nv.tensor_get_buffer(f)[0] for f in flags)
    rows, wrong, count, tensors = {}, 0, 0, list(flags)
    for size in sizes:
        src, request, reply = (nv.tensor((size,), dtype=torch.uint8) for _ in range(3))
        tensors += [src, request, reply]
        _sync()
        dist.barrier()
        ts = []
        for i in range(reps + WARMUP):
            count += 1
            if rank == 0:
                src.fill_(i % 250 + 1)
                reply.zero_()
                _sync()
                t0 = time.perf_counter()
                nv.put_signal(request, src, request_flag, count, nv.SignalOp.SIGNAL_SET, remote_pe=peer, stream=stream)
                nv.signal_wait(reply_flag, count, nv.ComparisonType.CMP_GE, stream=stream)
                _sync()
                ts.append(time.perf_counter() - t0)
                wrong += not torch.equal(reply, src)
            else:
                nv.signal_wait(request_flag, count, nv.ComparisonType.CMP_GE, stream=stream)
                if cpu_echo:
                    _sync()
                nv.put_signal(reply, request, reply_flag, count, nv.SignalOp.SIGNAL_SET, remote_pe=peer, stream=stream)
        _sync()
        rows[size] = ts[WARMUP:]
    dist.barrier()
    for t in tensors:
        nv.free_tensor(t)
    nv.finalize()
    if wrong:
        return {"error": f"{wrong} of {len(sizes) * (reps + WARMUP)} echoed payloads differ from what was sent"}
    return rows


def cuda_steps(rank: int, peer: int, device, sizes, reps: int, **_) -> dict:
    """Seconds of single CUDA steps on this GPU (rank 0 only), keyed by a name instead of a size."""
    if rank != 0:
        return {}
    x, header = torch.zeros(1, device=device), torch.zeros(transport.HEADER_LEN, dtype=torch.int64)
    on_device = header.to(device)
    steps = {"launch+wait": lambda: (x.add_(1), _sync()), "wait (idle)": _sync,
             "768 B to device": lambda: header.to(device), "768 B to host": on_device.tolist}  # fmt: skip
    rows = {}
    for name, fn in steps.items():
        ts = []
        for _ in range(reps + WARMUP):
            _sync()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        rows[name] = ts[WARMUP:]
    return rows


METHODS = {
    "nccl": nccl,
    "qroute": framed,
    "qroute-2": lambda *a, **k: framed(*a, first=transport.HEADER_BYTES, **k),
    "shm": lambda *a, **k: framed(*a, path="shm", **k),
    "qroute-symm": lambda *a, **k: framed(*a, path="nvlink-symm", **k),
    "put": put,
    "put-cpu": lambda *a, **k: put(*a, cpu_echo=True, **k),
    "cuda": cuda_steps,
    "nvshmem": nvshmem,
    "nvshmem-cpu": lambda *a, **k: nvshmem(*a, cpu_echo=True, **k),
}


def instance_main(instance, methods, sizes, reps, symm_backend):
    peer, out = 1 - instance.rank, {}
    for name in methods:
        dist.barrier()
        try:
            out[name] = METHODS[name](instance.rank, peer, launcher.DEVICE, sizes, reps, symm_backend=symm_backend)
        except Exception as exc:  # one method failing (e.g. no symmetric memory) leaves the others' results
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"}
            if name.startswith(("put", "nvshmem")):
                break  # a half-set-up symmetric memory can leave the peer waiting: stop here
    return out


def _versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _rows(results: dict) -> list[dict]:
    rows = []
    for method, by_size in results.items():
        if "error" in by_size:
            rows.append({"method": method, "size": "", "error": by_size["error"]})
            continue
        for size, ts in by_size.items():
            s = summary(ts)
            rate = size / (s["median"] / 2) / 1e9 if isinstance(size, int) else ""
            rows.append({"method": method, "size": size, "median_us": s["median"] * 1e6, "p10_us": s["p10"] * 1e6,
                         "p90_us": s["p90"] * 1e6, "n": s["n"], "rate_GBps": rate})  # fmt: skip
    return rows


def _fits(rows: list[dict]) -> dict:
    """Per method: alpha + exchanged bytes (both ways) / beta fitted to its round-trip medians, as `calibrate` fits."""
    from qroute.calibration.fit import fit_path

    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(2 * r["size"], r["median_us"] * 1e-6) for r in rows if r["method"] == method and isinstance(r["size"], int)]
        if len(pts) >= 3:
            f = fit_path(*zip(*pts))
            out[method] = {"alpha_us": f.alpha_s * 1e6, "beta_GBps": f.beta_Bps / 1e9, "knee_bytes": f.knee_bytes,
                           "small_alpha_us": f.small_alpha_s * 1e6 if f.small_alpha_s is not None else None,
                           "median_ape": f.median_ape, "p90_ape": f.p90_ape}  # fmt: skip
    return out


def _plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["size"], r["median_us"], r["p10_us"], r["p90_us"]) for r in rows
               if r["method"] == method and isinstance(r["size"], int)]  # fmt: skip
        if pts:
            x, y, lo, hi = map(np.array, zip(*pts))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=2, label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(256 * ROW, color="grey", ls=":", lw=1)
    ax.set_xlabel("bytes each way (dotted: 256 MLA rows)")
    ax.set_ylabel("round trip, us (median, p10-p90)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `methods` and `sizes` as lists (a method this backend cannot run is refused)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("nccl", "gloo"), default="nccl" if torch.cuda.device_count() >= 2 else "gloo",
                    help="nccl: two GPUs (default when there are two); gloo: two CPU processes on loopback")  # fmt: skip
    ap.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--sizes", default=None, help="comma-separated bytes (default: 1-1024 MLA rows, 4 and 16 MiB)")
    ap.add_argument("--reps", type=int, default=100, help="timed round trips per size (default: %(default)s)")
    ap.add_argument("--symm-backend", choices=("CUDA", "NVSHMEM"), default="CUDA",
                    help="symmetric memory for the put methods (default: %(default)s)")  # fmt: skip
    ap.add_argument("--tag", default=None, help="machine tag in the file name (default: the host name)")
    args = ap.parse_args(argv)
    runnable = [m for m in METHODS if m != "shm"] if args.backend == "nccl" else ["nccl", "qroute", "qroute-2", "shm"]
    default = [m for m in runnable if not m.startswith("nvshmem")]  # nvshmem4py is an extra install
    args.methods = args.methods.split(",") if args.methods else ["nccl", "qroute", "shm"] if args.backend == "gloo" else default
    bad = [m for m in args.methods if m not in runnable]
    if bad:
        ap.error(f"method {bad[0]!r}: expected one of {', '.join(runnable)}")
    args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES)
    return args


def main() -> None:
    args = parse()
    methods, sizes = args.methods, args.sizes
    spec = ClusterSpec(world_size=2, backend=args.backend, timeout_s=120.0, frames="exact" if "qroute-2" in methods else "auto",
                       shm="shm" in methods)  # fmt: skip
    rest = [m for m in methods if m != "qroute-symm"]
    results = launch(spec, instance_main, rest, sizes, args.reps, args.symm_backend)[0] if rest else {}
    if "qroute-symm" in methods:  # the symmetric-memory path carries every message of its cluster: a launch of its own
        symm = ClusterSpec(world_size=2, backend="nccl", timeout_s=120.0, symm=True)
        results.update(launch(symm, instance_main, ["qroute-symm"], sizes, args.reps, args.symm_backend)[0])
    rows = _rows(results)
    env = {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "TORCH_NCCL", "NVSHMEM_", "TORCH_SYMM", "CUDA_"))}
    config = {"backend": args.backend, "methods": methods, "sizes": sizes, "reps": args.reps, "warmup": WARMUP,
              "symm_backend": args.symm_backend, "first_frame_bytes": transport.FIRST, "env": env,
              "packages": _versions("nvshmem4py-cu13", "cuda-core", "cuda-bindings", "nvidia-nvshmem-cu13")}  # fmt: skip
    fits = _fits(rows)
    path = write_result("p2p", {"config": config, "rows": rows, "fits": fits}, args.tag)
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "size", "median_us", "p10_us", "p90_us", "n", "rate_GBps", "error"])
        w.writeheader()
        w.writerows(rows)
    _plot(rows, path.with_suffix(".png"))
    for r in rows:
        if "error" in r:
            print(f"{r['method']:9s} failed: {r['error']}")
        else:
            rate = f"  {r['rate_GBps']:7.2f} GB/s" if r["rate_GBps"] != "" else ""
            print(f"{r['method']:9s} {str(r['size']):>16s} {r['median_us']:9.1f} us (p10 {r['p10_us']:.1f}, p90 "
                  f"{r['p90_us']:.1f}){rate}")  # fmt: skip
    for method, f in fits.items():
        print(f"{method:9s} fit: alpha {f['alpha_us']:.1f} us, beta {f['beta_GBps']:.1f} GB/s (median / p90 error "
              f"{f['median_ape']:.1%} / {f['p90_ape']:.1%})")  # fmt: skip
    print(f"-> {path}")


if __name__ == "__main__":
    main()
