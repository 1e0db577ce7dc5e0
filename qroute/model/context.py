"""What a layer's absorbed query rows attend to: the `Context` protocol and its local implementation.

The model never owns a KV cache. Each layer hands its query rows and its new tokens' latent
rows to a context, which returns an attention state. `LocalContext` attends a prefix held
in local memory; the distributed runtime plugs in contexts that route rows to holders,
fetch blocks, or re-prefill, and merges the partial states.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from qroute.attention.states import AttentionState, attend, check_finite
from qroute.errors import QrouteError

SCORE_BUDGET = 1 << 24  # float32 scores per chunk of query tokens (64 MiB)


@runtime_checkable
class Context(Protocol):
    """Keys and values a layer's new tokens attend, besides themselves."""

    def attend(self, layer: int, q: Tensor, kv_new: Tensor, positions: Tensor, scale: float) -> AttentionState:
        """State of the new tokens' query rows over the context plus the new tokens (causal).

        q [T, H, D] absorbed query rows (D = kv_lora_rank + rope); kv_new [T, D] the new
        tokens' latent rows; positions [T] long. Returns o [T, H, kv_lora_rank] (dtype of q),
        lse [T, H] float32.
        """
        ...


class LocalContext:
    """Attention over a local prefix `[L, P, D]` (or none) followed by the new tokens, causal on the new part.

    `v_dim` is the value width (kv_lora_rank): values are the first `v_dim` columns of each row.
    Causality among the new tokens follows their order in the call, not their positions.
    """

    def __init__(self, prefix: Tensor | None, v_dim: int) -> None:
        if prefix is not None:
            if prefix.dim() != 3:
                raise QrouteError(f"prefix kv shape {tuple(prefix.shape)}: expected [layers, tokens, width]")
            if not 0 < v_dim < prefix.shape[-1]:
                raise QrouteError(f"v_dim={v_dim}: expected 0 < v_dim < prefix width {prefix.shape[-1]}")
            check_finite("prefix kv", prefix)
        self.prefix = prefix
        self.v_dim = v_dim

    @property
    def length(self) -> int:
        """Number of prefix tokens P."""
        return 0 if self.prefix is None else self.prefix.shape[1]

    def keys(self, layer: int, kv_new: Tensor) -> Tensor:
        """`prefix[layer] ++ kv_new`: `[P + T, D]`."""
        if self.prefix is None:
            return kv_new
        if layer >= self.prefix.shape[0] or self.prefix.shape[-1] != kv_new.shape[-1]:
            raise QrouteError(
                f"prefix kv shape {tuple(self.prefix.shape)}: expected [>{layer}, P, {kv_new.shape[-1]}]"
            )
        return torch.cat((self.prefix[layer].to(kv_new.dtype), kv_new), dim=0)

    def attend(self, layer: int, q: Tensor, kv_new: Tensor, positions: Tensor, scale: float) -> AttentionState:
        """See `Context.attend`; query tokens are processed in chunks to bound the score memory."""
        tokens, heads, _ = q.shape
        keys = self.keys(layer, kv_new)  # [N, D], N = P + T
        allowed = causal_mask(self.length, tokens, q.device)  # [T, N]
        step = max(1, SCORE_BUDGET // max(1, heads * keys.shape[0]))
        parts = [
            self._attend_rows(q[s : s + step], keys, allowed[s : s + step], scale)
            for s in range(0, tokens, step)
        ]
        return AttentionState(torch.cat([p.o for p in parts]), torch.cat([p.lse for p in parts]))

    def _attend_rows(self, q: Tensor, keys: Tensor, allowed: Tensor, scale: float) -> AttentionState:
        """Flatten (token, head) rows: `q [t, H, D]` -> state `o [t, H, v_dim]`, `lse [t, H]`."""
        tokens, heads, width = q.shape
        rows = q.reshape(tokens * heads, width)
        mask = allowed.unsqueeze(1).expand(tokens, heads, -1).reshape(tokens * heads, -1)
        state = attend(rows, keys, keys[:, : self.v_dim], scale, mask=mask, check=False)
        return AttentionState(state.o.view(tokens, heads, -1), state.lse.view(tokens, heads))


def causal_mask(prefix: int, tokens: int, device: torch.device | str = "cpu") -> Tensor:
    """`[T, P + T]` bool: every new token sees the whole prefix and the new tokens up to itself."""
    new = torch.ones(tokens, tokens, dtype=torch.bool, device=device).tril()
    return torch.cat((torch.ones(tokens, prefix, dtype=torch.bool, device=device), new), dim=1)
