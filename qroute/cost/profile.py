"""Profiles: the measured (or published, or what-if) constants of one cluster.

A profile is a JSON file, schema `qroute.profile/14` (`profile.schema.json` beside this module; `qroute.profile/1`
to `/13` files still load, their newer fields taken as 0, `bytes_serial` as 1 and `serial_cap_s` as none), validated
on load and never pickled. Calibration is the only code that writes measured profiles; everything else reads them.
Built-in profiles live in `profiles/`: `published-h100` carries the paper's published figures, labelled as such.

Per path (`PathSpec`, `path.py`): an exchange of `b` bytes costs `alpha_s + b / beta_Bps` (with a small-message regime
below `small.below_bytes`, and from the first of its `knots` up the knots' interpolation, profile/12), plus what one exchange in a loop does not see: the wake-up of idle holders (`cold_s`, and
after a measured idle time `cold_idle`, profile/9), several holders at once (`per_holder_s`, the serial fractions of
their compute and bytes, with a cap), a fetch's own offset, rate, overlap and chunks (profile/8-9) and a scattered
fetch's extra (profile/14), and the tail:
stalls per exchange, as clusters per request (`stall_per_exchange`, profile/10; per second of exchange before,
`stall_rate`, profile/6; both, a share growing with the exchange's seconds, profile/13), the median request paying the median of a Poisson count (`PathSpec.stalls_s`). Compute
(`Compute`): attention, merge, splice, gather and re-prefill coefficients, with a holder's first decode step (and
after an idle time), the slowest of parallel holders, a fetched reply's handling, the merge after a route exchange
or after moved KV, the requester's first step over moved KV (profile/10), and a holder's attention for each further
request of a batch sharing one message (profile/11), and the requester's attention over moved KV and merge for each
further request of a batch (profile/13). docs/cost-model.md defines every term
and what was measured for it.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from qroute.cost.path import PER_EXCHANGE, STALL_FIELDS, PathSpec, SmallRegime  # noqa: F401 - re-exported
from qroute.cost.terms import idle_curve
from qroute.errors import QrouteError

SCHEMA_ID = "qroute.profile/14"
READABLE = tuple(f"qroute.profile/{v}" for v in range(1, 14)) + (SCHEMA_ID,)




@dataclass(frozen=True)
class AttentionCoeffs:
    """Partial attention of R rows over T keys: `fixed + T*kv_bytes/read + R*T*flops/flop_rate + R*per_row`."""

    fixed_s: float
    read_Bps: float
    flops_per_s: float
    source: str = ""
    per_row_s: float = 0.0  # profile/3: each row's own cost (its rope shift, copies, merge), whatever the keys
    first_step_excess: float = 0.0  # profile/7: a request's first decode step, relative extra (caches cold; local: profile/10)
    parallel_excess: float = 0.0  # profile/8: per holder beyond the first asked at once, relative extra of the slowest
    first_step_idle: tuple[tuple[float, float], ...] = ()  # profile/9: (idle seconds, first-step extra), measured
    group_s: float | None = None  # profile/11: fixed seconds of each further request in one message (None: fixed_s);
    # local_attention (profile/13): of a batch's further request's attention over moved KV in a layer

    def __post_init__(self) -> None:  # from JSON: lists of lists
        object.__setattr__(self, "first_step_idle", tuple(map(tuple, self.first_step_idle)))

    def batched_s(self, attentions: float, requests: int) -> float:
        """Seconds of `requests` partial attentions (`attentions` seconds when each is priced alone) whose rows share
        one message: each request beyond the first pays `group_s` instead of `fixed_s` where fitted (profile/11;
        measured on the dev VM, a holder's attention per 1-token request over 16 blocks: 0.46 ms alone, 0.38 ms
        each in a message of 8 requests)."""
        if self.group_s is None or requests <= 1:
            return attentions
        return attentions - (requests - 1) * (self.fixed_s - self.group_s)

    def first_step_at(self, idle_s: float | None = None) -> float:
        """The first decode step's relative extra for a holder idle `idle_s` seconds (`first_step_idle`; None:
        unknown, `first_step_excess`)."""
        return idle_curve(self.first_step_idle, idle_s, self.first_step_excess)


@dataclass(frozen=True)
class MergeCoeffs:
    """Merge of P partial states of R rows: `fixed + R*P*state_bytes/Bps`; `after_route_s` more when it follows a
    route exchange (the requester's first computation after waiting on the network: measured 30-80 us on CPUs; in a
    batch, the first session's merge of each layer only);
    `per_moved_token_s` more per token of moved KV attended just before it (profile/9: that attention pushes the
    merge's inputs out of the caches; on the dev VM 11-44 us more per merge after 256-512 moved tokens); after moved
    KV in a request's first decode step, `first_step_excess` more, relative (profile/10)."""

    fixed_s: float
    Bps: float
    source: str = ""
    after_route_s: float = 0.0
    per_moved_token_s: float = 0.0
    first_step_excess: float = 0.0  # profile/10: after moved KV in a request's first decode step, relative extra
    group_s: float | None = None  # profile/13: fixed seconds of a batch's further request's merge in a layer (None: fixed_s)


@dataclass(frozen=True)
class SpliceCoeffs:
    """RoPE re-rotation of a chunk: `fixed + L*per_layer + T*L*per_token_layer`."""

    fixed_s: float
    per_layer_s: float
    per_token_layer_s: float
    source: str = ""


@dataclass(frozen=True)
class GatherCoeffs:
    """Scattered gather of E (token, layer) entries from H holders: `fixed + H*L*per_holder_layer + E*per_entry`;
    `reply_s` (profile/7): what the requester pays per fetched holder beyond splice and gather (the holder's send of
    a contiguous run, the reply's handling), priced for every fetch."""

    fixed_s: float
    per_holder_layer_s: float
    per_entry_s: float
    source: str = ""
    reply_s: float = 0.0


@dataclass(frozen=True)
class ReprefillCoeffs:
    """Re-prefill of a chunk: `fixed + dense_flops/flops_per_s + attention_flops/attn_flops_per_s` (flops from the geometry)."""

    fixed_s: float
    flops_per_s: float
    attn_flops_per_s: float
    source: str = ""


@dataclass(frozen=True)
class Compute:
    attention: AttentionCoeffs  # a holder's partial attention for one routed request
    local_attention: AttentionCoeffs  # the requester's attention over fetched or re-prefilled KV
    merge: MergeCoeffs
    splice: SpliceCoeffs
    gather: GatherCoeffs
    reprefill: ReprefillCoeffs


@dataclass(frozen=True)
class Profile:
    """Constants of one cluster. `paths` maps a path name to its PathSpec."""

    name: str
    provenance: str
    paths: Mapping[str, PathSpec]
    default_paths: tuple[str, ...]
    compute: Compute
    description: str = ""
    machine: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    fits: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.default_paths:
            if p not in self.paths:
                raise QrouteError(f"profile {self.name!r}: default path {p!r} is not in paths {sorted(self.paths)}")
        for name, spec in self.paths.items():
            xs, ys = [k[0] for k in spec.knots], [k[1] for k in spec.knots]
            if any(b <= a for a, b in zip(xs, xs[1:])) or any(b < a for a, b in zip(ys, ys[1:])):
                raise QrouteError(f"profile {self.name!r}: path {name!r}: knots={[list(k) for k in spec.knots]}: expected "
                                  "ascending bytes and non-decreasing seconds")  # fmt: skip

    def path(self, name: str) -> PathSpec:
        """The named path, or an error listing the known ones."""
        if name not in self.paths:
            raise QrouteError(f"unknown path {name!r} in profile {self.name!r}: expected one of {', '.join(self.paths)}")
        return self.paths[name]

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": SCHEMA_ID,
            "name": self.name,
            "provenance": self.provenance,
            "description": self.description,
            "machine": dict(self.machine),
            "created": self.created,
            "paths": {k: v.to_dict() for k, v in self.paths.items()},
            "default_paths": list(self.default_paths),
            "compute": asdict(self.compute),
        }
        for key in ("after_route_s", "per_moved_token_s", "first_step_excess"):  # profiles that predate them read and write unchanged
            if not d["compute"]["merge"][key]:
                del d["compute"]["merge"][key]
        if d["compute"]["merge"]["group_s"] is None:  # profile/13's term, where fitted
            del d["compute"]["merge"]["group_s"]
        if not self.compute.gather.reply_s:  # the same for the per-reply term (profile/7)
            del d["compute"]["gather"]["reply_s"]
        for name in ("attention", "local_attention"):  # the same for the per-row term (profile/3) and the first step's
            for key in ("per_row_s", "first_step_excess", "parallel_excess", "first_step_idle"):
                if not d["compute"][name][key]:
                    del d["compute"][name][key]
            if d["compute"][name]["group_s"] is None:  # profile/11's term, where fitted
                del d["compute"][name]["group_s"]
            if "first_step_idle" in d["compute"][name]:  # JSON's form: a list of [idle seconds, value]
                d["compute"][name]["first_step_idle"] = [list(p) for p in d["compute"][name]["first_step_idle"]]
        if self.fits:
            d["fits"] = dict(self.fits)
        return d

    def save(self, path: str | Path) -> None:
        """Write as JSON after validating against the schema (never pickle)."""
        data = self.to_dict()
        validate(data, str(path))
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("qroute.cost").joinpath("profile.schema.json").read_text())


def validate(data: Any, origin: str) -> None:
    """Validate a profile dict against schema `qroute.profile/14` (or /1 to /13); one-line error on failure."""
    if isinstance(data, dict) and data.get("schema") not in READABLE:
        raise QrouteError(f"profile {origin}: schema={data.get('schema')!r}: expected {SCHEMA_ID!r} (or one of "
                          f"{', '.join(map(repr, READABLE[:-1]))})")  # fmt: skip
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_schema()).iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise QrouteError(f"profile {origin}: {where}: {error.message}")


def from_dict(data: Mapping[str, Any], origin: str = "<dict>") -> Profile:
    """A validated Profile from its JSON form."""
    validate(data, origin)
    c = data["compute"]
    compute = Compute(
        attention=AttentionCoeffs(**c["attention"]),
        local_attention=AttentionCoeffs(**c["local_attention"]),
        merge=MergeCoeffs(**c["merge"]),
        splice=SpliceCoeffs(**c["splice"]),
        gather=GatherCoeffs(**c["gather"]),
        reprefill=ReprefillCoeffs(**c["reprefill"]),
    )
    return Profile(
        name=data["name"],
        provenance=data["provenance"],
        paths={k: PathSpec.from_dict(v) for k, v in data["paths"].items()},
        default_paths=tuple(data["default_paths"]),
        compute=compute,
        description=data.get("description", ""),
        machine=data.get("machine", {}),
        created=data.get("created", ""),
        fits=data.get("fits", {}),
    )


def builtin_names() -> list[str]:
    """Names of the profiles shipped with qroute."""
    files = resources.files("qroute.cost.profiles").iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def stem(name_or_path: str) -> str:
    """A profile's short name: a file's name less its folder and `.json` or `.json.gz`; a built-in name as it is."""
    name = Path(name_or_path).name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return str(name_or_path)


def load(name_or_path: str | Path) -> Profile:
    """A built-in profile by name, or a profile JSON file by path (gzipped where it ends in `.gz`)."""
    p = Path(name_or_path)
    if str(name_or_path) in builtin_names():
        text = resources.files("qroute.cost.profiles").joinpath(f"{name_or_path}.json").read_text()
    elif p.is_file():
        try:
            text = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise QrouteError(f"profile {str(name_or_path)!r} is not readable JSON ({str(exc).splitlines()[0][:80]})") from None
    else:
        raise QrouteError(
            f"unknown profile {str(name_or_path)!r}: expected a file or one of {', '.join(builtin_names())}"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QrouteError(f"profile {str(name_or_path)!r} is not valid JSON: {exc}") from None
    return from_dict(data, repr(str(name_or_path)))
