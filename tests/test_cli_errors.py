"""Bad input: one line naming the file/layer and the fix, a documented exit code, no traceback,
no partial output file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_caffe_reader import TINY, _weights

from senet_hub.converters.caffe_format import encode_layer
from senet_hub.errors import FormatError, InputFileError, ModelError, OutputError, UnsupportedError

TYPES = {"conv": "Convolution", "conv/bn": "BatchNorm", "conv/scale": "Scale", "fc": "InnerProduct"}


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "senet_hub.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture
def tiny(tmp_path):
    blobs = _weights(np.random.default_rng(0))
    p = tmp_path / "tiny.prototxt"
    p.write_text(TINY)
    w = tmp_path / "tiny.caffemodel"
    w.write_bytes(b"".join(encode_layer(k, TYPES[k], v) for k, v in blobs.items()))
    return p, w, blobs


def _assert_one_line_error(r, code, *fragments):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("senet-hub: error")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _no_outputs(d: Path, stem: str):
    left = [f for f in os.listdir(d) if f.startswith(stem) or f.startswith("." + stem)]
    assert not left, left


def test_convert_tiny_ok(tiny, tmp_path):
    p, w, _ = tiny
    r = cli("convert", "--from", "caffe", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.prototxt").exists() and (tmp_path / "out.caffemodel").exists()


def test_missing_file(tiny, tmp_path):
    p, _, _ = tiny
    r = cli(
        "convert",
        "--prototxt",
        p,
        "--caffemodel",
        tmp_path / "nope.caffemodel",
        "--to",
        "caffe",
        "-o",
        tmp_path / "out",
    )
    _assert_one_line_error(r, InputFileError.exit_code, "nope.caffemodel", "not found")
    _no_outputs(tmp_path, "out")


@pytest.mark.parametrize("cut", [1, 7, 100, 0.5, -3])
def test_truncated_caffemodel(tiny, tmp_path, cut):
    p, w, _ = tiny
    data = w.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    w.write_bytes(data[:n])
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    assert r.returncode in (FormatError.exit_code, ModelError.exit_code), r.stderr
    _assert_one_line_error(r, r.returncode, "tiny.caffemodel")
    _no_outputs(tmp_path, "out")


def test_corrupt_caffemodel(tiny, tmp_path):
    p, w, _ = tiny
    w.write_bytes(b"\xff" * 64 + os.urandom(256))
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    _assert_one_line_error(r, FormatError.exit_code, "tiny.caffemodel", "re-download")
    w.write_text("this is not a caffemodel at all")
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    _assert_one_line_error(r, FormatError.exit_code, "tiny.caffemodel")
    _no_outputs(tmp_path, "out")


def test_missing_weights_and_wrong_shape(tiny, tmp_path):
    p, w, blobs = tiny
    w.write_bytes(b"".join(encode_layer(k, TYPES[k], v) for k, v in blobs.items() if k != "fc"))
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    _assert_one_line_error(r, ModelError.exit_code, "'fc'", "does not match")
    blobs["conv"] = [np.zeros((8, 3, 3, 3), np.float32)]
    w.write_bytes(b"".join(encode_layer(k, TYPES[k], v) for k, v in blobs.items()))
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    _assert_one_line_error(r, ModelError.exit_code, "'conv'", "(8, 3, 3, 3)", "(4, 3, 3, 3)")
    _no_outputs(tmp_path, "out")


def test_unsupported_layers(tiny, tmp_path):
    p, w, _ = tiny
    p.write_text(TINY + 'layer { name: "lrn" type: "LRN" bottom: "prob" top: "lrn" }\n')
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    _assert_one_line_error(r, UnsupportedError.exit_code, "LRN x1 (lrn)", "tiny.prototxt")


def test_output_not_writable(tiny, tmp_path):
    p, w, _ = tiny
    r = cli(
        "convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "no" / "such" / "dir" / "out"
    )
    _assert_one_line_error(r, OutputError.exit_code, "does not exist")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores modes: /proc refuses new files even to root
            r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", "/proc/senet-hub-out")
            _assert_one_line_error(r, OutputError.exit_code, "/proc/senet-hub-out")
        else:
            r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", ro / "out")
            _assert_one_line_error(r, OutputError.exit_code, "not writable")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_output_write_failure_leaves_nothing(tiny, tmp_path, monkeypatch):
    """A failure in the middle of writing (here: disk full) leaves no partial file and no temp file."""
    from senet_hub import sources
    from senet_hub.converters import caffe, caffe_format

    p, w, _ = tiny
    model = caffe.load(p, w)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(caffe_format, "encode_layer", boom)
    monkeypatch.setattr("senet_hub.converters.caffe_writer.encode_layer", boom)
    with pytest.raises(OutputError, match="No space left"):
        sources.save_model(model, "caffe", str(tmp_path / "out"))
    _no_outputs(tmp_path, "out")


def test_debug_shows_traceback(tiny, tmp_path):
    p, _, _ = tiny
    r = cli(
        "--debug", "convert", "--prototxt", p, "--caffemodel", tmp_path / "nope", "--to", "caffe", "-o", tmp_path / "o"
    )
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_prototxt_syntax_error(tiny, tmp_path):
    p, w, _ = tiny
    p.write_text(TINY.replace('top: "fc"', 'top: "fc" }}'))
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    _assert_one_line_error(r, FormatError.exit_code, "tiny.prototxt:")


def test_import_and_help_load_no_framework():
    code = (
        "import sys, senet_hub, senet_hub.cli, senet_hub.verify, senet_hub.sources\n"
        "from click.testing import CliRunner\n"
        "r = CliRunner().invoke(senet_hub.cli.main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for sub in ('convert', 'verify', 'export-onnx', 'list', 'env'):\n"
        "    assert CliRunner().invoke(senet_hub.cli.main, [sub, '--help']).exit_code == 0\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras', 'mxnet', 'chainer', 'cv2', 'onnx', 'onnxruntime', 'mindspore', 'mindcv') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
