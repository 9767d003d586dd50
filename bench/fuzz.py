"""Long fuzzing campaigns over senet-hub's readers (the test suite runs a fixed 10,000-input corpus).

    python bench/fuzz.py                         # 100,000 inputs, seed 1, all readers
    python bench/fuzz.py -n 1e6 --seed 7 --big   # multi-megabyte mutants too (nesting 100,000 deep, ...)
    python bench/fuzz.py --minutes 30 --only caffemodel,prototxt_graph --out fuzz_findings

Mutators, the target registry and the contract are in bench/fuzzing.py. Every input that breaks the contract (an
exception other than SenetHubError, a multi-line message, over the time limit, over its memory
bound) is written to --out as <target>-<n>.<ext> with a .txt note; the exit status is 1 if any.
--no-trace skips tracemalloc (about 2x faster, no memory check).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import fuzzing  # bench/fuzzing.py: the script's own directory is on sys.path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=float, default=100_000, help="number of inputs (default 100000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=0, help="stop after this long (0: no limit)")
    ap.add_argument("--big", action="store_true", help="also generate multi-megabyte mutants")
    ap.add_argument("--only", default="", help="comma-separated target name prefixes")
    ap.add_argument("--out", default="fuzz_findings", help="where failing inputs are written")
    ap.add_argument("--no-trace", action="store_true", help="do not measure memory (faster)")
    args = ap.parse_args(argv)

    work = tempfile.mkdtemp(prefix="senet-hub-fuzz-")
    targets = fuzzing.setup_targets(work, big=args.big)
    if args.only:
        keep = tuple(p.strip() for p in args.only.split(",") if p.strip())
        for name in list(targets):
            if not name.startswith(keep):
                del targets[name]
    print(f"targets: {', '.join(targets)}", file=sys.stderr)
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    out = Path(args.out)
    found = 0
    t0 = time.monotonic()

    class Stop(Exception):
        pass

    def on_outcome(o: fuzzing.Outcome) -> None:
        nonlocal found
        t = targets[o.target]
        bad = o.bug or o.seconds > fuzzing.TIME_LIMIT or (not args.no_trace and not o.mem_ok(t.mem_limit(o.size)))
        if bad:
            out.mkdir(parents=True, exist_ok=True)
            stem = str(out / f"{o.target.replace('[', '_').replace(']', '')}-{found}")
            Path(stem + t.suffix).write_bytes(o.data)
            Path(stem + ".txt").write_text(
                f"{o.target} [{o.op}] {o.size} bytes, {o.seconds:.3f} s, peak {o.peak} B: {o.result}\n"
            )
            found += 1
            print(f"FOUND {stem}: {o.result[:200]}", file=sys.stderr)
        if deadline and time.monotonic() > deadline:
            raise Stop

    outcomes: list[fuzzing.Outcome] = []
    try:
        outcomes = fuzzing.run_corpus(
            int(args.n), work, seed=args.seed, trace_memory=not args.no_trace, big=args.big,
            on_outcome=lambda o: (outcomes.append(o), on_outcome(o)), targets=targets,
        )  # fmt: skip
    except (Stop, KeyboardInterrupt):
        pass
    print(f"{len(outcomes)} inputs in {time.monotonic() - t0:.0f} s, {found} findings", file=sys.stderr)
    if outcomes:
        print(fuzzing.summarize(outcomes))
    return 1 if found else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
