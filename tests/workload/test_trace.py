"""JSONL traces: round trip, bad lines reported by number while the rest survives, bad headers."""

import json
import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.errors import QrouteError
from qroute.indexer import BlockIndexer
from qroute.workload.agents import AgentRequest
from qroute.workload.corpus import CorpusSpec, build_corpus
from qroute.workload.generator import AgentWorkloadSpec, TimedRequest, make_workload
from qroute.workload.trace import fingerprint, read_trace, trace_header, write_trace
from tests.workload.test_generator import same

SPEC = AgentWorkloadSpec(agents=3, steps_per_agent=2, task_tokens=12, topk_blocks=2, sparse=True, decode_steps=(1, 4))


@pytest.fixture(scope="module")
def setup():
    corpus = build_corpus(CorpusSpec(max_tokens=4096, block_size=8, chunk_blocks=8))
    return corpus, make_workload(corpus, BlockIndexer(corpus, dim=64), SPEC)


@pytest.fixture
def trace(setup, tmp_path):
    """A good trace of the 6 requests of SPEC: header on line 1, requests on lines 2-7."""
    corpus, timed = setup
    path = tmp_path / "trace.jsonl"
    write_trace(path, trace_header(corpus, SPEC), timed)
    return path


def test_round_trip_gives_back_the_generated_requests(setup, trace):
    corpus, timed = setup
    header, back, errors = read_trace(trace, corpus)
    assert errors == [] and len(back) == len(timed) == 6
    assert all(same(a, b) for a, b in zip(timed, back, strict=True))
    assert all(b.request.task.dtype == torch.long for b in back)
    assert header["schema"] == "qroute.trace/1" and header["spec"]["decode_steps"] == [1, 4]
    assert {k: header[k] for k in fingerprint(corpus)} == fingerprint(corpus)
    assert read_trace(trace)[2] == []  # without a corpus: checked against the header


def _edit(path: Path, line: int, text: str) -> None:
    lines = path.read_text().split("\n")
    lines[line - 1] = text
    path.write_text("\n".join(lines))


def _record(path: Path, line: int) -> dict:
    return json.loads(path.read_text().split("\n")[line - 1])


def _changed(path: Path, line: int, **fields) -> str:
    rec = _record(path, line)
    rec.update(fields)
    return json.dumps({k: v for k, v in rec.items() if v is not ...})


def _block_of_another_chunk(path: Path, corpus) -> str:
    rec = _record(path, 4)
    return _changed(path, 4, blocks=[corpus.chunks[(rec["chunk"] + 1) % len(corpus.chunks)].first_block])


def _fields(**fields):
    return lambda path, corpus: _changed(path, 4, **fields)


def _raw(text: str):
    return lambda path, corpus: text


BAD_LINES = {  # kind: (line 4 becomes, error after "path:4: ")
    "invalid JSON": (
        _raw('{"agent": 0, "arrival_s": '),
        r"invalid JSON \(Expecting value at column 27\): expected one JSON object per line",
    ),
    "not an object": (_raw("[1, 2]"), "line is list: expected a JSON object"),
    "missing field": (_fields(task=...), "task: missing: expected a qroute.trace/1 request field"),
    "ill-typed int": (_fields(steps="4"), r"steps: '4': expected an integer >= 1"),
    "ill-typed bool": (_fields(sparse=1), "sparse: 1: expected true or false"),
    "negative time": (_fields(arrival_s=-1.0), r"arrival_s: -1.0: expected a finite number >= 0"),
    "empty blocks": (_fields(blocks=[]), r"blocks: \[\]: expected a non-empty list of 64-bit integers >= 0"),
    "huge token": (_fields(task=[2**64]), r"task: \[18446744073709551616\]: expected a non-empty list of 64-bit .*"),
    "block out of range": (_fields(blocks=[99999]), "blocks: block 99999 out of range: expected < 512"),
    "block not in chunk": (_block_of_another_chunk, r"blocks: block \d+ not in chunk \d+: expected \d+ <= block < \d+"),
    "unordered blocks": (_fields(blocks=[3, 2]), r"blocks: \[3, 2\]: expected strictly increasing ids"),
    "chunk out of range": (_fields(chunk=4096), "chunk: chunk 4096 out of range: expected < 64"),
    "token out of vocab": (_fields(task=[1, 300]), r"task: token 300 out of range: expected < 256 \(the vocabulary\)"),
    "first token out of vocab": (_fields(first_token=256), r"first_token: 256 out of range: expected < 256 \(.*"),
    "wrong chunk length": (_fields(chunk_tokens=7), r"chunk_tokens: 7: expected 64 \(the length of chunk \d+\)"),
    "duplicate id": (_fields(id=0), r"id: duplicate id 0 \(first on line 2\): expected unique ids"),
}


@pytest.mark.parametrize("kind", list(BAD_LINES))
def test_a_bad_line_is_reported_by_number_and_the_rest_kept(setup, trace, kind):
    corpus, timed = setup
    make, message = BAD_LINES[kind]
    _edit(trace, 4, make(trace, corpus))
    _, back, errors = read_trace(trace, corpus)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{trace}:4: ")
    assert re.fullmatch(message, errors[0][len(f"{trace}:4: ") :]), errors[0]
    assert [t.request.id for t in back] == [t.request.id for t in timed if t.request.id != 2]
    assert all(same(a, b) for a, b in zip([t for t in timed if t.request.id != 2], back, strict=True))


def test_several_bad_lines_in_line_order_blank_lines_skipped(setup, trace):
    corpus, _ = setup
    _edit(trace, 3, "not json")
    _edit(trace, 6, _changed(trace, 6, blocks=[99999]))
    trace.write_text(trace.read_text() + "\n\n")
    _, back, errors = read_trace(trace, corpus)
    assert [e.split(": ")[0] for e in errors] == [f"{trace}:3", f"{trace}:6"]
    assert len(back) == 4


def test_without_a_corpus_the_header_bounds_the_ids(trace):
    _edit(trace, 5, _changed(trace, 5, blocks=[512]))
    _, back, errors = read_trace(trace)
    assert errors == [f"{trace}:5: blocks: block 512 out of range: expected < 512"] and len(back) == 5


@pytest.mark.parametrize(
    "header, message",
    [
        ("", "no header line"),
        ("{oops", r"header is not JSON .*: expected \{\"schema\": \"qroute.trace/1\""),
        ("[]", "header is list: expected a JSON object"),
        ('{"schema": "qroute.trace/0"}', "schema='qroute.trace/0': expected 'qroute.trace/1'"),
        ('{"schema": "qroute.trace/1", "block_size": 8, "num_blocks": 512}', "chunks=None: expected an integer >= 1"),
    ],
)
def test_a_bad_header_is_one_error(trace, header, message):
    _edit(trace, 1, header)
    with pytest.raises(QrouteError, match=f"^{trace}:1: .*{message}"):
        read_trace(trace)


def test_a_trace_of_another_corpus_is_refused(setup, trace):
    corpus, _ = setup
    other = build_corpus(CorpusSpec(max_tokens=2048, block_size=8, chunk_blocks=8))
    with pytest.raises(QrouteError, match=r"mismatch: num_blocks=512 in the trace, 256 here; chunks=64 .*; digest="):
        read_trace(trace, other)
    header = _record(trace, 1)
    _edit(trace, 1, json.dumps({**header, "digest": "0" * 16}))
    with pytest.raises(QrouteError, match=r"^\S+:1: corpus mismatch: digest='0{16}' in the trace, '\w+' here"):
        read_trace(trace, corpus)


def test_missing_file_and_headers_that_cannot_be_written(tmp_path, setup):
    with pytest.raises(QrouteError, match="cannot read"):
        read_trace(tmp_path / "none.jsonl")
    with pytest.raises(QrouteError, match="trace header: num_blocks missing"):
        write_trace(tmp_path / "t.jsonl", {"block_size": 8, "chunks": 3}, [])
    with pytest.raises(QrouteError, match="schema='x'"):
        write_trace(tmp_path / "t.jsonl", {**trace_header(setup[0]), "schema": "x"}, [])


@st.composite
def timed_st(draw) -> TimedRequest:
    """Any request a trace of a 512-block, 64-chunk, 256-token corpus may hold (no corpus check)."""
    task = torch.tensor(draw(st.lists(st.integers(0, 255), min_size=1, max_size=20)), dtype=torch.long)
    blocks = tuple(sorted(draw(st.sets(st.integers(0, 511), min_size=1, max_size=8))))
    r = AgentRequest(draw(st.integers(0, 2**40)), task, draw(st.integers(0, 255)), draw(st.integers(0, 63)), blocks,
                     64, draw(st.integers(1, 64)), draw(st.booleans()), draw(st.integers(1, 8)))  # fmt: skip
    return TimedRequest(draw(st.integers(0, 1000)), draw(st.floats(0, 1e9)), r)


@settings(max_examples=30, deadline=None)
@given(st.lists(timed_st(), max_size=6, unique_by=lambda t: t.request.id))
def test_any_requests_round_trip(timed):
    header = {"block_size": 8, "num_blocks": 512, "chunks": 64, "vocab_size": 256}
    with tempfile.TemporaryDirectory() as d:
        write_trace(Path(d) / "t.jsonl", header, timed)
        got_header, back, errors = read_trace(Path(d) / "t.jsonl")
    assert errors == [] and got_header == {"schema": "qroute.trace/1", **header}
    assert len(back) == len(timed) and all(same(a, b) for a, b in zip(timed, back, strict=True))
