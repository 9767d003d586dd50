"""Inference speed: the exported ONNX model in onnxruntime vs PyTorch eager vs the real-Caffe anchor.

Run: python bench/bench_onnx.py [--archs SE-ResNet-50,SENet-154] [--batches 1,8] [--repeat 10]
     [--stat median|min] [--others] [--no-fused] [--profile]

Columns, all in one process on the same synthetic model (random weights, fixed seed) and input:
  ort-function  the default export: Axpy as org.senet-hub::Axpy + model-local function
  ort-inline    export with --inline (standard ops only)
  ort-fused     Axpy on the onnxruntime-extensions Python kernel (bench/axpy_fused.py)
  torch-eager   senet_hub.builders.torch's nn.Module under torch.inference_mode (when present)
  --others      every other installed builder (opencv, tensorflow, mxnet, chainer) via its run()
Times are the median (or --stat min) of --repeat runs after 2 warm-up runs, in ms per batch; the runs of all
columns are interleaved, so background load hits every column alike. Ratios: speed-up of
the default ONNX export over PyTorch eager, and over the real-Caffe anchor from FIELD_NOTES
(forward at batch 2 on this CPU: SE-ResNet-50 0.28 s, SENet-154 1.17 s), per image.
--profile adds the share of onnxruntime's time spent in the Axpy Mul + Add (the most a fused
kernel could save).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from senet_hub import builders  # noqa: E402
from senet_hub.graph import Model, expected_params, output_shape  # noqa: E402

CAFFE_ANCHOR_S = {"SE-ResNet-50": (2, 0.28), "SENet-154": (2, 1.17)}  # (batch, seconds), real Caffe


def load_model(arch: str, seed: int = 0) -> Model:
    """zoo.synthetic_model(arch); without the zoo, the released prototxt with random weights."""
    try:
        from senet_hub import zoo
    except ImportError:
        zoo = None
    if zoo is not None:
        return zoo.synthetic_model(arch, seed=seed)
    from senet_hub.converters import caffe

    g = caffe.load_prototxt(ROOT / "reference_models" / f"{arch}.prototxt")
    rng = np.random.default_rng(seed)
    shapes = {g.input_name: tuple(g.input_shape)}
    weights = {}
    for n in g.nodes:
        ins = [shapes[i] for i in n.inputs]
        for p, shp in expected_params(n, ins).items():
            if p == "running_var":
                w = rng.uniform(0.5, 1.5, shp)
            elif p in ("running_mean", "bias"):
                w = rng.normal(0, 0.1, shp)
            elif n.op == "batch_norm":
                w = rng.uniform(0.5, 1.5, shp)
            else:
                w = rng.normal(0, np.sqrt(2 / max(1, int(np.prod(shp[1:])))), shp)
            weights[f"{n.name}.{p}"] = w.astype(np.float32)
        shapes[n.name] = output_shape(n, ins)
    return Model(g, weights, {"arch": arch})


def time_ms(fns: dict[str, Callable[[], object]], repeat: dict[str, int], stat: str = "median") -> dict[str, float]:
    """ms per call of each fn (median or min); rounds interleave the fns so background load hits all alike."""
    for fn in fns.values():
        for _ in range(2):
            fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(repeat.values())):
        for k, fn in fns.items():
            if r < repeat[k]:
                t = time.perf_counter()
                fn()
                ts[k].append(time.perf_counter() - t)
    agg = min if stat == "min" else statistics.median
    return {k: agg(v) * 1e3 for k, v in ts.items()}


def ort_runner(native) -> Callable[[np.ndarray], Callable[[], object]]:
    sess, name, out = native.session, native.input_name, native.output
    return lambda x: lambda: sess.run([out], {name: x})


def torch_runner(model: Model):
    import torch

    tb = builders.get("torch")
    native = tb.build(model)
    if isinstance(native, torch.nn.Module):
        native.eval()

        def make(x):
            t = torch.from_numpy(x)

            def go():
                with torch.inference_mode():
                    return native(t)

            return go

        return make
    return lambda x: lambda: tb.run(native, x, taps=False)


def generic_runner(name: str, model: Model):
    mod = builders.get(name)
    native = mod.build(model)
    return lambda x: lambda: mod.run(native, x, taps=False)


def axpy_share(model: Model, x: np.ndarray) -> float:
    """Fraction of onnxruntime kernel time in the Axpy Mul + Add nodes (inlined export, profiled)."""
    import onnxruntime as ort

    from senet_hub.builders import onnx as ox

    axpys = {n.name for n in model.graph.nodes if n.op == "axpy"}
    proto = ox.to_onnx(model, inline=True)
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "prof")
        so.log_severity_level = 3
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(5):
            sess.run(None, {model.graph.input_name: x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    total = ax = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        total += e["dur"]
        if node in axpys or node.split("/")[0] in axpys:
            ax += e["dur"]
    return ax / total if total else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="SE-ResNet-50,SENet-154")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--stat", choices=["median", "min"], default="median", help="min is steadier on a busy machine")
    ap.add_argument("--others", action="store_true", help="also time every other installed builder")
    ap.add_argument("--no-fused", action="store_true", help="skip the (slow) Python fused kernel")
    ap.add_argument("--profile", action="store_true", help="report the Axpy share of onnxruntime time")
    args = ap.parse_args()

    import onnxruntime as ort

    from senet_hub.builders import onnx as ox

    versions = {"onnxruntime": ort.__version__}
    try:
        import torch

        versions["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )

    have_torch = importable("senet_hub.builders.torch") and builders.get("torch").available()
    fused = None
    if not args.no_fused:
        import axpy_fused  # bench/axpy_fused.py: the experiment that showed the fused kernel does not pay

        fused = axpy_fused if axpy_fused.available() else None
    others = []
    if args.others:
        others = [b for b in ("opencv", "tensorflow", "mxnet", "chainer") if _available(b)]

    cols = (
        ["ort-function", "ort-inline"]
        + (["ort-fused"] if fused else [])
        + (["torch-eager"] if have_torch else [])
        + others
    )
    header = (
        f"{'arch':14s} {'batch':>5s} " + " ".join(f"{c:>13s}" for c in cols) + f" {'vs torch':>9s} {'vs Caffe':>9s}"
    )
    if args.profile:
        header += f" {'axpy share':>10s}"
    print(f"# ms per batch ({args.stat}); 'vs' = speed-up of ort-function, per image for Caffe (anchor at batch 2)")
    print(header)
    for arch in args.archs.split(","):
        model = load_model(arch)
        runners: dict[str, Callable] = {
            "ort-function": ort_runner(ox.build(model)),
            "ort-inline": ort_runner(ox.build(model, inline=True)),
        }
        if fused:
            runners["ort-fused"] = ort_runner(fused.build(model))
        if have_torch:
            runners["torch-eager"] = torch_runner(model)
        for b in others:
            try:
                runners[b] = generic_runner(b, model)
            except Exception as e:  # a broken optional framework should not end the benchmark
                print(f"# {b}: {type(e).__name__}: {e}", file=sys.stderr)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = np.random.default_rng(7).normal(0, 50, (batch, *model.graph.input_shape[1:])).astype(np.float32)
            fns = {c: runners[c](x) for c in cols if c in runners}
            if "ort-fused" in fns:  # the fused kernel must give the function's numbers
                ref, got = fns["ort-function"]()[0], fns["ort-fused"]()[0]
                print(f"# {arch} batch {batch}: fused vs function max|d| = {np.abs(ref - got).max():.3g}", flush=True)
            ms = time_ms(
                fns, {c: max(3, args.repeat // 3) if c == "ort-fused" else args.repeat for c in fns}, args.stat
            )
            row = f"{arch:14s} {batch:5d} " + " ".join(f"{ms[c]:13.1f}" if c in ms else f"{'-':>13s}" for c in cols)
            vs_torch = ms["torch-eager"] / ms["ort-function"] if "torch-eager" in ms else float("nan")
            vs_caffe = float("nan")
            if arch in CAFFE_ANCHOR_S:
                ab, secs = CAFFE_ANCHOR_S[arch]
                vs_caffe = (secs * 1e3 / ab) / (ms["ort-function"] / batch)
            row += f" {vs_torch:8.2f}x {vs_caffe:8.2f}x"
            if args.profile:
                row += f" {axpy_share(model, x):9.1%}"
            print(row, flush=True)


def importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _available(name: str) -> bool:
    try:
        return bool(builders.get(name).available())
    except Exception:
        return False


if __name__ == "__main__":
    main()
