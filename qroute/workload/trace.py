"""JSONL record and replay of a workload (schema `qroute.trace/1`).

Line 1 is the header: `{"schema": "qroute.trace/1", block_size, num_blocks, chunks, vocab_size,
digest, ...}`, the fingerprint of the corpus the trace was recorded on (the digest hashes every
chunk's first block and tokens), plus whatever the writer adds (`trace_header` adds the spec).
Every further line is one request, in the order written:

    {"agent": 0, "arrival_s": 0.031, "id": 0, "chunk": 3, "blocks": [24, 25], "chunk_tokens": 64,
     "steps": 4, "sparse": true, "step_tokens": 1, "task": [105, 109, ...], "first_token": 32}

Reading is forgiving per line and strict about the header: a bad request line becomes an error
naming its line number and is skipped, the others are kept; a header that is not this schema,
or that names another corpus, is one QrouteError.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from qroute.errors import QrouteError, require
from qroute.workload.agents import AgentRequest
from qroute.workload.corpus import Corpus
from qroute.workload.generator import TimedRequest

SCHEMA = "qroute.trace/1"
REQUIRED = ("block_size", "num_blocks", "chunks")  # fingerprint keys every header has
FINGERPRINT = (*REQUIRED, "vocab_size", "digest")  # checked against a corpus when present
_HEADER_HINT = f'{{"schema": "{SCHEMA}", "block_size": ..., "num_blocks": ..., "chunks": ...}}'


def fingerprint(corpus: Corpus) -> dict:
    """What identifies a corpus: its shape, vocabulary and a digest of its text."""
    h = hashlib.sha256()
    for c in corpus.chunks:
        h.update(np.array([c.first_block, c.tokens.numel()], dtype="<i8").tobytes())
        h.update(c.tokens.numpy().astype("<i8").tobytes())
    return {"block_size": corpus.block_size, "num_blocks": corpus.num_blocks, "chunks": len(corpus.chunks),
            "vocab_size": corpus.vocab_size, "digest": h.hexdigest()[:16]}  # fmt: skip


def trace_header(corpus: Corpus, spec=None) -> dict:
    """The header of a trace of `corpus`: schema, fingerprint and (a dataclass) `spec` when given."""
    header = {"schema": SCHEMA, **fingerprint(corpus)}
    if spec is not None:
        header["spec"] = asdict(spec) if is_dataclass(spec) else spec
    return header


def write_trace(path: str | Path, header: dict, timed: Iterable[TimedRequest]) -> None:
    """Write the header line, then one line per request. `header`: usually `trace_header(corpus, spec)`."""
    require(header.get("schema", SCHEMA) == SCHEMA, f"schema={header.get('schema')!r}: expected {SCHEMA!r}")
    for key in REQUIRED:
        require(key in header, f"trace header: {key} missing: expected the corpus fingerprint (trace_header)")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"schema": SCHEMA, **header}, allow_nan=False) + "\n")
        f.writelines(json.dumps(_record_of(t), separators=(",", ":"), allow_nan=False) + "\n" for t in timed)


def read_trace(path: str | Path, corpus: Corpus | None = None) -> tuple[dict, list[TimedRequest], list[str]]:
    """(header, requests of the good lines in file order, one error per bad line `path:line: field: ...`).

    With `corpus`, the header must match its fingerprint and every request its chunks and vocabulary;
    without, requests are checked against the header's `num_blocks`, `chunks` and `vocab_size`."""
    lines = _lines(path)
    header = _header(f"{path}:1", lines[0], corpus)
    out: list[TimedRequest] = []
    errors: list[str] = []
    first_line: dict[int, int] = {}  # request id -> line it was first read on
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            t = _request_of(line, header, corpus)
            _unique(t.request.id, first_line)
        except QrouteError as e:
            errors.append(f"{path}:{n}: {e}")
            continue
        first_line[t.request.id] = n
        out.append(t)
    return header, out, errors


def _unique(rid: int, first_line: dict[int, int]) -> None:
    require(rid not in first_line, f"id: duplicate id {rid} (first on line {first_line.get(rid)}): expected unique ids")


def _lines(path: str | Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise QrouteError(f"trace {str(path)!r}: cannot read ({e.strerror}): expected a {SCHEMA} file") from None
    lines = text.split("\n")  # not splitlines: line numbers as an editor counts them
    require(bool(lines) and bool(lines[0].strip()), f"{path}:1: no header line: expected {_HEADER_HINT}")
    return lines


def _header(where: str, line: str, corpus: Corpus | None) -> dict:
    """The parsed header line, checked: schema, fingerprint fields, and the corpus when given."""
    try:
        header = json.loads(line)
    except json.JSONDecodeError as e:
        raise QrouteError(f"{where}: header is not JSON ({e.msg}): expected {_HEADER_HINT}") from None
    require(isinstance(header, dict), f"{where}: header is {type(header).__name__}: expected a JSON object")
    require(header.get("schema") == SCHEMA, f"{where}: schema={header.get('schema')!r}: expected {SCHEMA!r}")
    for key in REQUIRED:
        v = header.get(key)
        require(_is_int(v) and v >= 1, f"{where}: {key}={v!r}: expected an integer >= 1 (the corpus fingerprint)")
    if corpus is not None:
        mine = fingerprint(corpus)
        keys = [k for k in FINGERPRINT if header.get(k, mine[k]) != mine[k]]  # absent optional keys: not checked
        wrong = [f"{k}={header[k]!r} in the trace, {mine[k]!r} here" for k in keys]
        require(not wrong, f"{where}: corpus mismatch: {'; '.join(wrong)}: expected the corpus it was recorded on")
    return header


def _record_of(t: TimedRequest) -> dict:
    r = t.request
    return {"agent": t.agent, "arrival_s": float(t.arrival_s), "id": r.id, "chunk": r.chunk, "blocks": list(r.blocks),
            "chunk_tokens": r.chunk_tokens, "steps": r.steps, "sparse": r.sparse, "step_tokens": r.step_tokens,
            "task": r.task.tolist(), "first_token": r.first_token}  # fmt: skip


def _request_of(line: str, header: dict, corpus: Corpus | None) -> TimedRequest:
    """One request line, typed and checked; a QrouteError `field: what is wrong: expected ...` otherwise."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise QrouteError(f"invalid JSON ({e.msg} at column {e.colno}): expected one JSON object per line") from None
    require(isinstance(rec, dict), f"line is {type(rec).__name__}: expected a JSON object")
    blocks, task = _ints(rec, "blocks"), _ints(rec, "task")
    r = AgentRequest(_int(rec, "id", 0), torch.tensor(task, dtype=torch.long), _int(rec, "first_token", 0),
                     _int(rec, "chunk", 0), tuple(blocks), _int(rec, "chunk_tokens", 1), _int(rec, "steps", 1),
                     _bool(rec, "sparse"), _int(rec, "step_tokens", 1))  # fmt: skip
    t = TimedRequest(_int(rec, "agent", 0), _seconds(rec, "arrival_s"), r)
    _check_ranges(r, header, corpus)
    return t


def _check_ranges(r: AgentRequest, header: dict, corpus: Corpus | None) -> None:
    """Blocks, chunk and tokens exist in the corpus (or the header's fingerprint of it)."""
    num_blocks = corpus.num_blocks if corpus else header["num_blocks"]
    chunks = len(corpus.chunks) if corpus else header["chunks"]
    vocab = corpus.vocab_size if corpus else header.get("vocab_size")
    for b in r.blocks:
        require(b < num_blocks, f"blocks: block {b} out of range: expected < {num_blocks}")
    increasing = all(a < b for a, b in pairwise(r.blocks))
    require(increasing, f"blocks: {_short(list(r.blocks))}: expected strictly increasing ids")
    require(r.chunk < chunks, f"chunk: chunk {r.chunk} out of range: expected < {chunks}")
    if _is_int(vocab):
        token = max(r.task.tolist())
        require(token < vocab, f"task: token {token} out of range: expected < {vocab} (the vocabulary)")
        first = r.first_token
        require(first < vocab, f"first_token: {first} out of range: expected < {vocab} (the vocabulary)")
    if corpus is None:
        return
    c = corpus.chunks[r.chunk]
    span = c.blocks(corpus.block_size)
    for b in r.blocks:
        require(b in span, f"blocks: block {b} not in chunk {r.chunk}: expected {span.start} <= block < {span.stop}")
    n = c.tokens.numel()
    require(r.chunk_tokens == n, f"chunk_tokens: {r.chunk_tokens}: expected {n} (the length of chunk {r.chunk})")


def _field(rec: dict, key: str):
    require(key in rec, f"{key}: missing: expected a {SCHEMA} request field")
    return rec[key]


def _int(rec: dict, key: str, lo: int) -> int:
    v = _field(rec, key)
    require(_is_int(v) and v >= lo, f"{key}: {_short(v)}: expected an integer >= {lo}")
    return v


def _ints(rec: dict, key: str) -> list[int]:
    v = _field(rec, key)
    ok = isinstance(v, list) and len(v) > 0 and all(_is_int(x) and 0 <= x < 2**63 for x in v)
    require(ok, f"{key}: {_short(v)}: expected a non-empty list of 64-bit integers >= 0")
    return v


def _bool(rec: dict, key: str) -> bool:
    v = _field(rec, key)
    require(isinstance(v, bool), f"{key}: {_short(v)}: expected true or false")
    return v


def _seconds(rec: dict, key: str) -> float:
    v = _field(rec, key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    require(ok, f"{key}: {_short(v)}: expected a finite number >= 0")
    return float(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
