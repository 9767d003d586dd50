"""Chainer: ``SENetChain``, one generic ``chainer.Chain`` built from a canonical Graph.

Links mirror the canonical dotted names as nested Chains, so ``layer1.0.conv1`` is
``chain.layer1['0'].conv1`` (also ``chain['layer1.0.conv1']``) and its weight is saved as
``layer1/0/conv1/W`` by ``chainer.serializers.save_npz``. A name part that would shadow a Chain
attribute (or collide with another link) gets a trailing ``_``. Only conv (L.Convolution2D with
``groups``, ``dilate``), batch_norm (L.BatchNormalization with the node's ``eps`` — Chainer's
default is 2e-5 —, use_gamma, use_beta) and linear (L.Linear) carry parameters; the other ops are
functions in ``forward``:

- conv: asymmetric pads -> ``F.pad`` (zeros) and the link with pad 0.
- max_pool: ``F.max_pooling_2d(cover_all=ceil)`` with the node's pad when the pads are symmetric
  and Chainer's output size equals graph.pool_out. Chainer's ``cover_all`` has no Caffe clip rule,
  so otherwise (clip case, asymmetric pads) the input is padded explicitly with -inf (or cropped)
  to exactly the canonical windows and pooled with pad 0, ``cover_all=False``.
- avg_pool: ``F.average_pooling_2d`` divides by k*k including padding and has no ceil mode. It is
  used as is where that equals the canonical divisor (count_include_pad, symmetric pads, floor
  size); otherwise the input is zero-padded to the canonical windows and the result multiplied by
  k*k / the canonical divisor map.
- global_avg_pool -> F.mean; axpy -> F.scale(x, a, axis=0) + y; channel_scale -> F.scale;
  concat -> F.concat; reshape -> F.reshape (Caffe 0 / -1 resolved from the input shape);
  linear -> L.Linear (flattens); softmax -> F.softmax(axis=1); dropout -> F.dropout (identity
  with ``train=False``); input_norm -> F.permutate + F.scale + F.bias with the node's constants.

``save(model, path)`` writes the ``save_npz`` layout plus one extra key, ``_senet_hub_graph``
(the graph and metadata as UTF-8 JSON), which ``chainer.serializers.load_npz`` ignores and
``load(None, path)`` uses to rebuild the Chain without any other file.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from ..errors import FormatError
from ..graph import Graph, Model, Node, _reshape_target, infer_shapes, output_shape, pool_out
from ..ops import pool_counts
from .compat import import_chainer, version_of

NAME = "chainer"
EXTRA = "chainer"
GRAPH_KEY = "_senet_hub_graph"

_PARAMS = {
    "conv": {"weight": "W", "bias": "b"},
    "linear": {"weight": "W", "bias": "b"},
    "batch_norm": {"weight": "gamma", "bias": "beta", "running_mean": "avg_mean", "running_var": "avg_var"},
}


def available() -> str | None:
    return version_of("chainer")


def _shapes(graph: Graph, input_shape: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
    shapes = {graph.input_name: tuple(input_shape or graph.input_shape)}
    for n in graph.nodes:
        shapes[n.name] = output_shape(n, [shapes[i] for i in n.inputs])
    return shapes


def _pads(a: dict) -> tuple[int, int, int, int]:
    return tuple(int(p) for p in a.get("pad", (0, 0, 0, 0)))  # type: ignore[return-value]


def _make_link(node: Node, in_shape: tuple[int, ...]) -> Any:
    import_chainer()
    import chainer.links as L

    a = node.attrs
    if node.op == "conv":
        pt, pl, pb, pr = _pads(a)
        pad = (pt, pl) if (pt, pl) == (pb, pr) else 0
        return L.Convolution2D(
            in_shape[1],
            int(a["out_channels"]),
            ksize=tuple(a["kernel"]),
            stride=tuple(a["stride"]),
            pad=pad,
            nobias=not a.get("bias", True),
            dilate=tuple(a.get("dilation", (1, 1))),
            groups=int(a.get("groups", 1)),
        )
    if node.op == "batch_norm":
        return L.BatchNormalization(in_shape[1], eps=float(a["eps"]), use_gamma=True, use_beta=True)
    if node.op == "linear":
        return L.Linear(int(np.prod(in_shape[1:])), int(a["out_features"]), nobias=not a.get("bias", True))
    raise ValueError(node.op)


def _pool(F: Any, x: Any, a: dict, is_max: bool) -> Any:
    """Pooling with graph.pool_out's windows and divisors (see the module docstring)."""
    from chainer.utils.conv import get_conv_outsize

    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    pt, pl, pb, pr = _pads(a)
    ceil = bool(a.get("ceil", False))
    inc = bool(a.get("count_include_pad", True))
    h, w = x.shape[2:4]
    ho, wo = pool_out(h, kh, sh, pt, pb, ceil), pool_out(w, kw, sw, pl, pr, ceil)
    if (pt, pl) == (pb, pr):
        cover = ceil and is_max  # average pooling in Chainer is floor only
        native = (get_conv_outsize(h, kh, sh, pt, cover_all=cover), get_conv_outsize(w, kw, sw, pl, cover_all=cover))
        if native == (ho, wo) and (is_max or inc):
            if is_max:
                return F.max_pooling_2d(x, (kh, kw), (sh, sw), pad=(pt, pl), cover_all=ceil)
            return F.average_pooling_2d(x, (kh, kw), (sh, sw), pad=(pt, pl))
    # explicit: pad (or crop) so that exactly the canonical windows fit, then pool with pad 0
    eb, er = (ho - 1) * sh + kh - h - pt, (wo - 1) * sw + kw - w - pl
    if eb < 0 or er < 0:
        x = x[:, :, : h + min(eb, 0), : w + min(er, 0)]
    width = ((0, 0), (0, 0), (pt, max(eb, 0)), (pl, max(er, 0)))
    if any(width[2] + width[3]):
        x = F.pad(x, width, "constant", constant_values=-np.inf if is_max else 0.0)
    if is_max:
        return F.max_pooling_2d(x, (kh, kw), (sh, sw), pad=0, cover_all=False)
    y = F.average_pooling_2d(x, (kh, kw), (sh, sw), pad=0)
    count = np.outer(pool_counts(h, kh, sh, pt, pb, ho, inc), pool_counts(w, kw, sw, pl, pr, wo, inc))
    if (count == kh * kw).all():
        return y
    return F.scale(y, (kh * kw / count).astype(y.dtype), axis=2)


def _chain_class() -> type:
    chainer = import_chainer()

    class SENetChain(chainer.Chain):  # type: ignore[name-defined]  # chainer is imported lazily
        """A canonical SENet graph as a Chain: ``chain(x)`` is the graph output (NCHW float32)."""

        def __init__(self, graph: Graph, meta: dict | None = None) -> None:
            super().__init__()
            self._graph = graph
            self.meta = dict(meta or {})
            self._paths: dict[str, tuple[str, ...]] = {}
            shapes = _shapes(graph)
            with self.init_scope():
                for n in graph.nodes:
                    if n.op in _PARAMS:
                        self._place(n.name, _make_link(n, shapes[n.inputs[0]]))

        @property
        def graph(self) -> Graph:
            return self._graph

        def _place(self, name: str, link: Any) -> None:
            parts = [p.replace("/", "_") or "_" for p in name.split(".")]
            parent, path = self, []
            for i, part in enumerate(parts):
                leaf = i == len(parts) - 1
                while True:  # skip names that shadow attributes or hold the wrong kind of link
                    child = getattr(parent, part) if part in parent._children else None
                    if child is None and not hasattr(parent, part):
                        break
                    if child is not None and not leaf and isinstance(child, chainer.Chain):
                        break
                    part += "_"
                path.append(part)
                if leaf:
                    with parent.init_scope():
                        setattr(parent, part, link)
                elif child is None:
                    with parent.init_scope():
                        setattr(parent, part, chainer.Chain())
                parent = getattr(parent, part)
            self._paths[name] = tuple(path)

        def __getitem__(self, name: str) -> Any:
            """The link of canonical node ``name`` (conv, batch_norm, linear)."""
            link: Any = self
            for part in self._paths[name]:
                link = getattr(link, part)
            return link

        def load_weights(self, model: Model) -> None:
            """Copy a canonical Model's weights into the links."""
            for n in self._graph.nodes:
                link = self[n.name] if n.op in _PARAMS else None
                for p in n.param_names():
                    dst = getattr(link, _PARAMS[n.op][p])
                    arr = dst.array if hasattr(dst, "array") else dst
                    arr[...] = np.asarray(model.param(n.name, p), np.float32).reshape(arr.shape)

        def forward(self, x: Any, taps: bool = False) -> Any:
            import chainer.functions as F

            g = self._graph
            vals = {g.input_name: x}
            last_use: dict[str, int] = {}
            for i, n in enumerate(g.nodes):
                for v in n.inputs:
                    last_use[v] = i
            out = {}
            for i, n in enumerate(g.nodes):
                y = self._node(F, n, [vals[v] for v in n.inputs])
                vals[n.name] = y
                if taps:
                    out[n.name] = y
                else:
                    for v in n.inputs:
                        if last_use.get(v) == i and v != g.output:
                            vals.pop(v, None)
            return out if taps else vals[g.output]

        def _node(self, F: Any, n: Node, ins: list) -> Any:
            a, op, x = n.attrs, n.op, ins[0]
            if op in ("conv", "batch_norm", "linear"):
                if op == "conv":
                    pt, pl, pb, pr = _pads(a)
                    if (pt, pl) != (pb, pr):
                        x = F.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), "constant", constant_values=0.0)
                return self[n.name](x)
            if op == "relu":
                return F.relu(x)
            if op == "sigmoid":
                return F.sigmoid(x)
            if op in ("max_pool", "avg_pool"):
                return _pool(F, x, a, op == "max_pool")
            if op == "global_avg_pool":
                return F.mean(x, axis=(2, 3), keepdims=True)
            if op == "axpy":
                s = F.reshape(x, x.shape[:2])
                return F.scale(ins[1], s, axis=0) + ins[2]
            if op == "channel_scale":
                return F.scale(x, F.reshape(ins[1], x.shape[:2]), axis=0)
            if op == "add":
                return x + ins[1]
            if op == "concat":
                return F.concat(ins, axis=int(a.get("axis", 1)))
            if op == "reshape":
                return F.reshape(x, _reshape_target(tuple(x.shape), list(a["shape"])))
            if op == "flatten":
                return F.reshape(x, (x.shape[0], -1))
            if op == "softmax":
                return F.softmax(x, axis=1)
            if op == "dropout":
                ratio = float(a.get("ratio", 0.5))
                return F.dropout(x, ratio) if 0 < ratio < 1 else F.identity(x)
            if op == "input_norm":
                x = F.permutate(x, np.asarray(a["perm"], np.int32), axis=1)
                x = F.scale(x, np.asarray(a["scale"], x.dtype), axis=1)
                return F.bias(x, np.asarray(a["shift"], x.dtype), axis=1)
            raise NotImplementedError(op)

    SENetChain.__module__ = __name__
    SENetChain.__qualname__ = "SENetChain"
    return SENetChain


_CLASS: list[type] = []


def __getattr__(name: str) -> Any:
    """``SENetChain`` is created on first access, so importing this module imports no Chainer."""
    if name == "SENetChain":
        if not _CLASS:
            _CLASS.append(_chain_class())
        return _CLASS[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(model: Model) -> Any:
    """A SENetChain holding the model's weights (float32)."""
    infer_shapes(model)
    chain = __getattr__("SENetChain")(model.graph, model.meta)
    chain.load_weights(model)
    return chain


def run(native: Any, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Inference (``train=False``, no backprop graph): every node's output, or the graph output."""
    chainer = import_chainer()
    x = np.ascontiguousarray(x, np.float32)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        out = native.forward(x, taps=taps)
    if taps:
        return {k: np.asarray(v.array) for k, v in out.items()}
    return {native.graph.output: np.asarray(out.array)}


# ---------------------------------------------------------------------------------- save / load


def _graph_json(graph: Graph, meta: dict) -> str:
    nodes = [
        dict(name=n.name, op=n.op, inputs=list(n.inputs), attrs=n.attrs, source=list(n.source)) for n in graph.nodes
    ]
    doc = dict(
        format="senet-hub graph 1",
        input_name=graph.input_name,
        input_shape=list(graph.input_shape),
        output=graph.output,
        nodes=nodes,
        meta={k: v for k, v in meta.items() if k != "source_paths"},  # no local absolute paths in artifacts
    )
    return json.dumps(doc, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def _graph_from_json(text: str) -> tuple[Graph, dict]:
    doc = json.loads(text)
    nodes = [
        Node(d["name"], d["op"], list(d["inputs"]), dict(d["attrs"]), list(d.get("source", []))) for d in doc["nodes"]
    ]
    return Graph(nodes, doc["input_name"], tuple(doc["input_shape"]), doc["output"]), dict(doc.get("meta", {}))


def save(model: Model, path: str | os.PathLike, compression: bool = True, **_: Any) -> list[str]:
    """Write ``path`` (.npz, chainer.serializers layout + the graph) atomically."""
    from ..atomic import atomic_outputs, check_writable

    path = os.fspath(path)
    check_writable(path)
    chainer = import_chainer()
    chain = build(model)
    ser = chainer.serializers.DictionarySerializer()
    ser.save(chain)
    target = dict(sorted(ser.target.items()))  # Chain keeps children in a set: sort for stable bytes
    target[GRAPH_KEY] = np.frombuffer(_graph_json(model.graph, model.meta).encode("utf-8"), np.uint8)
    with atomic_outputs([path]) as (tmp,):
        _write_npz(tmp, target, compression)
    return [path]


def _write_npz(path: str, arrays: dict[str, np.ndarray], compression: bool) -> None:
    """np.savez with fixed zip timestamps (np.savez stamps the current time), so bytes are reproducible."""
    import zipfile

    mode = zipfile.ZIP_DEFLATED if compression else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = mode
            with zf.open(info, "w", force_zip64=True) as fid:
                np.lib.format.write_array(fid, np.asanyarray(arr), allow_pickle=False)


class _NoPickles:
    """The npz's arrays for NpzDeserializer, loaded with pickles refused (np.load(allow_pickle=False)).

    Chainer's own load_npz opens the file with allow_pickle=True, so an object array in a user's
    .npz runs whatever its pickle says when the entry is read; here reading it is a FormatError
    that names the entry. Entries never read (extra keys) are never unpickled either.
    """

    def __init__(self, npz: Any, path: str):
        self.npz, self.path = npz, path

    def __contains__(self, key: str) -> bool:
        return key in self.npz

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self.npz[key]
        except ValueError as e:
            if "allow_pickle" not in str(e):
                raise
            raise FormatError(
                f"{self.path}: entry '{key}' is a pickled object array; senet-hub never unpickles a user file: "
                "save the weights as numeric arrays (senet-hub convert --to chainer)"
            ) from None


def load(graph_or_model: Graph | Model | None, path: str | os.PathLike) -> Any:
    """A SENetChain for ``graph_or_model`` (None: the graph stored in the file) with the npz's weights.

    The file must be a regular file (a FIFO is refused, never waited on) and is read with pickles
    refused: an object array is a FormatError, never code run from the file.
    """
    from ..converters.wire import check_unchanged, open_regular

    chainer = import_chainer()
    path = os.fspath(path)
    meta: dict = {}
    f, st = open_regular(path, "Chainer npz")
    try:
        # an .npz is a zip: anything else (a .npy, a pickle, a text file) is refused by name,
        # before numpy guesses at it (it would call a text file "pickled data")
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            f.close()
            raise FormatError(
                f"{path}: not a Chainer .npz (zip) file; pass the .npz senet-hub convert --to chainer wrote"
            )
        f.seek(0)
        with f, np.load(f, allow_pickle=False) as z:
            npz = _NoPickles(z, path)
            if graph_or_model is None:
                if GRAPH_KEY not in z.files:
                    raise FormatError(f"{path}: no '{GRAPH_KEY}' entry; pass the graph (e.g. from the zoo) to load()")
                graph, meta = _graph_from_json(npz[GRAPH_KEY].tobytes().decode("utf-8"))
            elif isinstance(graph_or_model, Model):
                graph, meta = graph_or_model.graph, graph_or_model.meta
            else:
                graph = graph_or_model
            chain = __getattr__("SENetChain")(graph, meta)
            chainer.serializers.NpzDeserializer(npz, strict=True).load(chain)
            check_unchanged(path, f, st, "Chainer npz")
    except (KeyError, ValueError, TypeError, zipfile.BadZipFile, EOFError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{path}: not a Chainer npz for this graph: {msg}") from None
    return chain
