"""Building blocks of the MLA transformer: RMSNorm, absorbed MLA attention, MLP, MoE and its router.

Parameter names equal HuggingFace's DeepseekV2/V3 modules, so their state dicts load
directly (routed experts are stored fused, as transformers 5 holds them in memory:
`experts.gate_up_proj [E, 2I, hidden]`, `experts.down_proj [E, hidden, I]`).

Attention runs in absorbed form, the form qroute moves between instances. Per token and
layer the cache holds one latent row `[kv_lora_rank + rope]` = `cat(norm(latent),
embed(k_rope))`; a query row per head is `cat(q_nope @ W_UK[h], embed(q_rope))`; values are
the latent; `W_UV[h]` and `o_proj` run after attention (after the merge, for route).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qroute.attention.rope import embed
from qroute.model.config import ModelConfig

if TYPE_CHECKING:
    from qroute.model.context import Context

INNER_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm use the default eps in DeepSeek's code, not rms_norm_eps


class RMSNorm(nn.Module):
    """`weight * x / rms(x)`, normalised in float32 and cast back before the weight (as HF does)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class MLAttention(nn.Module):
    """Multi-head Latent Attention, evaluated in absorbed form against a `Context`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c, heads = config, config.num_heads
        self.config = config
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden_size, heads * c.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=c.attention_bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, INNER_NORM_EPS)
            self.q_b_proj = nn.Linear(c.q_lora_rank, heads * c.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.latent_width, bias=c.attention_bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, INNER_NORM_EPS)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, heads * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(heads * c.v_head_dim, c.hidden_size, bias=c.attention_bias)

    def up_weights(self) -> tuple[Tensor, Tensor]:
        """Views of `kv_b_proj.weight`: `W_UK [H, nope, rank]` and `W_UV [H, v, rank]`."""
        c = self.config
        w = self.kv_b_proj.weight.view(c.num_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        return w[:, : c.qk_nope_head_dim], w[:, c.qk_nope_head_dim :]

    def latent_rows(self, x: Tensor, positions: Tensor) -> Tensor:
        """Cache rows of the tokens `x [T, hidden]`: `[T, rank + rope]`, rope rotated, half layout."""
        rank = self.config.kv_lora_rank
        ckv = self.kv_a_proj_with_mqa(x)  # [T, rank + rope]
        latent = self.kv_a_layernorm(ckv[:, :rank])
        k_rope = embed(ckv[:, rank:], positions, self.config.rope)
        return torch.cat((latent, k_rope), dim=-1)

    def query_rows(self, x: Tensor, positions: Tensor) -> Tensor:
        """Absorbed query rows of `x [T, hidden]`: `[T, H, rank + rope]`."""
        c = self.config
        if c.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(x.shape[0], c.num_heads, c.qk_head_dim)
        q_nope, q_rope = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        w_uk, _ = self.up_weights()
        q_latent = torch.einsum("thn,hnr->thr", q_nope, w_uk)  # [T, H, rank]
        q_rope = embed(q_rope, positions.unsqueeze(-1), c.rope)  # one position per token, all heads
        return torch.cat((q_latent, q_rope), dim=-1)

    def output(self, o_latent: Tensor) -> Tensor:
        """`o_latent [T, H, rank]` (merged attention state) -> per-head W_UV -> o_proj -> `[T, hidden]`."""
        _, w_uv = self.up_weights()
        o = torch.einsum("thr,hvr->thv", o_latent.to(w_uv.dtype), w_uv)  # [T, H, v]
        return self.o_proj(o.reshape(o.shape[0], -1))

    def forward(self, x: Tensor, positions: Tensor, layer: int, context: "Context") -> tuple[Tensor, Tensor]:
        """`x [T, hidden]` -> (attention output `[T, hidden]`, the tokens' cache rows `[T, rank + rope]`)."""
        kv_new = self.latent_rows(x, positions)
        q = self.query_rows(x, positions)
        state = context.attend(layer, q, kv_new, positions, self.config.softmax_scale)
        return self.output(state.o), kv_new


class MLP(nn.Module):
    """SiLU-gated MLP: `down(silu(gate(x)) * up(x))`."""

    def __init__(self, hidden: int, intermediate: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Top-k expert choice: V2 softmax + greedy / group-limited greedy, V3 sigmoid + biased noaux_tc.

    The correction bias only steers the choice; weights are the unbiased scores, optionally
    normalised over the chosen k, then multiplied by `routed_scaling_factor`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(torch.zeros(config.n_routed_experts, config.hidden_size))
        if config.topk_method == "noaux_tc":  # kept in float32 whatever the weights' dtype
            self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts))
        else:
            self.e_score_correction_bias = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x [T, hidden]` -> (weights `[T, k]` float32, expert ids `[T, k]` long)."""
        c = self.config
        logits = F.linear(x.float(), self.weight.float())  # [T, E]
        scores = logits.softmax(dim=-1) if c.scoring_func == "softmax" else logits.sigmoid()
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias.float()
        if c.topk_method != "greedy" and c.n_group > 1:
            choice = self._keep_top_groups(choice)
        ids = choice.topk(c.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, ids)
        if c.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * c.routed_scaling_factor, ids

    def _keep_top_groups(self, choice: Tensor) -> Tensor:
        """Mask (-inf) every expert outside the `topk_group` best groups."""
        c = self.config
        grouped = choice.view(choice.shape[0], c.n_group, -1)  # [T, G, E/G]
        if c.topk_method == "noaux_tc":  # V3: a group scores the sum of its two best experts
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        else:  # V2 group_limited_greedy: its best expert
            group_scores = grouped.max(dim=-1).values
        top = group_scores.topk(c.topk_group, dim=-1).indices  # [T, topk_group]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, top, True)
        return grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view_as(choice)


class Experts(nn.Module):
    """Routed experts stored fused: `gate_up_proj [E, 2I, hidden]` (gate rows first), `down_proj [E, hidden, I]`."""

    def __init__(self, experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, intermediate))

    def forward(self, x: Tensor, weights: Tensor, ids: Tensor) -> Tensor:
        """`x [T, hidden]`, `weights`/`ids [T, k]` -> weighted sum of the chosen experts `[T, hidden]`."""
        out = torch.zeros_like(x)
        for e in ids.unique().tolist():
            token, slot = (ids == e).nonzero(as_tuple=True)
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.down_proj[e]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


class MoE(nn.Module):
    """Router + routed experts + always-on shared experts."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.gate = Router(c)
        self.experts = Experts(c.n_routed_experts, c.hidden_size, c.moe_intermediate_size)
        shared = c.moe_intermediate_size * c.n_shared_experts
        self.shared_experts = MLP(c.hidden_size, shared, c.mlp_bias) if shared else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.experts(x, *self.gate(x))
        return out if self.shared_experts is None else out + self.shared_experts(x)
