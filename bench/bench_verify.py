"""verify's memory and time at the batch sizes users check, in one run, as ratios.

Each configuration runs in its own process (peak RSS is per process): `verify` with the default
chunk, `verify` in one chunk (the whole batch at once, what verify did before chunking), and the
baseline: the same backends' tapped forwards alone (reference + each backend per chunk, nothing
compared). Prints wall and peak RSS, and verify's wall as a ratio of the baseline.

    python bench/bench_verify.py                       # SE-ResNet-50 numpy,torch,onnxruntime batch 32
    python bench/bench_verify.py --arch SENet-154 --backends all --batch 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from senet_hub import builders, verify, zoo
    from senet_hub.builders import numpy_ref
    arch, names, batch, mode = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4]
    model = zoo.synthetic_model(arch, seed=0)
    # a backend that cannot run this architecture (mindspore: MindCV's only) is left out; asked
    # without building anything (a trial build's memory would stay in the process and count)
    names = [b for b in names if b != "mindspore" or zoo.is_arch(arch, "mindcv")]
    x = verify.default_input(model, batch, 7)
    shapes = verify.infer_shapes(model, (1, *x.shape[1:]))
    chunk = verify.default_chunk(model, shapes)
    t = time.perf_counter()
    if mode == "forwards":  # the baseline: tapped forwards alone, chunk by chunk, nothing compared
        ref = numpy_ref.build(model, np.float64)
        natives = {b: (builders.get(b), builders.get(b).build(model)) for b in names if b != "numpy"}
        for lo in range(0, batch, chunk):
            xc = x[lo : lo + chunk]
            r = numpy_ref.run(ref, xc)
            for b, (mod, native) in natives.items():
                got = mod.run(native, xc, taps=True)
                del got
            del r
    else:
        rep = verify.verify(model, names, x, chunk=batch if mode == "one-chunk" else None)
        assert rep.passed, rep.first_divergent
    wall = time.perf_counter() - t
    print(json.dumps({"wall": wall, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      "chunk": batch if mode == "one-chunk" else chunk, "backends": names}))
""")


def measure(arch: str, names: list[str], batch: int, mode: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, arch, ",".join(names), str(batch), mode],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="SE-ResNet-50")
    ap.add_argument("--backends", default="numpy,torch,onnxruntime")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--modes", default="forwards,verify,one-chunk")
    a = ap.parse_args()
    from senet_hub import builders
    from senet_hub.cli import _installed

    names = [b for b in builders.BACKENDS if _installed(b)] if a.backends == "all" else a.backends.split(",")
    res = {m: measure(a.arch, names, a.batch, m) for m in a.modes.split(",")}
    ran = next((r["backends"] for r in res.values() if "backends" in r), names)
    print(f"{a.arch}, backends {','.join(ran)}, batch {a.batch}")
    base = res.get("forwards", {}).get("wall")
    print(f"{'run':<34} {'chunk':>5} {'wall s':>8} {'x forwards':>10} {'peak RSS GB':>12}")
    label = {"forwards": "tapped forwards alone (baseline)", "verify": "verify (default chunk)",
             "one-chunk": "verify, whole batch in one chunk"}  # fmt: skip
    for m, r in res.items():
        if "error" in r:
            print(f"{label.get(m, m):<34} error: {r['error']}")
            continue
        ratio = f"{r['wall'] / base:10.2f}" if base else f"{'-':>10}"
        print(f"{label.get(m, m):<34} {r['chunk']:>5} {r['wall']:8.1f} {ratio} {r['rss_gb']:12.2f}")


if __name__ == "__main__":
    main()
