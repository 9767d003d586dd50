"""Hostile inputs: a fixed-seed corpus of 10,000 structure-aware mutants across every reader, a few
giant inputs, and hypothesis properties (coverage-targeted) of the wire reader and prototxt parser.

Contract for every input (see tests/fuzzing.py): success or a SenetHubError with a one-line
message; never another exception, never more than fuzzing.TIME_LIMIT seconds, never more traced
memory than the target's multiple of the file size. `python bench/fuzz.py` runs longer campaigns.
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc

import fuzzing
import numpy as np
import pytest
from fuzzing import PB, _key, _varint, ld, nest, pb_encode
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from senet_hub.converters import caffe
from senet_hub.converters.caffe_format import (
    MAX_DEPTH,
    MAX_PROTOTXT_BYTES,
    _read_net,
    encode_layer,
    format_prototxt,
    parse_prototxt,
    read_caffemodel,
)
from senet_hub.errors import FormatError, SenetHubError

N_CORPUS = 10_000
SEED = 0
GROUPS = ["caffemodel", "caffe_load", "prototxt_graph", "mindspore", "manifest"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    t0 = time.perf_counter()
    outcomes = fuzzing.run_corpus(N_CORPUS, tmp_path_factory.mktemp("fuzz"), seed=SEED)
    print(f"\n{len(outcomes)} inputs in {time.perf_counter() - t0:.1f} s\n{fuzzing.summarize(outcomes)}")
    return outcomes, dict(fuzzing.TARGETS)


def _show(bad: list[fuzzing.Outcome], what: str) -> str:
    lines = [f"{len(bad)} inputs {what}; first ones:"]
    for o in bad[:8]:
        lines.append(f"  {o.target} [{o.op}] {o.size} bytes, {o.seconds:.2f} s, peak {o.peak} B: {o.result}")
        lines.append(f"    input: {o.data[:120]!r}{'...' if o.size > 120 else ''}")
    return "\n".join(lines)


def test_corpus_covers_every_reader_and_operator(corpus):
    outcomes, targets = corpus
    assert len(outcomes) >= N_CORPUS
    seen = {(o.target, o.op.split("+")[0]) for o in outcomes}
    for name, t in targets.items():
        missing = [op for op in t.mutator.OPS if (name, op) not in seen]
        assert not missing, f"{name}: operators never run: {missing}"
        results = {o.result for o in outcomes if o.target == name}
        # the corpus reaches deep: some mutants still load, most are refused with a package error
        assert "ok" in results and results - {"ok"}, (name, results)
    assert {"caffemodel", "prototxt_graph"} <= set(targets)


@pytest.mark.parametrize("group", GROUPS)
def test_only_package_errors(corpus, group):
    outcomes, targets = corpus
    mine = [o for o in outcomes if o.target.startswith(group)]
    if not mine:
        pytest.skip(f"no {group} reader in this tree yet")
    bad = [o for o in mine if o.bug]
    assert not bad, _show(bad, "raised something other than a SenetHubError (or a multi-line message)")


@pytest.mark.parametrize("group", GROUPS)
def test_time_and_memory_bounded(corpus, group):
    outcomes, targets = corpus
    mine = [o for o in outcomes if o.target.startswith(group) and not o.bug]
    if not mine:
        pytest.skip(f"no {group} reader in this tree yet")
    slow = [o for o in mine if o.seconds > fuzzing.TIME_LIMIT]
    assert not slow, _show(slow, f"took longer than {fuzzing.TIME_LIMIT} s")
    hungry = [o for o in mine if not o.mem_ok(targets[o.target].mem_limit(o.size))]
    assert not hungry, _show(hungry, "used more memory than allowed for their size")


# ------------------------------------------------------------------------- giant inputs
def _measure(fn, *args):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            fn(*args)
            err = None
        except SenetHubError as e:
            err = e
        return err, time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "data, match",
    [
        (ld(100, ld(1, b"x")) + _key(100, 2) + _varint(2**63), "declares"),  # a length far past the end
        (ld(100, ld(1, b"x") + ld(7, ld(7, ld(1, _varint(1 << 30))) + ld(5, b"\0" * 4))), "does not match"),
        (ld(100, ld(1, b"x") + ld(7, ld(7, ld(1, _varint(0) + _varint(2**63 - 1))))), "not a valid array shape"),
        (ld(100, ld(1, b"x") + ld(7, ld(7, ld(1, b"\x01" * 40)))), "more than 32"),
        (nest(b"\x0a\x01x", [100, 7] * 50_000), None),  # 100,000 levels: read without recursion
        (b"\xff" * 11, "varint"),
    ],
    ids=["length-2^63", "dims-2^30-4-bytes", "dims-0x2^63", "40-axes", "nesting-100000", "overlong-varint"],
)
def test_caffemodel_declared_sizes_checked_before_allocating(tmp_path, data, match):
    p = tmp_path / "x.caffemodel"
    p.write_bytes(data)
    err, dt, peak = _measure(read_caffemodel, p)
    if match:
        assert isinstance(err, FormatError) and match in str(err), err
    assert dt < 2 and peak < 64 * len(data) + (1 << 20), (dt, peak)


def test_caffemodel_real_sized_blobs_are_views(tmp_path):
    """A 24 MB caffemodel reads with almost no traced memory (views on the memory map); the legacy
    one-float-per-field encoding costs one float32 array."""
    rng = np.random.default_rng(0)
    big = [rng.standard_normal(size=(2000, 3000), dtype=np.float32)]
    p = tmp_path / "big.caffemodel"
    p.write_bytes(encode_layer("fc", "InnerProduct", big))
    err, dt, peak = _measure(read_caffemodel, p)
    assert err is None and peak < 1 << 20, peak
    vals = rng.normal(size=100_000).astype("<f4")
    fields = np.zeros(vals.size, dtype=[("key", "u1"), ("value", "<f4")])
    fields["key"], fields["value"] = 5 << 3 | 5, vals
    p.write_bytes(ld(100, ld(1, b"fc") + ld(7, fields.tobytes())))
    err, dt, peak = _measure(read_caffemodel, p)
    assert err is None and peak < 1.1 * vals.nbytes + (1 << 16), (peak, vals.nbytes)
    np.testing.assert_array_equal(read_caffemodel(p)["fc"][1][0], vals)


@pytest.mark.parametrize(
    "text, match",
    [
        ("a { " * 200_000 + "} " * 200_000, f"deeper than {MAX_DEPTH}"),
        ("a < " * 100_000, f"deeper than {MAX_DEPTH}"),
        ('layer { name: "' + "x" * 1_000_000, "cannot parse"),
        ("x: [" + "1, " * 100_000, "unclosed '['"),
        ("}" * 1_000_000, "expected a field name"),
    ],
    ids=["braces-200000", "angle-100000", "unterminated-quotes", "unclosed-list", "closers"],
)
def test_prototxt_giants_fail_fast(tmp_path, text, match):
    p = tmp_path / "x.prototxt"
    p.write_text(text)
    err, dt, peak = _measure(caffe.load_prototxt, p)
    assert isinstance(err, FormatError) and match in str(err), err
    assert dt < fuzzing.TIME_LIMIT and peak < 64 * len(text) + (1 << 20), (dt, peak)


def test_prototxt_size_limit_checked_before_reading(tmp_path):
    p = tmp_path / "huge.prototxt"
    with open(p, "wb") as f:
        f.truncate(MAX_PROTOTXT_BYTES + 1)  # sparse: nothing is read
    err, dt, peak = _measure(caffe.load_prototxt, p)
    assert isinstance(err, FormatError) and "too large" in str(err) and peak < 1 << 20


# ------------------------------------------------------------- hypothesis (coverage-targeted)
_READER_FILES = tuple(
    os.path.join(os.path.dirname(caffe.__file__), f) for f in ("caffe_format.py", "caffe.py", "../senet_hub/graph.py")
)
_READER_FILES = tuple(os.path.normpath(f) for f in _READER_FILES)


def _lines_covered(fn, *args):
    """Run fn, returning (result or exception, number of distinct reader lines executed)."""
    lines: set[tuple[str, int]] = set()

    def tracer(frame, event, arg):
        if frame.f_code.co_filename in _READER_FILES:
            if event == "line":
                lines.add((frame.f_code.co_filename, frame.f_lineno))
            return tracer
        return None

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        try:
            out = fn(*args)
        except SenetHubError as e:
            out = e
    finally:
        sys.settrace(old)
    return out, len(lines)


NUMS = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 100, 0, 9, 2**29 - 1])


def _field(children=None):
    scalar = st.one_of(
        st.builds(PB, NUMS, st.just(0), st.integers(0, 2**64 - 1)),
        st.builds(PB, NUMS, st.just(5), st.binary(min_size=4, max_size=4)),
        st.builds(PB, NUMS, st.just(1), st.binary(min_size=8, max_size=8)),
        st.builds(PB, NUMS, st.just(2), st.binary(max_size=24)),
        st.builds(PB, NUMS, st.sampled_from([3, 4, 6, 7]), st.just(0)),
    )
    return scalar


messages = st.recursive(
    st.lists(_field(), max_size=4),
    lambda kids: st.lists(st.one_of(_field(), st.builds(PB, NUMS, st.just(2), kids)), max_size=5),
    max_leaves=24,
)


@st.composite
def layer_records(draw):
    """Plausible V2 layer records with blobs of drawn shapes and data lengths (then maybe cut)."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        dims = draw(st.lists(st.sampled_from([0, 1, 2, 3, -1, 2**31, 2**63 - 1]), max_size=5))
        n = draw(st.integers(0, 12))
        data = draw(st.binary(min_size=4 * n, max_size=4 * n))
        blob = ld(7, b"".join(_varint(d) for d in dims)) if draw(st.booleans()) else b""
        blob += ld(draw(st.sampled_from([5, 8])), data)
        out += ld(draw(st.sampled_from([100, 2])), ld(1, b"l") + ld(draw(st.sampled_from([7, 6])), blob))
    cut = draw(st.integers(0, len(out)))
    return out[:cut] if draw(st.booleans()) else out


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.one_of(st.binary(max_size=200), messages.map(pb_encode), layer_records()))
def test_wire_reader_property(data):
    out, n_lines = _lines_covered(_read_net, memoryview(data), "x.caffemodel")
    target(float(n_lines), label="reader lines covered")
    if isinstance(out, SenetHubError):
        assert isinstance(out, FormatError) and "\n" not in str(out)
    else:
        for ltype, blobs in out.values():
            assert isinstance(ltype, str) and all(b.dtype == np.float32 for b in blobs)


TOKENS = ["layer", "layers", "name", "type", "bottom", "top", "input", "input_shape", "dim", "shape", "input_param",
          "convolution_param", "num_output", "kernel_size", "stride", "pad", "group", "pool", "MAX", "AVE",
          "pooling_param", "global_pooling", "true", '"data"', '"x"', '"Convolution"', '"Input"', '"Pooling"',
          '"ReLU"', '"Axpy"', '"Scale"', '"InnerProduct"', "{", "}", "<", ">", ":", "[", "]", ",", ";", "1", "3", "0",
          "-1", "9", "1e9", '"unterminated', "#c\n", "\n", "'s'", "\\"]  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.one_of(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join), st.text(max_size=80)))
def test_prototxt_property(text):
    def parse_and_build(t):
        net = parse_prototxt(t, "x.prototxt")
        return caffe.build_graph(net, "x.prototxt", None)

    out, n_lines = _lines_covered(parse_and_build, text)
    target(float(n_lines), label="reader lines covered")
    if isinstance(out, SenetHubError):
        assert "\n" not in str(out)


scalars = st.one_of(st.integers(-(2**40), 2**40), st.sampled_from(["MAX", "true", "AVE"]))
names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True)
text_messages = st.recursive(
    st.dictionaries(names, st.lists(scalars, min_size=1, max_size=3), max_size=3),
    lambda kids: st.dictionaries(names, st.lists(st.one_of(scalars, kids), min_size=1, max_size=2), max_size=3),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(text_messages)
def test_prototxt_format_parse_round_trip(msg):
    def strs(m):
        return {k: [strs(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else str(v) for v in vs]
                for k, vs in m.items()}  # fmt: skip

    back = parse_prototxt(format_prototxt(msg))
    assert back == strs(msg)
