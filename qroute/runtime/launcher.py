"""Start N instances as processes and run one function on each, on torch.distributed.

Embedded (default): the launcher hosts the rendezvous store on 127.0.0.1 (any free port,
no race), forks the instances from a forkserver that has torch preloaded (cheap starts,
no inherited OpenMP state), and runs `fn(instance, *args)` on each. Instances die with
the launcher, so none is ever left behind: each instance drops its copy of the
forkserver's keep-alive pipe (else the forkserver, and through it the instances, would
outlive a killed launcher), asks for SIGKILL when the forkserver dies (PR_SET_PDEATHSIG),
and watches the launcher's pid; the launcher also kills them on any error or timeout.

Under `torchrun` (RANK / WORLD_SIZE in the environment) the same entry point joins the
job's process group instead and runs `fn` for its own rank only.

With `links` (an emulated fabric, `qroute.fabric`), the launcher builds two network
namespaces joined by those links and runs one instance in each: each enters its namespace
first thing, reaches the store over its control link, and opens one gloo group per link
(`runtime.paths`); the world group runs over the first link. The fabric is removed after
the instances are gone.

Ranks `[0, requesters)` are requesters; the rest are holders. World size 1 is one
instance that holds every block and attends everything locally.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import queue as queue_mod
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing  # noqa: F401 - torch's reductions for what the results queue carries

from qroute.errors import QrouteError, positive_int
from qroute.runtime import forks, heap

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ClusterSpec:
    """Shape of the embedded cluster and its process-group settings."""

    world_size: int = 3
    requesters: int = 1
    backend: str = "gloo"
    timeout_s: float = 120.0
    host: str = "127.0.0.1"
    threads: int = 1  # torch intra-op threads per instance
    links: tuple = ()  # qroute.fabric.LinkSpec: an emulated fabric between two instances
    pin: bool = True  # each instance on cores of its own where the machine has PIN_CORES per instance, else (gloo) each holder on one (`cpu_set`)
    frames: str = "auto"  # "auto": exact framing under NCCL, eager under gloo; "exact": exact under gloo too (tests)
    retain_heap: bool = True  # freed host memory stays in each instance's heap (`runtime.heap`): no page faults per step
    shm: bool = False  # a second path beside the world group: shared memory on this host (`runtime.shm`)
    symm: bool = False  # every message by one-sided writes into the GPUs' symmetric memory instead of NCCL (`runtime.symm`)
    run_s: float | None = None  # the longest a launch may run before it is taken as hung (None: 2 x `timeout_s`)

    def __post_init__(self) -> None:
        if self.links and (self.world_size, self.requesters) != (2, 1):
            raise QrouteError(f"an emulated fabric joins 2 instances (1 requester, 1 holder): got instances={self.world_size}")
        positive_int("instances", self.world_size)
        if self.run_s is not None and not self.run_s > 0:
            raise QrouteError(f"run_s={self.run_s!r}: expected None or a positive number of seconds")
        positive_int("requesters", self.requesters)
        if self.requesters > self.world_size:
            raise QrouteError(f"requesters={self.requesters}: expected <= instances={self.world_size}")
        if self.backend not in ("gloo", "nccl"):
            raise QrouteError(f"backend={self.backend!r}: expected 'gloo' or 'nccl'")
        if self.frames not in ("auto", "exact"):
            raise QrouteError(f"frames={self.frames!r}: expected 'auto' or 'exact'")
        if self.backend == "nccl" and self.links:
            raise QrouteError("backend nccl with an emulated fabric: expected gloo (the fabric's links are TCP)")
        if self.shm and (self.backend != "gloo" or self.links):
            raise QrouteError("the shared-memory path: expected backend gloo without an emulated fabric (its messages "
                              "are host memory between the instances of one host)")  # fmt: skip
        if self.symm and (self.backend != "nccl" or self.world_size < 2):
            raise QrouteError(f"the symmetric-memory path with backend {self.backend!r} and {self.world_size} instance(s): "
                              "expected backend nccl and 2 or more instances (one GPU each, on one host)")  # fmt: skip
        if not self.timeout_s > 0:
            raise QrouteError(f"timeout={self.timeout_s!r}: expected > 0 seconds")


@dataclass(frozen=True)
class Instance:
    """This process's place in the cluster."""

    rank: int
    world_size: int
    requesters: int

    @property
    def is_requester(self) -> bool:
        return self.rank < self.requesters

    @property
    def holders(self) -> list[int]:
        """Ranks that hold blocks (every rank when the world is a single instance)."""
        if self.world_size == 1:
            return [0]
        return list(range(self.requesters, self.world_size))

    @property
    def requester_ranks(self) -> list[int]:
        return list(range(self.requesters))


PIN_CORES = 2  # an instance's main thread and its gloo I/O thread


def cpu_set(rank: int, world_size: int, available, per: int = PIN_CORES, requesters: int = 1,
            one_per_holder: bool = True) -> set[int] | None:  # fmt: skip
    """The cores instance `rank` is pinned to: an equal, disjoint share of `available` (consecutive ids, which
    share a socket and caches). Where a share would be under `per` cores: with `one_per_holder` (CPU instances), a
    holder (rank `requesters` and up) gets one core, the holders round robin over `available`, and a requester
    None (left to the scheduler); else None for every rank.

    Unpinned on an idle many-core host, a woken instance may land on any core, often a cold one: measured on
    the H100 host's 16 cores, its route exchanges ran 35-55% slower minutes after calibration than during it.
    Unpinned on 2 cores with 2 holders, the two holders a route exchange woke were often queued on one core while
    the other idled, and the second computed after the first (`python -m benchmarks.sched_wait`, a calibration under
    `perf sched`): 41% of gloo and 66% of shm 2-holder exchanges, against 12% and 23% with a core per holder, and 2%
    and 10% with such a holder also under SCHED_BATCH (`_pin`: woken, it does not preempt the requester, which then
    posts to the other holders before it waits). The exchange's median fell from 3.68 to 2.78 ms (gloo) and from
    2.87 to 2.14 ms (shm). A requester pinned beside a holder was slower: its gloo thread waited ~5 ms behind that
    holder's compute for the other holder's reply. GPU instances (NCCL) are left as they were: not measured.
    """
    cores = sorted(available)
    share = len(cores) // world_size
    if share < per:
        if not one_per_holder:
            return None
        holder = rank - (requesters if world_size > 1 else 0)  # one instance alone holds the blocks
        return {cores[holder % len(cores)]} if holder >= 0 and cores else None
    return set(cores[rank * share : (rank + 1) * share])


PINNED: list[int] | None = None  # this instance's cores, if `_pin` pinned it (the profile records them)
AVAILABLE: list[int] | None = None  # the cores this instance could run on before `_pin` (the host's share for the cluster)
DEVICE = torch.device("cpu")  # where this instance computes and keeps its blocks: its GPU under NCCL (`_use_device`)


NO_MULTICAST = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")  # NVLink multicast off


def _use_device(spec: ClusterSpec, local_rank: int) -> None:
    """Under NCCL: this instance's GPU (one per instance) and exact framing on it; else the CPU (and the framing
    `spec.frames` asks for)."""
    global DEVICE
    from qroute.runtime import transport

    if spec.backend == "nccl":
        for var in NO_MULTICAST:  # before NCCL or symmetric memory starts; a value the user set wins
            os.environ.setdefault(var, "0" if var == "NCCL_NVLS_ENABLE" else "1")
        # Every kernel loaded when the GPU context starts: a holder polling several requesters keeps NCCL receives
        # posted (kernels that run until a message comes) while it launches compute, and under lazy loading (torch's
        # default) a kernel's first launch can wait for the running ones: for ever (seen on 4 H200s, 2 requesters).
        os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise QrouteError(f"backend nccl: instance {local_rank} needs GPU {local_rank}, found {found} GPU(s): "
                              "expected one GPU per instance")  # fmt: skip
        DEVICE = torch.device("cuda", local_rank)
        torch.cuda.set_device(DEVICE)
    transport.set_exact(spec.backend == "nccl" or spec.frames == "exact", DEVICE)


def _open_shm(rank: int, spec: ClusterSpec) -> None:
    """Register the world group and the shared-memory path as this instance's two paths (a collective)."""
    from qroute.runtime import paths, shm

    paths.register(paths.LOOPBACK, None)  # the world group: gloo over loopback
    cores = len(AVAILABLE or os.sched_getaffinity(0))  # the host's, before `_pin` took this instance's share
    spin = shm.spin_window(cores, spec.world_size, PIN_CORES)
    paths.register(shm.NAME, shm.ShmGroup.open(rank, spec.world_size, spec.timeout_s, spin_s=spin))


def _open_symm(rank: int, spec: ClusterSpec) -> None:
    """Make the symmetric-memory path this instance's only path (a collective; `paths.only` says why only)."""
    from qroute.runtime import paths, symm

    paths.only(symm.NAME, symm.SymmGroup.open(rank, spec.world_size, DEVICE, spec.timeout_s))


def _connect_pairs(rank: int, spec: ClusterSpec) -> None:
    """Under NCCL (without `symm`, whose world group carries no messages): one message between every pair of
    instances, all in one global order, before anything else runs, so no first message is timed with a connection.

    The process group starts lazily (no `device_id`): torch then gives each pair its own NCCL communicator, on a
    stream of its own, created inside the pair's first point-to-point call, in which both must take part. On one
    shared communicator (eager start) a holder's receive posted for a quiet requester blocked the stream its reply to
    another requester was queued on; created at first use, a holder polling a requester that had not sent to it
    yet waited inside that receive while another requester waited on it (both seen with 2 requesters calibrating
    against 2 holders on 4 H200s: deadlocks). In one order, the earliest pair not yet connected always has both
    of its ranks at it."""
    if spec.backend != "nccl" or spec.symm:
        return
    token = torch.zeros(1, device=DEVICE)
    for peer, send in connection_order(rank, spec.world_size):
        (dist.send if send else dist.recv)(token, peer)
    torch.cuda.synchronize(DEVICE)


def connection_order(rank: int, world: int) -> list[tuple[int, bool]]:
    """`rank`'s part of the pairs (a, b), a < b, taken in lexicographic order: (peer, whether it sends)."""
    return [(b if rank == a else a, rank == a) for a in range(world) for b in range(a + 1, world) if rank in (a, b)]


def _pin(rank: int, spec: ClusterSpec) -> None:
    global PINNED, AVAILABLE
    AVAILABLE = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if spec.pin and AVAILABLE and hasattr(os, "sched_setaffinity"):
        cores = cpu_set(rank, spec.world_size, AVAILABLE, requesters=spec.requesters, one_per_holder=spec.backend == "gloo")
        if cores:
            os.sched_setaffinity(0, cores)  # before torch.distributed starts its threads: they inherit it
            PINNED = sorted(cores)
            if len(cores) == 1 and hasattr(os, "SCHED_BATCH"):  # a holder on a core of its own: it waits for its
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # waker to block, not preempting it (cpu_set)


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def launch(spec: ClusterSpec, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """Run `fn(instance, *args)` on every instance; results by rank (torchrun: this rank's only)."""
    if under_torchrun():
        return [_run_under_torchrun(spec, fn, args)]
    return _run_embedded(spec, fn, args)


def _timeout(spec: ClusterSpec) -> dt.timedelta:
    return dt.timedelta(seconds=spec.timeout_s)


def _run_under_torchrun(spec: ClusterSpec, fn: Callable[..., Any], args: tuple) -> Any:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if spec.shm or spec.symm:
        raise QrouteError("the shared-memory and symmetric-memory paths under torchrun: expected the embedded launcher "
                          "(one host)")  # fmt: skip
    _use_device(spec, int(os.environ.get("LOCAL_RANK", 0)))
    if spec.retain_heap:
        heap.retain()
    try:
        dist.init_process_group(spec.backend, timeout=_timeout(spec))
    except (RuntimeError, TimeoutError) as exc:
        where = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '?')}"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise QrouteError(f"rank {rank} could not reach the other {world - 1} instance(s) at {where} "
                          f"within {spec.timeout_s:.0f} s: {first}") from None  # fmt: skip
    _connect_pairs(rank, spec)
    try:
        return fn(Instance(rank, world, spec.requesters), *args)
    finally:
        dist.destroy_process_group()


def _run_embedded(spec: ClusterSpec, fn: Callable[..., Any], args: tuple) -> list[Any]:
    if not spec.links:
        return _spawn(spec, fn, args, [None] * spec.world_size)
    from qroute.fabric import Fabric, FabricSpec

    with Fabric(FabricSpec(tuple(spec.links))) as fabric:
        return _spawn(spec, fn, args, [fabric.endpoint(end) for end in (0, 1)])


def _spawn(spec: ClusterSpec, fn: Callable[..., Any], args: tuple, endpoints: list) -> list[Any]:
    if spec.backend == "nccl" and spec.world_size > torch.cuda.device_count():
        raise QrouteError(f"backend nccl: {spec.world_size} instances on {torch.cuda.device_count()} GPU(s): expected "
                          "one GPU per instance (NCCL refuses two ranks on one GPU)")  # fmt: skip
    host = "0.0.0.0" if spec.links else spec.host  # with a fabric, instances reach the store over control links
    store = dist.TCPStore(host, 0, spec.world_size + 1, True, timeout=_timeout(spec), wait_for_workers=False)
    ctx = forks.context()  # started early by a cluster command (`forks.start`), else now
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(rank, spec, store.port, fn, args, results, os.getpid(), endpoints[rank]),
                    daemon=True, name=f"qroute-{rank}")  # fmt: skip
        for rank in range(spec.world_size)
    ]
    try:
        for p in procs:
            p.start()
        return _collect(spec, procs, results)
    finally:
        _reap(procs)
        del store


def _collect(spec: ClusterSpec, procs: list, results: Any) -> list[Any]:
    out: dict[int, Any] = {}
    limit = spec.run_s or spec.timeout_s * 2
    deadline = time.monotonic() + limit
    while len(out) < len(procs):
        try:
            rank, status, value = results.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise QrouteError(f"instance {dead[0].name} exited with code {dead[0].exitcode} before reporting")
            if time.monotonic() > deadline:
                raise QrouteError(f"cluster did not finish within {limit:.0f} s: expected all instances to report")
            continue
        if status == "error":
            raise QrouteError(f"instance {rank} failed: {value}")
        out[rank] = value
    return [out[r] for r in range(len(procs))]


def _reap(procs: list) -> None:
    """Join finished instances; kill any still running."""
    for p in procs:
        if p.pid is not None:
            p.join(timeout=5)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _die_with_launcher(launcher: int) -> None:
    """Never outlive the launcher process `launcher` (see the module doc)."""
    from multiprocessing import forkserver

    alive_fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        try:
            os.close(alive_fd)
        except OSError:
            pass
        forkserver._forkserver._forkserver_alive_fd = None
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the watchdog below still applies
        pass
    threading.Thread(target=_watch, args=(launcher,), daemon=True, name="qroute-watchdog").start()


def _watch(launcher: int) -> None:
    while True:
        try:
            os.kill(launcher, 0)
        except ProcessLookupError:
            os._exit(1)
        time.sleep(0.5)


def _child(rank: int, spec: ClusterSpec, port: int, fn: Callable[..., Any], args: tuple, results: Any, launcher: int,
           endpoint: dict | None) -> None:  # fmt: skip
    _pin(rank, spec)
    _die_with_launcher(launcher)
    if os.environ.get("QROUTE_DUMP_AFTER"):  # debugging a hang: every thread's stack on stderr after that many seconds
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["QROUTE_DUMP_AFTER"]), repeat=True)
    torch.set_num_threads(spec.threads)
    if spec.retain_heap:
        heap.retain()
    try:
        _use_device(spec, rank)
        host = spec.host
        if endpoint is not None:  # first thing: this instance lives in its end of the fabric
            from qroute.fabric import enter_namespace

            enter_namespace(endpoint["namespace"])
            host = endpoint["control"]["root_address"]
            os.environ["GLOO_SOCKET_IFNAME"] = next(iter(endpoint["links"].values()))["interface"]
        store = dist.TCPStore(host, port, spec.world_size + 1, False, timeout=_timeout(spec))
        dist.init_process_group(
            spec.backend, store=store, rank=rank, world_size=spec.world_size, timeout=_timeout(spec),
        )
        _connect_pairs(rank, spec)
        if endpoint is not None:
            from qroute.runtime import paths

            paths.open_paths({n: link["interface"] for n, link in endpoint["links"].items()}, list(range(spec.world_size)))
        if spec.shm:
            _open_shm(rank, spec)
        if spec.symm:
            _open_symm(rank, spec)
        value = fn(Instance(rank, spec.world_size, spec.requesters), *args)
        results.put((rank, "ok", value))
    except BaseException as exc:  # report, then exit non-zero so the launcher stops the rest
        if isinstance(exc, QrouteError):
            message = str(exc)
        else:
            traceback.print_exc()  # an internal error: keep the whole story on this instance's stderr
            message = f"{type(exc).__name__}: {exc}"
        results.put((rank, "error", message))
        results.close()
        results.join_thread()
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
