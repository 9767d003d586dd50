"""PyTorch weights -> canonical Models, without torch and without running anybody's pickle.

Two containers, told apart by their bytes (a ``.bin`` may be either), read by ``pytorch_format``:
``torch.save`` zip archives (``.pth``/``.pt``/``.bin``, torch >= 1.6) through a restricted
unpickler that runs nothing (a pickle naming ``os.system`` or any class is refused, exit 4), and
``.safetensors`` through the ``safetensors`` library, and the legacy non-zip torch.save format (torch
< 1.6: Cadene's ports, the files timm serves as ``legacy_*``) through the same unpickler. A file
senet-hub wrote carries its record
(``<archive>/senet_hub.json`` of converters.pth, or ``__metadata__["senet_hub"]`` of a
safetensors header): architecture, input convention, class order.

Checkpoints wrap state_dicts: ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_state_dict":
...}`` are unwrapped, DataParallel's ``module.`` (and ``model.``, torch.compile's ``_orig_mod.``)
prefixes stripped, BatchNorm's ``num_batches_tracked`` dropped.

The architecture: ``--arch`` (a zoo id, alias or timm name: ``zoo.resolve_arch``), else the
recorded one, else the one zoo architecture whose canonical ``{key: shape}`` equals the file's
(converters.recognize; canonical keys are timm's/Cadene's module paths; timm's family first, then
Caffe's, when several fit). Recognition compares shapes only; tensors are materialised for the
chosen architecture's keys alone, so a crafted file cannot make hundreds of copies of one storage.
The meta (input convention, class order) is the record's, else timm's pretrained_cfg for the arch
(a Caffe arch's PyTorch weights are Cadene's port: RGB [0, 1], ImageNet mean/std, sorted synsets),
else the zoo's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from senet_hub.errors import FormatError, InputFileError, ModelError

from . import recognize

if TYPE_CHECKING:
    from senet_hub.graph import Model
from .pytorch_format import (
    LegacyArchive,
    TensorRef,
    TorchArchive,
    looks_like_safetensors,
    materialise,
    parse_safetensors,
)

# families tried first when several architectures fit a PyTorch file (zoo.resolve_arch's `prefer`):
# a timm model is what a PyTorch user's state_dict most likely is, then Cadene's ports (Caffe archs)
PREFER = ("timm", "caffe")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
PREFIXES = ("module.", "model.", "_orig_mod.")
METADATA_KEY = "senet_hub"  # safetensors __metadata__ key of the senet-hub record (JSON)

# ------------------------------------------------------------------------------------ reading files


def _record(text: Any, path: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as e:
        raise FormatError(f"{path}: unreadable senet-hub record ({e}); rewrite the file with senet-hub") from None
    return data if isinstance(data, dict) and data.get("format") == "senet-hub" else None


class StateDict:
    """A file's flat state_dict, open for reading: shapes known up front, arrays read on demand.

    Use as a context manager (the file stays open, so the arrays come from the file whose pickle
    was read; closing checks it was not changed meanwhile).

    record: the senet-hub record (converters.pth.metadata_record) when senet-hub wrote the file.
    ignored: entries that are no tensors of the state_dict (non-tensor values, num_batches_tracked).
    dtypes: each entry's dtype in the file ("bfloat16" for bfloat16, which is read as float32).
    """

    def __init__(self, path: str):
        from .wire import open_regular

        self.path = path
        self.record: dict[str, Any] | None = None
        self.ignored = 0
        self.dtypes: dict[str, str] = {}
        self.original: dict[str, str] = {}
        self._arc: TorchArchive | LegacyArchive | None = None
        self._cache: dict[str, np.ndarray] = {}
        self._f, self._st = open_regular(path, "PyTorch weights file")
        try:
            self._entries = self._open()
        except BaseException:
            self._f.close()
            raise

    def _open(self) -> dict[str, Any]:
        f, path = self._f, self.path
        if self._st.st_size == 0:
            raise FormatError(f"{path}: empty file, not a PyTorch weights file")
        head = f.read(16)
        f.seek(0)
        if head.startswith(b"PK\x03\x04"):
            self.kind = "pth"
            arc = self._arc = TorchArchive(f, self._st.st_size, path)
            obj = arc.load()
            self.record = self._pth_record(arc)
            entries = self._clean(_find_state_dict(obj, path))
            self.dtypes = _ref_dtypes(entries)
            return entries
        if looks_like_safetensors(head, self._st.st_size):
            self.kind = "safetensors"
            try:
                data = f.read()
            except OSError as e:
                raise InputFileError(f"{path}: cannot read the PyTorch weights file: {e.strerror or e}") from None
            if len(data) != self._st.st_size:
                raise FormatError(f"{path}: the file changed while being read; try again")
            arrays, meta, dtypes = parse_safetensors(data, path)
            del data
            self.record = _record(meta.get(METADATA_KEY), path)
            entries = self._clean(arrays)
            self.dtypes = {k: dtypes[self.original[k]] for k in entries}
            return entries
        if path.lower().endswith(".safetensors"):
            n = int.from_bytes(head[:8].ljust(8, b"\x00"), "little")
            raise FormatError(
                f"{path}: not a valid safetensors file: its first 8 bytes declare a {n}-byte header, the file has "
                f"{self._st.st_size} bytes, and the header does not start with a JSON object (truncated or corrupt?)"
            )
        if head[:1] == b"\x80":  # a pickle: torch.save before 1.6 (or with _use_new_zipfile_serialization=False)
            self.kind = "pth-legacy"
            legacy = self._arc = LegacyArchive(f, self._st.st_size, path)
            entries = self._clean(_find_state_dict(legacy.load(), path))
            self.dtypes = _ref_dtypes(entries)
            return entries
        raise FormatError(
            f"{path}: not a PyTorch weights file (neither a torch.save zip archive nor safetensors; starts with "
            f"{head[:8]!r})"
        )

    def __enter__(self) -> StateDict:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(check=exc[0] is None)

    def close(self, check: bool = True) -> None:
        from .wire import check_unchanged

        if self._f.closed:
            return
        try:
            if check:
                check_unchanged(self.path, self._f, self._st, "PyTorch weights file")
        finally:
            if self._arc is not None:
                self._arc.close()
            self._f.close()

    def _pth_record(self, arc: TorchArchive) -> dict[str, Any] | None:
        from .pth import METADATA_LIMIT, METADATA_NAME

        name = arc.prefix + METADATA_NAME
        if name not in arc.zf.NameToInfo:
            return None
        try:
            return _record(arc.small(name, METADATA_LIMIT).decode("utf-8"), self.path)
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: unreadable {name} (not UTF-8); rewrite the file with senet-hub") from None

    def _clean(self, tensors: Mapping[Any, Any]) -> dict[str, Any]:
        """Tensor entries only, wrapper prefixes stripped, num_batches_tracked dropped."""
        out = {k: v for k, v in tensors.items() if isinstance(k, str) and isinstance(v, (TensorRef, np.ndarray))}
        keep = {k: v for k, v in out.items() if not k.endswith("num_batches_tracked")}
        self.ignored = len(tensors) - len(keep)
        self.original = {k: k for k in keep}  # stripped key -> the file's key
        stripped = True
        while keep and stripped:
            stripped = False
            for p in PREFIXES:
                if all(k.startswith(p) for k in keep):
                    keep = {k[len(p) :]: v for k, v in keep.items()}
                    self.original = {k[len(p) :]: o for k, o in self.original.items()}
                    stripped = True
        return keep

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._entries.items()}

    def keys(self) -> list[str]:
        return list(self._entries)

    def arrays(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The named tensors as numpy arrays (native byte order; bfloat16 as float32)."""
        if self._arc is None:
            return {k: self._entries[k] for k in keys}
        return {k: materialise(self._arc, self._entries[k], k, self._cache) for k in keys}


def _ref_dtypes(entries: Mapping[str, TensorRef]) -> dict[str, str]:
    """Each tensor's dtype as stored ("bfloat16" for bfloat16, which is read as float32)."""
    return {k: "bfloat16" if v.storage.stype.dtype == "bf16" else str(np.dtype(v.storage.stype.dtype))
            for k, v in entries.items()}  # fmt: skip


def _find_state_dict(obj: Any, path: str, depth: int = 0) -> Mapping[Any, Any]:
    """The dict of tensors in a checkpoint: the object itself, or under a wrapper key."""
    if isinstance(obj, dict):
        if any(isinstance(v, TensorRef) for v in obj.values()):
            return obj
        if depth < 3:
            for k in WRAPPER_KEYS:
                if isinstance(obj.get(k), dict):
                    return _find_state_dict(obj[k], path, depth + 1)
        keys = [str(k)[:40] for k in list(obj)[:6]]
        raise FormatError(
            f"{path}: holds no state_dict (no tensors at the top level or under {'/'.join(WRAPPER_KEYS)}; keys: "
            f"{', '.join(keys) or 'none'}); save model.state_dict() with torch.save"
        )
    raise FormatError(
        f"{path}: holds a {type(obj).__name__}, not a state_dict (a dict of tensors); save model.state_dict() "
        "with torch.save"
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a PyTorch weights file (wrappers, prefixes and num_batches_tracked removed)."""
    with StateDict(os.fspath(path)) as sd:
        return sd.arrays(sd.keys())


# ------------------------------------------------------------------------------------ architecture


def resolve_arch(name: str) -> str:
    """The zoo id of an --arch value: an id, an alias (legacy_seresnet50 -> SE-ResNet-50) or a timm
    name (seresnet50 -> timm/seresnet50, timm's family first: PREFER); zoo.ArchNameError (exit 2) else."""
    from senet_hub import zoo

    return zoo.resolve_arch(name, prefer=PREFER)


class _Expectations:
    """{canonical key: shape} of each zoo architecture with the file's head width (cached per file)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        self.shapes = shapes
        self.cache: dict[str, tuple[int | None, dict[str, tuple[int, ...]]]] = {}

    def num_classes(self, arch: str) -> int | None:
        return self.get_both(arch)[0]

    def __call__(self, arch: str) -> dict[str, tuple[int, ...]]:
        return self.get_both(arch)[1]

    def get_both(self, arch: str) -> tuple[int | None, dict[str, tuple[int, ...]]]:
        if arch not in self.cache:
            from senet_hub import zoo

            g = zoo.expand(arch)
            linears = [n.name for n in g.nodes if n.op == "linear"]
            w = self.shapes.get(f"{linears[-1]}.weight") if linears else None
            ncls = int(w[0]) if w is not None and len(w) == 2 else None
            described = zoo.description(arch).get("num_classes")
            if ncls is not None and ncls != described:
                g = zoo.expand(arch, ncls)
            self.cache[arch] = (ncls, zoo.graph_param_shapes(g))
        return self.cache[arch]


def _family(arch: str) -> str:
    from senet_hub import zoo

    return str(zoo.description(arch)["family"])


def recognise(sd: StateDict, arch: str | None) -> tuple[str, int | None]:
    """(zoo arch, head width) of the state_dict: `arch` checked, else recognised (ModelError otherwise)."""
    from senet_hub import zoo

    exp = _Expectations(sd.shapes)
    path = sd.path
    if arch is not None:
        arch = resolve_arch(arch)
        problems = recognize.mismatches(sd.shapes, exp(arch))
        if problems:
            scored = recognize.rank(sd.shapes, zoo.list_archs(), exp, _family, PREFER)
            fit, _ = recognize.choose(scored, _family, PREFER)
            hint = f" (it fits {fit}: pass --arch {fit} or leave --arch out)" if fit else ""
            raise ModelError(
                f"{path}: does not fit {arch}{hint}: {len(problems)} mismatches, first: {recognize.summary(problems, 3)}"
            )
        return arch, exp.num_classes(arch)
    recorded = (sd.record or {}).get("arch")
    if isinstance(recorded, str) and zoo.is_arch(recorded) and not recognize.mismatches(sd.shapes, exp(recorded)):
        return recorded, exp.num_classes(recorded)  # senet-hub wrote it: the recorded arch, not a look-alike
    scored = recognize.rank(sd.shapes, zoo.list_archs(), exp, _family, PREFER)
    best, fits = recognize.choose(scored, _family, PREFER)
    if best is not None:
        return best, exp.num_classes(best)
    if fits:
        raise ModelError(f"{path}: fits several architectures ({', '.join(fits)}); pass --arch")
    closest, problems = scored[0]
    raise ModelError(
        f"{path}: not a state_dict of any zoo architecture; closest is {closest} with {len(problems)} "
        f"mismatches, first: {recognize.summary(problems, 3)}; pass --arch {closest} to see its full check"
    )


def _meta(arch: str, ncls: int | None, sd: StateDict) -> dict[str, Any]:
    """The Model meta: the file's senet-hub record where it has one, else the input and class order
    the PyTorch weights of `arch` are published for (timm's pretrained_cfg: for a Caffe arch that is
    Cadene's port, RGB in [0, 1] with ImageNet mean/std and sorted-synset classes, since Cadene
    refolded conv1 and permuted the classifier), else the zoo's."""
    from senet_hub import zoo

    if sd.record:  # written by senet-hub: its convention and class order, and how a stage was folded
        meta = zoo.meta(arch, ncls)
        for k in ("input_convention", "class_order", "input_fold"):
            if sd.record.get(k):
                meta[k] = sd.record[k]
        return meta
    name = zoo.timm_name(arch)
    if name is not None and zoo.pretrained_cfg(name) is not None:
        meta = zoo.timm_meta(name, num_classes=ncls)
        if _family(arch) == "caffe":
            # the file cannot say which input it takes: the PyTorch weights of these architectures are
            # Cadene's port (timm serves them as legacy_*); a user's own torch.save of a net trained on
            # Caffe's BGR 0-255 input would be read wrongly, so the assumption is said, not silent
            meta["reader_notes"] = [
                f"{os.path.basename(sd.path)} has no senet-hub record of its input: read as Cadene's port of the "
                f"Caffe release (timm {name}): RGB in [0, 1], ImageNet mean/std, sorted-synset classes"
            ]
        return meta
    return zoo.meta(arch, ncls)


def load(path: str | os.PathLike, arch: str | None = None) -> Model:
    """Read a PyTorch state_dict (.pth/.pt/.bin or .safetensors) into a validated canonical Model.

    Without `arch` the architecture is the recorded one (a senet-hub file), else the one zoo
    architecture whose keys and shapes the file has exactly (timm first, then Caffe/Cadene, on a tie).
    """
    from senet_hub import zoo
    from senet_hub.graph import Model, validate

    from . import pytorch_program

    path = os.fspath(path)
    if pytorch_program.is_program(path):  # a .pt2 / TorchScript .pt: senet-hub's record, or refused
        return pytorch_program.load(path, arch)
    with StateDict(path) as sd:
        arch, ncls = recognise(sd, arch)
        graph = zoo.expand(arch, ncls)
        keys = list(zoo.graph_param_shapes(graph))
        arrays = sd.arrays(keys)
    weights: dict[str, np.ndarray] = {}
    for k in keys:
        a = arrays[k]
        if a.dtype.kind != "f":
            raise ModelError(f"{path}: {k} has dtype {sd.dtypes[k]}, expected a floating-point tensor")
        weights[k] = a.astype(np.float32, copy=False)
    meta = {
        **_meta(arch, ncls, sd),
        "source_format": "pytorch",
        "source_container": sd.kind,
        "source_files": {"weights": os.path.basename(path)},
        "source_paths": {"weights": os.path.abspath(path)},
        "source_dtype": sorted({sd.dtypes[k] for k in keys}),
        "ignored_entries": sd.ignored + len(sd.keys()) - len(keys),
    }
    model = Model(graph, weights, meta)
    validate(model)
    return model
