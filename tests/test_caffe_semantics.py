"""Caffe semantics of the prototxt -> graph reader, compared with what Caffe itself computes.

* NetStateRule (src/caffe/net.cpp FilterNet / StateMeetsRule): the deploy net is
  Net(prototxt, TEST): phase TEST, level 0, the file's `state { stage }` kept.
* BatchNorm use_global_stats (BatchNormLayer::LayerSetUp: default phase == TEST).
* Blob counts (Net::CopyTrainedLayersFrom: "Incompatible number of blobs for layer X").

The fuzz corpus mutates bytes; these mutate meaning, and check the result against Caffe's rule
(hand-written expectations, and an oracle written from caffe.proto's comments).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_caffe_reader import TINY, _weights

from senet_hub.converters import caffe
from senet_hub.converters.caffe_format import encode_layer, parse_prototxt
from senet_hub.errors import FormatError, ModelError, UnsupportedError

TYPES = {"conv": "Convolution", "conv/bn": "BatchNorm", "conv/scale": "Scale", "fc": "InnerProduct"}
HEAD = 'name: "rules"\ninput: "data"\ninput_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'


def _relu(name: str, rules: str = "", key: str = "layer", ltype: str = '"ReLU"') -> str:
    return f'{key} {{ name: "{name}" type: {ltype} bottom: "data" top: "data" {rules} }}\n'


def _kept(text: str) -> list[str]:
    layers = caffe.net_layers(parse_prototxt(text, "x.prototxt"), "x.prototxt")
    return [la.name for la in layers if la.type != "Input"]


def _write(tmp_path, text: str, blobs: dict, types: dict | None = None, name: str = "m"):
    p, w = tmp_path / f"{name}.prototxt", tmp_path / f"{name}.caffemodel"
    p.write_text(text)
    types = types or TYPES
    w.write_bytes(b"".join(encode_layer(k, types.get(k, "Convolution"), v) for k, v in blobs.items()))
    return p, w


# ------------------------------------------------------------------------------ NetStateRule
# (layer name, its rules, kept by Caffe's TEST net with level 0 and no stages), by hand from net.cpp
RULE_CASES = [
    ("plain", "", True),
    ("inc_test", "include { phase: TEST }", True),
    ("inc_train", "include { phase: TRAIN }", False),
    ("inc_1", "include { phase: 1 }", True),  # 1 is TEST in caffe.proto's enum Phase
    ("inc_0", "include { phase: 0 }", False),
    ("exc_test", "exclude { phase: TEST }", False),
    ("exc_train", "exclude { phase: TRAIN }", True),
    ("exc_1", "exclude { phase: 1 }", False),
    ("inc_min1", "include { min_level: 1 }", False),  # level 0 < min_level 1
    ("inc_min0", "include { min_level: 0 }", True),
    ("inc_max_neg", "include { max_level: -1 }", False),  # level 0 > max_level -1
    ("exc_min1", "exclude { min_level: 1 }", True),
    ("exc_max0", "exclude { max_level: 0 }", False),
    ("inc_stage", 'include { stage: "x" }', False),  # the net has no stage "x"
    ("exc_stage", 'exclude { stage: "x" }', True),
    ("inc_not_stage", 'include { not_stage: "train" }', True),  # the net has no stage "train"
    ("exc_not_stage", 'exclude { not_stage: "train" }', False),
    ("inc_any", "include { phase: TRAIN } include { phase: TEST }", True),  # any include rule
    ("exc_any", "exclude { phase: TRAIN } exclude { min_level: 0 }", False),  # any exclude rule
    ("inc_all", 'include { phase: TEST max_level: 0 not_stage: "deploy" }', True),
    ("inc_all_broken", 'include { phase: TEST min_level: 0 stage: "deploy" }', False),
    ("inc_empty", "include { }", True),  # a rule with no conditions is always met
    ("exc_empty", "exclude { }", False),
]


def test_rules_keep_what_caffe_keeps():
    """Guards item 5: `exclude { phase: TEST }` was ignored, `include { phase: 1 }` and
    `include { not_stage: "train" }` dropped layers Caffe keeps; the graph has exactly Caffe's layers."""
    text = HEAD + "".join(_relu(n, r) for n, r, _ in RULE_CASES)
    graph = caffe.build_graph(parse_prototxt(text, "x.prototxt"), "x.prototxt")[0]
    assert [n.name for n in graph.nodes] == [n for n, _, keep in RULE_CASES if keep]


def test_v1_layers_follow_the_same_rules():
    """Guards item 5 for V1 `layers` (Caffe upgrades them with their include/exclude rules)."""
    text = HEAD + "".join(_relu(n, r, key="layers", ltype="RELU") for n, r, _ in RULE_CASES)
    assert _kept(text) == [n for n, _, keep in RULE_CASES if keep]


def test_net_state_stages_kept_phase_overridden():
    """Guards the net-level `state`: Net(prototxt, TEST) keeps the file's stages and replaces its
    phase with TEST (a deploy file saying TRAIN still gives the TEST net)."""
    layers = [
        ("inc_x", 'include { stage: "x" }'),
        ("exc_x", 'exclude { stage: "x" }'),
        ("inc_not_x", 'include { not_stage: "x" }'),
        ("inc_x_y", 'include { stage: "x" stage: "y" }'),
        ("inc_test", "include { phase: TEST }"),
        ("inc_train", "include { phase: TRAIN }"),
    ]
    body = "".join(_relu(n, r) for n, r in layers)
    assert _kept(HEAD + 'state { phase: TRAIN stage: "x" }\n' + body) == ["inc_x", "inc_test"]
    assert _kept(HEAD + 'state { stage: "y" stage: "x" }\n' + body) == ["inc_x", "inc_x_y", "inc_test"]
    assert _kept(HEAD + "state { phase: 0 level: 3 }\n" + body) == ["exc_x", "inc_not_x", "inc_test"]


def test_net_state_level_that_caffe_versions_disagree_on_is_refused():
    """Guards `state { level }`: since 2016 Net(prototxt, TEST) uses level 0, older Caffe the
    file's level; when that changes the layers, refuse (naming them) rather than guess."""
    text = HEAD + "state { level: 2 }\n" + _relu("a") + _relu("hi", "include { min_level: 1 }")
    with pytest.raises(UnsupportedError, match=r"x.prototxt: state \{ level: 2 \}.*'hi'"):
        _kept(text)
    assert _kept(HEAD + "state { level: 2 }\n" + _relu("a") + _relu("b", "include { phase: TEST }")) == ["a", "b"]


@pytest.mark.parametrize(
    "rules, match",
    [
        ("include { phase: TEST } exclude { phase: TRAIN }", "both include and exclude"),
        ("include { phase: 2 }", "bad phase"),
        ("include { phase: -1 }", "bad phase"),
        ('include { phase: "TEST" }', "bad phase"),  # an enum is unquoted in the text format
        ("include { phase: test }", "bad phase"),
        ("exclude { min_level: x }", "min_level"),
        ("exclude { max_level: 99999999999 }", "int32"),
        ("exclude { max_level: " + "9" * 5000 + " }", "int32"),  # past int()'s 4300-digit limit
        ("include { stage: x }", "quoted string"),
        ("include { phase: TEST phase: TRAIN }", "given 2 times"),
        ("include { stages: 'x' }", "unknown field 'stages'"),
        ("include: TEST", "must be a message"),
    ],
    ids=lambda v: v[:40],
)
def test_bad_rules_are_refused_naming_the_layer(rules, match):
    """Guards rule parsing: what Caffe's parser or FilterNet refuses is a FormatError naming the layer
    (today these were silently read as 'no phase' or dropped the layer)."""
    with pytest.raises(FormatError, match=match) as e:
        _kept(HEAD + _relu("a") + _relu("bad", rules))
    assert str(e.value).startswith("x.prototxt: layer 'bad'") and "\n" not in str(e.value)


def test_layer_and_v1_layers_together_are_refused():
    """Guards a file mixing `layer` and V1 `layers`: Caffe refuses it ('Refusing to upgrade
    inconsistent NetParameter'); the reader used to read both, in the wrong order."""
    with pytest.raises(FormatError, match="both 'layer' and V1 'layers'"):
        _kept(HEAD + _relu("a", key="layers", ltype="RELU") + _relu("b"))


STAGES = ["x", "train", "deploy"]
rules_st = st.fixed_dictionaries(
    {},
    optional={
        "phase": st.sampled_from(["TRAIN", "TEST", "0", "1"]),
        "min_level": st.integers(-2, 2),
        "max_level": st.integers(-2, 2),
        "stage": st.lists(st.sampled_from(STAGES), max_size=2),
        "not_stage": st.lists(st.sampled_from(STAGES), max_size=2),
    },
)
layer_st = st.tuples(st.sampled_from(["include", "exclude"]), st.lists(rules_st, max_size=3))


def _oracle_meets(rule: dict, level: int, stages: set[str]) -> bool:
    """caffe.proto NetStateRule, read from its comments: the phase, if set, is the net's (TEST = 1);
    min_level <= level <= max_level where set; ALL of `stage` and NONE of `not_stage` in the net."""
    if "phase" in rule and rule["phase"] not in ("TEST", "1"):
        return False
    if rule.get("min_level", level) > level or rule.get("max_level", level) < level:
        return False
    return set(rule.get("stage", [])) <= stages and not set(rule.get("not_stage", [])) & stages


def _oracle(layers: list, level: int, stages: set[str]) -> list[str]:
    out = []
    for i, (kind, rules) in enumerate(layers):
        met = [_oracle_meets(r, level, stages) for r in rules]
        if any(met) if kind == "include" and rules else not any(met):
            out.append(f"l{i}")
    return out


def _render(kind: str, rule: dict) -> str:
    parts = []
    for k, v in rule.items():
        for x in v if isinstance(v, list) else [v]:
            parts.append(f'{k}: "{x}"' if k in ("stage", "not_stage") else f"{k}: {x}")
    return f"{kind} {{ {' '.join(parts)} }}"


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    layers=st.lists(layer_st, min_size=1, max_size=8),
    stages=st.sets(st.sampled_from(STAGES)),
    state_phase=st.sampled_from([None, "TRAIN", "TEST", "0"]),
    level=st.sampled_from([0, 0, 1, -1]),
)
def test_rules_property_against_caffe_oracle(layers, stages, state_phase, level):
    """Guards item 5/14: random rule combinations (phases symbolic and numeric, levels, stages,
    net states) keep exactly the layers of the oracle; a file level that changes them is refused."""
    state = [f"phase: {state_phase}"] if state_phase else []
    state += [f'stage: "{s}"' for s in sorted(stages)] + ([f"level: {level}"] if level else [])
    text = HEAD + (f"state {{ {' '.join(state)} }}\n" if state else "")
    text += "".join(_relu(f"l{i}", " ".join(_render(kind, r) for r in rules)) for i, (kind, rules) in enumerate(layers))
    want = _oracle(layers, 0, stages)
    if level and _oracle(layers, level, stages) != want:
        with pytest.raises(UnsupportedError, match="level"):
            _kept(text)
    else:
        assert _kept(text) == want, text


def test_train_only_layer_excluded_verifies_through_cli(tmp_path):
    """Guards item 5 end to end: a loss layer marked `exclude { phase: TEST }` is not part of the
    deploy net, so verify passes (it used to stay and fail as an unsupported layer, exit 6)."""
    text = (
        TINY
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" exclude { phase: TEST } }\n'
    )
    p, w = _write(tmp_path, text, _weights(np.random.default_rng(0)))
    r = _verify(p, w)
    assert r.exit_code == 0, r.output
    assert [n.name for n in caffe.load(p, w).graph.nodes][-1] == "prob"


# ------------------------------------------------------------------------------ BatchNorm
def test_batchnorm_use_global_stats():
    """Guards item 6: `use_global_stats: false` (batch statistics at test time) is refused in one
    line naming the file and layer; true and unset (Caffe's default in TEST: true) are accepted alike."""
    base = HEAD + 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" %s }\n'
    g_unset = caffe.build_graph(parse_prototxt(base % "", "x.prototxt"), "x.prototxt")
    g_true = caffe.build_graph(
        parse_prototxt(base % "batch_norm_param { use_global_stats: true }", "x.prototxt"), "x.prototxt"
    )
    assert g_unset[0].nodes[0].op == g_true[0].nodes[0].op == "batch_norm"
    for false in ("false", "0", "f", "False"):
        text = base % f"batch_norm_param {{ use_global_stats: {false} }}"
        with pytest.raises(UnsupportedError) as e:
            caffe.build_graph(parse_prototxt(text, "x.prototxt"), "x.prototxt")
        msg = str(e.value)
        assert msg.startswith("x.prototxt: layer 'bn' (BatchNorm)") and "use_global_stats: true" in msg
        assert "batch" in msg and "\n" not in msg
    with pytest.raises(FormatError, match="bad value 'flase' for 'use_global_stats'"):
        text = base % "batch_norm_param { use_global_stats: flase }"
        caffe.build_graph(parse_prototxt(text, "x.prototxt"), "x.prototxt")


def test_batchnorm_use_global_stats_false_cli_exit_6(tmp_path):
    """Guards item 6 through `verify`: exit 6 with one line (it used to verify 'parity' of the
    stored-statistics model, which is not what Caffe computes)."""
    text = TINY.replace(
        'type: "BatchNorm" bottom: "conv" top: "conv" }',
        'type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { use_global_stats: false } }',
    )
    assert text != TINY
    p, w = _write(tmp_path, text, _weights(np.random.default_rng(0)))
    r = _verify(p, w)
    assert r.exit_code == UnsupportedError.exit_code, r.output
    _one_line(r, "m.prototxt", "'conv/bn'", "use_global_stats")


@pytest.mark.parametrize("value, bias", [("true", True), ("t", True), ("1", True), ("0", False), ("False", False)])
def test_booleans_read_as_caffe_reads_them(value, bias):
    """Guards flags such as bias_term: protobuf's text parser takes true/True/t/false/False/f/0/1 and
    refuses anything else; `bias_term: flase` or `TRUE` used to be read silently as false."""
    text = (
        HEAD
        + f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ num_output: 2 bias_term: {value} }} }}\n'
    )
    graph = caffe.build_graph(parse_prototxt(text, "x.prototxt"), "x.prototxt")[0]
    assert graph.nodes[0].attrs["bias"] is bias
    for bad in ("flase", "TRUE", "2", '"true"'):
        with pytest.raises(FormatError, match=r"x.prototxt: layer 'c': bad value .* for 'bias_term'"):
            caffe.build_graph(
                parse_prototxt(text.replace(f"bias_term: {value}", f"bias_term: {bad}"), "x"), "x.prototxt"
            )


# ------------------------------------------------------------------------------ blob counts
TINY_BIAS = TINY.replace("pad: 1 bias_term: false", "pad: 1")
TINY_FC_NOBIAS = TINY.replace("num_output: 5 }", "num_output: 5 bias_term: false }")
TINY_SCALE_NOBIAS = TINY.replace("scale_param { bias_term: true }", "scale_param { bias_term: false }")


def _f(*shape):
    return np.ones(shape, np.float32)


# (prototxt, layer, its blobs in the caffemodel, the message's description, count, Caffe's count)
COUNT_CASES = [
    (TINY, "conv", [_f(4, 3, 3, 3), _f(4)], "Convolution, bias_term: false", 2, 1),
    (TINY_BIAS, "conv", [_f(4, 3, 3, 3)], "Convolution, bias_term: true", 1, 2),
    (TINY_BIAS, "conv", [_f(4, 3, 3, 3), _f(4), _f(4)], "Convolution, bias_term: true", 3, 2),
    (TINY, "conv/bn", [_f(4), _f(4)], "BatchNorm", 2, 3),
    (TINY, "conv/bn", [_f(4), _f(4), _f(1), _f(1)], "BatchNorm", 4, 3),
    (TINY, "fc", [_f(5, 16)], "InnerProduct, bias_term: true", 1, 2),
    (TINY, "fc", [_f(5, 16), _f(5), _f(5)], "InnerProduct, bias_term: true", 3, 2),
    (TINY_FC_NOBIAS, "fc", [_f(5, 16), _f(5)], "InnerProduct, bias_term: false", 2, 1),
    (TINY, "conv/scale", [_f(4)], "Scale, bias_term: true", 1, 2),
    (TINY, "conv/scale", [_f(4), _f(4), _f(4)], "Scale, bias_term: true", 3, 2),
    (TINY_SCALE_NOBIAS, "conv/scale", [_f(4), _f(4)], "Scale, bias_term: false", 2, 1),
    (TINY, "relu", [_f(4)], "ReLU", 1, 0),  # a layer without parameters owns no blobs
]


@pytest.mark.parametrize(
    "text, layer, blobs, what, n, need", COUNT_CASES, ids=[f"{c[1]}-{c[3]}-{c[4]}" for c in COUNT_CASES]
)
def test_blob_counts_follow_caffe(tmp_path, text, layer, blobs, what, n, need):
    """Guards item 7: a blob count Caffe refuses (CopyTrainedLayersFrom's CHECK_EQ) was accepted and
    the extra blob dropped; now a ModelError naming the caffemodel, the layer and both counts."""
    weights = _weights(np.random.default_rng(0))
    if text is TINY_FC_NOBIAS:
        weights["fc"] = weights["fc"][:1]
    if text is TINY_SCALE_NOBIAS:
        weights["conv/scale"] = weights["conv/scale"][:1]
    if text is TINY_BIAS:
        weights["conv"] = [weights["conv"][0], _f(4)]
    p, w = _write(tmp_path, text, weights)
    caffe.load(p, w)  # the consistent pair loads
    p, w = _write(tmp_path, text, dict(weights, **{layer: blobs}), dict(TYPES, relu="ReLU"))
    with pytest.raises(ModelError) as e:
        caffe.load(p, w)
    assert str(e.value) == (
        f"{w}: layer '{layer}' ({what}) has {n} blobs in the caffemodel; Caffe requires exactly {need} "
        "(Incompatible number of blobs)"
    )


def test_batchnorm_factor_blob_shape(tmp_path):
    """Guards the third BatchNorm blob: Caffe's is one value; an empty or longer one was read as 1
    or by its first value. Now refused as a shape mismatch."""
    weights = _weights(np.random.default_rng(0))
    for bad in (np.zeros(0, np.float32), np.array([2.0, 3.0], np.float32)):
        p, w = _write(tmp_path, TINY, dict(weights, **{"conv/bn": weights["conv/bn"][:2] + [bad]}))
        with pytest.raises(ModelError, match=r"'conv/bn': moving-average factor blob has shape"):
            caffe.load(p, w)


def test_blob_count_cli_exit_5(tmp_path):
    """Guards item 7 through `verify`: exit 5, one line (it used to verify with the bias dropped)."""
    weights = _weights(np.random.default_rng(0))
    weights["conv"] = [weights["conv"][0], _f(4)]
    p, w = _write(tmp_path, TINY, weights)
    r = _verify(p, w)
    assert r.exit_code == ModelError.exit_code, r.output
    _one_line(r, "m.caffemodel", "'conv' (Convolution, bias_term: false) has 2 blobs", "exactly 1")


# ------------------------------------------------------------------------------ renamed layers
def test_renamed_layer_names_the_unmatched_ones(tmp_path):
    """Guards item 7: a weighted layer renamed in the caffemodel is reported with the caffemodel's
    unmatched weighted layers (it used to say only 'has 0 weight blobs, needs 2')."""
    weights = _weights(np.random.default_rng(0))
    renamed = {("fc_v2" if k == "fc" else k): v for k, v in weights.items()}
    p, w = _write(tmp_path, TINY, renamed, dict(TYPES, fc_v2="InnerProduct"))
    with pytest.raises(ModelError) as e:
        caffe.load(p, w)
    assert str(e.value).startswith(
        f"{w}: prototxt layer 'fc' (InnerProduct, bias_term: true) has no weights; the caffemodel has unmatched "
        "weighted layers: 'fc_v2'"
    )
    # many unmatched layers: the first five, then a count
    extra = {f"old{i}": [_f(1)] for i in range(8)}
    p, w = _write(tmp_path, TINY, dict(renamed, **extra))
    with pytest.raises(ModelError, match=r"'fc_v2', 'old0', 'old1', 'old2', 'old3' and 4 more \(renamed\?"):
        caffe.load(p, w)
    r = _verify(p, w)
    assert r.exit_code == ModelError.exit_code
    _one_line(r, "prototxt layer 'fc'", "'fc_v2'")


def test_duplicate_weighted_layer_in_the_caffemodel_refused(tmp_path):
    """Guards the caffemodel side: two records named 'conv' used to be read as the last one only,
    so a bad blob count in the first was never checked."""
    from senet_hub.converters.caffe_format import encode_layer
    from senet_hub.errors import FormatError

    weights = _weights(np.random.default_rng(0))
    p, w = _write(tmp_path, TINY, weights)
    w.write_bytes(w.read_bytes() + encode_layer("conv", "Convolution", weights["conv"]))
    with pytest.raises(FormatError, match="two layers named 'conv' carry weights"):
        caffe.load(p, w)


def test_duplicate_weighted_layer_name_refused(tmp_path):
    """Guards a prototxt naming two weighted layers alike: Caffe copies the caffemodel's weights into
    the first only (the second keeps its random initialisation); both used to get them."""
    text = TINY.replace(
        'layer { name: "prob"',
        'layer { name: "fc" type: "InnerProduct" bottom: "fc" top: "fc2" inner_product_param { num_output: 5 } }\n'
        'layer { name: "prob"',
    ).replace('bottom: "fc" top: "prob"', 'bottom: "fc2" top: "prob"')
    weights = _weights(np.random.default_rng(0))
    p, w = _write(tmp_path, text, weights)
    with pytest.raises(ModelError, match="layer name 'fc' .* used twice .* first one only"):
        caffe.load(p, w)


# ------------------------------------------------------------------------------ CLI helpers
def _verify(p, w):
    from senet_hub.cli import main

    args = ["verify", "--from", "caffe", "--prototxt", str(p), "--caffemodel", str(w), "--backends", "numpy"]
    return CliRunner().invoke(main, args)


def _one_line(r, *fragments):
    lines = [ln for ln in r.output.splitlines() if ln.startswith("senet-hub: error")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_include_and_exclude_cli_exit_4(tmp_path):
    """Guards FilterNet's CHECK through `verify`: a layer with include and exclude rules is exit 4,
    one line naming the layer (it used to be read with the exclude rule ignored)."""
    text = TINY.replace(
        'name: "relu" type: "ReLU"', 'name: "relu" type: "ReLU" include { phase: TEST } exclude { phase: TRAIN }'
    )
    p, w = _write(tmp_path, text, _weights(np.random.default_rng(0)))
    r = _verify(p, w)
    assert r.exit_code == FormatError.exit_code, r.output
    _one_line(r, "m.prototxt: layer 'relu'", "both include and exclude")
