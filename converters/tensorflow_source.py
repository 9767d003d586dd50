"""Read back the TensorFlow files senet-hub writes: a Keras 3 ``.keras`` file or a SavedModel directory.

Neither format gives back the canonical graph without guessing (the Keras layers are a lowering:
padding layers, 1 x 1 max pools for a stride, Rescaling masks, Dense rows in NHWC flatten order; a
SavedModel holds a traced graph), so ``builders.tensorflow.save`` writes senet-hub's record beside
the weights, and this reader reads that record and the weights, nothing else:

- the record (``record()``): what ``converters.pth.metadata_record`` records (arch, input
  convention, class order, input_fold, source hashes) plus the layout, the container, the
  canonical graph and meta as builders.chainer's graph JSON (the one (de)serialisation senet-hub
  has), and ``keras_layers``: the name of the Keras layer holding each node's weights (a node's
  own layer, or for a conv Keras cannot stride and dilate at once, the stride-1 Conv2D before
  its 1 x 1 max pool). In a ``.keras`` (a zip) it is the member ``senet_hub.json``, which
  ``keras.models.load_model`` never reads; in a SavedModel it is ``assets.extra/senet_hub.json``,
  TensorFlow's place for files the graph does not use.
- ``.keras`` weights: ``model.weights.h5`` inside the zip, read with h5py (no TensorFlow). Keras
  stores a layer's variables as ``layers/<class>_<n>/vars/<i>`` (trainable, then non-trainable,
  in creation order) and names the layer in the ``vars`` group's ``name`` attribute.
- SavedModel weights: ``variables/variables.*`` via ``tf.train.load_checkpoint``; the checkpoint's
  object graph gives each variable's full name (``<layer>/<kernel|bias|gamma|...>``) and its key.

Each Keras variable maps back exactly (transposes only, float32 bits unchanged): conv kernels
HWIO (I per group) -> OIHW; Dense kernels (in, out) -> (out, in), and on a 4-D input the rows go
back from the H, W, C flatten order to C, H, W; BatchNormalization gamma, beta, moving mean and
variance are the canonical weight, bias, running_mean, running_var (epsilon is in the graph). An
input stage (``input_norm``) has no canonical weights: its attributes are in the graph, and the
Conv2D that holds a channel permutation in the file is checked against them.

A file without senet-hub's record is refused (exit 6): graphs of arbitrary Keras models are not recovered.
"""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, InputFileError, MissingFrameworkError, ModelError, UnsupportedError

RECORD_NAME = "senet_hub.json"
RECORD_DIR = "assets.extra"  # SavedModel: TensorFlow's directory for files the serving graph does not use
RECORD_FORMAT = "senet-hub"
RECORD_LIMIT = 64 << 20  # the graph of SENet-154 is well under 1 MB: a larger member is not a record
WEIGHTS_MEMBER = "model.weights.h5"
# canonical parameter -> Keras variable name, per op, in the order Keras creates (and a .keras stores) them
VARS = {
    "conv": {"weight": "kernel", "bias": "bias"},
    "linear": {"weight": "kernel", "bias": "bias"},
    "batch_norm": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"},
    "input_norm": {"weight": "kernel", "bias": "bias"},  # the Conv2D of a permuting stage (checked, not read)
}
NO_RECORD_FIX = (
    "recovering the graph of an arbitrary Keras model is not supported: convert the source model with senet-hub, "
    "or export the model to ONNX (e.g. tf2onnx) and read it with --from onnx"
)
# what a damaged zip, zlib stream or HDF5 file raises
_DAMAGED = (OSError, EOFError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# ------------------------------------------------------------------------------------ writing


def record(model: Any, layout: str, container: str, keras_layers: dict[str, str]) -> bytes:
    """The record ``builders.tensorflow.save`` embeds, as UTF-8 JSON bytes (see the module doc)."""
    from senet_hub.graph import graph_document

    from .pth import metadata_record

    doc = {
        **metadata_record(model),
        "container": container,
        "layout": layout,
        "keras_layers": dict(keras_layers),
        "graph": graph_document(model.graph, model.meta),
    }
    return json.dumps(doc, sort_keys=True, default=str).encode("utf-8")


def add_record(path: str, data: bytes) -> None:
    """Add the record to a written ``.keras`` file (a zip member) or SavedModel directory (assets.extra).

    Called on the temporary output, before its rename, so the final name never holds a file without it."""
    if os.path.isdir(path):
        os.makedirs(os.path.join(path, RECORD_DIR), exist_ok=True)
        with open(os.path.join(path, RECORD_DIR, RECORD_NAME), "wb") as f:
            f.write(data)
        return
    # stored like Keras' own members, with a fixed timestamp (the bytes depend on the model only)
    info = zipfile.ZipInfo(RECORD_NAME, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(info, data)


# ------------------------------------------------------------------------------------ reading


def _parse_record(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{where} is not JSON ({_first_line(e)}); rewrite the file with senet-hub") from None
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
        raise FormatError(f"{where} is not a senet-hub record; rewrite the file with senet-hub convert --to tensorflow")
    return doc


class _KerasFile:
    """An open ``.keras`` zip: the record, and each layer's float variables by the layer's name."""

    WHAT = "Keras file"

    def __init__(self, path: str):
        from .wire import open_regular

        self.path = path
        self._f, self._st = open_regular(path, self.WHAT)
        try:
            if self._f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise FormatError(
                    f"{path}: not a .keras (zip) file; pass the .keras senet-hub convert --to tensorflow wrote"
                )
            self._f.seek(0)
            self.zf = zipfile.ZipFile(self._f)
            self.names = set(self.zf.namelist())
        except FormatError:
            self._f.close()
            raise
        except _DAMAGED as e:
            self._f.close()
            raise FormatError(
                f"{path}: not a readable {self.WHAT} (truncated or corrupt zip: {_first_line(e)})"
            ) from None

    def __enter__(self) -> _KerasFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        from .wire import check_unchanged

        try:
            self.zf.close()
            if exc[0] is None:
                check_unchanged(self.path, self._f, self._st, self.WHAT)
        finally:
            self._f.close()

    def record(self) -> dict[str, Any] | None:
        if RECORD_NAME not in self.names:
            return None
        info = self.zf.getinfo(RECORD_NAME)
        if info.file_size > RECORD_LIMIT:
            raise FormatError(f"{self.path}: member {RECORD_NAME} is {info.file_size} bytes, not a senet-hub record")
        try:
            data = self.zf.read(info)
        except _DAMAGED as e:
            raise FormatError(f"{self.path}: member {RECORD_NAME} is unreadable ({_first_line(e)})") from None
        return _parse_record(data, f"{self.path}: member {RECORD_NAME}")

    def _member(self, name: str) -> Any:
        """A seekable reader of a member: a window on the file itself when it is stored (Keras stores
        its members uncompressed), so h5py's scattered reads neither copy the weights nor make
        zipfile re-read a stored member from its start on every backward seek (Python < 3.12)."""
        info = self.zf.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return self.zf.open(info)
        self._f.seek(info.header_offset)
        header = self._f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise FormatError(f"{self.path}: member {name} has no local header (truncated or corrupt zip)")
        start = (
            info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        )
        if start + info.file_size > self._st.st_size:
            raise FormatError(f"{self.path}: member {name} runs past the end of the file (truncated)")
        return _Window(self._f, start, info.file_size)

    def variables(self) -> dict[str, list[np.ndarray]]:
        """{Keras layer name: its float variables in stored order} from model.weights.h5."""
        try:
            import h5py
        except ImportError:
            raise MissingFrameworkError(
                "--from tensorflow --keras reads model.weights.h5 with h5py, which is not installed: pip install h5py "
                "(or pip install 'senet-hub[tensorflow]')"
            ) from None
        if WEIGHTS_MEMBER not in self.names:
            raise FormatError(f"{self.path}: no {WEIGHTS_MEMBER} member; not a Keras 3 .keras file")
        out: dict[str, list[np.ndarray]] = {}
        try:
            with self._member(WEIGHTS_MEMBER) as fp, h5py.File(fp, "r") as h5:
                layers = h5.get("layers")
                for group in layers.values() if layers is not None else ():
                    vs = group.get("vars")
                    if vs is None or not len(vs):
                        continue
                    name = vs.attrs.get("name")
                    if isinstance(name, bytes):
                        name = name.decode("utf-8", "replace")
                    if not isinstance(name, str):
                        # Keras versions before the name attribute: the layer cannot be told by its name
                        raise FormatError(
                            f"{self.path}: {WEIGHTS_MEMBER} does not name its layers (written by an older Keras 3); "
                            "load and re-save it with a current Keras, or rewrite it with senet-hub"
                        )
                    arrays = [np.asarray(vs[str(i)]) for i in range(len(vs)) if str(i) in vs]
                    if len(arrays) != len(vs):
                        raise FormatError(f"{self.path}: {WEIGHTS_MEMBER}: layer '{name}' has unnumbered variables")
                    out[name] = [a for a in arrays if a.dtype.kind == "f"]  # a seed generator's state is no weight
        except FormatError:
            raise
        except _DAMAGED as e:
            raise FormatError(
                f"{self.path}: {WEIGHTS_MEMBER} is not readable HDF5 (truncated or corrupt: {_first_line(e)})"
            ) from None
        return out


class _Window(io.RawIOBase):
    """Bytes [start, start + size) of an open file as a seekable read-only file."""

    def __init__(self, f: Any, start: int, size: int):
        super().__init__()
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        if not n:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n])
        self._pos += got
        return got


def _regular_dir(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: SavedModel directory not found; check the path") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot read the SavedModel: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        hint = "; pass a .keras file with --keras" if path.lower().endswith(".keras") else ""
        raise FormatError(f"{path}: is not a directory; a SavedModel is a directory (saved_model.pb, variables/){hint}")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise FormatError(f"{path}: no saved_model.pb; not a TensorFlow SavedModel directory")


def _savedmodel_record(path: str) -> dict[str, Any] | None:
    from .wire import read_bytes

    rec = os.path.join(path, RECORD_DIR, RECORD_NAME)
    if not os.path.lexists(rec):
        return None
    return _parse_record(bytes(read_bytes(rec, "senet-hub record", RECORD_LIMIT)), rec)


def _savedmodel_variables(path: str) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """({Keras layer name: {variable name: array}}, the checkpoint's files) of a SavedModel, via TensorFlow."""
    from senet_hub import builders

    builders.get("tensorflow")  # MissingFrameworkError naming the extra; TensorFlow imported quietly
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    where = os.path.join(path, "variables")
    try:
        reader = tf.train.load_checkpoint(os.path.join(where, "variables"))
        files = sorted(os.path.join(where, f) for f in os.listdir(where) if f.startswith("variables."))
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        out: dict[str, dict[str, np.ndarray]] = {}
        for node in graph.nodes:
            for a in node.attributes:
                if a.name != "VARIABLE_VALUE" or "/" not in a.full_name:
                    continue
                layer, var = a.full_name.rsplit("/", 1)
                value = np.asarray(reader.get_tensor(a.checkpoint_key))
                if value.dtype.kind == "f":
                    out.setdefault(layer, {})[var] = value
    except (tf.errors.OpError, OSError, ValueError, RuntimeError) as e:
        msg = getattr(e, "message", None) or str(e)
        raise FormatError(
            f"{path}: the SavedModel's variables are not readable ({_first_line(Exception(msg))}); "
            "the directory is incomplete or corrupt"
        ) from None
    return out, files


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The senet-hub record of a ``.keras`` file or SavedModel directory (None when it has none)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        _regular_dir(path)
        return _savedmodel_record(path)
    with _KerasFile(path) as kf:
        return kf.record()


def _graph_of(rec: dict[str, Any], where: str) -> tuple[Any, dict[str, Any], dict[str, str]]:
    from senet_hub.graph import read_graph

    fix = "rewrite the file with senet-hub convert --to tensorflow"
    graph, meta = read_graph(rec.get("graph"), f"{where}: the senet-hub record's graph", fix)
    layers = rec.get("keras_layers")
    if not isinstance(layers, dict):
        raise FormatError(f"{where}: the senet-hub record's keras_layers is not an object; {fix}")
    return graph, meta, {str(k): str(v) for k, v in layers.items()}


def _canonical(node: Any, param: str, a: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """A Keras variable as the canonical parameter (the writer's transposes undone; bits unchanged)."""
    if param != "weight" or node.op != "linear":  # batch norm as is, conv kernels HWIO -> OIHW
        return a.transpose(3, 2, 0, 1) if param == "weight" and node.op == "conv" and a.ndim == 4 else a
    w = a.T  # Dense (in, out) -> (out, in)
    if len(in_shape) == 4 and w.ndim == 2:  # rows were permuted from C, H, W to the NHWC flatten order
        _, c, h, wd = in_shape
        w = w.reshape(w.shape[0], h, wd, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
    return w


def _stage_constants(node: Any) -> list[np.ndarray]:
    """The kernel and bias builders.tensorflow gives a permuting input stage's 1 x 1 Conv2D."""
    perm = [int(p) for p in node.attrs["perm"]]
    ch = len(perm)
    kernel = np.zeros((1, 1, ch, ch), np.float32)
    kernel[0, 0, perm, np.arange(ch)] = np.asarray(node.attrs["scale"], np.float32)
    return [kernel, np.asarray(node.attrs["shift"], np.float32)]


def _assemble(
    path: str, rec: dict[str, Any], variable: Callable[[str, str, int], np.ndarray | None], held: dict[str, int]
) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """Graph, meta and canonical weights from the record and the file's variables.

    variable(layer, keras variable name, stored index) -> the array, or None when absent;
    held: {layer name: number of float variables} of every layer in the file that has any.
    """
    from senet_hub.ops import graph_shapes
    from senet_hub.zoo import graph_param_shapes

    graph, meta, layers = _graph_of(rec, path)
    try:
        shapes = graph_param_shapes(graph)
        values = graph_shapes(graph)
    except (KeyError, ValueError, TypeError, IndexError, ModelError) as e:
        raise ModelError(f"{path}: the graph in the senet-hub record is inconsistent: {_first_line(e)}") from None
    mismatch = "the record and the weights are not of the same model: rewrite the file with senet-hub"
    weights: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for n in graph.nodes:
        params = n.param_names()
        if not params and not (n.op == "input_norm" and n.name in layers):
            continue
        layer = layers.get(n.name)
        if layer is None:
            raise FormatError(f"{path}: the senet-hub record names no Keras layer for node '{n.name}'; {mismatch}")
        names = VARS[n.op]
        wanted = params if params else ["weight", "bias"]
        if held.get(layer, 0) != len(wanted):
            raise ModelError(
                f"{path}: Keras layer '{layer}' (node '{n.name}', {n.op}) holds {held.get(layer, 0)} variables, "
                f"expected {len(wanted)}; {mismatch}"
            )
        used.add(layer)
        got = []
        for i, p in enumerate(wanted):
            a = variable(layer, names[p], i)
            if a is None:
                raise ModelError(
                    f"{path}: Keras layer '{layer}' has no variable '{names[p]}' (node '{n.name}'); {mismatch}"
                )
            if a.dtype != np.float32:
                raise ModelError(
                    f"{path}: '{layer}/{names[p]}' is {a.dtype}, expected float32 (senet-hub writes float32)"
                )
            got.append(a)
        if not params:  # an input stage: the file's constants must be the graph's
            if not all(g.shape == s.shape and np.array_equal(g, s) for g, s in zip(got, _stage_constants(n))):
                raise ModelError(
                    f"{path}: Keras layer '{layer}' does not hold the input stage of node '{n.name}'; {mismatch}"
                )
            continue
        in_shape = tuple(values[n.inputs[0]])
        for p, a in zip(params, got):
            key = f"{n.name}.{p}"
            w = np.ascontiguousarray(_canonical(n, p, a, in_shape))
            if w.shape != tuple(shapes[key]):
                raise ModelError(
                    f"{path}: '{layer}/{names[p]}' has shape {a.shape}, which is not {tuple(shapes[key])} for {key} "
                    f"as the record's graph needs; {mismatch}"
                )
            weights[key] = w
    extra = sorted(set(held) - used)
    if extra:
        raise ModelError(
            f"{path}: {len(extra)} Keras layers with weights that no node of the graph uses, first: '{extra[0]}'; {mismatch}"
        )
    return graph, meta, weights


def load(
    keras: str | os.PathLike | None = None, saved_model: str | os.PathLike | None = None, arch: str | None = None
) -> Any:
    """Read a ``.keras`` file or SavedModel directory senet-hub wrote into a validated canonical Model
    (the ``--from tensorflow`` reader): graph and meta from its record, weights bit-identical."""
    from senet_hub.errors import SenetHubError
    from senet_hub.graph import Model, validate

    if bool(keras) == bool(saved_model):
        raise SenetHubError("--from tensorflow needs one of --keras FILE or --saved-model DIR")
    if keras:
        path = os.fspath(keras)
        with _KerasFile(path) as kf:
            rec = kf.record()
            if rec is None:
                raise UnsupportedError(f"{path}: has no senet-hub record ({RECORD_NAME}); {NO_RECORD_FIX}")
            stored = kf.variables()
        held = {k: len(v) for k, v in stored.items()}

        def variable(layer: str, name: str, index: int) -> np.ndarray | None:  # by stored index (h5 numbers them)
            vs = stored.get(layer, [])
            return vs[index] if index < len(vs) else None

        files = {"keras": path}
    else:
        path = os.fspath(saved_model).rstrip("/" + os.sep) or os.fspath(saved_model)  # type: ignore[arg-type]
        _regular_dir(path)
        rec = _savedmodel_record(path)
        if rec is None:
            raise UnsupportedError(f"{path}: has no senet-hub record ({RECORD_DIR}/{RECORD_NAME}); {NO_RECORD_FIX}")
        named, ckpt = _savedmodel_variables(path)
        held = {k: len(v) for k, v in named.items()}

        def variable(layer: str, name: str, index: int) -> np.ndarray | None:  # by name (the checkpoint's)
            return named.get(layer, {}).get(name)

        files = {"saved_model": os.path.join(path, "saved_model.pb")}
        shards = [f for f in ckpt if ".data-" in os.path.basename(f)]
        files.update(("variables_index", f) for f in ckpt if f.endswith(".index"))
        files.update({f"variables_data{i or ''}": f for i, f in enumerate(shards)})
    graph, meta, weights = _assemble(path, rec, variable, held)
    if arch is not None:
        from senet_hub import zoo

        want = arch if zoo.is_arch(arch) else zoo.resolve_arch(arch)
        if want != meta.get("arch"):
            raise ModelError(
                f"{path}: holds {meta.get('arch', 'a custom graph')}, not {arch} (its graph is stored in the file); leave out --arch"
            )
    # the hashes recorded are of the files this one was converted from: an output of this read records this file's
    meta = {k: v for k, v in meta.items() if k not in ("source_paths", "source_sha256", "source_files")}
    meta.update(
        source_format="tensorflow",
        source_container="keras" if keras else "savedmodel",
        source_files={k: os.path.basename(p) for k, p in files.items()},
        source_paths={k: os.path.abspath(p) for k, p in files.items()},
        tensorflow={"layout": rec.get("layout"), "written_by": f"senet-hub {rec.get('version')}"},
    )
    model = Model(graph, weights, meta)
    try:
        validate(model)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    return model
