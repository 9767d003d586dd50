"""verify's memory and time at the batch sizes users check, in one run, as ratios.

Each configuration runs in its own process. Rows:

* ``forwards``: the baseline, the same backends' tapped forwards alone, all built in one process
  (reference + each backend per chunk, nothing compared);
* ``forwards-split``: the same forwards, the reference and each backend in a process of its own,
  one after another (wall = the sum; for when ``forwards`` would not fit in memory);
* ``verify``: verify in one process (``isolate=False``), default chunk;
* ``isolated``: verify with one process per backend (``isolate=True``), default chunk;
* ``one-chunk``: verify in one process, the whole batch at once (what verify did before chunking).

Peak memory is reported two ways. "tree" is the summed RSS of the measured process and all its
descendants, sampled every 0.1 s from outside (psutil when installed, else /proc): what the
machine had to hold at once. "max proc" is the largest per-process peak (getrusage maxrss of the
process itself and of its children, exact but per process: it misses what runs side by side).

    python bench/bench_verify.py                       # SE-ResNet-50 numpy,torch,onnxruntime batch 32
    python bench/bench_verify.py --arch SENet-154 --backends all --batch 8 --modes forwards-split,isolated
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

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
    cpu = lambda: sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    cpu0 = cpu()
    t = time.perf_counter()
    if mode == "forwards":  # the baseline: tapped forwards alone, chunk by chunk, nothing compared
        ref = numpy_ref.build(model, np.float64) if "numpy" in names else None
        natives = {b: (builders.get(b), builders.get(b).build(model)) for b in names if b != "numpy"}
        for lo in range(0, batch, chunk):
            xc = x[lo : lo + chunk]
            r = numpy_ref.run(ref, xc) if ref is not None else None
            for b, (mod, native) in natives.items():
                got = mod.run(native, xc, taps=True)
                del got
            del r
    else:
        rep = verify.verify(model, names, x, chunk=batch if mode == "one-chunk" else None,
                            isolate=mode == "isolated")
        assert rep.passed, (rep.first_divergent, rep.errors)
    wall = time.perf_counter() - t
    ru = lambda who: resource.getrusage(who).ru_maxrss / 1e6  # kB -> GB (Linux)
    print(json.dumps({"wall": wall, "cpu": cpu() - cpu0, "rss_self": ru(resource.RUSAGE_SELF), "rss_children": ru(resource.RUSAGE_CHILDREN),
                      "chunk": batch if mode == "one-chunk" else chunk, "backends": names}))
""")


def _tree_rss(pid: int) -> int:
    """Bytes of RSS of pid and all its descendants, now."""
    try:
        import psutil

        p = psutil.Process(pid)
        total = 0
        for q in [p, *p.children(recursive=True)]:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return total
    except ImportError:
        pass
    except Exception:
        return 0
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    tree, grew = {pid}, True
    while grew:
        grew = False
        for q, pp in parent.items():
            if pp in tree and q not in tree:
                tree.add(q)
                grew = True
    return sum(rss.get(q, 0) for q in tree)


def run_child(arch: str, names: list[str], batch: int, mode: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, arch, ",".join(names), str(batch), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["?"])[-1]}
    r = json.loads(out.strip().splitlines()[-1])
    r["rss_tree"] = peak[0] / 1e9
    r["rss_proc"] = max(r.pop("rss_self"), r.pop("rss_children"))
    return r


def measure(arch: str, names: list[str], batch: int, mode: str) -> dict:
    if mode != "forwards-split":
        return run_child(arch, names, batch, mode)
    parts = [run_child(arch, [b], batch, "forwards") for b in dict.fromkeys(["numpy", *names])]
    bad = [p for p in parts if "error" in p]
    if bad:
        return bad[0]
    return {"wall": sum(p["wall"] for p in parts), "cpu": sum(p["cpu"] for p in parts), "rss_tree": max(p["rss_tree"] for p in parts),
            "rss_proc": max(p["rss_proc"] for p in parts), "chunk": parts[0]["chunk"],
            "backends": [b for p in parts for b in p["backends"]]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="SE-ResNet-50")
    ap.add_argument("--backends", default="numpy,torch,onnxruntime")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--modes", default="forwards,verify,isolated,one-chunk")
    a = ap.parse_args()
    from senet_hub import builders
    from senet_hub.cli.shared import installed

    names = [b for b in builders.BACKENDS if installed(b)] if a.backends == "all" else a.backends.split(",")
    res = {m: measure(a.arch, names, a.batch, m) for m in a.modes.split(",")}
    ran = next((r["backends"] for r in res.values() if "backends" in r), names)
    print(f"{a.arch}, backends {','.join(dict.fromkeys(ran))}, batch {a.batch}")
    base = next((res[m]["wall"] for m in ("forwards", "forwards-split") if "wall" in res.get(m, {})), None)
    cbase = next((res[m]["cpu"] for m in ("forwards", "forwards-split") if "cpu" in res.get(m, {})), None)
    print(
        f"{'run':<44} {'chunk':>5} {'wall s':>8} {'x fwd':>6} {'cpu s':>7} {'x fwd':>6} {'tree GB':>8} {'max proc GB':>11}"
    )
    label = {"forwards": "tapped forwards alone, one process (baseline)",
             "forwards-split": "tapped forwards alone, a process each",
             "verify": "verify in one process (default chunk)",
             "isolated": "verify, a process per backend (default chunk)",
             "one-chunk": "verify in one process, whole batch at once"}  # fmt: skip
    for m, r in res.items():
        if "error" in r:
            print(f"{label.get(m, m):<44} error: {r['error']}")
            continue
        ratio = f"{r['wall'] / base:6.2f}" if base else f"{'-':>6}"
        cratio = f"{r['cpu'] / cbase:6.2f}" if cbase else f"{'-':>6}"
        print(f"{label.get(m, m):<44} {r['chunk']:>5} {r['wall']:8.1f} {ratio} {r['cpu']:7.1f} {cratio} "
              f"{r['rss_tree']:8.2f} {r['rss_proc']:11.2f}")  # fmt: skip
    print("cpu: user + system seconds of the process and its children (steadier than wall on a loaded machine)")
    print("tree: summed RSS of the process and its children, sampled; max proc: the largest single process's peak")


if __name__ == "__main__":
    main()
