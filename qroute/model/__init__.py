"""The small MLA transformer (DeepSeek-V2/V3 architecture) used for prefill, re-prefill and decode."""

from qroute.model.checkpoint import load_pretrained
from qroute.model.config import ModelConfig
from qroute.model.context import Context, LocalContext, causal_mask
from qroute.model.transformer import MLATransformer, StepOutput

__all__ = [
    "Context",
    "LocalContext",
    "MLATransformer",
    "ModelConfig",
    "StepOutput",
    "causal_mask",
    "load_pretrained",
]
