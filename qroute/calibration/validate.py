"""`qroute validate`: does a profile predict what the runtime measures, and does the predicate pick the fastest?

`--profile auto` calibrates first, in the same cluster (`calibrate.measure`, whose training
grid shares no shape with the sweep below), so calibration and validation see the machine
in the same state: on shared machines timings drift by 10-20% within minutes.

A held-out sweep, executed for real by the runtime: for every primitive, over rows (tokens
per step x heads), chunk tokens, decode steps and holders (1 holder with contiguous
placement, 2 with hashed placement), one request is served end to end (fetch or re-prefill
once, then every layer's round trips, attention and merges), or a batch of requests of one
shape decoded together (`batches`: their rows for a holder share a message, as in serving),
a few times, in passes over
the whole sweep (so that drift in the machine's speed does not single out configurations);
the median measured phases are set beside the median of the profile's predictions of those runs
(`planner.combine_batch` of each run's plan: what the planner knew when it planned that run, such as how
long each holder had sat idle; `predicted_spread`: how far they differ). None of these shapes is a
calibration point.

Metrics (pure functions of the rows, `validation_metrics.metrics`):
    APE        |predicted - measured| / measured of each run's total (and per phase group)
    hit rate   the predicted-cheapest primitive is the measured-fastest, over configurations
               whose two fastest differ by more than `margin` (10%)
    regret     sum of measured time of the predicted choices / sum of the measured best - 1
    drift      per pass, how fast the machine ran against the configurations' medians, and
               the p90 spread of single runs around them: the noise floor of this machine
    measurement  runs per configuration, and the half-width of each measured median's ~95%
               confidence interval (median and p90 over configurations): how well the sweep
               knows what it compares against
    drift_corrected  APE once each run is divided by the speed probe's factor at its pass (a
               fixed small request per primitive, timed at calibration and before each pass):
               the model's error with the host's drift since calibration taken out. Reported
               beside the plain APE, never instead of it
    online     APE of an online-rescaled profile (`cost.online`): the runs replayed in the
               order they ran, each predicted with the median measured / predicted ratio per
               phase group of the 16 runs of its primitive before it. Beside the plain APE
    compared   with `--compare`, the same metrics for other profiles (repeated calibrations, a
               published profile) priced on the very runs measured here, each run planned alike:
               how far the profiles' errors differ with the measurement noise held fixed
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median

import torch
import torch.distributed as dist

from qroute.calibration.calibrate import CalibrationConfig, measure
from qroute.calibration.compute import dtype_name
from qroute.calibration.fit import speed_spread
from qroute.calibration.insitu_records import exchange_summary, route_exchanges
from qroute.calibration.reprice import compared_profile, plan_record, pricing_record, with_compared
from qroute.calibration.validation_metrics import GROUPS, median_ci, metrics
from qroute.cost import CostModel, load_profile
from qroute.cost.profile import from_dict
from qroute.cost.model import PRIMITIVES
from qroute.calibration.shapes import serve_together, shaped_request, speed_probe, warm_up
from qroute.errors import QrouteError, positive_int
from qroute.planner import combine_batch
from qroute.runtime.control import KeepAlive, stop_holders
from qroute.runtime.executor import Executor, Measured, predicted_groups
from qroute.runtime import holder, paths
from qroute.runtime.holder import AttentionSpec, build_store
from qroute.runtime.launcher import ClusterSpec, Instance, launch
from qroute.runtime.reference import reference_logits, relative_error
from qroute.runtime.store import Placement
from qroute.runtime.world import WorldSpec, build_world, check_spec
from qroute.workload.agents import AgentRequest
from qroute.workload.corpus import CorpusSpec

SETUPS = (("contiguous", 1), ("hashed", 2))


@dataclass(frozen=True)
class ValidationConfig:
    profile: str
    cluster: ClusterSpec = field(default_factory=lambda: ClusterSpec(world_size=3))
    world: WorldSpec = field(default_factory=lambda: WorldSpec(corpus=CorpusSpec(max_tokens=8192, chunk_blocks=32)))
    step_tokens: tuple[int, ...] = (1, 4, 16)
    chunk_blocks: tuple[int, ...] = (4, 16, 32)
    steps: tuple[int, ...] = (1, 4)
    batches: tuple[int, ...] = (1, 3)  # requests decoded together; batches beyond 1 over some shapes (`sweep_shapes`)
    reps: int = 5
    max_reps: int = 15  # more passes for configurations whose median is not yet within `ci` (noisy short requests)
    ci: float = 0.03  # target half-width of the median's ~95% confidence interval, relative to the median
    share_floor: float = 0.25  # an uncertain configuration's least share of the further passes (`shares`); 1: every pass
    margin: float = 0.10
    budget_s: float | None = None  # no further pass (beyond `reps`) starts after this many seconds, shared by the setups
    until: float | None = None  # set per setup from `budget_s`: the wall-clock time (time.time()) its further passes end
    progress: bool = True
    device: str | None = None  # the host tier on this device ("auto", "cpu", "cuda"), instead of a launched cluster
    compare: tuple[str, ...] = ()  # further profiles (files or built-in names) priced on the same runs

    def __post_init__(self) -> None:
        positive_int("reps", self.reps)
        if self.max_reps < self.reps:
            raise QrouteError(f"max reps={self.max_reps}: expected >= reps={self.reps}")
        if not 0 < self.ci < 1:
            raise QrouteError(f"ci={self.ci!r}: expected a fraction in (0, 1)")
        if not 0 < self.share_floor <= 1:
            raise QrouteError(f"share floor={self.share_floor!r}: expected a fraction in (0, 1]")
        if self.budget_s is not None and not self.budget_s > 0:
            raise QrouteError(f"budget={self.budget_s!r} s: expected a positive number of seconds")
        if self.device is None and self.cluster.world_size < 2:
            raise QrouteError(f"instances={self.cluster.world_size}: validation needs 2 (1 requester + 1 holder) or 3")
        for b in self.batches:
            positive_int("batch", b)
        if max(self.chunk_blocks) > self.world.corpus.chunk_blocks:
            raise QrouteError(f"chunk blocks {max(self.chunk_blocks)}: expected <= the corpus's {self.world.corpus.chunk_blocks}")


def run_validation(config: ValidationConfig, calibrated: str | None = None) -> dict:
    """Both setups (1 holder, 2 holders; only the first with 2 instances) on the live cluster; rows, metrics, wall time.

    With `profile="auto"` the first setup calibrates before its sweep; the fitted profile is
    written to `calibrated` (a path) and used by the second setup.
    """
    check_spec(config.world)
    needed = () if config.profile == "auto" else load_profile(config.profile).default_paths  # fail fast
    for name in config.compare:
        compared_profile(name, needed)
    if config.device is not None:
        from qroute.calibration.host import run_host_validation

        return run_host_validation(config, calibrated)
    t0 = time.perf_counter()
    rows: list[dict] = []
    extra: dict = {}
    # a fabric joins one requester and one holder; 2 instances (e.g. 2 GPUs under NCCL) have one holder too
    setups = [(p, h) for p, h in SETUPS if h <= config.cluster.world_size - config.cluster.requesters]
    start = time.time()
    for i, (placement, holders) in enumerate(setups):
        world = replace(config.world, placement=Placement(placement))
        until = budget_until(config, start, (i + 1) / len(setups))
        out = launch(_lasting(config.cluster, until), validate_instance, replace(config, world=world, until=until), holders)[0]
        if out.get("rank") != 0:
            return out
        rows += out["rows"]
        extra["pricing"] = out["pricing"]
        if "calibration" in out:
            extra["calibration"] = out["calibration"]
            path = Path(calibrated or "profile-auto.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out["calibration"]["profile"], indent=2) + "\n")
            config = replace(config, profile=str(path))
    profile = load_profile(config.profile).to_dict()
    return with_compared({"rank": 0, "profile": profile, "profile_file": config.profile, "rows": rows,
                          "metrics": {**metrics(rows, config.margin), "calibration_speed_spread": calibration_speed_spread(profile)},
                          "wall_s": time.perf_counter() - t0, "budget_s": config.budget_s, **extra}, config.compare, config.margin)  # fmt: skip


def _pricing(world) -> dict:
    return pricing_record(world.geometry, dtype_name(world.model))


def _lasting(cluster: ClusterSpec, until: float | None) -> ClusterSpec:
    """`cluster` allowed to run until `until` (a budget's end, time.time()) and its usual margin after it (2 x its
    timeout: the passes begun by then finish): a budget longer than the margin alone must not read as a hang."""
    if until is None:
        return cluster
    return replace(cluster, run_s=max(0.0, until - time.time()) + 2 * cluster.timeout_s)


def budget_until(config: ValidationConfig, start: float, share: float = 1.0) -> float | None:
    """The wall-clock time (time.time()) after which a setup starts no further pass: `share` of `budget_s` after
    `start`; None without a budget."""
    return None if config.budget_s is None else start + config.budget_s * share


def calibration_speed_spread(profile: dict) -> dict[str, float]:
    """Per path, how far the profile's calibration saw the machine's speed move (`fit.speed_spread`; none recorded
    by profiles older than the probes before and after each training repeat)."""
    probes = profile.get("fits", {}).get("speed_probes", {})
    return {name: speed_spread(runs) for name, runs in probes.items()}


def validate_instance(instance: Instance, config: ValidationConfig, holders: int) -> dict:
    return holders_serve(instance, config.world, lambda world: _validate(instance, config, world, holders))


def _validate(instance: Instance, config: ValidationConfig, world, holders: int) -> dict:
    if config.profile == "auto":
        cal = measure(instance, CalibrationConfig(config.cluster, config.world, progress=config.progress), world)
        profile = from_dict(cal["profile"], "calibration")
        return {"rows": _sweep(config, world, holders, profile), "calibration": cal, "pricing": _pricing(world)}
    return {"rows": _sweep(config, world, holders, load_profile(config.profile)), "pricing": _pricing(world)}


def holders_serve(instance: Instance, world_spec: WorldSpec, measure_on) -> dict:
    """Every instance builds the world of `world_spec`; the holders serve until the requesters stop them; rank 0
    returns `{"rank": 0, **measure_on(world)}` and then stops the holders (another requester returns at once)."""
    world = build_world(world_spec, instance.holders)
    if not instance.is_requester:
        store = build_store(instance.rank, world.corpus, world.directory, world.model)
        dist.barrier()
        holder.serve(store, AttentionSpec.of(world.model), instance.requester_ranks)
        return {"rank": instance.rank}
    dist.barrier()
    try:
        if instance.rank != 0:
            return {"rank": instance.rank}
        return {"rank": 0, **measure_on(world)}
    finally:
        stop_holders(instance.rank, instance.holders)


def _sweep(config: ValidationConfig, world, holders: int, profile, links: dict | None = None) -> list[dict]:
    """Every shape x primitive on every path of the profile (predicted and executed on that path).

    The runs of one configuration are spread over the sweep (`reps` passes over every configuration, round
    robin, the paths interleaved pass by pass), so that a machine whose speed drifts over minutes moves every
    configuration's median alike, on every path, rather than the configurations (or the path) measured while it
    was slow. Further passes, up to `max_reps`, rerun the configurations whose median is not yet known within
    `ci` (`median_ci`): short requests on a busy machine spread by tens of percent from run to run, and five runs
    leave their median uncertain by as much (with `share_floor` below 1, each in a share of those passes that grows
    with its interval: `run_passes`, `shares`). No further pass starts after `config.until` (from `budget_s`); the
    first `reps` passes always run. (Until 2026-11-27 the paths ran one after the other, and the first took every
    further pass the budget allowed: on a slow machine the second path kept its 5 runs.)
    """
    from rich.progress import Progress

    order = itertools.count()
    alive = KeepAlive.of(world, config.cluster.timeout_s)
    shapes = sweep_shapes(config)
    names = paths.opened(profile).default_paths
    with Progress(disable=not config.progress, transient=True) as bar:
        label = f"validating ({holders} holder{'s' * (holders > 1)}, {len(names)} path{'s' * (len(names) > 1)})"
        task = bar.add_task(label, total=len(names) * len(shapes) * len(PRIMITIVES) * config.reps)
        lanes = [Lane.open(config, world, holders, profile, name, shapes, links) for name in names]
        rows = [row for lane in lanes for _, row in lane.todo]
        grow = lambda n: bar.update(task, total=next(t.total for t in bar.tasks if t.id == task) + n)  # noqa: E731
        run_passes(lanes, config, lambda lane, rep: lane.run_pass(world, rep, alive, order, lambda: bar.advance(task)), grow)
    for row in rows:
        _settle(row)
    return rows


def run_passes(lanes: list, config: ValidationConfig, run_pass, grow=lambda n: None, clock=time.time) -> None:
    """The sweep's passes over every lane (a path's configurations, `lane.todo`: (configuration, row) pairs whose
    rows gather `runs`): `reps` passes over all, then further passes over those whose median is still uncertain
    (`median_ci` above `ci`, fewer than `max_reps` runs), until `config.until` (by `clock`). Within a pass the lanes
    take turns (`run_pass(lane, rep)` runs `lane.todo`, set to the pass's share), in reverse order every other pass.
    With `config.share_floor` below 1, each configuration runs in a share of the further passes (`shares`), at a
    steady stride so that its runs stay spread over the sweep: the widest intervals every pass, the others less often.
    With 1 every uncertain configuration runs in every further pass (the default until 2026-11-27: shares, 0.25, knew
    the medians better in replays of 12 validations and in two live A/B pairs on one lease of two GPUs; docs/
    measurements.md, "Where validation's further passes go" and the section after it). `grow(n)`: n more runs are
    planned."""
    every = [list(lane.todo) for lane in lanes]
    credit: dict[int, float] = {}
    for rep in itertools.count():
        if rep >= config.reps:  # only the configurations whose median is still uncertain
            if config.until is not None and clock() > config.until:
                return
            known = [[(c, row, median_ci([r["total_s"] for r in row["runs"]])) for c, row in todo
                      if len(row["runs"]) < config.max_reps] for todo in every]  # fmt: skip
            uncertain = [[(c, row) for c, row, ci in k if ci > config.ci] for k in known]
            share = shares([[ci for _, _, ci in k if ci > config.ci] for k in known], config.share_floor)
            for lane, u, s in zip(lanes, uncertain, share):
                for (_, row), x in zip(u, s):
                    credit[id(row)] = credit.get(id(row), 0.0) + x
                lane.todo = [(c, row) for c, row in u if credit[id(row)] >= 1.0]
                for _, row in lane.todo:
                    credit[id(row)] -= 1.0
            if not any(uncertain):
                return
            grow(sum(len(lane.todo) for lane in lanes))
        for lane in lanes if rep % 2 == 0 else lanes[::-1]:  # neither path always first after the other
            if lane.todo:
                run_pass(lane, rep)


def shares(cis: list[list[float]], floor: float) -> list[list[float]]:
    """Per configuration (grouped by lane), the share of the further passes it runs in: its interval's half-width over
    the widest's, squared (so that n_i ~ ci_i^2 runs bring every interval towards the same width), at least
    `floor`; 1 for an interval not yet known (fewer than 3 runs). The widest runs every pass."""
    finite = [c for lane in cis for c in lane if math.isfinite(c)]
    widest = max(finite, default=0.0)
    return [[1.0 if not math.isfinite(c) or widest <= 0 else max(floor, min(1.0, (c / widest) ** 2)) for c in lane]
            for lane in cis]  # fmt: skip


@dataclass
class Lane:
    """One path's share of the sweep: its executor (forced onto the path), its reference speed probe and the
    configurations still to run, each beside its row."""

    executor: Executor
    reference: dict | None
    todo: list[tuple[tuple[list[AgentRequest], str], dict]]

    @classmethod
    def open(cls, config: ValidationConfig, world, holders: int, profile, name: str, shapes, links) -> Lane:
        dtype = dtype_name(world.model)
        cost = CostModel(world.geometry, replace(profile, default_paths=(name,)), dtype, dtype)
        executor = Executor(0, world.model, world.corpus, world.directory, cost, links=links)
        executor.force_path = name if paths.names() else None
        warm_up(executor, world)
        configs = [(batch_requests(world, holders, k, n, s, b, seed=100 * i), p)
                   for i, (k, n, s, b) in enumerate(shapes) for p in PRIMITIVES]  # fmt: skip
        todo = [(c, {"holders": holders, "pass": name}) for c in configs]
        return cls(executor, profile.fits.get("speed_probe", {}).get(name), todo)

    def run_pass(self, world, rep: int, alive, order, advance) -> None:
        """One run of each configuration still to do, after a speed probe; each run's measured and predicted
        phases, plans, route exchanges and place in the order of runs kept in its row."""
        executor = self.executor
        speed = _speed(executor, world, self.reference)
        for (requests, primitive), row in self.todo:
            alive()
            first, t0 = len(executor.trace), time.perf_counter()
            sessions = serve_together(executor, requests, primitive)
            row["wall_runs"] = row.get("wall_runs", []) + [time.perf_counter() - t0]
            row["exchanges"] = row.get("exchanges", []) + route_exchanges(executor.trace[first:])
            if rep == 0:
                row.update(_describe(executor, world, requests, primitive, sessions))
            row["runs"] = row.get("runs", []) + [_measured(sessions)]
            row["predicted_runs"] = row.get("predicted_runs", []) + [_predicted(executor.cost, sessions)]
            row["plans"] = row.get("plans", []) + [plan_record(sessions)]  # what any profile prices (`reprice`)
            row["run_order"] = row.get("run_order", []) + [next(order)]  # when it ran, among all the setup's runs
            row["speed"] = row.get("speed", []) + [speed[primitive]] if speed else None
            advance()


def _settle(row: dict) -> None:
    """A configuration's runs into medians, in place: measured phases, predicted phases (each run as planned: what
    the planner knew then, such as the holders' idle time; `predicted_spread` across runs), the runs' totals and
    phases, the measured median's confidence interval, and its route exchanges summarised beside calibration's."""
    runs, predicted = row.pop("runs"), row.pop("predicted_runs")
    row["measured"] = {g: median(r[g] for r in runs) for g in GROUPS}
    row["predicted"] = {g: median(p[g] for p in predicted) for g in GROUPS}
    totals = [p["total_s"] for p in predicted]
    row["predicted_spread"] = (max(totals) - min(totals)) / row["predicted"]["total_s"]
    row["measured_runs"] = [r["total_s"] for r in runs]
    row["measured_phases"] = [{g: r[g] for g in GROUPS[:-1]} for r in runs]
    row["median_ci"] = median_ci(row["measured_runs"])
    row["exchanges"] = exchange_summary(row.pop("exchanges"))  # per route exchange, beside calibration's fits


def _speed(executor: Executor, world, reference: dict | None) -> dict[str, float] | None:
    """How slow the machine runs now against calibration time, per primitive: the speed probe's seconds now over
    those recorded in the profile (None without a recorded probe)."""
    if not reference:
        return None
    now = speed_probe(executor, world)
    return {p: now[p] / reference[p] for p in now if reference.get(p, 0) > 0}


def sweep_shapes(config: ValidationConfig) -> list[tuple[int, int, int, int]]:
    """(step tokens, chunk blocks, steps, batch) of every configuration: each shape served alone, and in batches of
    `config.batches` beyond 1 the shapes of the most steps over chunks below the largest (batched re-prefills of
    the largest chunk would take most of the sweep's time; their compute is the same per request)."""
    shapes = [(k, n, s, 1) for k in config.step_tokens for n in config.chunk_blocks for s in config.steps]
    small = [n for n in config.chunk_blocks if n < max(config.chunk_blocks)]
    return shapes + [(k, n, max(config.steps), b) for b in config.batches if b > 1 for k in config.step_tokens for n in small]


def batch_requests(world, holders: int, step_tokens: int, blocks: int, steps: int, batch: int, seed: int) -> list[AgentRequest]:
    """`batch` requests of one shape decoded together, each over `holders` holders, on distinct chunks where the corpus
    has enough (`shaped_request`'s `nth` match; else they repeat)."""
    return [shaped_request(world, holders, step_tokens, blocks, steps, seed=seed + j, nth=j) for j in range(batch)]


def _measured(sessions) -> dict[str, float]:
    """A run's measured phase groups: its sessions' together (a batch shares its messages)."""
    measured = Measured()
    for s in sessions:
        measured.add(s.measured)
    return measured.as_dict()


def _predicted(cost: CostModel, sessions) -> dict[str, float]:
    """A profile's prediction of one run, from its plans (the requests and the holders' idle times when planned)."""
    return predicted_groups(combine_batch(cost, [(s.plan.request, s.plan.holders) for s in sessions]))


def _describe(executor: Executor, world, requests: list[AgentRequest], primitive: str, sessions) -> dict:
    """A configuration's shape and exactness (its first run against the single-instance reference, every request of
    a batch); its prediction is the median of its runs' (`_settle`)."""
    errors = [relative_error(torch.cat(s.logits), reference_logits(world.model, world.corpus, r, s.inputs))
              for r, s in zip(requests, sessions)]  # fmt: skip
    plan, request = sessions[0].plan, requests[0]
    return {
        "placement": "contiguous" if len(plan.holders) == 1 else "hashed",
        "path": plan.holders[0].path, "primitive": primitive, "step_tokens": request.step_tokens,
        "rows": plan.request.rows, "chunk_tokens": len(request.blocks) * world.corpus.block_size,
        "steps": request.steps, "batch": len(requests),
        "max_rel_err": max(errors),
    }  # fmt: skip
