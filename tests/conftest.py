"""Shared fixtures. Tests that need ../shared (real-Caffe references, the weight tool) skip
with a clear reason when it is absent; everything else runs anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
