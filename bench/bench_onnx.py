"""Inference speed of the written files where users run them, side by side in one process.

Run: python bench/bench_onnx.py [--archs SE-ResNet-50,SENet-154] [--batches 1,8] [--repeat 10]
     [--threads 2] [--stat median|min] [--no-others] [--fused] [--profile]

Columns, all in one process on the same synthetic model (zoo.synthetic_model, seed 0) and input,
each loaded from the FILE senet-hub writes, with the loader its users call:
  ort-function  the default .onnx (Axpy as org.senet-hub::Axpy + model-local function) in
                onnxruntime.InferenceSession
  ort-inline    the --inline .onnx in onnxruntime
  openvino      the --inline .onnx via openvino.Core().read_model + compile_model("CPU", f32)
  pt2           the .pt2 via torch.export.load(path).module(), under torch.inference_mode
  torch-eager   senet_hub.builders.torch's nn.Module (the baseline), torch.inference_mode
  timm-eager    timm's legacy_* model (Cadene layout) with the .pth loaded strict=True, where timm
                has the architecture (not SE-BN-Inception); timm imports torchvision, so the
                test-only stub tests/stubs/torchvision is put on sys.path (see its docstring)
  opencv, tensorflow, mxnet, chainer
                every other installed builder via its run() (skip with --no-others)
  ort-fused     with --fused: Axpy on the onnxruntime-extensions Python kernel (bench/axpy_fused.py)
Every column's output is first compared with ort-function's (max|d| / max|ref|, printed), so all
compute the same model. Times are the median (or --stat min) of --repeat runs after 2 warm-up runs,
in ms per batch; the runs of all columns are interleaved, so background load hits every column
alike (columns slower than 1 s per call get 3 runs). Ratios: the baseline's time over the
column's (above 1 = faster than senet-hub's PyTorch eager module), in the same run. The Caffe
anchor is real BVLC Caffe measured on this CPU (FIELD_NOTES section 7: SE-ResNet-50 0.28 s,
SENet-154 1.17 s per batch of 2), compared per image. --threads sets every framework's threads
alike (torch, onnxruntime, OpenVINO and OpenCV by their APIs; TensorFlow, MXNet and numpy/BLAS by
their environment variables, set before they load).
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


def _threads_arg(argv: list[str]) -> str:
    """--threads N from argv (default: all CPUs), read before numpy and the frameworks load."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return str(os.cpu_count() or 1)


# Every framework gets the same thread count: the OpenMP / BLAS pools (MXNet, Chainer's numpy,
# OpenCV's OpenMP build) and TensorFlow read these at import; torch, onnxruntime, OpenVINO and
# OpenCV are also set through their APIs below.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
    os.environ[_var] = _threads_arg(sys.argv[1:])
os.environ["TF_NUM_INTEROP_THREADS"] = "1"

import numpy as np  # noqa: E402

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


def ort_runner(path: str, threads: int) -> Callable[[np.ndarray], Callable[[], object]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return lambda x: lambda: sess.run([out], {name: x})[0]


def openvino_runner(path: str, threads: int) -> Callable[[np.ndarray], Callable[[], object]]:
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(core.read_model(path), "CPU", cfg)
    inp, out = compiled.inputs[0].get_any_name(), compiled.outputs[0]
    return lambda x: lambda: compiled({inp: x})[out]


def module_runner(module) -> Callable[[np.ndarray], Callable[[], object]]:
    import torch

    module.eval()

    def make(x):
        t = torch.from_numpy(x)

        def go():
            with torch.inference_mode():
                return module(t).numpy()

        return go

    return make


def pt2_runner(path: str) -> Callable[[np.ndarray], Callable[[], object]]:
    import torch

    gm = torch.export.load(path).module()  # what the README tells .pt2 users to run

    def make(x):
        t = torch.from_numpy(x)

        def go():
            with torch.inference_mode():
                return gm(t).numpy()

        return go

    return make


TIMM = {
    "SE-ResNet-50": "legacy_seresnet50",
    "SE-ResNet-101": "legacy_seresnet101",
    "SE-ResNet-152": "legacy_seresnet152",
    "SE-ResNeXt-50": "legacy_seresnext50_32x4d",
    "SE-ResNeXt-101": "legacy_seresnext101_32x4d",
    "SENet-154": "legacy_senet154",
}


def timm_runner(arch: str, pth: str):
    """timm's model for arch with senet-hub's .pth loaded strict (None when timm lacks the arch)."""
    if arch not in TIMM:
        return None
    stubs = str(ROOT / "tests" / "stubs")
    if stubs not in sys.path:
        sys.path.append(stubs)  # appended: a real, working torchvision wins
    import timm
    import torch

    m = timm.create_model(TIMM[arch], pretrained=False)
    m.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    # timm returns logits; the Caffe graph (and every other column) ends in Softmax
    return module_runner(torch.nn.Sequential(m, torch.nn.Softmax(dim=1)))


def generic_runner(name: str, model: Model, threads: int):
    if name == "opencv":
        import cv2

        cv2.setNumThreads(threads)
    mod = builders.get(name)
    native = mod.build(model)
    out = model.graph.output
    return lambda x: lambda: mod.run(native, x, taps=False)[out]


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


BASELINE = "torch-eager"


def runners_for(arch: str, model: Model, d: str, args: argparse.Namespace, fused) -> dict[str, Callable]:
    """Write the files, then open each with its users' loader; a column that fails is left out."""
    from senet_hub.builders import onnx as ox

    f_fun, f_inl = os.path.join(d, f"{arch}.onnx"), os.path.join(d, f"{arch}.inline.onnx")
    ox.save(model, f_fun)
    ox.save(model, f_inl, inline=True)
    makers: dict[str, Callable[[], Callable | None]] = {
        "ort-function": lambda: ort_runner(f_fun, args.threads),
        "ort-inline": lambda: ort_runner(f_inl, args.threads),
    }
    if fused:
        makers["ort-fused"] = lambda: _fused_runner(fused, model)
    if _available("openvino"):
        makers["openvino"] = lambda: openvino_runner(f_inl, args.threads)
    if _available("torch"):
        import torch

        torch.set_num_threads(args.threads)
        tb = builders.get("torch")
        pt2, pth = os.path.join(d, f"{arch}.pt2"), os.path.join(d, f"{arch}.pth")
        makers["pt2"] = lambda: (tb.save(model, pt2), pt2_runner(pt2))[1]
        makers["torch-eager"] = lambda: module_runner(tb.build(model))
        makers["timm-eager"] = lambda: (tb.save(model, pth), timm_runner(arch, pth))[1]
    if not args.no_others:
        for b in ("opencv", "tensorflow", "mxnet", "chainer"):
            if _available(b):
                makers[b] = lambda b=b: generic_runner(b, model, args.threads)
    runners: dict[str, Callable] = {}
    for c, make in makers.items():
        try:
            r = make()
        except Exception as e:  # a broken optional framework should not end the benchmark
            print(f"# {arch} {c}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
            continue
        if r is not None:
            runners[c] = r
    return runners


def _fused_runner(fused, model: Model):
    native = fused.build(model)
    sess, name, out = native.session, native.input_name, native.output
    return lambda x: lambda: sess.run([out], {name: x})[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="SE-ResNet-50,SENet-154")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--stat", choices=["median", "min"], default="median", help="min is steadier on a busy machine")
    ap.add_argument("--no-others", action="store_true", help="skip opencv, tensorflow, mxnet, chainer")
    ap.add_argument("--fused", action="store_true", help="also time the (slow) Python fused Axpy kernel")
    ap.add_argument("--profile", action="store_true", help="report the Axpy share of onnxruntime time")
    args = ap.parse_args()

    versions = {}
    for b in ("onnxruntime", "openvino", "torch", "opencv", "tensorflow", "mxnet", "chainer"):
        v = _version(b)
        if v:
            versions[b] = v
    try:
        sys.path.append(str(ROOT / "tests" / "stubs"))  # timm imports torchvision (see timm_runner)
        import timm

        versions["timm"] = timm.__version__
    except Exception:
        pass
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    print(f"# command: python bench/{os.path.basename(__file__)} {' '.join(sys.argv[1:])}")
    # other jobs on the machine slow every column (interleaving keeps the ratios fair) but not the
    # fixed Caffe anchor: the load average says whether the anchor column means anything
    print(f"# load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    fused = None
    if args.fused:
        import axpy_fused  # bench/axpy_fused.py: the experiment that showed the fused kernel does not pay

        fused = axpy_fused if axpy_fused.available() else None

    with tempfile.TemporaryDirectory() as d:
        for arch in args.archs.split(","):
            model = load_model(arch)
            runners = runners_for(arch, model, d, args, fused)
            cols = list(runners)
            base = BASELINE if BASELINE in runners else cols[0]
            for batch in [int(b) for b in args.batches.split(",")]:
                x = np.random.default_rng(7).normal(0, 50, (batch, *model.graph.input_shape[1:])).astype(np.float32)
                fns = {c: runners[c](x) for c in cols}
                ref = np.asarray(fns["ort-function"](), np.float64)
                once, rel = {}, {}
                for c, fn in fns.items():  # the same model everywhere: check before timing
                    t = time.perf_counter()
                    got = np.asarray(fn(), np.float64).reshape(ref.shape)
                    once[c] = time.perf_counter() - t
                    rel[c] = float(np.abs(got - ref).max() / np.abs(ref).max())
                bad = {c: r for c, r in rel.items() if r > 1e-3}
                worst = max(rel, key=rel.get)
                print(
                    f"# {arch} batch {batch}: max|d| / max|ref| vs ort-function: worst {worst} {rel[worst]:.2g}"
                    + (f"; DIFFERENT MODEL: {bad}" if bad else ""),
                    flush=True,
                )
                reps = {c: 3 if once[c] > 1.0 else args.repeat for c in fns}
                ms = time_ms(fns, reps, args.stat)
                print(f"\n{arch}, batch {batch}: ms per batch ({args.stat}), speed-up = {base} time / column time")
                print(f"  {'column':14s} {'ms/batch':>10s} {'ms/image':>10s} {'speed-up':>9s}")
                for c in cols:
                    print(f"  {c:14s} {ms[c]:10.1f} {ms[c] / batch:10.1f} {ms[base] / ms[c]:8.2f}x")
                if arch in CAFFE_ANCHOR_S:
                    ab, secs = CAFFE_ANCHOR_S[arch]
                    per = secs * 1e3 / ab
                    print(
                        f"  {'caffe (anchor)':14s} {'-':>10s} {per:10.1f} {ms[base] / batch / per:8.2f}x"
                        f"   (real Caffe, batch {ab}, FIELD_NOTES; per image)"
                    )
                if args.profile:
                    print(f"  axpy share of onnxruntime time: {axpy_share(model, x):.1%}")
                sys.stdout.flush()
            del runners, model
    print(f"# load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def _version(name: str) -> str | None:
    try:
        return builders.get(name).available()
    except Exception:
        return None


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
