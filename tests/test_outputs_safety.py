"""Users' files are sacred (issue: nothing lost, nothing silently wrong, items 1-4, 11, 12).

Each test guards a defect the code had: a non-SavedModel directory given as `-o` was deleted;
outputs could be the inputs (by any spelling); `--save-outputs` left partial folders and exit 1;
names near the 255-byte limit could not be written; `--input` NaN/.npz/structured/huge headers
and `--batch -1` ended in internal errors; huge messages; directories as inputs were usage
errors (2) where README promises 3; SIGTERM left temporaries; Ctrl-C during start-up printed a
traceback.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_caffe_reader import TINY, _weights

from senet_hub import atomic
from senet_hub.cli import main
from senet_hub.converters.caffe_format import encode_layer
from senet_hub.converters.npyio import read_npy
from senet_hub.errors import OutputError, SenetHubError
from senet_hub.paths import check_not_inputs

TYPES = {"conv": "Convolution", "conv/bn": "BatchNorm", "conv/scale": "Scale", "fc": "InnerProduct"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    blobs = _weights(np.random.default_rng(0))
    p = tmp_path / "tiny.prototxt"
    p.write_text(TINY)
    w = tmp_path / "tiny.caffemodel"
    w.write_bytes(b"".join(encode_layer(k, TYPES[k], v) for k, v in blobs.items()))
    return p, w


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(r, code, *fragments):
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.output.splitlines() if ln.startswith("senet-hub: error")]
    assert len(lines) == 1, r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in r.output


def digest(*paths):
    h = hashlib.sha256()
    for p in paths:
        for d, _, fs in os.walk(p) if os.path.isdir(p) else [(os.path.dirname(p), [], [os.path.basename(p)])]:
            for f in sorted(fs):
                h.update(f.encode())
                h.update(Path(d, f).read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------ 1. directories are not replaced
def test_user_directory_as_output_is_left_untouched(tiny, tmp_path):
    p, w = tiny
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    for target in ("tensorflow", "pytorch", "chainer"):
        r = run("convert", "--prototxt", p, "--caffemodel", w, "--to", target, "-o", user)
        one_error(r, 7, "photos", "untouched")
    assert (user / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(os.listdir(user)) == ["holiday.jpg"]


def test_replace_dir_rechecks_right_before_the_rename(tmp_path):
    """A user directory that appears after the early check is still not moved aside or deleted."""
    out = tmp_path / "model"
    with pytest.raises(OutputError, match="untouched"), atomic.atomic_outputs([str(out)]) as (tmp,):
        os.mkdir(tmp)
        Path(tmp, "saved_model.pb").write_bytes(b"new")
        out.mkdir()  # another program creates it meanwhile, with a user's file
        (out / "notes.txt").write_text("mine")
    assert (out / "notes.txt").read_text() == "mine"
    assert not [n for n in os.listdir(tmp_path) if atomic.TMP_MARK in n]


def test_replace_dir_refuses_to_replace_a_file_with_a_directory(tmp_path):
    out = tmp_path / "model"
    out.write_text("a user's file")
    with pytest.raises(OutputError, match="not a directory"), atomic.atomic_outputs([str(out)]) as (tmp,):
        os.mkdir(tmp)
    assert out.read_text() == "a user's file"


@pytest.mark.parametrize("kind", ["savedmodel", "marked", "empty"])
def test_replaceable_directories_are_replaced(tmp_path, kind):
    out = tmp_path / "model"
    out.mkdir()
    if kind == "savedmodel":
        (out / "saved_model.pb").write_bytes(b"old")
    elif kind == "marked":
        out.rmdir()
        with atomic.atomic_outputs([str(out)]) as (tmp,):
            os.mkdir(tmp)
            Path(tmp, "a.npy").write_bytes(b"old")
        assert (out / atomic.DIR_MARK).exists()  # senet-hub marks what it wrote
    with atomic.atomic_outputs([str(out)]) as (tmp,):
        os.mkdir(tmp)
        Path(tmp, "saved_model.pb").write_bytes(b"new")
    assert (out / "saved_model.pb").read_bytes() == b"new"
    assert not [n for n in os.listdir(tmp_path) if atomic.TMP_MARK in n]


# ------------------------------------------------------------------ 2. outputs are never inputs
def _aliases(p: Path, w: Path, tmp_path: Path):
    link = tmp_path / "link.caffemodel"
    link.symlink_to(w)
    hard = tmp_path / "hard.prototxt"
    os.link(p, hard)
    return [
        ("caffe", str(p.with_suffix(""))),  # the source prefix: both files
        ("onnx", str(w)),
        ("mindspore", str(w)),
        ("pytorch", f"{w.parent}/./{w.name}"),
        ("onnx", str(link)),  # a symlink to the input
        ("caffe", str(hard.with_suffix(""))),  # a hard link to the prototxt
        ("tensorflow", str(tmp_path)),  # a directory holding the inputs
    ]


def test_outputs_that_are_inputs_are_refused(tiny, tmp_path):
    p, w = tiny
    before = digest(p, w)
    for target, out in _aliases(p, w, tmp_path):
        r = run("convert", "--prototxt", p, "--caffemodel", w, "--to", target, "-o", out)
        assert r.exit_code == 7, (target, out, r.output)
        assert "senet-hub: error" in r.output and "input" in r.output, r.output
    assert digest(p, w) == before


def test_verify_reports_never_overwrite_inputs(tiny, tmp_path):
    p, w = tiny
    before = digest(p, w)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    for opt, out in [("--json", p), ("--markdown", w), ("--json", tmp_path / "x.npy"), ("--save-outputs", tmp_path)]:
        r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--input", tmp_path / "x.npy",
                opt, out)  # fmt: skip
        one_error(r, 7, "input")
    r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--json", tmp_path / "r",
            "--markdown", tmp_path / "r")  # fmt: skip
    one_error(r, 7, "also the output")
    assert digest(p, w) == before


def test_check_not_inputs_unit(tmp_path):
    a = tmp_path / "a"
    a.write_text("x")
    check_not_inputs([str(a)], [str(tmp_path / "b"), "-"])
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputError):
        check_not_inputs([str(a)], [str(tmp_path / "sub" / ".." / "a")])


# ------------------------------------------------------------------ 3. --save-outputs is atomic
def test_save_outputs_is_all_or_nothing(tiny, tmp_path, monkeypatch):
    p, w = tiny
    out = tmp_path / "outs"
    r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--save-outputs", out)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == sorted([atomic.DIR_MARK, "numpy.npy", "input.npy"])
    first = digest(out)
    # a full disk in the middle of the directory: exit 7, the previous directory intact, no temporaries
    real_save = np.save
    calls = []

    def failing_save(f, arr, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(f))
        return real_save(f, arr, *a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--input-seed", 3,
            "--save-outputs", out)  # fmt: skip
    one_error(r, 7, "outs", "No space left")
    assert digest(out) == first
    assert not [n for n in os.listdir(tmp_path) if atomic.TMP_MARK in n]
    # a read-only directory: exit 7 before any work
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--save-outputs", ro / "outs")
    one_error(r, 7, "not writable")
    assert os.listdir(ro) == []


# ------------------------------------------------------------------ 4. long names
@pytest.mark.parametrize("name", ["a" * 250 + ".pth", "é" * 125 + ".pth"])
def test_names_up_to_255_bytes_are_writable(tiny, tmp_path, name):
    assert len(os.fsencode(name)) <= 255
    p, w = tiny
    out = tmp_path / name
    r = run("convert", "--prototxt", p, "--caffemodel", w, "--to", "pytorch", "-o", out)
    assert r.exit_code == 0, r.output
    assert out.exists() and not [n for n in os.listdir(tmp_path) if atomic.TMP_MARK in n]


def test_temp_name_fits_and_is_recognised(tmp_path):
    for base in ["x" * 255, "é" * 127, "日本" * 42]:
        t = os.path.basename(atomic.temp_name(str(tmp_path / base)))
        assert len(os.fsencode(t)) <= 255
        t.encode("utf-8")  # never cut inside a character
        assert atomic._TMP_RE.search(t)


# ------------------------------------------------------------------ 11. --input, --batch, --rtol
def _npy_with_header(path: Path, descr: str, shape: tuple, payload: bytes = b"") -> Path:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload)
    return path


def test_bad_input_arrays_get_one_line_each(tiny, tmp_path):
    p, w = tiny
    good = np.random.default_rng(0).normal(size=(1, 3, 9, 9)).astype(np.float32)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inf = good.copy()
    inf[0, 1, 2, 3] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    np.savez(tmp_path / "arr.npz", x=good)
    np.save(tmp_path / "rec.npy", np.zeros((1, 3, 9, 9), dtype=[("a", "f4"), ("b", "f4")]))
    np.save(tmp_path / "cplx.npy", good.astype(np.complex64))
    np.save(tmp_path / "obj.npy", np.array([object()] * 3, dtype=object), allow_pickle=True)
    _npy_with_header(tmp_path / "huge.npy", "<f4", (10**6, 3, 10**6, 10**6))
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    np.save(tmp_path / "short.npy", good)
    (tmp_path / "short.npy").write_bytes((tmp_path / "short.npy").read_bytes()[:-7])
    np.save(tmp_path / "shape.npy", good[:, :, :4])
    cases = {
        "nan.npy": (4, "NaN or Inf"), "inf.npy": (4, "NaN or Inf"), "arr.npz": (4, ".npz"),
        "rec.npy": (4, "structured"), "cplx.npy": (4, "complex"), "obj.npy": (4, "never unpickled"),
        "huge.npy": (4, "truncated"), "junk.npy": (4, "not a .npy"), "short.npy": (4, "truncated"),
        "shape.npy": (4, "does not fit"), "missing.npy": (3, "not found"),
    }  # fmt: skip
    for name, (code, frag) in cases.items():
        r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--input", tmp_path / name)
        one_error(r, code, name, frag)
    np.save(tmp_path / "good.npy", good)
    r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--input", tmp_path / "good.npy")
    assert r.exit_code == 0, r.output


def test_read_npy_matches_numpy(tmp_path):
    for arr in [np.arange(24, dtype=np.float64).reshape(2, 3, 4), np.asfortranarray(np.ones((2, 3), np.float32))]:
        np.save(tmp_path / "a.npy", arr)
        got = read_npy(tmp_path / "a.npy")
        assert got.dtype == np.float32 and np.array_equal(got, arr.astype(np.float32))
    with pytest.raises(SenetHubError, match="directory") as e:
        read_npy(tmp_path)
    assert e.value.exit_code == 3


@pytest.mark.parametrize(
    "args",
    [("--batch", "-1"), ("--batch", "0"), ("--rtol", "nan"), ("--rtol", "-1"), ("--rtol", "inf"), ("--rtol", "0")],
)
def test_batch_and_rtol_are_checked(tiny, args):
    p, w = tiny
    r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", *args)
    assert r.exit_code == 2, r.output
    assert args[0] in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------ 12. smaller ones
def test_messages_are_capped():
    msg = str(SenetHubError("shape (" + ", ".join(["1"] * 500_000) + ")"))
    assert len(msg) < 2100 and "characters cut" in msg


def test_huge_shape_in_a_prototxt_gives_a_short_line(tmp_path):
    p = tmp_path / "big.prototxt"
    p.write_text('name: "x"\ninput: "data"\ninput_shape { ' + "dim: 1 " * 500_000 + "}\n")
    r = run("verify", "--prototxt", p, "--backends", "numpy")
    assert r.exit_code != 0 and len(r.output) < 5000, len(r.output)


def test_directory_and_unreadable_inputs_are_exit_3(tiny, tmp_path):
    p, w = tiny
    for opts in (["--prototxt", tmp_path, "--caffemodel", w], ["--prototxt", p, "--caffemodel", tmp_path],
                 ["--ckpt", tmp_path, "--arch", "seresnet18"]):  # fmt: skip
        r = run("verify", *opts, "--backends", "numpy")
        one_error(r, 3, "directory")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    r = run("verify", "--prototxt", p, "--caffemodel", w, "--backends", "numpy", "--input", tmp_path)
    one_error(r, 3, "directory")


def _slow_convert(p: Path, w: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, **{atomic.SLOW_WRITE_ENV: "30"})
    return subprocess.Popen(
        [sys.executable, "-m", "senet_hub.entry", "convert", "--prototxt", str(p), "--caffemodel", str(w),
         "--to", "pytorch", "-o", str(out)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_sigterm_removes_temporaries(tiny, tmp_path):
    p, w = tiny
    out = tmp_path / "r.pth"
    proc = _slow_convert(p, w, out)
    deadline = time.time() + 120  # a hang bound, not a speed claim
    while not [n for n in os.listdir(tmp_path) if atomic.TMP_MARK in n]:
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not [n for n in os.listdir(tmp_path) if atomic.TMP_MARK in n] and not out.exists()


def test_ctrl_c_during_start_up_has_no_traceback():
    """SIGINT while the CLI's imports run (before click's handler exists): one line, exit 130."""
    code = textwrap.dedent("""
        import os, signal, sys
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "click":
                    os.kill(os.getpid(), signal.SIGINT)
                return None
        sys.meta_path.insert(0, Interrupt())
        sys.argv = ["senet-hub", "env"]
        from senet_hub.entry import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "interrupted" in r.stderr


def test_console_script_uses_the_interrupt_safe_entry():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'senet-hub = "senet_hub.entry:main"' in text
