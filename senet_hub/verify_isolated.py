"""verify with one process per backend (``verify --isolate``): the backends' memory never adds up.

Frameworks do not give back what a built model and a tapped run hold (onnxruntime's and OpenVINO's
arenas, MXNet's executors, TensorFlow's traced functions: 0.3-1.7 GB each for SENet-154), so
building every backend in one process sums them. Here execution is backend-major:

1. The parent runs the float64 reference over every chunk and spills its taps to a temporary
   folder on disk (TMPDIR; one raw float64 file per node per chunk, written on a thread while the
   next chunk computes), with the model and the input; the per-node reference statistics stay in
   memory. Then it frees the reference.
2. Each backend runs in a fresh Python process of its own, one after another: it builds the
   backend, runs every chunk, folds its taps node by node against the spilled reference into
   NodeStats (the very code the in-process path runs, on bit-identical float64 values, so the
   report is the same), sends back the statistics and final outputs, and exits, which returns all
   its memory.

A fresh interpreter, not fork: the parent has numpy's BLAS threads running, and forking a threaded
process can leave a lock held in the child forever. Not multiprocessing's spawn either: it re-runs
the caller's main script in the child, which breaks scripts that call verify without a
``__main__`` guard. The parent imports no framework (only the children do). The spill folder is
removed on every exit path the parent lives through (errors, Ctrl-C, SIGTERM via
errors.Terminated); a child dies with its parent (PR_SET_PDEATHSIG), and a folder left by a killed
parent is removed by the next isolated run (atomic.clean_stale_temps: the name carries the pid).
POSIX only (the children inherit one end of a pipe); elsewhere verify stays in one process.

Why this module is long: the parent's side (spill, process plumbing) and the child's side
(`child_main`) share one private message protocol and the spill's file layout; split, each half
would depend on the other's internals.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import builders
from .errors import OutputError, SenetHubError
from .graph import Model

ISOLATE_ABOVE = 4.0e9  # bytes the in-process run is estimated to hold above which `verify` isolates by default
SPILL_MARGIN = 512 * 2**20  # free space left on the spill's file system beyond the spill itself
_RAM_FS = {"tmpfs", "ramfs"}


def inprocess_bytes(model: Model, n_backends: int, chunk: int, one: dict[str, tuple[int, ...]]) -> float:
    """Rough peak of the in-process run: float64 reference weights and one chunk of its taps, plus
    per backend its copy of the weights (framework + staging) and an arena of one chunk's taps.

    Calibrated on the measured runs (README): SENet-154, 7 backends, chunk 1: 12.5 GB estimated,
    14.9 GB measured; SE-ResNet-50, 2 backends, chunk 2: 2.1 GB estimated, 2.5 GB measured.
    """
    params = sum(int(np.size(v)) for v in model.weights.values())
    taps = sum(int(np.prod(s[1:], dtype=np.int64)) for s in one.values()) * chunk
    return 8.0 * params + 12.0 * taps + n_backends * (8.0 * params + 4.0 * taps)


def spill_bytes(model: Model, x: np.ndarray, one: dict[str, tuple[int, ...]]) -> int:
    """Bytes the isolated run writes: every node's float64 reference for every image, model, input."""
    taps = sum(int(np.prod(s[1:], dtype=np.int64)) for s in one.values()) * int(x.shape[0])
    return 8 * taps + sum(int(np.asarray(v).nbytes) for v in model.weights.values()) + int(x.nbytes)


def spill_root() -> str:
    """Where the spill goes: the temporary directory (TMPDIR), resolved."""
    return os.path.realpath(tempfile.gettempdir())


def ram_backed(path: str) -> bool:
    """Whether path lies on tmpfs/ramfs, where a spill would take memory instead of disk."""
    best, fstype = "", ""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:  # not Linux: no way to tell, assume disk
        return False
    return fstype in _RAM_FS


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def choose(
    model: Model, names: list[str], x: np.ndarray, chunk: int, one: dict[str, tuple[int, ...]], say: Any
) -> bool:
    """The automatic choice: isolate when two or more backends would hold over ISOLATE_ABOVE
    together in one process and the spill fits on a disk (not in memory) with room to spare."""
    nb = len({b for b in names if b != "numpy"})
    est = inprocess_bytes(model, nb, chunk, one)
    if nb < 2 or est <= ISOLATE_ABOVE or os.name != "posix":
        return False
    root, need = spill_root(), spill_bytes(model, x, one)
    why = None
    if ram_backed(root):
        why = f"{root} is in memory (tmpfs); point TMPDIR at a disk folder to isolate"
    elif shutil.disk_usage(root).free < need + SPILL_MARGIN:
        why = f"the reference's spill ({_gb(need)}) does not fit in {root}"
    if why:
        say(f"note: all backends run in one process (about {_gb(est)}): {why}")
        return False
    say(f"each backend runs in its own process (about {_gb(est)} together in one; --no-isolate to keep one)")
    return True


@dataclass
class ChunkRef:
    """One chunk of the spilled reference: its images, node names (file i is names[i]), shapes, statistics."""

    lo: int
    hi: int
    label: str
    names: list[str]
    shapes: list[tuple[int, ...]]
    stats: dict[str, tuple[float, float]]


@dataclass
class Job:
    """What a backend's process needs: all of it small; the arrays are files in `spill`."""

    spill: str
    backend: str
    opts: dict[str, Any]
    output: str
    chunks: list[ChunkRef]
    parent_pid: int


def run(
    report: Any, x: np.ndarray, chunk: int, say: Any, tick: Any, build_opts: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]], set[str]]:
    """verify's backend-major, one-process-per-backend execution (the in-process path's contract)."""
    from . import verify_stats as v
    from .atomic import clean_stale_temps, temp_name
    from .builders import numpy_ref
    from .graph import infer_shapes

    if os.name != "posix":
        raise SenetHubError("verify --isolate needs a POSIX system (Linux, macOS); use --no-isolate")
    model: Model = report.model
    root = spill_root()
    one = infer_shapes(model, (1, *x.shape[1:]))
    need, free = spill_bytes(model, x, one), shutil.disk_usage(root).free
    if free < need + SPILL_MARGIN:
        raise OutputError(
            f"{root}: verify --isolate spills the float64 reference there and needs {_gb(need + SPILL_MARGIN)}, "
            f"{_gb(free)} free; free space, point TMPDIR at a larger disk, use fewer images, or --no-isolate"
        )
    if ram_backed(root):
        say(f"note: {root} is in memory (tmpfs): the {_gb(need)} spill takes memory; point TMPDIR at a disk folder")
    others = list(dict.fromkeys(b for b in report.backends if b != "numpy"))
    starts = range(0, x.shape[0], chunk)
    bar = {"done": 0, "total": len(starts) * (1 + len(others)), "ticks": 0}  # (backend, chunk) runs

    def step(label: str) -> None:
        bar["done"] += 1
        bar["ticks"] += 1
        tick(bar["done"], bar["total"], label)

    stats: dict[str, Any] = {"numpy": {}}
    finals: dict[str, list[np.ndarray]] = {"numpy": []}
    missing_out: set[str] = set()
    clean_stale_temps(root)  # spills of verify runs that were killed
    spill = temp_name(os.path.join(root, "senet-hub-verify-spill"))
    writer = _SpillWriter()
    try:
        os.mkdir(spill, 0o700)
        chunks: list[ChunkRef] = []
        try:
            with open(os.path.join(spill, "model.pickle"), "wb") as f:
                pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
            np.save(os.path.join(spill, "x.npy"), x)
            ref_native = numpy_ref.build(model, np.float64)
            report.versions["numpy"] = np.__version__
            report.timings["numpy"] = 0.0
            for ci, lo in enumerate(starts):
                xc = x[lo : lo + chunk]
                part = v.chunk_label(lo, len(xc), x.shape[0], len(starts))
                say(f"running the numpy float64 reference{part}")
                t = time.perf_counter()
                ref = numpy_ref.run(ref_native, xc)
                report.timings["numpy"] += time.perf_counter() - t
                ref_stats = {k: v.reference_stats(a) for k, a in ref.items() if np.size(a)}
                v.fold_reference(stats["numpy"], list(ref), ref_stats)
                finals["numpy"].append(np.asarray(ref[model.graph.output], np.float32))
                if others:  # raw float64 in C order, one file per node, written while the next chunk computes
                    writer.put([(os.path.join(spill, f"{ci}.{i}"), a) for i, a in enumerate(ref.values())])
                shapes = [tuple(np.shape(a)) for a in ref.values()]
                chunks.append(ChunkRef(lo, lo + len(xc), part, list(ref), shapes, ref_stats))
                del ref
                step(f"numpy{part}")
            writer.close()
        except OSError as e:
            raise OutputError(
                f"{spill}: cannot spill the float64 reference: {e.strerror or e}; "
                "free space, point TMPDIR at a larger disk, or use --no-isolate"
            ) from None
        del ref_native
        _release_memory()
        for b in others:
            bar["ticks"] = 0
            res = _run_child(Job(spill, b, build_opts.get(b, {}), model.graph.output, chunks, os.getpid()), say, step)
            report.versions[b] = res["version"]
            report.timings[b] = res["seconds"]
            if res["error"] is not None:
                report.errors[b] = res["error"]
            if res["built"]:
                stats[b], finals[b] = res["stats"], res["finals"]
                if res["missing_out"]:
                    missing_out.add(b)
            if bar["ticks"] < len(chunks):  # it stopped early (build or run failed): the bar still ends full
                bar["total"] -= len(chunks) - bar["ticks"]
                tick(bar["done"], bar["total"], f"{b}: stopped")
    finally:
        writer.close(abort=True)  # no write may land in the folder after it is removed
        shutil.rmtree(spill, ignore_errors=True)
    return stats, finals, missing_out


class _SpillWriter:
    """Writes one chunk's reference taps on a thread while the reference computes the next chunk
    (the file writes release the GIL). At most one chunk waits, so the parent holds at most two
    chunks of reference taps; a write error is raised in the caller at its next put or close."""

    def __init__(self) -> None:
        import queue
        import threading

        self._q: queue.Queue[list[tuple[str, np.ndarray]] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="senet-hub spill writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                self._q.task_done()
                return
            self._write(job)
            del job  # drop the chunk's arrays before waiting for the next one
            self._q.task_done()

    def _write(self, job: list[tuple[str, np.ndarray]]) -> None:
        for path, a in job:
            if self._stop or self._error is not None:
                return
            try:
                _write_raw(path, a)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def put(self, job: list[tuple[str, np.ndarray]]) -> None:
        """Hand over a chunk once the previous one is written: one chunk written, one computed, no more."""
        self._q.join()
        self._raise()
        self._q.put(job)

    def close(self, abort: bool = False) -> None:
        """Wait for every write (abort: for the current file only); raise a write error unless aborting."""
        if not self._thread.is_alive():
            return
        if abort:
            self._stop = True
            with contextlib.suppress(Exception):
                while True:
                    self._q.get_nowait()
        self._q.put(None)
        self._thread.join()
        if not abort:
            self._raise()


def _write_raw(path: str, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a, np.float64)
    with open(path, "wb", buffering=0) as f:
        view = a.reshape(-1).data.cast("B")
        while view:
            view = view[f.write(view) :]


def _release_memory() -> None:
    """Give the float64 reference's freed memory back to the system before the backends run
    (glibc keeps freed small and mid-sized blocks in its heap otherwise)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)


_CHILD = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[3]); "
    "from senet_hub.verify_isolated import child_main; child_main()"
)


def _run_child(job: Job, say: Any, step: Any) -> dict[str, Any]:
    """Run one backend's process to its end, relaying progress; its result, or its exception raised here.

    A fresh interpreter (subprocess, not multiprocessing): multiprocessing's spawn re-runs the
    caller's main script in the child, which breaks scripts that call verify without a
    `__main__` guard; here the child imports senet_hub alone. Messages come over a pipe.
    """
    import subprocess
    from multiprocessing.connection import Connection

    job_path = os.path.join(job.spill, f"job-{job.backend}.pickle")
    try:
        with open(job_path, "wb") as f:
            pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError as e:
        raise OutputError(
            f"{job_path}: cannot write: {e.strerror or e}; free space or point TMPDIR elsewhere"
        ) from None
    r, w = os.pipe()
    try:
        path = json.dumps([str(p) for p in sys.path])  # what the parent imports, the child imports
        cmd = [sys.executable, "-c", _CHILD, str(w), job_path, path]
        proc = subprocess.Popen(cmd, pass_fds=(w,), stdin=subprocess.DEVNULL)
    finally:
        os.close(w)  # the child holds the only writer: EOF when it ends
    conn = Connection(r, writable=False)
    ended = False  # it sent its last message (or died); else we are unwinding (Ctrl-C, SIGTERM, a bug)
    try:
        while True:
            # poll with a timeout: a helper process the framework forked could keep the pipe open
            if not conn.poll(0.5):
                if proc.poll() is None or conn.poll(0):
                    continue
                break  # it ended without a last word
            try:
                kind, data = conn.recv()
            except EOFError:
                break
            if kind == "say":
                say(data)
            elif kind == "tick":
                step(data)
            elif kind in ("result", "raise"):
                ended = True
                if kind == "raise":
                    raise _unpack(job.backend, data)
                return data
        ended = True
        code = proc.wait()
        return {"version": "?", "seconds": 0.0, "error": _died(code), "built": False}
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            if ended:
                proc.wait(60)  # it exits right after its last message
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        conn.close()


def _died(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " (out of memory? a smaller --chunk lowers the peak)" if -code == signal.SIGKILL else ""
        return f"its process was killed by {name}{hint}"
    return f"its process exited with code {code} without a result"


def _pack(e: BaseException) -> tuple[str, str, str, bytes | None, str]:
    """An exception as (module, class name, message, pickle or None, traceback) for the parent."""
    blob: bytes | None = None
    with contextlib.suppress(Exception):
        data = pickle.dumps(e)
        pickle.loads(data)  # some exceptions pickle but cannot be rebuilt (required __init__ arguments)
        blob = data
    return type(e).__module__, type(e).__qualname__, str(e), blob, traceback.format_exc()


def _unpack(backend: str, packed: tuple[str, str, str, bytes | None, str]) -> BaseException:
    """The child's exception, as the in-process path would have raised it: same class, same message."""
    module, name, message, blob, tb = packed
    e: BaseException | None = None
    # rebuilt only for Python's and senet-hub's classes: a framework's would import the framework here
    if blob is not None and (module == "builtins" or module.split(".")[0] == "senet_hub"):
        with contextlib.suppress(Exception):
            e = pickle.loads(blob)
    if e is None or str(e) != message:  # a class that does not round-trip: same name and message
        e = type(name, (Exception,), {"__module__": module})(message)
    if hasattr(e, "add_note"):  # Python 3.11+: --debug shows where it happened
        e.add_note(f"raised in the {backend} backend's process:\n{tb}")
    return e


def _die_with_parent(parent_pid: int) -> None:
    """A backend's process must not outlive verify (a killed parent cannot terminate it)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _fold_spilled(st: Any, path: str, shape: tuple[int, ...], got: Any, ref_stats: Any) -> None:
    """Fold one node's taps into st against its spilled float64 reference, mapped for this call only.

    Mapped, not read: the values go from the page cache straight into the comparison (measured on
    SENet-154: +0.25 s per image and backend over an in-memory reference; reading into a reused
    buffer costs +0.5 s). The map is closed before the next node, so at most one node's pages
    ever count in this process's RSS (a memmap of the whole spill would keep every touched page).
    """
    if not int(np.prod(shape, dtype=np.int64)):
        st.add(np.empty(shape, np.float64), got, ref_stats)
        return
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        st.add(np.frombuffer(mm, np.float64).reshape(shape), got, ref_stats)
    finally:
        with contextlib.suppress(BufferError):  # a traceback holding the array: unmapped when it goes
            mm.close()


def child_main() -> None:
    """Entry of a backend's process: argv = writer fd, job file, the parent's sys.path."""
    from multiprocessing.connection import Connection

    fd = int(sys.argv[1])
    os.set_inheritable(fd, False)  # processes the framework starts must not hold the parent's pipe open
    conn = Connection(fd, readable=False)
    with open(sys.argv[2], "rb") as f:
        job = pickle.load(f)
    _die_with_parent(job.parent_pid)
    try:
        conn.send(("result", _child_run(conn, job)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which raises it
        with contextlib.suppress(Exception):
            conn.send(("raise", _pack(e)))
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the frameworks' exit handlers (MXNet's can crash, TF's are slow): the result is sent


def _child_run(conn: Any, job: Job) -> dict[str, Any]:
    """Build, run every chunk, fold taps into NodeStats: the in-process loop for one backend."""
    from . import verify_stats as v

    b = job.backend
    t = time.perf_counter()
    mod = builders.get(b)
    # str(): torch's version is a TorchVersion, whose unpickling would import torch in the parent
    res: dict[str, Any] = {"version": str(mod.available() or "?"), "error": None, "built": False}
    with open(os.path.join(job.spill, "model.pickle"), "rb") as f:
        model = pickle.load(f)
    try:
        native = mod.build(model, **job.opts)
        res["built"] = True
    except SenetHubError as e:  # this backend cannot run this model: reported, like in-process
        res["error"] = str(e)
    res["seconds"] = time.perf_counter() - t
    del model
    if not res["built"]:
        return res
    x = np.load(os.path.join(job.spill, "x.npy"), mmap_mode="r")
    stats: dict[str, v.NodeStats] = {}
    finals: list[np.ndarray] = []
    missing_out = False

    def fold(ci: int, c: ChunkRef, got: dict[str, Any]) -> None:
        index = {name: i for i, name in enumerate(c.names)}
        for name, value in got.items():
            i = index.get(name)
            if i is not None:
                st = stats.setdefault(name, v.NodeStats())
                _fold_spilled(st, os.path.join(job.spill, f"{ci}.{i}"), c.shapes[i], value, c.stats.get(name))

    # chunk k's comparison runs on a thread while chunk k+1's forward runs (the framework's
    # kernels and numpy's release the GIL): two chunks of taps at most; the folds stay in chunk
    # order, one at a time, so the statistics are those of the sequential loop
    from concurrent.futures import Future, ThreadPoolExecutor

    pending: Future[None] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="senet-hub compare") as pool:
        for ci, c in enumerate(job.chunks):
            conn.send(("say", f"running {b}{c.label}"))
            xc = np.array(x[c.lo : c.hi])
            t = time.perf_counter()
            try:
                got = mod.run(native, xc, taps=True)
            except SenetHubError as e:
                res["error"] = str(e)
                break
            res["seconds"] += time.perf_counter() - t
            conn.send(("tick", f"{b}{c.label}"))
            gap = v.missing_taps(mod, c.names, got)
            if gap:
                res["error"] = gap
                break
            if job.output in got:
                finals.append(np.asarray(got[job.output], np.float32))
            else:
                missing_out = True
            if pending is not None:
                pending.result()
            pending = pool.submit(fold, ci, c, got)
            del got
        if pending is not None and res["error"] is None:
            pending.result()
    res.update(stats=stats, finals=finals, missing_out=missing_out)
    return res
