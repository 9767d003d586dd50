"""Where a canonical Model comes from (Caffe files, a MindSpore checkpoint, the zoo) and where it goes."""

from __future__ import annotations

import os
from typing import Any

from .errors import MissingFrameworkError, SenetHubError
from .graph import Model

SOURCES = ("caffe", "mindspore", "zoo")
TARGETS = ("pytorch", "onnx", "tensorflow", "mxnet", "chainer", "caffe", "mindspore")
TARGET_BACKEND = {
    "pytorch": "torch",
    "onnx": "onnxruntime",
    "tensorflow": "tensorflow",
    "mxnet": "mxnet",
    "chainer": "chainer",
}


def infer_source(source: str | None, prototxt: str | None, ckpt: str | None, arch: str | None) -> str:
    if source:
        return source
    if prototxt:
        return "caffe"
    if ckpt:
        return "mindspore"
    if arch:
        return "zoo"
    raise SenetHubError("no input model: give --prototxt/--caffemodel, --ckpt, or --from zoo --arch ARCH")


def load_model(
    source: str | None = None,
    prototxt: str | None = None,
    caffemodel: str | None = None,
    ckpt: str | None = None,
    arch: str | None = None,
    seed: int = 0,
) -> Model:
    source = infer_source(source, prototxt, ckpt, arch)
    if source == "caffe":
        if not prototxt or not caffemodel:
            raise SenetHubError("--from caffe needs both --prototxt and --caffemodel")
        from .converters import caffe

        return caffe.load(prototxt, caffemodel)
    if source == "mindspore":
        if not ckpt:
            raise SenetHubError(
                "--from mindspore needs --ckpt FILE (and --arch when the checkpoint does not identify it)"
            )
        from .converters import mindspore as ms

        return ms.load_ckpt(ckpt, arch=arch)
    if source == "zoo":
        if not arch:
            raise SenetHubError("--from zoo needs --arch ARCH (see `senet-hub list`)")
        from . import zoo

        return zoo.synthetic_model(arch, seed=seed)
    raise SenetHubError(f"unknown source '{source}'; choose one of {', '.join(SOURCES)}")


def ensure_hashes(model: Model) -> Model:
    """Fill meta["source_sha256"] from the source files (done only for outputs that record it)."""
    if "source_sha256" not in model.meta and model.meta.get("source_paths"):
        from .cache import sha256_file

        model.meta["source_sha256"] = {
            k: sha256_file(p) for k, p in model.meta["source_paths"].items() if os.path.exists(p)
        }
    return model


def save_model(model: Model, target: str, path: str, **opts: Any) -> list[str]:
    """Write the model in the target's native format; returns the files written."""
    if target == "caffe":
        from .converters import caffe_writer

        return caffe_writer.save(model, path)
    if target == "mindspore":
        from .converters import mindspore as ms

        return [ms.save_ckpt(model, path) or path]
    if target not in TARGET_BACKEND:
        raise SenetHubError(f"unknown target '{target}'; choose one of {', '.join(TARGETS)}")
    from . import builders

    if target == "pytorch" and path.endswith(".pth"):  # no torch import needed: see pth.py
        from .pth import save_model as save_pth

        return save_pth(model, path)
    if target == "onnx":
        ensure_hashes(model)
    mod = builders.get(TARGET_BACKEND[target])
    if not hasattr(mod, "save"):
        raise MissingFrameworkError(f"target '{target}' cannot write files in this version")
    out = mod.save(model, path, **opts)
    return list(out) if isinstance(out, (list, tuple)) else [str(out or path)]
