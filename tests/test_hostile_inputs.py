"""Hostile and odd input files (issue 11 items 8, 9, 10, 12, 14): special files, files that change
while being read, pickles in a Chainer .npz, V0 Caffe nets, unpacked float data.

Every CLI case runs in a subprocess with a timeout, so a reader that blocks (a FIFO with no
writer) fails the test instead of hanging CI.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_caffe_reader import TINY, _weights

from senet_hub.converters import caffe
from senet_hub.converters import caffe_format as cf
from senet_hub.converters.caffe_format import encode_layer, ld, read_caffemodel
from senet_hub.errors import FormatError, InputFileError

TYPES = {"conv": "Convolution", "conv/bn": "BatchNorm", "conv/scale": "Scale", "fc": "InnerProduct"}
HANG_S = 60  # a refused special file takes well under a second; past this the reader is blocked
ROOT = Path(__file__).resolve().parent.parent
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def cli(*args, pass_fds=(), code=None):
    """Run the CLI (optionally after `code`, e.g. a monkeypatch) in a subprocess with a hang bound."""
    prelude = (code or "") + "\nfrom senet_hub.cli import main\nmain(prog_name='senet-hub')"
    try:
        return subprocess.run(
            [sys.executable, "-c", prelude, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=HANG_S,
            pass_fds=pass_fds,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"senet-hub {' '.join(map(str, args))} still running after {HANG_S} s: it blocks on its input")


def one_line_error(r, code, *fragments):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("senet-hub: error")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.prototxt"
    p.write_text(TINY)
    w = tmp_path / "tiny.caffemodel"
    w.write_bytes(b"".join(encode_layer(k, TYPES[k], v) for k, v in _weights(np.random.default_rng(0)).items()))
    return p, w


# --------------------------------------------------------------------------------- special files
def _special(kind: str, tmp_path: Path) -> str:
    if kind == "fifo":
        os.mkfifo(tmp_path / "in.fifo")
        return str(tmp_path / "in.fifo")
    if kind == "symlink-to-fifo":
        os.mkfifo(tmp_path / "real.fifo")
        os.symlink(tmp_path / "real.fifo", tmp_path / "link.bin")
        return str(tmp_path / "link.bin")
    if kind == "directory":
        (tmp_path / "adir").mkdir()
        return str(tmp_path / "adir")
    if kind == "empty":
        (tmp_path / "empty.bin").write_bytes(b"")
        return str(tmp_path / "empty.bin")
    return kind  # a device: /dev/null reads as empty, /dev/zero never ends


SPECIAL = {  # kind -> (exit code, fragment of the one line)
    "fifo": (3, "not a regular file"),
    "symlink-to-fifo": (3, "not a regular file"),
    "/dev/null": (3, "not a regular file"),
    "/dev/zero": (3, "not a regular file"),
    "directory": (3, "is a directory"),
    "empty": (4, "empty"),
}


@needs_fifo
@pytest.mark.parametrize("slot", ["prototxt", "caffemodel", "ckpt"])
@pytest.mark.parametrize("kind", list(SPECIAL))
def test_special_files_refused_at_once(tmp_path, tiny, slot, kind):
    """Issue 11 items 8 and 14: a FIFO with no writer (directly or through a symlink) used to block
    convert forever and /dev/null read as an empty file; every special file is refused before it
    is opened, with exit 3 and one line; an empty regular file is a format error (exit 4). Before
    this change the caffemodel cases (and the empty prototxt: exit 6) failed; the prototxt and
    ckpt cases guard wire.read_bytes, which those readers already used."""
    if kind.startswith("/dev/") and not os.path.exists(kind):
        pytest.skip(f"no {kind}")
    bad = _special(kind, tmp_path)
    prototxt, caffemodel = tiny
    if slot == "ckpt":
        src = ["--from", "mindspore", "--ckpt", bad, "--arch", "seresnet18"]
    else:
        src = [
            "--prototxt",
            bad if slot == "prototxt" else prototxt,
            "--caffemodel",
            bad if slot == "caffemodel" else caffemodel,
        ]
    r = cli("convert", *src, "--to", "caffe", "-o", tmp_path / "out")
    code, fragment = SPECIAL[kind]
    line = one_line_error(r, code, fragment)
    assert os.path.basename(bad) in line, line
    assert not list(tmp_path.glob("out*"))


@needs_fifo
def test_fifo_with_a_writer_refused_not_read_as_empty(tmp_path, tiny):
    """Issue 11 item 8: a FIFO or pipe with a writer (bash's `<(cat file)`) was read as empty and
    reported as "empty file; re-download". senet-hub reads regular files only (the documented
    choice: a stream cannot be checked for changes or sized before reading): refused, exit 3."""
    prototxt, caffemodel = tiny
    data = caffemodel.read_bytes()
    fifo = tmp_path / "w.fifo"
    os.mkfifo(fifo)

    def write_fifo():  # blocks in open() until a reader comes: the test releases it below
        try:
            with open(fifo, "wb") as f:
                f.write(data)
        except OSError:
            pass

    writer = threading.Thread(target=write_fifo, daemon=True)
    writer.start()
    try:
        r = cli("convert", "--prototxt", prototxt, "--caffemodel", fifo, "--to", "caffe", "-o", tmp_path / "out")
        one_line_error(r, 3, "w.fifo", "not a regular file", "save the caffemodel to a file")
    finally:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open() return
        writer.join(10)
        os.close(fd)

    rfd, wfd = os.pipe()  # an anonymous pipe, as `<(cat file)` passes it: /dev/fd/N

    def write_pipe():
        try:
            with open(wfd, "wb") as f:
                f.write(data)
        except OSError:  # the reader never reads: broken pipe once the child exits
            pass

    writer = threading.Thread(target=write_pipe, daemon=True)
    writer.start()
    try:
        r = cli(
            "convert", "--prototxt", prototxt, "--caffemodel", f"/dev/fd/{rfd}", "--to", "caffe", "-o",
            tmp_path / "out", pass_fds=(rfd,),
        )  # fmt: skip
    finally:
        os.close(rfd)
        writer.join(10)
    one_line_error(r, 3, "not a regular file")
    assert not list(tmp_path.glob("out*"))


@needs_fifo
def test_other_readers_refuse_fifos(tmp_path, monkeypatch):
    """Issue 11 item 8, the library readers: the manifest ($SENET_HUB_MANIFEST), a label file and an
    image of an evaluate data folder are refused when they are FIFOs (each blocked in open() before)."""
    import fuzzing

    from senet_hub.hub import evaluate, manifest

    fifo = tmp_path / "x.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("SENET_HUB_MANIFEST", str(fifo))
    with fuzzing.hang_guard(HANG_S):
        with pytest.raises(InputFileError, match="not a regular file.*SENET_HUB_MANIFEST"):
            manifest.load()
        (tmp_path / "data").mkdir()
        with pytest.raises(InputFileError, match="x.fifo: is not a regular file"):
            evaluate.find_samples(tmp_path / "data", fifo)
        with pytest.raises(InputFileError, match="x.fifo: is not a regular file"):
            evaluate.load_image(str(fifo), {})


# ---------------------------------------------------------------------- changed while being read
def _rewrite(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        os.truncate(path, len(data) // 2)
    elif how == "rewritten":  # `cp` over it: same size, new bytes, new mtime
        path.write_bytes(bytes(reversed(data)))
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:  # replaced: a new file renamed over the name
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)


HOOK = """
import os, senet_hub.converters.wire as w
_real = w.open_regular
def _hooked(path, what):
    f, st = _real(path, what)
    if what == "caffemodel":  # between the identity check (stat) and the read: what `cp` does
        {action}
    return f, st
w.open_regular = _hooked
"""


@pytest.mark.parametrize("how", ["truncated", "rewritten", "replaced"])
def test_caffemodel_changed_while_read(tmp_path, tiny, how, monkeypatch):
    """Issue 11 item 9: the memory-mapped reader died of SIGBUS when the file was truncated under it
    (and read a mix of old and new bytes when it was rewritten). The file is now read into one
    buffer and its identity (device, inode, size, mtime) checked before and after: exit 4, one
    line. Deterministic: a hook changes the file right after it is opened."""
    import senet_hub.converters.wire as wire

    prototxt, caffemodel = tiny
    real = wire.open_regular

    def hooked(path, what):
        f, st = real(path, what)
        if what == "caffemodel":
            _rewrite(Path(path), how)
        return f, st

    monkeypatch.setattr(wire, "open_regular", hooked)
    with pytest.raises(FormatError, match="changed while being read"):
        read_caffemodel(caffemodel)
    monkeypatch.undo()

    tiny_again = tmp_path / "again.caffemodel"
    tiny_again.write_bytes(caffemodel.read_bytes())
    action = f"__import__('test_hostile_inputs')._rewrite(__import__('pathlib').Path(path), {how!r})"
    # tests/ for this module, bench/ for the fuzzing library it imports (as conftest sets up)
    paths = [str(ROOT / "tests"), str(ROOT / "bench")]
    code = f"import sys; sys.path[:0] = {paths!r}\n" + HOOK.format(action=action)
    r = cli("convert", "--prototxt", prototxt, "--caffemodel", tiny_again, "--to", "caffe", "-o", tmp_path / "o",
            code=code)  # fmt: skip
    assert r.returncode != -7, "SIGBUS"
    one_line_error(r, 4, "again.caffemodel", "changed while being read")
    assert not list(tmp_path.glob("o.*"))


# ---------------------------------------------------------------------------------- V0 nets
def test_v0_caffemodel_names_the_upgrade_tool(tmp_path):
    """Issue 11 item 12: a V0 caffemodel (NetParameter.layers whose V1LayerParameter carries the V0
    `layer` message, field 1) was "truncated or not a caffemodel; re-download the file"."""
    blob = ld(7, ld(7, ld(1, bytes([2, 3])))) + ld(5, np.arange(6, dtype="<f4").tobytes())
    v0 = ld(2, ld(1, ld(1, b"conv1") + ld(2, b"conv") + ld(50, blob)) + ld(2, b"data") + ld(3, b"conv1"))
    p = tmp_path / "old.caffemodel"
    p.write_bytes(ld(1, b"net") + ld(3, b"data") + v0)
    with pytest.raises(FormatError) as e:
        read_caffemodel(p)
    assert "V0 (pre-2014) caffemodel" in str(e.value) and "tools/upgrade_net_proto_binary" in str(e.value)
    assert "re-download" not in str(e.value)
    r = cli("convert", "--prototxt", ROOT / "reference_models" / "SE-ResNet-50.prototxt",
            "--caffemodel", p, "--to", "caffe", "-o", tmp_path / "out")  # fmt: skip
    one_line_error(r, 4, "old.caffemodel", "V0 (pre-2014)", "upgrade_net_proto_binary")


def test_v0_prototxt_names_the_upgrade_tool(tmp_path):
    """Issue 11 item 12: a V0 prototxt (`layers { layer { name type ... } bottom top }`) was "a layer
    without a name or type"."""
    p = tmp_path / "old.prototxt"
    p.write_text(
        'name: "old"\ninput: "data"\ninput_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
        'layers {\n  layer {\n    name: "conv1"\n    type: "conv"\n    num_output: 4\n    kernelsize: 3\n  }\n'
        '  bottom: "data"\n  top: "conv1"\n}\n'
    )
    with pytest.raises(FormatError, match=r"V0 \(pre-2014\) prototxt.*tools/upgrade_net_proto_text"):
        caffe.load_prototxt(p)


# ---------------------------------------------------------------------------------- unpacked floats
def _unpacked(arr: np.ndarray, tag: int) -> bytes:
    """One value per field, as old writers do: key byte `tag` + the value's bytes, repeated."""
    dt = np.dtype("<f4" if tag == 0x2D else "<f8")
    rec = np.zeros(arr.size, dtype=[("key", "u1"), ("value", dt)])
    rec["key"], rec["value"] = tag, arr.ravel().astype(dt)
    return rec.tobytes()


def _blob_bytes(arr: np.ndarray, data: bytes) -> bytes:
    return ld(7, ld(1, b"".join(cf._varint(d) for d in arr.shape))) + data


def _odd_values(rng, shape, dtype="<f4") -> np.ndarray:
    a = rng.standard_normal(size=shape).astype(dtype)
    flat = a.reshape(-1)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, 3.4e38], dtype)
    flat[: special.size] = special
    if dtype == "<f4":  # a NaN with a payload must come back with the same bits
        flat.view("<u4")[special.size] = 0x7FC0_1234
    return a


def test_unpacked_floats_bit_identical_to_packed(tmp_path):
    """Issue 11 item 12: float data written one value per field (tag 0x2d + 4 bytes; doubles 0x41 +
    8 bytes) is gathered with numpy as runs of fixed-size records: the arrays are bit for bit
    those of the packed file (NaN payloads, -0.0, denormals), for floats, doubles, and a blob
    mixing packed chunks, runs and an odd key encoding (the general path). The old per-field reader
    was correct, only slow: this guards the new numpy path (it passes on the old code by design;
    test_unpacked_floats_not_iterated_per_value is the one that fails there)."""
    rng = np.random.default_rng(3)
    w = _odd_values(rng, (64, 3, 7, 7))
    mean, var = _odd_values(rng, (64,)), np.abs(_odd_values(rng, (64,)))
    d = _odd_values(rng, (10, 20), "<f8")
    packed = ld(100, ld(1, b"c") + ld(2, b"Convolution") + ld(7, _blob_bytes(w, ld(5, w.tobytes())))
                + ld(7, _blob_bytes(mean, ld(5, mean.tobytes()))) + ld(7, _blob_bytes(var, ld(5, var.tobytes())))
                + ld(7, _blob_bytes(d, ld(8, d.tobytes()))))  # fmt: skip
    flat = w.reshape(-1)
    mixed = (ld(5, flat[:100].tobytes()) + _unpacked(flat[100:2000], 0x2D)
             + b"\xad\x00" + flat[2000:2001].tobytes()  # field 5 wire type 5 with a 2-byte key: general path
             + ld(5, flat[2001:5000].tobytes()) + _unpacked(flat[5000:], 0x2D))  # fmt: skip
    unpacked = ld(100, ld(1, b"c") + ld(2, b"Convolution") + ld(7, _blob_bytes(w, mixed))
                  + ld(7, _blob_bytes(mean, _unpacked(mean, 0x2D))) + ld(7, _blob_bytes(var, _unpacked(var, 0x2D)))
                  + ld(7, _blob_bytes(d, _unpacked(d, 0x41))))  # fmt: skip
    (tmp_path / "p.caffemodel").write_bytes(packed)
    (tmp_path / "u.caffemodel").write_bytes(unpacked)
    a = read_caffemodel(tmp_path / "p.caffemodel")["c"][1]
    b = read_caffemodel(tmp_path / "u.caffemodel")["c"][1]
    assert [x.shape for x in a] == [x.shape for x in b] == [w.shape, mean.shape, var.shape, d.shape]
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == np.float32
        np.testing.assert_array_equal(x.view("<u4"), y.view("<u4"))
    np.testing.assert_array_equal(a[0].view("<u4"), w.view("<u4"))
    cut = tmp_path / "cut.caffemodel"  # a run whose last record is cut: refused as before
    cut.write_bytes(ld(100, ld(1, b"fc") + ld(7, _unpacked(np.arange(10, dtype="<f4"), 0x2D)[:-2])))
    with pytest.raises(FormatError, match="runs past the end"):
        read_caffemodel(cut)


def test_unpacked_floats_not_iterated_per_value(tmp_path, monkeypatch):
    """Issue 11 item 12: 100,000 unpacked floats used to cost 100,000 Python-level field iterations
    (~100x packed speed: 107 s for SE-ResNet-50). Timing-free: count the fields the generic wire
    reader yields; a run of records is gathered by numpy, so only the few structural fields remain."""
    vals = np.random.default_rng(0).standard_normal(100_000).astype("<f4")
    p = tmp_path / "u.caffemodel"
    p.write_bytes(ld(100, ld(1, b"fc") + ld(2, b"InnerProduct") + ld(7, _blob_bytes(vals, _unpacked(vals, 0x2D)))))
    count = [0]
    real = cf.WireReader.fields

    def counting(self, pos, end):
        for item in real(self, pos, end):
            count[0] += 1
            yield item

    monkeypatch.setattr(cf.WireReader, "fields", counting)
    got = read_caffemodel(p)["fc"][1][0]
    np.testing.assert_array_equal(got, vals)
    assert count[0] < 100, count[0]


# ---------------------------------------------------------------------------------- pickles
class _Payload:
    """Unpickling this creates the marker file: proof that a loader ran code from the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_chainer_load_never_unpickles(tmp_path):
    """Issue 11 item 10: builders.chainer.load(None, path) used chainer's load_npz (allow_pickle=True),
    so an object array in a user's .npz ran its pickle. Now every entry is read with pickles
    refused: the marker is never created and the error is one line (FormatError, exit 4)."""
    from senet_hub.builders.compat import version_of

    if version_of("chainer") is None:
        pytest.skip("chainer not installed")
    from senet_hub.builders import chainer as chb

    prototxt, caffemodel = tmp_path / "t.prototxt", tmp_path / "t.caffemodel"
    prototxt.write_text(TINY)
    caffemodel.write_bytes(
        b"".join(encode_layer(k, TYPES[k], v) for k, v in _weights(np.random.default_rng(0)).items())
    )
    model = caffe.load(prototxt, caffemodel)
    good = tmp_path / "good.npz"
    chb.save(model, good)
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "sanity")))).close()  # the payload really runs when unpickled
    assert (tmp_path / "sanity").exists()
    victim = sorted(k for k in arrays if k != chb.GRAPH_KEY)[0]
    for key in (victim, chb.GRAPH_KEY):  # a parameter, then the graph entry itself
        evil = dict(arrays)
        evil[key] = np.array([_Payload(str(marker)), None], dtype=object)
        path = tmp_path / "evil.npz"
        np.savez(path, **evil)  # object arrays are pickled inside the .npy entries
        with zipfile.ZipFile(path) as zf:
            assert any(b"PWNED" in zf.read(n) for n in zf.namelist())  # the payload is really there
        with pytest.raises(FormatError) as e:
            chb.load(None, path)
        assert not marker.exists(), "the loader unpickled the file"
        assert "\n" not in str(e.value) and "evil.npz" in str(e.value)
        assert "pickle" in str(e.value), str(e.value)
    assert chb.load(None, good) is not None  # the plain file still loads
