"""Shared fixtures. Tests that need ../shared (real-Caffe references, the weight tool) skip
with a clear reason when it is absent; everything else runs anywhere.

Also: bench/ goes on sys.path (the fuzzing library, bench/fuzzing.py, and its seed nets), and
tests/slow_tests.txt marks the tests measured slow (`make test-fast` deselects them)."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SENET_HUB_SHARED", ROOT.parent / "shared"))
PROTOTXT_DIR = ROOT / "reference_models"
CAFFE_REF_DIR = SHARED / "reference" / "caffe" / "outputs"
MAKE_CAFFEMODEL = SHARED / "tools" / "make_caffemodel.py"
RELEASED = [
    "SE-BN-Inception",
    "SE-ResNet-50",
    "SE-ResNet-101",
    "SE-ResNet-152",
    "SE-ResNeXt-50",
    "SE-ResNeXt-101",
    "SENet-154",
]
WITH_CAFFE_REFERENCE = ["SE-BN-Inception", "SE-ResNet-50", "SE-ResNet-101", "SE-ResNeXt-50"]

# Test-only torchvision stand-in (tests/stubs/torchvision, see its docstring): PyPI's torchvision
# for torch 2.13 is CUDA-linked and cannot import beside the CPU torch, and timm, pretrainedmodels
# and onnx2torch import it. Appended (not prepended) so a real, working torchvision wins.
STUBS = ROOT / "tests" / "stubs"
if str(STUBS) not in sys.path:
    sys.path.append(str(STUBS))


# The fuzzing library and its seed nets (bench/fuzzing.py): a library, so it lives outside tests/;
# bench/fuzz.py imports it too. Prepended: no installed module of that name may shadow it.
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

SLOW_LIST = ROOT / "tests" / "slow_tests.txt"


def read_slow_list(path: Path = SLOW_LIST) -> list[str]:
    """Node-id patterns (fnmatch) of tests/slow_tests.txt; `#` starts a comment (the measured time)."""
    out = []
    for line in path.read_text().splitlines():
        pat = line.split("#", 1)[0].strip()
        if pat:
            out.append(pat)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow every test that tests/slow_tests.txt lists (chosen by measured `--durations`), in
    addition to the in-file `@pytest.mark.slow` marks."""
    patterns = read_slow_list()
    exact = {p for p in patterns if "*" not in p}
    # `*` is the only wildcard: brackets in node ids (parameters) stay literal
    globs = [p.replace("[", "[[]") for p in patterns if "*" in p]
    for item in items:
        nid = item.nodeid
        if nid in exact or any(fnmatch.fnmatchcase(nid, g) for g in globs):
            item.add_marker(pytest.mark.slow)


def consumer_env() -> dict[str, str]:
    """Environment for CLI subprocesses that load files into timm / Cadene / onnx2torch."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(STUBS)) if p)
    return env


needs_shared = pytest.mark.skipif(
    not MAKE_CAFFEMODEL.exists() or not CAFFE_REF_DIR.exists(),
    reason=f"../shared (real-Caffe reference outputs and tools/make_caffemodel.py) not found at {SHARED}",
)


@pytest.fixture(scope="session")
def caffemodel(request, tmp_path_factory):
    """Factory: path of the seed-1 caffemodel that real Caffe's reference outputs were made with
    (kept in pytest's cache between runs, so CI makes each file once)."""
    cfg_cache = getattr(request.config, "cache", None)
    cache = Path(cfg_cache.mkdir("senet-hub-caffemodels")) if cfg_cache else tmp_path_factory.mktemp("caffemodels")

    def make(arch: str) -> Path:
        if not MAKE_CAFFEMODEL.exists():
            pytest.skip(f"../shared/tools/make_caffemodel.py not found at {MAKE_CAFFEMODEL}")
        out = cache / f"{arch}.s1.caffemodel"
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            subprocess.run(
                [sys.executable, str(MAKE_CAFFEMODEL), str(PROTOTXT_DIR / f"{arch}.prototxt"), "1", str(tmp)],
                check=True,
                capture_output=True,
            )
            tmp.replace(out)
        return out

    return make


def load_caffe_reference(arch: str) -> dict:
    sys.path.insert(0, str(CAFFE_REF_DIR))
    try:
        import refnpz
    finally:
        sys.path.pop(0)
    return refnpz.load(str(CAFFE_REF_DIR / f"{arch}.npz"))


@pytest.fixture
def tiny(tmp_path):
    """(prototxt, caffemodel, blobs) of fuzzing.TINY with seed-0 weights: the CLI tests' small net."""
    from fuzzing import TINY, tiny_weights

    from senet_hub.converters.caffe_format import encode_layer

    types = {"conv": "Convolution", "conv/bn": "BatchNorm", "conv/scale": "Scale", "fc": "InnerProduct"}
    blobs = tiny_weights(np.random.default_rng(0))
    p = tmp_path / "tiny.prototxt"
    p.write_text(TINY)
    w = tmp_path / "tiny.caffemodel"
    w.write_bytes(b"".join(encode_layer(k, types[k], v) for k, v in blobs.items()))
    return p, w, blobs
