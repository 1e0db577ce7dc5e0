"""What every instance builds identically from the same spec: model, corpus, placement."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from qroute import geometry as geo
from qroute.attention import RopeSpec
from qroute.errors import QrouteError, positive_int
from qroute.model import MLATransformer, ModelConfig, load_pretrained
from qroute.runtime.store import Directory, Placement, place
from qroute.workload.corpus import Corpus, CorpusSpec, build_corpus, tokenizer_for

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class WorldSpec:
    """`model`: a preset (random weights, attention geometry kept, the rest shrunk) or a checkpoint dir."""

    model: str = "deepseek-v2-lite"
    layers: int = 2
    hidden: int = 256
    heads: int | None = None
    dtype: str = "float32"
    seed: int = 0
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    placement: Placement = field(default_factory=Placement)

    def __post_init__(self) -> None:
        positive_int("layers", self.layers)
        positive_int("hidden size", self.hidden)
        if self.dtype not in DTYPES:
            raise QrouteError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")

    @property
    def is_checkpoint(self) -> bool:
        return Path(self.model).is_dir()


@dataclass
class World:
    model: MLATransformer
    corpus: Corpus
    directory: Directory
    geometry: geo.Geometry


def build_model(spec: WorldSpec, vocab_size: int, device: torch.device | str = "cpu") -> MLATransformer:
    """The model on `device` (random weights are drawn on the CPU: the same on every instance and device)."""
    if spec.is_checkpoint:
        return load_pretrained(spec.model, dtype=DTYPES[spec.dtype], device=device).eval()
    g = geo.preset(spec.model)
    rope = RopeSpec.from_hf(geo.preset_config(spec.model), g.rope_dim)
    config = ModelConfig.from_geometry(g, layers=spec.layers, hidden_size=spec.hidden, vocab_size=vocab_size,
                                       heads=spec.heads, rope=rope)  # fmt: skip
    return MLATransformer.random(config, seed=spec.seed, dtype=DTYPES[spec.dtype], device=device)


def check_spec(spec: WorldSpec) -> None:
    """Fail fast, before any process starts, on a bad model name or corpus directory."""
    if not spec.is_checkpoint:
        g = geo.preset(spec.model)
        if g.kind != "mla":
            raise QrouteError(f"model {spec.model!r} has kind {g.kind!r}: the runtime runs MLA models (expected 'mla')")
    if spec.corpus.root is not None and not Path(spec.corpus.root).is_dir():
        raise QrouteError(f"corpus dir {spec.corpus.root!r} is not a directory")


def build_world(spec: WorldSpec, holders: Sequence[int], device: torch.device | str | None = None) -> World:
    """This instance's world; the model on `device` (default: the instance's, `launcher.DEVICE`: its GPU under NCCL)."""
    from qroute.runtime import launcher

    tokenizer = tokenizer_for(spec.model if spec.is_checkpoint else None)
    corpus = build_corpus(spec.corpus, tokenizer)
    model = build_model(spec, corpus.vocab_size, launcher.DEVICE if device is None else device)
    if corpus.vocab_size > model.config.vocab_size:
        raise QrouteError(f"tokenizer vocab {corpus.vocab_size}: expected <= model vocab {model.config.vocab_size}")
    return World(model, corpus, place(corpus, holders, spec.placement), model.config.geometry(spec.model))
