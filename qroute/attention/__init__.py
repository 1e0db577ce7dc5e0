"""Attention states and their exact merge, partial attention over blocks, and the RoPE shift."""

from qroute.attention.rope import RopeSpec, YarnScaling, embed, rotate, shift_query, splice
from qroute.attention.states import (
    AttentionState,
    attend,
    empty_state,
    gather_blocks,
    merge_states,
    partial_attention,
)

__all__ = [
    "AttentionState",
    "RopeSpec",
    "YarnScaling",
    "attend",
    "embed",
    "empty_state",
    "gather_blocks",
    "merge_states",
    "partial_attention",
    "rotate",
    "shift_query",
    "splice",
]
