"""Chainer: ``SENetChain``, one generic ``chainer.Chain`` built from a canonical Graph.

Two ``Lowerings`` tables driven by the shared walker (``ops.plan`` / ``ops.walk``), as in
mxnet.py: ``LINKS`` makes, once at construction, the link of each op that has parameters and
names the link attribute holding each canonical parameter; ``LOWER`` is the forward lowering,
``fn(ctx, step, inputs) -> Variable``. Attributes come typed (``step.attrs``, ``ops.attrs_of``),
with the vocabulary's defaults; a node whose op has no lowering is ``ops.MissingLowering``
naming the op and backend "chainer", raised when the Chain is made, before any forward.

Links mirror the canonical dotted names as nested Chains, so ``layer1.0.conv1`` is
``chain.layer1['0'].conv1`` (also ``chain['layer1.0.conv1']``) and its weight is saved as
``layer1/0/conv1/W`` by ``chainer.serializers.save_npz``. A name part that would shadow a Chain
attribute (or collide with another link) gets a trailing ``_``. Only conv (L.Convolution2D with
``groups``, ``dilate``; params W, b), batch_norm (L.BatchNormalization with the node's ``eps`` —
Chainer's default is 2e-5 —, use_gamma, use_beta; params gamma, beta, avg_mean, avg_var) and
linear (L.Linear; W, b) have links; the other ops are functions in ``forward``:

- conv: asymmetric pads -> ``F.pad`` (zeros) and the link with pad 0.
- max_pool: ``F.max_pooling_2d(cover_all=ceil)`` with the node's pad when the pads are symmetric
  and Chainer's output size equals the canonical one (``PoolAttrs.out_hw``). Chainer's
  ``cover_all`` has no Caffe clip rule, so otherwise (clip case, asymmetric pads) the input is
  padded explicitly with -inf (or cropped) to exactly the canonical windows
  (``PoolAttrs.extent_hw``) and pooled with pad 0, ``cover_all=False``.
- avg_pool: ``F.average_pooling_2d`` divides by k*k including padding and has no ceil mode. It is
  used as is where that equals the canonical divisor (count_include_pad, symmetric pads, floor
  size); otherwise the input is zero-padded to the canonical windows and the result multiplied by
  k*k / the canonical divisor map (``PoolAttrs.divisor``).
- global_avg_pool -> F.mean; axpy -> F.scale(x, a, axis=0) + y; channel_scale -> F.scale;
  concat -> F.concat; reshape -> F.reshape (Caffe 0 / -1 resolved by ``ops.reshape_target``);
  linear -> L.Linear (flattens); softmax -> F.softmax(axis=1); dropout -> F.dropout (identity
  with ``train=False``); input_norm -> F.permutate + F.scale + F.bias with the node's constants.

``save(model, path)`` writes the ``save_npz`` layout plus one extra key, ``_senet_hub_graph``
(the graph and metadata as UTF-8 JSON), which ``chainer.serializers.load_npz`` ignores and
``load(None, path)`` uses to rebuild the Chain without any other file.

Why this module is long: Chainer's pooling has neither 4-sided pads nor Caffe's clip rule and
divisors, so those lowerings carry explicit padding and rescaling; the npz save/load (with its
pickle refusal) shares the link naming defined here.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError
from ..graph import Graph, Model, graph_to_json, infer_shapes, read_graph
from ..ops import (
    BatchNormAttrs,
    ConcatAttrs,
    ConvAttrs,
    DropoutAttrs,
    InputNormAttrs,
    LinearAttrs,
    Lowerings,
    PoolAttrs,
    ReshapeAttrs,
    Shape,
    Step,
    dead_after,
    graph_shapes,
    plan,
    reshape_target,
    walk,
)
from .compat import import_chainer, version_of

NAME = "chainer"
EXTRA = "chainer"
GRAPH_KEY = "_senet_hub_graph"


def available() -> str | None:
    return version_of("chainer")


@dataclass
class _Ctx:
    """What a forward lowering needs besides its inputs: chainer.functions and the Chain's links."""

    F: Any
    chain: Any


# ``fn(step, input shape) -> (link, {canonical parameter: link attribute})``: ops with parameters only
LinkFn = Callable[[Step, Shape], tuple[Any, dict[str, str]]]
# ``fn(ctx, step, inputs) -> Variable``: every op
LowerFn = Callable[[_Ctx, Step, list[Any]], Any]
LINKS: Lowerings[LinkFn] = Lowerings("chainer")
LOWER: Lowerings[LowerFn] = Lowerings("chainer")


def _links() -> Any:
    import_chainer()  # the compat shim first: chainer.links imports chainer
    import chainer.links as L

    return L


def _symmetric(pad: tuple[int, int, int, int]) -> bool:
    """Pads Chainer's own conv / pooling can express: top == bottom and left == right."""
    pt, pl, pb, pr = pad
    return (pt, pl) == (pb, pr)


# ------------------------------------------------------------------------------------ links


@LINKS.register("conv")
def _conv_link(s: Step, x: Shape) -> tuple[Any, dict[str, str]]:
    a: ConvAttrs = s.attrs
    pt, pl, _, _ = a.pad
    link = _links().Convolution2D(
        x[1],
        a.out_channels,
        ksize=a.kernel,
        stride=a.stride,
        pad=(pt, pl) if _symmetric(a.pad) else 0,  # asymmetric: F.pad in the forward lowering
        nobias=not a.bias,
        dilate=a.dilation,
        groups=a.groups,
    )
    return link, {"weight": "W", "bias": "b"}


@LINKS.register("batch_norm")
def _bn_link(s: Step, x: Shape) -> tuple[Any, dict[str, str]]:
    a: BatchNormAttrs = s.attrs
    link = _links().BatchNormalization(x[1], eps=a.eps, use_gamma=True, use_beta=True)
    return link, {"weight": "gamma", "bias": "beta", "running_mean": "avg_mean", "running_var": "avg_var"}


@LINKS.register("linear")
def _linear_link(s: Step, x: Shape) -> tuple[Any, dict[str, str]]:
    a: LinearAttrs = s.attrs
    return _links().Linear(math.prod(x[1:]), a.out_features, nobias=not a.bias), {"weight": "W", "bias": "b"}


# ---------------------------------------------------------------------------- forward lowerings


@LOWER.register("conv")
def _conv(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    x, a = ins[0], s.attrs
    if not _symmetric(a.pad):
        pt, pl, pb, pr = a.pad
        x = c.F.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), "constant", constant_values=0.0)
    return c.chain[s.name](x)


@LOWER.register("batch_norm", "linear")
def _link(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.chain[s.name](ins[0])  # L.Linear flattens its input itself


@LOWER.register("relu")
def _relu(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.F.relu(ins[0])


@LOWER.register("sigmoid")
def _sigmoid(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.F.sigmoid(ins[0])


def _pool(F: Any, x: Any, a: PoolAttrs, is_max: bool) -> Any:
    """Pooling with the canonical windows and divisors (see the module docstring)."""
    from chainer.utils.conv import get_conv_outsize

    (kh, kw), (sh, sw), (pt, pl, _, _) = a.kernel, a.stride, a.pad
    h, w = x.shape[2:4]
    ho, wo = a.out_hw(h, w)
    if _symmetric(a.pad):
        cover = a.ceil and is_max  # average pooling in Chainer is floor only
        # Chainer's own output size: where it is the canonical one, its pooling is used as is
        native = (get_conv_outsize(h, kh, sh, pt, cover_all=cover), get_conv_outsize(w, kw, sw, pl, cover_all=cover))
        if native == (ho, wo) and (is_max or a.count_include_pad):
            if is_max:
                return F.max_pooling_2d(x, (kh, kw), (sh, sw), pad=(pt, pl), cover_all=a.ceil)
            return F.average_pooling_2d(x, (kh, kw), (sh, sw), pad=(pt, pl))
    # explicit: pad (or crop) so that exactly the canonical windows fit, then pool with pad 0
    eh, ew = a.extent_hw(h, w)
    eb, er = eh - h - pt, ew - w - pl
    if eb < 0 or er < 0:
        x = x[:, :, : h + min(eb, 0), : w + min(er, 0)]
    width = ((0, 0), (0, 0), (pt, max(eb, 0)), (pl, max(er, 0)))
    if any(width[2] + width[3]):
        x = F.pad(x, width, "constant", constant_values=-np.inf if is_max else 0.0)
    if is_max:
        return F.max_pooling_2d(x, (kh, kw), (sh, sw), pad=0, cover_all=False)
    y = F.average_pooling_2d(x, (kh, kw), (sh, sw), pad=0)  # sum / (kh * kw)
    count = a.divisor(h, w)
    if (count == kh * kw).all():
        return y
    return F.scale(y, (kh * kw / count).astype(y.dtype), axis=2)


@LOWER.register("max_pool")
def _max_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _pool(c.F, ins[0], s.attrs, True)


@LOWER.register("avg_pool")
def _avg_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _pool(c.F, ins[0], s.attrs, False)


@LOWER.register("global_avg_pool")
def _global_avg_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.F.mean(ins[0], axis=(2, 3), keepdims=True)


@LOWER.register("axpy")
def _axpy(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a, x, y = ins
    return c.F.scale(x, c.F.reshape(a, a.shape[:2]), axis=0) + y


@LOWER.register("channel_scale")
def _channel_scale(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    x, scale = ins
    return c.F.scale(x, c.F.reshape(scale, x.shape[:2]), axis=0)


@LOWER.register("add")
def _add(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return ins[0] + ins[1]


@LOWER.register("concat")
def _concat(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: ConcatAttrs = s.attrs
    return c.F.concat(ins, axis=a.axis)


@LOWER.register("reshape")
def _reshape(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: ReshapeAttrs = s.attrs
    return c.F.reshape(ins[0], reshape_target(tuple(ins[0].shape), a.shape))


@LOWER.register("flatten")
def _flatten(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.F.reshape(ins[0], (ins[0].shape[0], -1))


@LOWER.register("softmax")
def _softmax(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.F.softmax(ins[0], axis=1)


@LOWER.register("dropout")
def _dropout(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: DropoutAttrs = s.attrs
    # the identity with train=False; F.dropout refuses ratios outside (0, 1)
    return c.F.dropout(ins[0], a.ratio) if 0 < a.ratio < 1 else c.F.identity(ins[0])


@LOWER.register("input_norm")
def _input_norm(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: InputNormAttrs = s.attrs
    x = c.F.permutate(ins[0], np.asarray(a.perm, np.int32), axis=1)
    x = c.F.scale(x, np.asarray(a.scale, x.dtype), axis=1)
    return c.F.bias(x, np.asarray(a.shift, x.dtype), axis=1)


# ---------------------------------------------------------------------------------------- Chain


def link_paths(names: list[str], shadows: Callable[[tuple[str, ...], str], bool]) -> dict[str, tuple[str, ...]]:
    """The attribute path of each named link in a SENetChain (``layer1.0.conv1`` -> layer1, 0, conv1),
    placed in the order given; the npz key of a parameter is the path joined by ``/`` plus its attribute.

    A part is the name's dotted part (``/`` -> ``_``, empty -> ``_``); it gets a trailing ``_`` while it
    shadows an attribute of its parent (``shadows(parent path, part)``), is an existing leaf link, or is
    an existing nested Chain where the leaf goes. Pure, so a reader of the npz (converters.chainer_npz)
    names the keys without Chainer, with `shadows` answered from the file's keys.
    """
    kids: dict[tuple[str, ...], dict[str, bool]] = {}  # parent path -> child part -> is a nested Chain
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        parts = [p.replace("/", "_") or "_" for p in name.split(".")]
        path: tuple[str, ...] = ()
        for i, part in enumerate(parts):
            leaf = i == len(parts) - 1
            mine = kids.setdefault(path, {})
            while True:
                if part in mine:
                    if mine[part] and not leaf:  # an existing nested Chain: go into it
                        break
                elif not shadows(path, part):
                    mine[part] = not leaf
                    break
                part += "_"
            path += (part,)
        out[name] = path
    return out


def _chain_class() -> type:
    chainer = import_chainer()

    class SENetChain(chainer.Chain):  # type: ignore[name-defined]  # chainer is imported lazily
        """A canonical SENet graph as a Chain: ``chain(x)`` is the graph output (NCHW float32)."""

        def __init__(self, graph: Graph, meta: dict | None = None) -> None:
            super().__init__()
            # planned once: typed attributes and lowerings looked up here, not per forward; a
            # missing lowering fails here (MissingLowering), before any link is made
            steps = plan(graph, LOWER)
            self._graph = graph
            self.meta = dict(meta or {})
            # new attributes are prefixed: chainer.Link keeps its own (its _params is the parameter set)
            self._senet_steps = steps
            self._senet_dead = dead_after(graph)  # values freed after their last use when not tapping
            self._paths: dict[str, tuple[str, ...]] = {}
            self._senet_params: dict[str, dict[str, str]] = {}  # node -> canonical parameter -> link attribute
            shapes = graph_shapes(graph)
            plain = chainer.Chain()  # what a nested Chain has as attributes (the root: this Chain's own)
            self._paths = link_paths(
                [s.name for s in steps if s.op in LINKS],
                lambda parent, part: hasattr(plain if parent else self, part),
            )
            with self.init_scope():
                for s in steps:
                    if s.op in LINKS:
                        link, names = LINKS.get(s.op, s.name)(s, shapes[s.inputs[0]])
                        self._place(s.name, link)
                        self._senet_params[s.name] = names

        @property
        def graph(self) -> Graph:
            return self._graph

        def _place(self, name: str, link: Any) -> None:
            parent: Any = self
            *chains, leaf = self._paths[name]
            for part in chains:
                if part not in parent._children:
                    with parent.init_scope():
                        setattr(parent, part, chainer.Chain())
                parent = getattr(parent, part)
            with parent.init_scope():
                setattr(parent, leaf, link)

        def __getitem__(self, name: str) -> Any:
            """The link of canonical node ``name`` (conv, batch_norm, linear)."""
            link: Any = self
            for part in self._paths[name]:
                link = getattr(link, part)
            return link

        def load_weights(self, model: Model) -> None:
            """Copy a canonical Model's weights into the links."""
            for s in self._senet_steps:
                names = self._senet_params.get(s.name, {})
                for p in s.node.param_names():
                    dst = getattr(self[s.name], names[p])
                    arr = dst.array if hasattr(dst, "array") else dst
                    arr[...] = np.asarray(model.param(s.name, p), np.float32).reshape(arr.shape)

        def forward(self, x: Any, taps: bool = False) -> Any:
            import chainer.functions as F

            g = self._graph
            out = walk(g, self._senet_steps, _Ctx(F, self), x, taps=taps, dead=self._senet_dead)
            return out if taps else out[g.output]

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
    plan(model.graph, LOWER)  # a missing lowering fails here, before Chainer is imported
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


def save(model: Model, path: str | os.PathLike, compression: bool = True, **_: Any) -> list[str]:
    """Write ``path`` (.npz, chainer.serializers layout + the graph) atomically."""
    from ..atomic import atomic_outputs, check_writable

    path = os.fspath(path)
    check_writable(path)
    chain = build(model)  # a missing lowering fails first, before Chainer is imported
    chainer = import_chainer()
    ser = chainer.serializers.DictionarySerializer()
    ser.save(chain)
    target = dict(sorted(ser.target.items()))  # Chain keeps children in a set: sort for stable bytes
    target[GRAPH_KEY] = np.frombuffer(graph_to_json(model.graph, model.meta).encode("utf-8"), np.uint8)
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
                graph, meta = read_graph(
                    npz[GRAPH_KEY].tobytes().decode("utf-8"),
                    f"{path}: entry '{GRAPH_KEY}'",
                    "write it again with senet-hub",
                )
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
