"""verify --isolate: one process per backend against the float64 reference spilled to disk gives
the in-process report exactly, surfaces a child's errors as the in-process path does, imports no
framework in the parent, and leaves no spill behind (errors, SIGTERM). Issue 13, "verify at scale"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from senet_hub import errors, graph, verify, verify_isolated, zoo
from senet_hub.atomic import TMP_MARK
from senet_hub.cli import main

HANG = 300  # seconds: a bound on hangs, not a speed claim
SMALL = ("seresnet18", 10, 64)  # global pooling: runs at 64 x 64, ten classes


def small_model() -> graph.Model:
    arch, ncls, size = SMALL
    g = zoo.expand(arch, ncls, size)
    return graph.Model(g, zoo.synthetic_weights(g, 0), dict(zoo.meta(arch, ncls), arch=arch))


def _comparable(report: verify.Report) -> dict:
    d = report.to_json()
    d.pop("seconds")  # wall times differ run to run
    d.pop("command")  # sys.argv of the process
    return d


def _spills(d) -> list[str]:
    return [n for n in os.listdir(d) if n.startswith(".senet-hub-verify-spill") and TMP_MARK in n]


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    d = tmp_path / "spill"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_isolated_report_equals_in_process(tmp_path):
    """Same JSON (every node's max|d|, rel, cosine; top-k; errors; versions) and the same outputs,
    bit for bit; the isolated run's parent imported no framework."""
    script = textwrap.dedent(f"""
        import json, sys, tempfile
        import numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        tempfile.tempdir = {str(tmp_path)!r}
        from test_verify_isolated import small_model, _comparable
        from senet_hub import verify
        m = small_model()
        steps = []
        r = verify.verify(m, ["numpy", "torch", "onnxruntime"], verify.default_input(m, 3, 1), chunk=2,
                          isolate=True, step=lambda d, t, label: steps.append([d, t]), onnxruntime={{"opset": 3}})
        np.save({str(tmp_path / "torch.npy")!r}, r.outputs["torch"])
        frameworks = sorted({{k.split(".")[0] for k in sys.modules}} & {{"torch", "onnxruntime", "onnx"}})
        print(json.dumps({{"report": _comparable(r), "steps": steps, "frameworks": frameworks}}, default=str))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG)
    assert p.returncode == 0, p.stderr[-3000:]
    iso = json.loads(p.stdout.strip().splitlines()[-1])
    assert iso["frameworks"] == [], "the parent must leave the frameworks to the backends' processes"
    assert iso["steps"][-1][0] == iso["steps"][-1][1], "the progress bar ends full"
    assert not _spills(tmp_path)

    m = small_model()
    ref = verify.verify(
        m, ["numpy", "torch", "onnxruntime"], verify.default_input(m, 3, 1), chunk=2, isolate=False,
        onnxruntime={"opset": 3},
    )  # fmt: skip
    assert json.loads(json.dumps(_comparable(ref), default=str)) == iso["report"]
    assert "opset 3" in iso["report"]["errors"]["onnxruntime"]  # a build failure: reported, the others ran
    assert iso["report"]["nodes"] and iso["report"]["topk_agreement"]["torch"]["top1"] == 1.0
    np.testing.assert_array_equal(np.load(tmp_path / "torch.npy"), ref.outputs["torch"])


@pytest.mark.parametrize(
    "backends, opts, exc",
    [
        (["numpy", "nosuch"], {}, errors.MissingFrameworkError),  # as if its framework were missing
        (["numpy", "torch"], {"torch": {"bogus": 1}}, TypeError),  # a bug: the same class and message
    ],
)
def test_child_errors_surface_as_in_process(spill_dir, backends, opts, exc):
    m = small_model()
    x = verify.default_input(m, 1, 1)
    raised = {}
    for isolate in (False, True):
        with pytest.raises(exc) as e:
            verify.verify(m, backends, x, isolate=isolate, **opts)
        raised[isolate] = (type(e.value), str(e.value))
        assert not _spills(spill_dir), "the spill is removed on an error"
    assert raised[True] == raised[False]


def test_a_dead_backend_process_is_reported(spill_dir, monkeypatch):
    """A backend's process that dies (OOM killer) is that backend's error; the others still run."""
    real = verify_isolated._CHILD
    monkeypatch.setattr(
        verify_isolated, "_CHILD", "import os, signal, sys\nif 'torch' in sys.argv[2]: os.kill(os.getpid(), 9)\n" + real
    )
    m = small_model()
    r = verify.verify(m, ["numpy", "torch", "onnxruntime"], verify.default_input(m, 1, 1), isolate=True)
    assert "killed by SIGKILL (out of memory?" in r.errors["torch"]
    assert "onnxruntime" not in r.errors and r.topk["onnxruntime"]["top1"] == 1.0
    assert not r.passed and not _spills(spill_dir)


def test_no_room_for_the_spill_is_refused(spill_dir, monkeypatch):
    m = small_model()
    x = verify.default_input(m, 2, 1)
    one = verify.infer_shapes(m, (1, *x.shape[1:]))
    free = verify_isolated.spill_bytes(m, x, one) // 2

    class Usage:
        def __init__(self, path):
            self.free = free

    monkeypatch.setattr(verify_isolated.shutil, "disk_usage", Usage)
    with pytest.raises(errors.OutputError, match=r"spills the float64 reference there and needs .* --no-isolate"):
        verify.verify(m, ["numpy", "torch"], x, isolate=True)
    assert not _spills(spill_dir)
    said = []
    monkeypatch.setattr(verify_isolated, "ISOLATE_ABOVE", 0.0)
    assert not verify_isolated.choose(m, ["numpy", "torch", "onnxruntime"], x, 1, one, said.append)
    assert "does not fit" in said[0]


def test_disk_full_while_spilling_is_one_clear_error(spill_dir, monkeypatch):
    """The free-space check passed, then another program filled the disk: exit 7's error, no spill left."""
    import errno

    def full(path, a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(verify_isolated, "_write_raw", full)
    m = small_model()
    with pytest.raises(errors.OutputError, match="cannot spill the float64 reference: No space left on device"):
        verify.verify(m, ["numpy", "torch"], verify.default_input(m, 3, 1), chunk=1, isolate=True)
    assert not _spills(spill_dir)


def test_automatic_choice(monkeypatch):
    """Isolated for many backends of a large model, in one process for one backend or a small model,
    and never into a RAM-backed temporary directory."""
    big = zoo.synthetic_model("SENet-154", seed=0)
    x = np.zeros((8, 3, 224, 224), np.float32)
    one = verify.infer_shapes(big, (1, 3, 224, 224))
    monkeypatch.setattr(verify_isolated, "spill_root", lambda: "/")
    monkeypatch.setattr(verify_isolated, "ram_backed", lambda p: False)

    class Usage:
        def __init__(self, path):
            self.free = 10**15

    monkeypatch.setattr(verify_isolated.shutil, "disk_usage", Usage)
    said: list[str] = []
    seven = ["numpy", "torch", "tensorflow", "mxnet", "chainer", "onnxruntime", "opencv", "openvino"]
    assert verify_isolated.choose(big, seven, x, 1, one, said.append)
    assert not verify_isolated.choose(big, ["numpy", "torch"], x, 1, one, said.append)
    small = small_model()
    xs = np.zeros((2, 3, 64, 64), np.float32)
    assert not verify_isolated.choose(small, seven, xs, 2, verify.infer_shapes(small, (1, 3, 64, 64)), said.append)
    monkeypatch.setattr(verify_isolated, "ram_backed", lambda p: True)
    said.clear()
    assert not verify_isolated.choose(big, seven, x, 1, one, said.append)
    assert "tmpfs" in said[0]


def test_ram_backed_reads_the_mount_table():
    if not os.path.exists("/proc/mounts"):
        pytest.skip("no /proc/mounts on this system")
    mounts = {ln.split()[1]: ln.split()[2] for ln in open("/proc/mounts") if len(ln.split()) > 2}
    for mnt, fstype in mounts.items():
        if fstype in ("tmpfs", "ext4", "xfs", "btrfs") and os.path.isdir(mnt) and mnt != "/":
            assert verify_isolated.ram_backed(os.path.realpath(mnt)) == (fstype == "tmpfs"), (mnt, fstype)


def test_cli_isolate_matches_no_isolate(tiny, tmp_path, spill_dir):
    p, w, _ = tiny
    out = {}
    for flag in ("--isolate", "--no-isolate"):
        j = tmp_path / f"r{flag}.json"
        r = CliRunner().invoke(main, ["verify", "--prototxt", str(p), "--caffemodel", str(w), "--backends",
                                      "numpy,torch", flag, "--json", str(j), "-q"])  # fmt: skip
        assert r.exit_code == 0, r.output
        out[flag] = json.loads(j.read_text())
        for k in ("seconds", "command"):
            out[flag].pop(k)
    assert out["--isolate"] == out["--no-isolate"]
    assert not _spills(spill_dir)
    assert "--isolate / --no-isolate" in CliRunner().invoke(main, ["verify", "--help"]).output


def _children_of(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, ValueError, IndexError):
                continue
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_removes_the_spill_and_the_backend_process(tiny, tmp_path):
    p, w, _ = tiny
    spill = tmp_path / "spill"
    spill.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "senet_hub.entry", "verify", "--prototxt", str(p), "--caffemodel", str(w),
         "--backends", "numpy,torch", "--isolate"],
        env=dict(os.environ, TMPDIR=str(spill)), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.time() + HANG
    kids: list[int] = []
    while not kids:  # the backend's process is running (importing torch takes seconds)
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        kids = _children_of(proc.pid) if _spills(spill) else []
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not _spills(spill)
    for k in kids:  # verify terminated and reaped its backend's process before exiting
        while os.path.exists(f"/proc/{k}") and time.time() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{k}"), "the backend's process outlived verify"


def test_a_foreign_exception_keeps_its_name_and_message_without_importing_its_module():
    """A framework's exception class is not unpickled in the parent (that would import the framework)."""
    import pickle

    packed = ("fakeframework.errors", "OutOfMemoryError", "CPU ran out", pickle.dumps(ValueError("x")), "tb")
    e = verify_isolated._unpack("torch", packed)
    assert type(e).__name__ == "OutOfMemoryError" and str(e) == "CPU ran out"
    assert "fakeframework" not in sys.modules
    own = errors.UnsupportedError("backend 'torch' cannot express op 'x'")
    back = verify_isolated._unpack("torch", ("senet_hub.errors", "UnsupportedError", str(own), pickle.dumps(own), ""))
    assert type(back) is errors.UnsupportedError and str(back) == str(own)
