""".pt2 (torch.export) export time vs .pth, and where the .pt2 time goes.

Run: python bench/bench_export.py [--archs SE-ResNet-50,SE-BN-Inception] [--repeat 3] [--threads N]

Per architecture (synthetic weights, zoo.synthetic_model), in one process, best of --repeat:
  pth           senet_hub.builders.torch.save(model, "x.pth")   (the streamed state_dict writer)
  pt2           senet_hub.builders.torch.save(model, "x.pt2")   (what `convert --to pytorch -o x.pt2` runs)
and the parts of pt2: build (Model -> nn.Module), export (builders.torch.export_program),
save (torch.export.save to a buffer). Variants of the export step are timed on the same module and
checked to give the same program (same graph code, signature, state_dict keys and range
constraints; then the same torch.export.save bytes) and the same output bit for bit on a batch of 3
(dynamic batch):
  export/no_grad   export_program under torch.no_grad()
  export/deferred  torch.export.export(..., prefer_deferred_runtime_asserts_over_guards=True)
  export/strict    strict=True (TorchDynamo front end)
Ratios are against pth.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    ts, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def program_key(ep: Any) -> tuple:
    """What makes two exported programs the same program (graph code, signature, weights' names)."""
    return (ep.graph_module.code, str(ep.graph_signature), tuple(ep.state_dict), str(ep.range_constraints))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="SE-ResNet-50,SE-BN-Inception")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--variants", default="no_grad,deferred,strict")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); seconds, best of {args.repeat}; "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    variants = [v for v in args.variants.split(",") if v]
    cols = ["pth", "pt2", "build", "export", "save"] + [f"export/{v}" for v in variants]
    print(f"{'arch':16s} " + " ".join(f"{c:>15s}" for c in cols) + f" {'pt2/pth':>8s}")
    with tempfile.TemporaryDirectory() as d:
        for arch in args.archs.split(","):
            s, notes = bench_arch(arch, d, args.repeat, variants)
            row = f"{arch:16s} " + " ".join(f"{s[c]:15.2f}" if c in s else f"{'-':>15s}" for c in cols)
            print(row + f" {s['pt2'] / s['pth']:7.1f}x", flush=True)
            for n in notes:
                print(f"#   {arch} export/{n}")


def bench_arch(arch: str, d: str, repeat: int, variants: list[str]) -> tuple[dict[str, float], list[str]]:
    import torch

    from senet_hub import zoo
    from senet_hub.builders import torch as tb

    model = zoo.synthetic_model(arch, seed=0)
    s: dict[str, float] = {}
    s["pth"], _ = best(lambda: tb.save(model, os.path.join(d, "m.pth")), repeat)
    s["pt2"], _ = best(lambda: tb.save(model, os.path.join(d, "m.pt2")), repeat)
    s["build"], module = best(lambda: tb.build(model), repeat)
    s["export"], ep = best(lambda: tb.export_program(module), repeat)

    def save_buf(program: Any = ep) -> bytes:
        buf = io.BytesIO()
        torch.export.save(program, buf)
        return buf.getvalue()

    s["save"], saved = best(save_buf, repeat)
    x = module.example_input(3)
    with torch.inference_mode():
        want = ep.module()(x)
    dims = {"x": {0: torch.export.Dim("batch", min=1)}}
    ex = (module.example_input(2),)

    def no_grad() -> Any:
        with torch.no_grad():
            return tb.export_program(module)

    fns = {
        "no_grad": no_grad,
        "deferred": lambda: torch.export.export(
            module, ex, dynamic_shapes=dims, prefer_deferred_runtime_asserts_over_guards=True
        ),
        "strict": lambda: torch.export.export(module, ex, dynamic_shapes=dims, strict=True),
    }
    notes = []
    for v in variants:
        if v not in fns:
            raise SystemExit(f"unknown variant {v}; known: {', '.join(fns)}")
        try:
            s[f"export/{v}"], ep2 = best(fns[v], repeat)
        except Exception as e:  # a variant this torch version cannot do: say so, time the rest
            notes.append(f"{v}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        same = program_key(ep2) == program_key(ep)
        same_bytes = same and save_buf(ep2) == saved  # the .pt2 archive itself, byte for byte
        with torch.inference_mode():
            got = ep2.module()(x)
        notes.append(
            f"{v}: same program {same}, same .pt2 bytes {same_bytes}, same output {bool(torch.equal(got, want))}"
        )
    return s, notes


if __name__ == "__main__":
    main()
