"""Convert speed and memory: `senet-hub convert` of SENet-154 Caffe -> PyTorch vs `cp` of the caffemodel.

Run: python bench/bench_convert.py [--arch SENet-154] [--repeat 3] [--unpacked]
Weights: ../shared/tools/make_caffemodel.py (seed 1) when present, else senet-hub's synthetic writer.
Prints wall times (best of N), the ratio to cp, and peak RSS of the convert process vs the file size.
--unpacked also converts the same weights written one float per field (tag 0x2d + 4 bytes each, as
old Caffe writers and some scripts do) and prints its time next to the packed file's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT.parent / "shared" / "tools" / "make_caffemodel.py"


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err}")
    return dt, usage.ru_maxrss * 1024


def write_unpacked(src: Path, dst: Path) -> None:
    """Rewrite a caffemodel with every float as its own field (BlobProto.data unpacked)."""
    import numpy as np

    from senet_hub.converters.caffe_format import _varint, ld, read_caffemodel

    with open(dst, "wb") as f:
        for name, (ltype, blobs) in read_caffemodel(src).items():
            body = ld(1, name.encode()) + ld(2, ltype.encode())
            for b in blobs:
                rec = np.zeros(b.size, dtype=[("key", "u1"), ("value", "<f4")])
                rec["key"], rec["value"] = 5 << 3 | 5, b.ravel()
                body += ld(7, ld(7, ld(1, b"".join(_varint(int(d)) for d in b.shape))) + rec.tobytes())
            f.write(ld(100, body))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="SENet-154")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--to", default="pytorch")
    ap.add_argument("--suffix", default=".pth")
    ap.add_argument("--unpacked", action="store_true", help="also time a one-float-per-field caffemodel")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="senet-hub-bench-"))
    try:
        prototxt = ROOT / "reference_models" / f"{args.arch}.prototxt"
        caffemodel = work / f"{args.arch}.caffemodel"
        if TOOL.exists():
            subprocess.run(
                [sys.executable, str(TOOL), str(prototxt), "1", str(caffemodel)], check=True, capture_output=True
            )
        else:
            from senet_hub import zoo
            from senet_hub.converters import caffe_writer

            caffe_writer.write_caffemodel_for(zoo.synthetic_model(args.arch), caffemodel)
        size = caffemodel.stat().st_size
        exe = [sys.executable, "-m", "senet_hub.cli"]
        copy, out = work / "copy.bin", work / f"out{args.suffix}"
        convert = [*exe, "convert", "--prototxt", str(prototxt), "--caffemodel", str(caffemodel)]
        convert += ["--to", args.to, "-o", str(out)]
        cps, runs = [], []
        for _ in range(args.repeat):  # interleaved, each writing a fresh file: both see the same machine state
            for p in (copy, out):
                if p.exists():
                    p.unlink()
            os.sync()
            cps.append(timed(["cp", str(caffemodel), str(copy)])[0])
            os.sync()
            runs.append(timed(convert))
        cp = min(cps)
        conv, rss = min(r[0] for r in runs), max(r[1] for r in runs)
        startup = min(timed([*exe, "--help"])[0] for _ in range(args.repeat))
        print(f"{args.arch}: caffemodel {size / 1e6:.0f} MB, best of {args.repeat}")
        print(f"  cp                          {cp:7.3f} s")
        print(
            f"  senet-hub convert --to {args.to:<6}{conv:7.3f} s   = {conv / cp:5.1f}x cp   (CLI start-up alone {startup:.3f} s)"
        )
        print(f"  peak RSS of convert         {rss / 1e6:7.0f} MB  = {rss / size:5.2f}x file size")
        if args.unpacked:
            unpacked = work / f"{args.arch}.unpacked.caffemodel"
            write_unpacked(caffemodel, unpacked)
            convert_u = [str(unpacked) if a == str(caffemodel) else a for a in convert]
            runs_u = []
            for _ in range(args.repeat):
                if out.exists():
                    out.unlink()
                runs_u.append(timed(convert_u))
            conv_u, rss_u = min(r[0] for r in runs_u), max(r[1] for r in runs_u)
            size_u = unpacked.stat().st_size
            print(
                f"  unpacked floats ({size_u / 1e6:.0f} MB)    {conv_u:7.3f} s   = {conv_u / conv:5.2f}x packed"
                f"   peak RSS {rss_u / 1e6:.0f} MB = {rss_u / size_u:4.2f}x its size"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
