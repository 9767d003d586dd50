"""Chainer ``.npz`` -> canonical Model, without Chainer and without running anybody's pickle.

What senet-hub writes (``builders.chainer.save``) is ``chainer.serializers.save_npz``'s layout,
one array per link parameter (``layer1/0/conv1/W``, ``bn1/gamma``, ``bn1/avg_mean`` ...), plus one
entry ``_senet_hub_graph``: the canonical graph and meta as UTF-8 JSON. Reading it back is exact:
the graph from the JSON, each canonical parameter from the key ``builders.chainer.link_paths``
names for its node (the same function the writer's Chain uses), with ``shadows`` answered from
the file's own keys (a part that shadowed a Chain attribute has no keys under its plain name, so
its ``_``-suffixed name is taken, exactly as the writer did).

A Chainer file written by someone else has no graph entry: its keys and shapes are compared with
every zoo architecture's (converters.recognize; the head width is the file's); the one exact fit
is read with that architecture's graph and meta, else the closest architecture and its first
disagreement are named (exit 5).

The file is a regular file opened without blocking (converters.wire.open_regular), must be a zip,
and is read with ``np.load(allow_pickle=False)``: an object array is a FormatError, never code run.
BatchNormalization's ``N`` (a training counter) is ignored like PyTorch's ``num_batches_tracked``.
"""

from __future__ import annotations

import copy
import functools
import os
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, SenetHubError

# canonical parameter -> Chainer link attribute, per op (builders.chainer LINKS)
ATTRS = {
    "conv": {"weight": "W", "bias": "b"},
    "linear": {"weight": "W", "bias": "b"},
    "batch_norm": {"weight": "gamma", "bias": "beta", "running_mean": "avg_mean", "running_var": "avg_var"},
}
IGNORED = ("N",)  # BatchNormalization's persistent sample counter: training state, no weight
PREFER = ("timm", "caffe", "mindcv")  # families tried first when several architectures fit a foreign file
WHAT = "Chainer npz"
# what a damaged zip or .npy member raises from zipfile / zlib / numpy's header parser
_DAMAGED = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    RuntimeError,
    NotImplementedError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
)


def npz_keys(graph: Any, present: Mapping[str, Any]) -> dict[str, str]:
    """{canonical weight key: npz key} for the graph's parameters, as builders.chainer names them;
    `present` (the file's keys) answers which plain names the writer had to suffix with ``_``."""
    from senet_hub.builders.chainer import link_paths

    prefixes = {k.rsplit("/", 1)[0] for k in present}
    dirs = {"/".join(p.split("/")[:i]) for p in prefixes for i in range(1, p.count("/") + 2)}
    # x for every x_, x__ ... present: names that some `_`-suffixed form was used for
    suffixed = {d[:-k] for d in dirs for k in range(1, len(d) - len(d.rstrip("_")) + 1)}

    def shadows(parent: tuple[str, ...], part: str) -> bool:
        # the writer placed a link (or nested Chain) under every name it did not have to avoid: a name
        # was avoided when nothing is under it but something is under a `_`-suffixed form of it (else
        # the name stands, and its keys are reported missing)
        here = "/".join((*parent, part))
        return here not in dirs and here in suffixed

    nodes = [n for n in graph.nodes if n.op in ATTRS]
    paths = link_paths([n.name for n in nodes], shadows)
    out: dict[str, str] = {}
    for n in nodes:
        for p in n.param_names():
            out[f"{n.name}.{p}"] = "/".join(paths[n.name]) + "/" + ATTRS[n.op][p]
    return out


class _Npz:
    """An open npz with pickles refused: shapes from the .npy headers, arrays read on demand."""

    def __init__(self, path: str):
        from .wire import open_regular

        self.path = path
        self._f, self._st = open_regular(path, WHAT)
        try:
            if self._f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise FormatError(
                    f"{path}: not a Chainer .npz (zip) file; pass the .npz chainer.serializers.save_npz or "
                    "senet-hub convert --to chainer wrote"
                )
            self._f.seek(0)
            self.z = np.load(self._f, allow_pickle=False)
            self.files = list(self.z.files)
        except SenetHubError:
            self._f.close()
            raise
        except _DAMAGED as e:
            self._f.close()
            raise FormatError(f"{path}: not a readable {WHAT}: {_first_line(e)}") from None

    def __enter__(self) -> _Npz:
        return self

    def __exit__(self, *exc: Any) -> None:
        from .wire import check_unchanged

        try:
            self.z.close()
            if exc[0] is None:
                check_unchanged(self.path, self._f, self._st, WHAT)
        finally:
            self._f.close()

    def shape(self, key: str) -> tuple[int, ...]:
        """The entry's shape from its .npy header (no data read)."""
        try:
            with self.z.zip.open(key + ".npy") as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, _, _ = np.lib.format.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, _, _ = np.lib.format.read_array_header_2_0(fp)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
        except _DAMAGED as e:
            raise FormatError(f"{self.path}: entry '{key}' is not a readable .npy array: {_first_line(e)}") from None
        return tuple(int(d) for d in shape)

    def array(self, key: str) -> np.ndarray:
        try:
            return np.asarray(self.z[key])
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise FormatError(
                    f"{self.path}: entry '{key}' is a pickled object array; senet-hub never unpickles a user file: "
                    "save the weights as numeric arrays"
                ) from None
            raise FormatError(f"{self.path}: entry '{key}' is not a readable array: {_first_line(e)}") from None
        except _DAMAGED as e:  # zlib errors, CRC mismatches, bad headers
            raise FormatError(f"{self.path}: entry '{key}' is not a readable array: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _stored_graph(npz: _Npz) -> tuple[Any, dict[str, Any]]:
    from senet_hub.builders.chainer import GRAPH_KEY
    from senet_hub.graph import read_graph

    raw = npz.array(GRAPH_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise FormatError(f"{npz.path}: entry '{GRAPH_KEY}' is not UTF-8 JSON bytes; rewrite the file with senet-hub")
    return read_graph(
        raw.tobytes(), f"{npz.path}: entry '{GRAPH_KEY}'", "rewrite the file with senet-hub convert --to chainer"
    )


@functools.lru_cache(maxsize=64)
def _zoo_graph(arch: str, num_classes: int | None) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """A zoo graph and its parameter shapes, kept: recognition compares every architecture per file.
    Callers must not modify the graph (load copies the one it returns)."""
    from senet_hub import zoo

    g = zoo.expand(arch, num_classes)
    return g, zoo.graph_param_shapes(g)


def _recognise(npz: _Npz, arch: str | None) -> tuple[Any, dict[str, Any]]:
    """The zoo graph and meta a graph-less npz's keys and shapes fit exactly (ModelError otherwise)."""
    from senet_hub import zoo

    from . import recognize

    got = {k: npz.shape(k) for k in npz.files if k.rsplit("/", 1)[-1] not in IGNORED}
    cache: dict[str, tuple[Any, dict[str, tuple[int, ...]]]] = {}

    def expected(a: str) -> dict[str, tuple[int, ...]]:
        if a not in cache:
            g, shapes = _zoo_graph(a, None)
            keys = npz_keys(g, got)
            linears = [n.name for n in g.nodes if n.op == "linear"]
            head = got.get(keys.get(f"{linears[-1]}.weight", "")) if linears else None
            if head is not None and len(head) == 2 and head[0] != zoo.description(a).get("num_classes"):
                g, shapes = _zoo_graph(a, int(head[0]))  # a fine-tuned head: still that architecture
                keys = npz_keys(g, got)
            cache[a] = (g, {keys[k]: tuple(shapes[k]) for k in keys})
        return cache[a][1]

    def family(a: str) -> str:
        return str(zoo.description(a)["family"])

    best: str | None
    if arch is not None:
        arch = _arch_id(arch)
        problems = recognize.mismatches(got, expected(arch))
        if problems:
            raise ModelError(
                f"{npz.path}: does not fit {arch}: {len(problems)} mismatches, first: {recognize.summary(problems, 3)}"
            )
        best = arch
    else:
        scored = recognize.rank(got, zoo.list_archs(), expected, family, PREFER)
        best, fits = recognize.choose(scored, family, PREFER)
        if best is None and fits:
            raise ModelError(f"{npz.path}: fits several architectures ({', '.join(fits)}); pass --arch")
        if best is None:
            closest, problems = scored[0]
            raise ModelError(
                f"{npz.path}: no '_senet_hub_graph' entry and not the npz of any zoo architecture; closest is "
                f"{closest} with {len(problems)} mismatches, first: {recognize.summary(problems, 3)}; write it "
                "with senet-hub convert --to chainer, or pass --arch to see the full check"
            )
    assert best is not None  # both branches above raise otherwise
    graph = copy.deepcopy(cache[best][0])
    linears = [n for n in graph.nodes if n.op == "linear"]
    ncls = int(linears[-1].attrs["out_features"]) if linears else None
    return graph, zoo.meta(best, ncls)


def _arch_id(name: str) -> str:
    """A zoo id as given (MindCV's ``seresnet50`` stays MindCV's), else an alias or timm name resolved."""
    from senet_hub import zoo

    return name if zoo.is_arch(name) else zoo.resolve_arch(name, prefer=PREFER)


def load(path: str | os.PathLike, arch: str | None = None) -> Any:
    """Read a Chainer ``.npz`` into a validated canonical Model (the stored graph, else the zoo's)."""
    from senet_hub import zoo
    from senet_hub.builders.chainer import GRAPH_KEY
    from senet_hub.graph import Model, validate

    path = os.fspath(path)
    with _Npz(path) as npz:
        stored = GRAPH_KEY in npz.files
        if stored:
            graph, meta = _stored_graph(npz)
            if arch is not None and _arch_id(arch) != meta.get("arch"):
                raise ModelError(
                    f"{path}: holds {meta.get('arch', 'a custom graph')}, not {arch} (its graph is stored in the "
                    "file); leave out --arch"
                )
        else:
            graph, meta = _recognise(npz, arch)
        present = [k for k in npz.files if k != GRAPH_KEY]
        keys = npz_keys(graph, dict.fromkeys(present))
        missing = [v for v in keys.values() if v not in npz.files]
        if missing:
            raise ModelError(
                f"{path}: no entry {missing[0]} ({len(missing)} parameters missing); the file does not hold this "
                "graph's weights: rewrite it with senet-hub convert --to chainer"
            )
        used = set(keys.values())
        extra = [k for k in present if k not in used and k.rsplit("/", 1)[-1] not in IGNORED]
        if extra:
            raise ModelError(
                f"{path}: {len(extra)} entries no node of the graph uses, first: {extra[0]}; the file does not hold "
                "this graph's weights"
            )
        arrays = {k: npz.array(v) for k, v in keys.items()}
    try:
        shapes = zoo.graph_param_shapes(graph)
    except (KeyError, ValueError, TypeError, IndexError) as e:  # a hand-edited graph entry
        raise ModelError(f"{path}: the stored graph is inconsistent: {_first_line(e)}") from None
    weights: dict[str, np.ndarray] = {}
    for k, a in arrays.items():
        if a.dtype.kind != "f":
            raise ModelError(f"{path}: {keys[k]} has dtype {a.dtype}, expected a floating-point array")
        want = tuple(shapes[k])
        if a.size != int(np.prod(want)):
            raise ModelError(f"{path}: {keys[k]} has shape {a.shape}, expected {want} for {k}")
        weights[k] = a.astype(np.float32, copy=False).reshape(want)  # L.Linear's W: (out, in) as canonical
    meta = {
        **meta,
        "source_format": "chainer",
        "source_container": "npz" if stored else "npz (no senet-hub graph; recognised)",
        "source_files": {"npz": os.path.basename(path)},
        "source_paths": {"npz": os.path.abspath(path)},
    }
    model = Model(graph, weights, meta)
    validate(model)
    return model
