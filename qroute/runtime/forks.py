"""The forkserver the embedded launcher forks its instances from (`launcher._spawn`), with torch preloaded.

Started by the launcher's first launch, it imports torch (2.9 s of a core on the dev VM) only after the command
itself has imported it (the command's parser already does: `qroute.demo`). A command that will launch a cluster
(`cli.main`: demo, calibrate, validate, bench-agents) starts it first thing instead, before its parser is built, so
that both imports run at once on two cores: the launch (until every instance runs) took 0.6-0.8 s instead of
2.0-3.2 s on the dev VM, and 0.3-1.1 s instead of 4.2-6.0 s on a GPU host's CPUs, whose CUDA build of torch imports
slower (`qroute calibrate --quick`, docs/measurements.md). This module imports nothing heavy: it is called before
torch is.
"""

from __future__ import annotations

import multiprocessing as mp

PRELOAD = ("torch", "torch.distributed", "qroute.runtime.launcher")


def context():
    """The forkserver context, its preload set (no effect once the server runs)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start() -> None:
    """Start the forkserver now, unless it runs already; it imports `PRELOAD` while the caller goes on."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()
