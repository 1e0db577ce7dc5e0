"""A corpus of real text cut into chunks and blocks.

By default the corpus is the Python standard library's own sources, present on every
machine that runs qroute; any directory can be named instead. Files are read in sorted
order, tokenised (a checkpoint's `tokenizer.json` when given, UTF-8 bytes otherwise) and
cut into chunks of at most `chunk_blocks` blocks of `block_size` tokens; a file's tail
shorter than one block is dropped. A chunk is the unit prefilled together at canonical
positions `0 .. len - 1`; a block is the unit of selection. Block ids are global and
consecutive: chunk `c` owns blocks `[first_block, first_block + n_blocks)`.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import torch
from torch import Tensor

from qroute.errors import QrouteError, positive_int


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids: vocabulary 256, nothing to download."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="replace"))


class HFTokenizer:
    """A checkpoint's `tokenizer.json`, through the `tokenizers` library."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError:
            raise QrouteError(f"{str(path)!r} needs the 'tokenizers' package: pip install tokenizers") from None
        self._tok = _Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids


def tokenizer_for(checkpoint: str | Path | None) -> Tokenizer:
    """The checkpoint's tokenizer when it ships one, else bytes."""
    if checkpoint is not None and (Path(checkpoint) / "tokenizer.json").is_file():
        return HFTokenizer(Path(checkpoint) / "tokenizer.json")
    return ByteTokenizer()


def default_root() -> Path:
    """The standard library's source directory."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class CorpusSpec:
    """Where the text comes from and how it is cut."""

    root: str | None = None  # None: the standard library's sources
    pattern: str = "*.py"
    max_tokens: int = 16384
    block_size: int = 16
    chunk_blocks: int = 8

    def __post_init__(self) -> None:
        positive_int("corpus tokens", self.max_tokens)
        positive_int("block size", self.block_size)
        positive_int("chunk blocks", self.chunk_blocks)


@dataclass(frozen=True)
class Chunk:
    """A contiguous run of blocks from one file, prefilled together."""

    id: int
    source: str
    first_block: int
    tokens: Tensor  # [n_blocks * block_size] long

    def n_blocks(self, block_size: int) -> int:
        return self.tokens.numel() // block_size

    def blocks(self, block_size: int) -> range:
        return range(self.first_block, self.first_block + self.n_blocks(block_size))


@dataclass(frozen=True)
class Corpus:
    chunks: tuple[Chunk, ...]
    block_size: int
    vocab_size: int

    @property
    def num_blocks(self) -> int:
        last = self.chunks[-1]
        return last.first_block + last.n_blocks(self.block_size)

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def chunk_of(self, block: int) -> Chunk:
        """The chunk that owns global block `block`."""
        if not 0 <= block < self.num_blocks:
            raise QrouteError(f"block id {block} out of range: expected 0 <= id < {self.num_blocks}")
        lo, hi = 0, len(self.chunks) - 1
        while lo < hi:  # chunks are sorted by first_block
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.chunks[mid].first_block <= block else (lo, mid - 1)
        return self.chunks[lo]

    def block_tokens(self, block: int) -> Tensor:
        chunk = self.chunk_of(block)
        start = (block - chunk.first_block) * self.block_size
        return chunk.tokens[start : start + self.block_size]


def _files(spec: CorpusSpec) -> Iterator[Path]:
    """Matching files in a deterministic order, lazily (a directory's files, then its subdirectories)."""
    root = Path(spec.root) if spec.root else default_root()
    if not root.is_dir():
        raise QrouteError(f"corpus dir {str(root)!r} is not a directory")
    found = False
    for path in _walk(root, spec.pattern):
        found = True
        yield path
    if not found:
        raise QrouteError(f"corpus dir {str(root)!r} has no files matching {spec.pattern!r}")


def _walk(directory: Path, pattern: str) -> Iterator[Path]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return
    yield from (p for p in entries if p.is_file() and p.match(pattern))
    for sub in entries:
        if sub.is_dir() and not sub.is_symlink() and sub.name not in ("site-packages", "__pycache__"):
            yield from _walk(sub, pattern)


def build_corpus(spec: CorpusSpec, tokenizer: Tokenizer | None = None) -> Corpus:
    """Read, tokenise and cut files until `max_tokens` tokens are collected."""
    tokenizer = tokenizer or ByteTokenizer()
    root = Path(spec.root) if spec.root else default_root()
    chunk_tokens = spec.block_size * spec.chunk_blocks
    chunks: list[Chunk] = []
    total = next_block = 0
    for path in _files(spec):
        ids = tokenizer.encode(path.read_text(errors="replace"))
        usable = len(ids) // spec.block_size * spec.block_size
        for start in range(0, usable, chunk_tokens):
            if total >= spec.max_tokens:
                return _done(chunks, spec, tokenizer)
            piece = torch.tensor(ids[start : min(start + chunk_tokens, usable)], dtype=torch.long)
            source = f"{path.relative_to(root)}@{start}"
            chunks.append(Chunk(len(chunks), source, next_block, piece))
            next_block += piece.numel() // spec.block_size
            total += piece.numel()
    return _done(chunks, spec, tokenizer)


def _done(chunks: list[Chunk], spec: CorpusSpec, tokenizer: Tokenizer) -> Corpus:
    if not chunks:
        raise QrouteError(f"corpus has no file with at least {spec.block_size} tokens: expected some text")
    return Corpus(tuple(chunks), spec.block_size, tokenizer.vocab_size)
