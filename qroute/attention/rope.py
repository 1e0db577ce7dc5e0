"""Rotary position embedding for the decoupled RoPE part of MLA rows, with DeepSeek's YaRN.

Layout. DeepSeek projects the rope part with interleaved pairs `(x0, x1), (x2, x3), ...`;
`embed` de-interleaves once (evens first, then odds) so every rope part qroute stores or
sends is in *half layout*: pair `i` is `(x[i], x[i + dim/2])`. Dot products are the same in
either layout as long as queries and keys agree, which they always do here.

Shift identity. Scores depend only on relative positions, so a chunk prefilled at positions
`p` and reused at `p + d` can be served either by rotating the query rope part by `-d`
(`shift_query`, route) or every stored key rope part by `+d` (`splice`, fetch). YaRN's
attention factor multiplies cos/sin in `embed` only; shifts are pure rotations, so the
factor already inside stored keys is kept. Angles are computed in float64 so that
`R(p + d)` and `R(d) R(p)` agree to float32 rounding even at long positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import torch
from torch import Tensor

from qroute.errors import QrouteError


@dataclass(frozen=True)
class YarnScaling:
    """DeepSeek-style YaRN parameters, as in a HuggingFace `rope_scaling` dict."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0  # 0 = not given
    mscale_all_dim: float = 0.0  # 0 = not given
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise QrouteError(f"rope_scaling.factor={self.factor!r}: expected > 0")
        if self.original_max_position_embeddings < 1:
            raise QrouteError(
                f"rope_scaling.original_max_position_embeddings={self.original_max_position_embeddings!r}: expected >= 1"
            )


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction `0.1 * mscale * ln(scale) + 1` (1 for scale <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of the `dim`-wide rope part.

    `interleave`: the projection emits interleaved pairs (DeepSeek); stored parts are in
    half layout either way.
    """

    dim: int
    theta: float = 10000.0
    yarn: YarnScaling | None = None
    interleave: bool = True

    def __post_init__(self) -> None:
        if self.dim < 2 or self.dim % 2:
            raise QrouteError(f"rope dim={self.dim!r}: expected an even integer >= 2")
        if not self.theta > 1:
            raise QrouteError(f"rope_theta={self.theta!r}: expected > 1")

    def inv_freq(self) -> Tensor:
        """Inverse frequencies `[dim / 2]`, float64, YaRN-blended when scaled (computed once per spec)."""
        return _inv_freq(self)

    def _compute_inv_freq(self) -> Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim
        extrapolation = 1.0 / (self.theta**exponents)
        if self.yarn is None:
            return extrapolation
        y = self.yarn
        low, high = _yarn_correction_range(y, self.dim, self.theta)
        ramp = ((torch.arange(self.dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        keep = 1.0 - ramp  # 1 = extrapolate (high frequency), 0 = interpolate
        return extrapolation / y.factor * (1.0 - keep) + extrapolation * keep

    @property
    def attention_factor(self) -> float:
        """Multiplier YaRN applies to cos/sin (1 without YaRN)."""
        y = self.yarn
        if y is None:
            return 1.0
        if y.attention_factor is not None:
            return y.attention_factor
        if y.mscale and y.mscale_all_dim:
            return yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim)
        return yarn_mscale(y.factor)

    @property
    def softmax_mscale(self) -> float:
        """Factor `m` such that the softmax scale is `head_dim**-0.5 * m**2` (DeepSeek)."""
        y = self.yarn
        if y is None or not y.mscale_all_dim:
            return 1.0
        return yarn_mscale(y.factor, y.mscale_all_dim)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], dim: int) -> "RopeSpec":
        """Build from a HuggingFace config dict (`rope_theta` + `rope_scaling`, or `rope_parameters`)."""
        params = dict(config.get("rope_parameters") or {})
        scaling = dict(config.get("rope_scaling") or {})
        theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
        merged = {**params, **scaling}
        kind = merged.get("rope_type", merged.get("type", "default"))
        interleave = bool(config.get("rope_interleave", True))
        if kind == "default":
            return cls(dim=dim, theta=float(theta), interleave=interleave)
        if kind != "yarn":
            raise QrouteError(f"rope_type={kind!r}: expected 'default' or 'yarn'")
        return cls(dim=dim, theta=float(theta), yarn=_yarn_from_dict(merged, config), interleave=interleave)


@lru_cache(maxsize=64)
def _inv_freq(spec: RopeSpec) -> Tensor:
    return spec._compute_inv_freq()


def _yarn_from_dict(d: Mapping[str, Any], config: Mapping[str, Any]) -> YarnScaling:
    original = d.get("original_max_position_embeddings", config.get("max_position_embeddings"))
    factor = d.get("factor")
    if factor is None:
        if original is None:
            raise QrouteError("rope_scaling: yarn needs 'factor' or 'original_max_position_embeddings'")
        factor = config["max_position_embeddings"] / original
    return YarnScaling(
        factor=float(factor),
        original_max_position_embeddings=int(original),
        beta_fast=float(d.get("beta_fast") or 32.0),
        beta_slow=float(d.get("beta_slow") or 1.0),
        mscale=float(d.get("mscale") or 0.0),
        mscale_all_dim=float(d.get("mscale_all_dim") or 0.0),
        attention_factor=d.get("attention_factor"),
        truncate=bool(d.get("truncate", True)),
    )


def _yarn_correction_range(y: YarnScaling, dim: int, theta: float) -> tuple[float, float]:
    def correction_dim(rotations: float) -> float:
        return dim * math.log(y.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(y.beta_fast), correction_dim(y.beta_slow)
    if y.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def _cos_sin(positions: Tensor, spec: RopeSpec, device: torch.device) -> tuple[Tensor, Tensor]:
    angles = positions.to(device=device, dtype=torch.float64).unsqueeze(-1) * spec.inv_freq().to(device)
    return angles.cos().float(), angles.sin().float()  # [..., dim / 2]


def rotate(x: Tensor, positions: Tensor | int, spec: RopeSpec) -> Tensor:
    """Rotate half-layout rope parts `x [..., dim]` by `positions` (broadcast to `x[..., 0]`).

    A pure rotation: no YaRN factor. Negative positions rotate backwards.
    """
    if x.shape[-1] != spec.dim:
        raise QrouteError(f"rope part width {x.shape[-1]}: expected {spec.dim}")
    pos = torch.as_tensor(positions, device=x.device)
    cos, sin = _cos_sin(pos, spec, x.device)
    half = spec.dim // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def to_half_layout(x: Tensor) -> Tensor:
    """Interleaved pairs `(x0, x1), (x2, x3), ...` -> half layout `[x0, x2, ..., x1, x3, ...]`."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


def embed(x: Tensor, positions: Tensor, spec: RopeSpec) -> Tensor:
    """Apply the model's RoPE to freshly projected rope parts `x [..., dim]` at `positions`.

    Returns half layout, scaled by YaRN's attention factor (as the model was trained).
    """
    if spec.interleave:
        x = to_half_layout(x)
    out = rotate(x, positions, spec)
    factor = spec.attention_factor
    return out if factor == 1.0 else (out.float() * factor).to(x.dtype)


def shift_query(q_rope: Tensor, offset: int, spec: RopeSpec) -> Tensor:
    """Route: rotate the query rope part by `-offset` so it attends keys stored at canonical positions."""
    return rotate(q_rope, -offset, spec)


def splice(k_rope: Tensor, offset: Tensor | int, spec: RopeSpec) -> Tensor:
    """Fetch: re-rotate stored key rope parts (any leading dims, e.g. `[L, T, dim]`) by `+offset`."""
    return rotate(k_rope, offset, spec)
