"""Read back senet-hub's TensorFlow outputs (issue 14 item 3): a Keras 3 ``.keras`` file and a SavedModel.

builders.tensorflow.save embeds senet-hub's record (graph, meta, the Keras layer of each node's
weights); ``--from tensorflow`` (converters.tensorflow_source) reads it and the weights back: the
same graph, bit-identical float32 weights by canonical name, the same meta; a second conversion
from the read-back file computes what the source model computes; a file without the record, a
damaged one or a record of another model is one line with its documented exit code.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import all_ops  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import assert_same_model, cli, one_line  # noqa: E402

from senet_hub import formats, transforms, zoo  # noqa: E402
from senet_hub.builders import numpy_ref  # noqa: E402
from senet_hub.converters import tensorflow_source as tfs  # noqa: E402
from senet_hub.errors import FormatError, InputFileError, ModelError, UnsupportedError  # noqa: E402
from senet_hub.graph import Graph, Model, Node  # noqa: E402
from senet_hub.sources import infer_source  # noqa: E402
from senet_hub.verify import default_input  # noqa: E402

pytest.importorskip("tensorflow", reason="tensorflow is not installed")  # third-party: may skip
from senet_hub.builders import tensorflow as tfb  # noqa: E402

# an input convention in the model's channel order (RGB): an exact stage without a permutation (Keras Rescaling)
HALF = {"channel_order": "RGB", "range": [0, 1], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _s18():
    return zoo.synthetic_model("seresnet18", seed=3, num_classes=10)


def _tiny():
    """Another model than mixed_14, cheap to write: conv + batch norm + linear."""
    nodes = [Node("conv1", "conv", ["data"], {"out_channels": 4, "kernel": (3, 3)}),
             Node("bn1", "batch_norm", ["conv1"]), Node("fc", "linear", ["bn1"], {"out_features": 3})]  # fmt: skip
    g = Graph(nodes, input_shape=(1, 3, 6, 6))
    return Model(g, all_ops.random_weights(g, 5), {"arch": "tiny"})


# name -> (model factory, file name, layout). mix: every op of the vocabulary (a permuting input stage
# as a 1x1 Conv2D, a grouped conv, a conv split for stride + dilation, a Dense on a 4-D value ...);
# s18: a zoo architecture without a stage, with an exact stage (Rescaling), and folded (input_fold)
CASES = {
    "keras-mix": (all_ops.mixed_14, "mix.keras", "nhwc"),
    "keras-tiny": (_tiny, "tiny.keras", "nhwc"),
    "savedmodel-tiny": (_tiny, "tiny_sm", "nchw"),
    "savedmodel-mix": (all_ops.mixed_14, "mix_sm", "nchw"),
    "keras-s18": (_s18, "s18.keras", "nchw"),
    "keras-s18-stage": (lambda: transforms.set_input_convention(_s18(), HALF, fold=False), "s18_stage.keras", "nhwc"),
    "savedmodel-s18-folded": (
        lambda: transforms.fold_input_stage(transforms.set_input_convention(_s18(), "caffe", fold=False))[0],
        "s18_folded_sm",
        "nhwc",
    ),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """name -> (source model, path), each written once, when a test first asks for it (TF saves are slow)."""
    d = tmp_path_factory.mktemp("tf")
    done: dict[str, tuple] = {}

    def get(name: str):
        if name not in done:
            make, fname, layout = CASES[name]
            model = make()
            path = d / fname
            assert tfb.save(model, path, layout=layout) == [str(path)]
            done[name] = (model, path)
        return done[name]

    return get


def _read(path: Path, **kw):
    return tfs.load(keras=path, **kw) if path.suffix == ".keras" else tfs.load(saved_model=path, **kw)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_exact(written, name):
    model, path = written(name)
    got = _read(path)
    assert_same_model(got, model)
    assert got.meta["source_format"] == "tensorflow"
    assert got.meta["source_container"] == ("keras" if path.suffix == ".keras" else "savedmodel")
    assert got.meta["tensorflow"]["layout"] == CASES[name][2]
    assert all(os.path.isfile(p) for p in got.meta["source_paths"].values())  # files: their sha256 can be recorded
    if name == "savedmodel-s18-folded":
        assert got.meta["input_fold"]["exact"] is False and not any(n.op == "input_norm" for n in got.graph.nodes)
    if name == "keras-s18-stage":
        assert got.graph.nodes[0].op == "input_norm" and got.graph.nodes[0].attrs == model.graph.nodes[0].attrs


def test_record_is_where_tensorflow_and_keras_leave_it_alone(written):
    """.keras: a zip member keras.models.load_model ignores (safe mode), computing what senet-hub's
    build computes; SavedModel: assets.extra/. The temporary names are gone after the write."""
    import keras

    model, kpath = written("keras-mix")
    tiny, spath = written("savedmodel-tiny")
    with zipfile.ZipFile(kpath) as zf:
        assert tfs.RECORD_NAME in zf.namelist() and "model.weights.h5" in zf.namelist()
    assert (spath / "assets.extra" / tfs.RECORD_NAME).is_file()
    for m, p, layout in ((model, kpath, "nhwc"), (tiny, spath, "nchw")):
        rec = tfs.read_record(p)
        assert rec["format"] == "senet-hub" and rec["arch"] == m.arch and rec["layout"] == layout
        assert rec["graph"]["output"] == m.graph.output
    assert not [f for f in os.listdir(kpath.parent) if ".senet-hub-tmp-" in f]
    net = keras.models.load_model(kpath, safe_mode=True)
    x = np.random.default_rng(4).normal(100, 50, model.graph.input_shape).astype(np.float32)
    want = tfb.run(tfb.build(model), x, taps=False)["prob"]
    np.testing.assert_array_equal(np.asarray(net(x.transpose(0, 2, 3, 1), training=False)), want)


@pytest.mark.parametrize(
    "name,target", [("keras-mix", "onnx"), ("keras-s18-stage", "onnx"), ("savedmodel-s18-folded", "pytorch")]
)
def test_cli_second_hop_computes_the_source_model(written, tmp_path, name, target):
    """.keras (exact input stage) -> ONNX, SavedModel (folded stage) -> .pth, the source inferred from
    --keras / --saved-model: each result computes the source model (the float64 numpy reference)."""
    model, path = written(name)
    opt = "--keras" if path.suffix == ".keras" else "--saved-model"
    out = tmp_path / ("out.onnx" if target == "onnx" else "out.pth")
    r = cli("convert", opt, path, "--to", target, "-o", out)
    assert r.exit_code == 0, r.output
    x = default_input(model, 1, 7)
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x, taps=False)[model.graph.output]
    if target == "onnx":
        ort = pytest.importorskip("onnxruntime")
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    else:
        from senet_hub.converters import pytorch

        back = pytorch.load(out)
        assert_same_model(back, model)  # a .pth holds weights only: this is the folded model, exactly
        y = numpy_ref.run(numpy_ref.build(back, np.float64), x, taps=False)[back.graph.output]
        np.testing.assert_array_equal(y, ref)


def _rezip(src: Path, dst: Path, drop: str = "", add: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != drop:
                zout.writestr(info.filename, zin.read(info.filename))
        for k, v in (add or {}).items():
            zout.writestr(k, v)
    return dst


def test_bad_inputs_areone_line(written, tmp_path):
    _, kpath = written("keras-mix")
    _, spath = written("savedmodel-tiny")
    convert = ("convert", "--to", "onnx", "-o", tmp_path / "x.onnx")
    # no record: a Keras file or SavedModel someone else wrote is refused, never guessed at
    bare = _rezip(kpath, tmp_path / "bare.keras", drop=tfs.RECORD_NAME)
    one_line(cli(*convert, "--keras", bare), UnsupportedError.exit_code, "no senet-hub record", "--from onnx")
    sm = tmp_path / "bare_sm"
    shutil.copytree(spath, sm)
    (sm / "assets.extra" / tfs.RECORD_NAME).unlink()
    one_line(cli(*convert, "--saved-model", sm), UnsupportedError.exit_code, "assets.extra/senet_hub.json")
    # damaged files
    data = kpath.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    one_line(
        cli(*convert, "--from", "tensorflow", "--keras", tmp_path / "cut.keras"), FormatError.exit_code, "cut.keras"
    )
    (tmp_path / "text.keras").write_text("not a zip")
    one_line(cli(*convert, "--keras", tmp_path / "text.keras"), FormatError.exit_code, "not a .keras (zip) file")
    bad_json = _rezip(kpath, tmp_path / "badjson.keras", drop=tfs.RECORD_NAME, add={tfs.RECORD_NAME: b"{oops"})
    one_line(cli(*convert, "--keras", bad_json), FormatError.exit_code, "is not JSON")
    (sm / "variables" / "variables.index").write_bytes(b"\0" * 10)
    (sm / "assets.extra" / tfs.RECORD_NAME).write_bytes((spath / "assets.extra" / tfs.RECORD_NAME).read_bytes())
    one_line(cli(*convert, "--saved-model", sm), FormatError.exit_code, "variables are not readable")
    # a record of another model than the weights: exit 5, naming what disagrees
    other = _rezip(written("keras-tiny")[1], tmp_path / "other.keras", drop=tfs.RECORD_NAME,
                   add={tfs.RECORD_NAME: zipfile.ZipFile(kpath).read(tfs.RECORD_NAME)})  # fmt: skip
    one_line(cli(*convert, "--keras", other), ModelError.exit_code, "not of the same model")
    with pytest.raises(ModelError, match="holds test-all-ops, not seresnet18"):  # --arch is checked
        tfs.load(keras=kpath, arch="seresnet18")
    # wrong kind of path
    one_line(cli(*convert, "--saved-model", kpath), FormatError.exit_code, "is not a directory", "--keras")
    one_line(cli(*convert, "--saved-model", tmp_path / "nope"), InputFileError.exit_code, "not found")
    one_line(cli(*convert, "--keras", spath), InputFileError.exit_code, "is a directory")
    one_line(cli(*convert, "--from", "tensorflow"), 1, "needs one of --keras FILE or --saved-model DIR")


def test_older_keras_file_without_layer_names_is_refused(written, tmp_path):
    """model.weights.h5 of a Keras that did not name its layers: which layer is which cannot be told (exit 4)."""
    import h5py

    _, kpath = written("keras-mix")
    h5 = tmp_path / "w.h5"
    h5.write_bytes(zipfile.ZipFile(kpath).read("model.weights.h5"))
    with h5py.File(h5, "r+") as f:
        for g in f["layers"].values():
            if "name" in g["vars"].attrs:
                del g["vars"].attrs["name"]
    old = _rezip(kpath, tmp_path / "old.keras", drop="model.weights.h5", add={"model.weights.h5": h5.read_bytes()})
    with pytest.raises(FormatError, match="does not name its layers"):
        tfs.load(keras=old)


def test_source_is_registered_and_inferred():
    fmt = formats.source("tensorflow")
    assert [o.flag for o in fmt.options] == ["--keras", "--saved-model", "--arch"]
    assert infer_source(None, saved_model="d") == infer_source(None, keras="m.keras") == "tensorflow"
    assert infer_source(None, arch="seresnet18") == "zoo"


def test_keras_file_is_read_without_tensorflow(written):
    """--keras reads the zip and model.weights.h5 with h5py: TensorFlow, Keras and Chainer stay unimported."""
    import subprocess
    import sys

    _, kpath = written("keras-mix")
    code = (
        "import sys; from senet_hub.converters import tensorflow_source as t; m = t.load(keras=sys.argv[1]); "
        "print(len(m.weights), sorted(k for k in ('tensorflow', 'keras', 'chainer', 'torch') if k in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(kpath)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(len(all_ops.mixed_14().weights)), "[]"]
