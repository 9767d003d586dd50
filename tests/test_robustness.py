"""Outputs under stress: NaN/Inf weights, kills mid-write, byte-identical reconversions, concurrent
writers into one directory. The full-size variants (SE-ResNet-50, every framework) are marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fuzzing import SE_TINY, caffemodel_bytes, se_tiny_blobs

from senet_hub import atomic, checks, sources
from senet_hub.converters import caffe
from senet_hub.errors import ModelError

ROOT = Path(__file__).resolve().parent.parent
TMP_MARK = atomic.TMP_MARK


def cli(*args, env: dict | None = None, cwd=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "senet_hub.cli", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, **kw,
    )  # fmt: skip


def _popen(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "senet_hub.cli", *map(str, args)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


def write_se_tiny(d: Path, blobs=None, name: str = "se_tiny") -> tuple[Path, Path]:
    p, w = d / f"{name}.prototxt", d / f"{name}.caffemodel"
    p.write_text(SE_TINY)
    w.write_bytes(caffemodel_bytes(blobs or se_tiny_blobs(np.random.default_rng(0))))
    return p, w


def temps(d: Path) -> list[str]:
    return sorted(f for f in os.listdir(d) if TMP_MARK in f)


def files(d: Path) -> dict[str, bytes]:
    """Every file under d (relative path -> bytes): a directory output compares as a whole."""
    if d.is_file():
        return {"": d.read_bytes()}
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------- NaN / Inf
def _poisoned(tmp_path: Path) -> tuple[Path, Path]:
    blobs = se_tiny_blobs(np.random.default_rng(0))
    conv1 = blobs[0][2][0]
    conv1[0, 0, 0, :2] = np.nan
    fc_bias = blobs[-1][2][1]
    fc_bias[1] = np.inf
    return write_se_tiny(tmp_path, blobs, "poisoned")


def test_nonfinite_weights_named(tmp_path):
    p, w = _poisoned(tmp_path)
    m = caffe.load(p, w)
    assert checks.nonfinite_weights(m) == ["conv1.weight", "fc.bias"]
    msg = checks.check_finite(m, fatal=False)
    assert msg and "\n" not in msg and "conv1.weight (2 NaN)" in msg and "fc.bias (1 Inf)" in msg
    assert str(w) in msg and "2 weight tensors" in msg
    with pytest.raises(ModelError, match=r"conv1\.weight.*fc\.bias.*re-download"):
        checks.check_finite(m, fatal=True)
    # Inf hiding in a sum that stays finite in float32 cannot: the check sums in float64
    m.weights["fc.bias"] = np.array([3e38, 3e38, 1.0], np.float32)
    m.weights["conv1.weight"] = np.asarray(m.weights["conv1.weight"]).copy()
    m.weights["conv1.weight"][np.isnan(m.weights["conv1.weight"])] = 0
    assert checks.nonfinite_weights(m) == []
    m.weights["x.weight"] = np.array([1.0, np.nan], np.float64)
    assert checks.nonfinite_weights(m) == ["x.weight"]


def test_nonfinite_names_the_source_layer():
    from senet_hub.graph import Graph, Model, Node

    g = Graph([Node("layer0.conv1", "conv", ["data"], {}, ["conv1/7x7_s2"])], "data", (1, 3, 8, 8))
    m = Model(g, {"layer0.conv1.weight": np.full((2, 3, 1, 1), np.nan, np.float32)}, {"arch": "x"})
    assert "layer0.conv1.weight from 'conv1/7x7_s2' (6 NaN)" in checks.check_finite(m, fatal=False)


def test_convert_warns_and_verify_fails_on_nonfinite(tmp_path):
    p, w = _poisoned(tmp_path)
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "caffe", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "conv1.weight (2 NaN)" in warn[0] and "fc.bias (1 Inf)" in warn[0], r.stderr
    assert (tmp_path / "out.caffemodel").exists()
    r = cli("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy")
    assert r.returncode == ModelError.exit_code, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("senet-hub: error")]
    assert len(err) == 1 and "conv1.weight" in err[0] and "NaN" in err[0] and "Traceback" not in r.stderr


# ------------------------------------------------------------------------ atomic outputs
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_clean_stale_temps_only_removes_dead_writers(tmp_path):
    host = atomic._HOST
    dead, alive = _dead_pid(), os.getpid()
    names = {
        f".a.pth{TMP_MARK}{host}-{dead}-0123abcd": True,  # this host, process gone
        f".b.pth{TMP_MARK}{dead}-0123abcd": True,  # older name format (no host)
        f".c.pth{TMP_MARK}{host}-{alive}-0123abcd": False,  # a live writer
        f".d.pth{TMP_MARK}ffffff-{dead}-0123abcd": False,  # another host's, recent
        f".e.pth{TMP_MARK}ffffff-{dead}-89abcdef": True,  # another host's, a day old
        f"f.pth{TMP_MARK}{host}-{dead}-0123abcd": False,  # not a name senet-hub makes
        f".g.pth{TMP_MARK}{host}-{dead}-0123abcd.bak": False,
        "model.pth": False,
    }
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    sm = tmp_path / f".h_savedmodel{TMP_MARK}{host}-{dead}-0123abcd"
    (sm / "variables").mkdir(parents=True)
    (sm / "variables" / "v.data").write_bytes(b"x")
    old = time.time() - atomic.FOREIGN_STALE_S - 60
    os.utime(tmp_path / f".e.pth{TMP_MARK}ffffff-{dead}-89abcdef", (old, old))
    removed = {os.path.basename(p) for p in atomic.clean_stale_temps(tmp_path)}
    assert removed == {n for n, gone in names.items() if gone} | {sm.name}
    assert all((tmp_path / n).exists() != gone for n, gone in names.items())


def _kill_mid_write(args: list, outdir: Path, env: dict, after_temp_s: float = 0.0) -> tuple[list[str], int]:
    """Start `senet-hub convert`, SIGKILL it once its temporary output appears (+ after_temp_s).
    Returns the temporaries seen at the kill and the process's return code."""
    p = _popen(*args, env=env)
    t0, seen = time.monotonic(), []
    while time.monotonic() - t0 < 120:
        seen = [t for t in temps(outdir) if f"-{p.pid}-" in t]  # not a temporary of an earlier kill
        if seen or p.poll() is not None:
            break
        time.sleep(0.002)
    if after_temp_s:
        time.sleep(after_temp_s)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return seen, p.returncode


@pytest.mark.parametrize("target, out, finals", [("caffe", "m", ["m.prototxt", "m.caffemodel"]),
                                                 ("pytorch", "m.pth", ["m.pth"])])  # fmt: skip
def test_kill_mid_write_leaves_old_or_nothing(tmp_path, target, out, finals):
    """SIGKILL while the output is being written: the final name holds nothing (first run) or the
    previous complete file (later runs), and the next run removes the dead process's temporary.
    SENET_HUB_TEST_SLOW_WRITE holds the written outputs before their rename, so the kill always
    lands before it."""
    src = tmp_path / "src"
    src.mkdir()
    p, w = write_se_tiny(src)
    outdir = tmp_path / "out"
    outdir.mkdir()
    args = ["convert", "--prototxt", p, "--caffemodel", w, "--to", target, "-o", outdir / out]
    slow = {atomic.SLOW_WRITE_ENV: "60"}

    seen, rc = _kill_mid_write(args, outdir, slow)
    assert seen and rc == -signal.SIGKILL, ("the temporary output never appeared", rc)
    assert not any((outdir / f).exists() for f in finals)
    assert temps(outdir), "a SIGKILLed process cannot clean up: its temporary is expected here"

    r = cli(*args)  # a normal run: writes the outputs and removes the dead run's temporaries
    assert r.returncode == 0, r.stderr
    assert temps(outdir) == []
    good = {f: (outdir / f).read_bytes() for f in finals}

    w.write_bytes(caffemodel_bytes(se_tiny_blobs(np.random.default_rng(1))))  # new weights: new bytes
    seen, rc = _kill_mid_write(args, outdir, slow)
    assert seen and rc == -signal.SIGKILL
    assert {f: (outdir / f).read_bytes() for f in finals} == good, "the previous output changed"
    r = cli(*args)
    assert r.returncode == 0 and temps(outdir) == []
    assert {f: (outdir / f).read_bytes() for f in finals} != good


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    """SE-ResNet-50 with synthetic weights as real Caffe files (112 MB caffemodel) and the
    reference outputs of one conversion per target."""
    from senet_hub import zoo
    from senet_hub.converters import caffe_writer

    d = tmp_path_factory.mktemp("r50")
    p, w = caffe_writer.save(zoo.synthetic_model("SE-ResNet-50", seed=0), d / "se_resnet50")
    return Path(p), Path(w), d


@pytest.mark.slow
def test_kill_at_random_points_full_size(resnet50, tmp_path):
    """No test hook: kill a real SE-ResNet-50 -> .pth conversion (112 MB output) at several points
    of its write. Whatever the timing, the final name is absent or complete, never partial."""
    p, w, _ = resnet50
    ref = tmp_path / "ref.pth"
    r = cli("convert", "--prototxt", p, "--caffemodel", w, "--to", "pytorch", "-o", ref)
    assert r.returncode == 0, r.stderr
    want = ref.read_bytes()
    outdir = tmp_path / "out"
    outdir.mkdir()
    args = ["convert", "--prototxt", p, "--caffemodel", w, "--to", "pytorch", "-o", outdir / "m.pth"]
    outcomes = []
    for delay in (0.0, 0.01, 0.02, 0.04, 0.5):
        seen, rc = _kill_mid_write(args, outdir, {}, delay)
        final = outdir / "m.pth"
        left = sum((outdir / t).stat().st_size for t in seen if (outdir / t).exists())
        present = final.exists()
        if present:
            assert final.read_bytes() == want, f"partial or wrong output after a kill at +{delay} s"
            final.unlink()
        outcomes.append((delay, rc, present, left / len(want)))
    print("kills (delay after the temporary appeared, return code, final present, part written):", outcomes)
    assert any(rc == -signal.SIGKILL and 0 < part < 1 for _, rc, _, part in outcomes), "no kill hit mid-write"
    r = cli(*args)
    assert r.returncode == 0 and temps(outdir) == [] and (outdir / "m.pth").read_bytes() == want


# ---------------------------------------------------------------------------- determinism
# (target, output name) -> every file written; formats that embed run-dependent bytes are xfail
CORE_FORMATS = [("caffe", "m"), ("pytorch", "m.pth"), ("mindspore", "m.ckpt")]
FRAMEWORK_FORMATS = [
    ("pytorch", "m.pt2"),
    ("pytorch", "m.pt"),
    ("onnx", "m.onnx"),
    ("mxnet", "m"),
    ("chainer", "m.npz"),
    ("tensorflow", "m_savedmodel"),
    ("tensorflow", "m.keras"),
]
NOT_REPRODUCIBLE = {
    ("tensorflow", "m.keras"): "Keras writes date_saved into metadata.json and the zip time of model.weights.h5",
    ("tensorflow", "m_savedmodel"): "SavedModel: the builder's _all_variables order follows PYTHONHASHSEED "
    "(values equal by name); fingerprint.pb hashes it",
}
_DRIVER = """
import os, sys, time
from senet_hub import sources
from senet_hub.converters import caffe
m = caffe.load(sys.argv[1], sys.argv[2])
out = sys.argv[3]
for spec in sys.argv[4:]:
    target, name = spec.split(":")
    sources.save_model(m, target, os.path.join(out, name))
"""


def _convert_twice(tmp_path: Path, formats: list[tuple[str, str]]) -> tuple[Path, Path]:
    """Two conversions in two processes with different hash seeds, at different clock seconds."""
    p, w = write_se_tiny(tmp_path)
    outs = []
    for run in ("a", "b"):
        d = tmp_path / run
        d.mkdir()
        t0 = time.time()
        r = subprocess.run(
            [sys.executable, "-c", _DRIVER, p, w, d, *[f"{t}:{n}" for t, n in formats]],
            capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "1" if run == "a" else "2"},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(d)
        if run == "a":
            time.sleep(max(0.0, 2.1 - (time.time() - t0)))  # zip timestamps have 2 s resolution
    return outs[0], outs[1]


def _names(target: str, name: str) -> list[str]:
    if target == "caffe":
        return [f"{name}.prototxt", f"{name}.caffemodel"]
    if target == "mxnet":
        return [f"{name}-symbol.json", f"{name}-0000.params"]
    return [name]


def _outputs(d: Path, target: str, name: str) -> list[tuple[str, bytes]]:
    """(file suffix, bytes) of every file of one output, in a fixed order."""
    out = []
    for i, f in enumerate(_names(target, name)):
        assert (d / f).exists(), f"{d / f} missing"
        out += [(f"{i}/{k}", v) for k, v in files(d / f).items()]
    return out


def test_core_formats_are_byte_identical(tmp_path):
    a, b = _convert_twice(tmp_path, CORE_FORMATS)
    for target, name in CORE_FORMATS:
        assert _outputs(a, target, name) == _outputs(b, target, name), name


@pytest.fixture(scope="module")
def framework_outputs(tmp_path_factory):
    import importlib.util

    missing = [m for m in ("torch", "onnx", "mxnet", "chainer", "tensorflow") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    return _convert_twice(tmp_path_factory.mktemp("det"), FRAMEWORK_FORMATS)


@pytest.mark.slow
@pytest.mark.parametrize("target, name", [f for f in FRAMEWORK_FORMATS if f not in NOT_REPRODUCIBLE])
def test_framework_formats_are_byte_identical(framework_outputs, target, name):
    a, b = framework_outputs
    ga, gb = dict(_outputs(a, target, name)), dict(_outputs(b, target, name))
    assert ga.keys() == gb.keys()
    differ = [k for k in ga if ga[k] != gb[k]]
    assert not differ, f"{target} {name}: {differ} differ between two conversions"


def _tf_values(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a SavedModel or .keras file by its unique path, as TensorFlow loads it."""
    if path.suffix == ".keras":
        import keras

        m = keras.models.load_model(path, compile=False)
        return {w.path: np.asarray(w.numpy()) for w in m.weights}
    import tensorflow as tf

    obj = tf.saved_model.load(str(path))
    out = {}
    for v in obj._all_variables:  # what keras' ExportArchive tracks (its .variables is empty)
        key = getattr(v, "path", None) or v.name
        assert key not in out, f"variable name {key} is not unique"
        out[key] = np.asarray(v.numpy())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("target, name", list(NOT_REPRODUCIBLE))
def test_tensorflow_formats_hold_identical_values_by_name(framework_outputs, target, name):
    """Not byte-identical (NOT_REPRODUCIBLE says why), so: the same variables, bit for bit, by name."""
    a, b = framework_outputs
    va, vb = _tf_values(a / name), _tf_values(b / name)
    assert va and va.keys() == vb.keys()
    differ = [k for k in va if va[k].dtype != vb[k].dtype or not np.array_equal(va[k], vb[k])]
    assert not differ, f"{name}: {differ[:5]} differ between two conversions"


# ---------------------------------------------------------------------------- concurrency
def _expected(p: Path, w: Path, tmp: Path) -> dict[str, list[tuple[str, bytes]]]:
    m = caffe.load(p, w)
    ref = tmp / "ref"
    ref.mkdir()
    sources.save_model(m, "caffe", str(ref / "m"))
    sources.save_model(m, "pytorch", str(ref / "m.pth"))
    return {"caffe": _outputs(ref, "caffe", "m"), "pytorch": _outputs(ref, "pytorch", "m.pth")}


def _check_loads(outdir: Path, name: str, target: str, want: list[tuple[str, bytes]]) -> None:
    assert _outputs(outdir, target, name) == want, f"{name}: not byte-identical to a sequential conversion"
    if target == "caffe":
        caffe.load(outdir / f"{name}.prototxt", outdir / f"{name}.caffemodel")
    else:
        torch = pytest.importorskip("torch")
        sd = torch.load(outdir / name, weights_only=True)
        assert sd and all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def _run_concurrently(p: Path, w: Path, outdir: Path, jobs: list[tuple[str, str]], env: dict) -> None:
    procs = [
        _popen("convert", "--prototxt", p, "--caffemodel", w, "--to", t, "-o", outdir / n, env=env) for t, n in jobs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err


def test_eight_concurrent_converts_into_one_directory(tmp_path):
    """8 processes: 4 write the same two outputs (one Caffe pair, one .pth) and 4 their own names;
    a 0.3 s pause between writing and renaming makes the renames overlap. Every output is
    complete and byte-identical to a sequential conversion; no temporary is left."""
    src = tmp_path / "src"
    src.mkdir()
    p, w = write_se_tiny(src)
    want = _expected(p, w, tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    jobs = [("caffe", "shared"), ("pytorch", "shared.pth")] * 2
    jobs += [("caffe", "own0"), ("pytorch", "own1.pth"), ("caffe", "own2"), ("pytorch", "own3.pth")]
    _run_concurrently(p, w, outdir, jobs, {atomic.SLOW_WRITE_ENV: "0.3"})
    for t, n in set(jobs):
        _check_loads(outdir, n, t, want[t])
    assert temps(outdir) == []


@pytest.mark.slow
def test_eight_concurrent_full_size_converts(resnet50, tmp_path):
    p, w, _ = resnet50
    want = _expected(p, w, tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    jobs = [("pytorch", "shared.pth")] * 4 + [("pytorch", f"own{i}.pth") for i in range(3)] + [("caffe", "pair")]
    _run_concurrently(p, w, outdir, jobs, {})
    for t, n in set(jobs):
        _check_loads(outdir, n, t, want[t])
    assert temps(outdir) == []


def test_finite_check_is_exact_at_the_edges():
    """The fast float32 sum overflows on large finite weights: that must not be reported as Inf."""
    from senet_hub.checks import _finite

    assert _finite(np.full(10, 3e38, np.float32)) and _finite(np.full(100, 60000, np.float16))
    assert not _finite(np.array([1, np.nan], np.float32)) and not _finite(np.array([np.inf, -np.inf], np.float32))
    assert not _finite(np.array([np.inf, 1], np.float16)) and not _finite(np.array([0, -np.inf]))
