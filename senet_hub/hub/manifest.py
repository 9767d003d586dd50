"""The weights manifest: which released SENet models exist, where their files live, how to feed them.

The manifest ships inside the package (``senet_hub/weights_manifest.yaml``); ``SENET_HUB_MANIFEST``
points at another file (a mirror's, or a test's). It is read with ``yaml.safe_load`` semantics
plus guards against hostile YAML: a size limit, a nesting limit, no recursive aliases, and a
limit on the size of the document once aliases are expanded ("billion laughs"). The aliases
the shipped file uses (shared input conventions and protocols) keep working.

Model lookup is case-insensitive and accepts aliases: ``SE-ResNet-50``, ``se-resnet-50``,
``se_resnet50`` (the Cadene/pretrainedmodels name) and ``legacy_seresnet50`` (timm) all name the
Caffe release's SE-ResNet-50; ``seresnet50`` is MindCV's retrained model.
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources
from typing import Any

import yaml

from ..errors import FormatError, InputFileError, SenetHubError

SCHEMA_VERSION = 1
ENV_MANIFEST = "SENET_HUB_MANIFEST"
MAX_BYTES = 256 << 10  # the shipped file is ~45 kB; PyYAML's pure-Python parser needs ~5 s per MB
MAX_DEPTH = 32
MAX_ALIASES = 1000
MAX_NODES = 200_000  # YAML nodes after expanding aliases

REQUIRED_MODEL_KEYS = (
    "id",
    "architecture",
    "source_format",
    "files",
    "published",
    "input_convention",
    "class_order",
    "license",
    "origin",
)
CLASS_ORDERS = ("senet", "ilsvrc2012")
# where a file's sha256 comes from when the manifest cannot state it: "x-linked-etag", the Hugging Face
# Hub's statement of an LFS file's sha256 (hub.download.hub_sha256)
SHA256_FROM = ("x-linked-etag",)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEXPREFIX = re.compile(r"^[0-9a-f]{8,63}$")


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses recursive aliases and documents nested too deep."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._open: set[str] = set()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases")
            if event.anchor in self._open:
                raise yaml.YAMLError(f"recursive alias *{event.anchor}")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels")
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open.discard(anchor)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Number of nodes once every alias is expanded (the composed graph is a DAG here)."""
    key = id(node)
    if key in memo:
        return memo[key]
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(c, memo) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = n
    if n > MAX_NODES:
        raise yaml.YAMLError(f"more than {MAX_NODES} nodes once aliases are expanded")
    return n


def safe_load_guarded(text: str) -> Any:
    """yaml.safe_load with limits on depth, aliases and expanded size; raises yaml.YAMLError."""
    loader = _GuardedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {})
        return loader.construct_document(node)
    finally:
        loader.dispose()


def file_sources() -> list[str]:
    """The registered sources a manifest entry can name: those that read files (not the synthetic zoo)."""
    from .. import formats

    return [s.name for s in formats.sources() if any(o.file for o in s.options)]


def manifest_path() -> str:
    """The manifest in use: $SENET_HUB_MANIFEST, else the one shipped in the package."""
    return os.environ.get(ENV_MANIFEST) or str(resources.files("senet_hub.hub") / "weights_manifest.yaml")


def _read_packaged() -> bytes:
    ref = resources.files("senet_hub.hub") / "weights_manifest.yaml"
    try:
        return ref.read_bytes()
    except OSError as e:
        raise InputFileError(f"{ref}: the packaged manifest is unreadable ({e}); reinstall senet-hub") from None


def _read_file(path: str) -> bytes:
    """$SENET_HUB_MANIFEST's bytes: a regular file only (a FIFO would block forever), size-capped."""
    from ..converters.wire import check_unchanged, open_regular

    try:
        f, st = open_regular(path, "manifest")
    except InputFileError as e:  # the same line, plus where the path came from
        raise InputFileError(f"{e}; fix or unset {ENV_MANIFEST}") from None
    with f:
        if st.st_size > MAX_BYTES:
            raise FormatError(
                f"{path}: manifest is {st.st_size} bytes, over the {MAX_BYTES}-byte limit; check {ENV_MANIFEST}"
            )
        try:
            data = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise InputFileError(f"{path}: cannot read the manifest ({e.strerror or e}); fix {ENV_MANIFEST}") from None
        check_unchanged(path, f, st, "manifest")
    return data


def _decode(data: bytes, path: str) -> str:
    if len(data) > MAX_BYTES:
        raise FormatError(f"{path}: manifest is larger than the {MAX_BYTES}-byte limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: manifest is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _norm(name: str) -> str:
    """Lookup key: lower case, '-' as '_', no '_' between a letter and a digit (SE-ResNet-50 -> se_resnet50)."""
    return re.sub(r"(?<=[a-z])_(?=\d)", "", name.strip().lower().replace("-", "_"))


def _derived_aliases(m: dict) -> list[str]:
    out = [str(a) for a in m.get("aliases") or []]
    for port in m.get("ports") or []:
        url = str(port.get("url", "")) if isinstance(port, dict) else ""
        base = url.rsplit("/", 1)[-1]
        stem = re.sub(r"-[0-9a-f]{8}\.\w+$", "", base)
        if stem and stem != base:
            out.append(stem)  # Cadene / pretrainedmodels name, e.g. se_resnext50_32x4d
            out.append("legacy_" + stem.replace("se_", "se", 1))  # timm's legacy_* name
    return out


class Manifest:
    """A validated manifest. ``models`` keeps the file's order."""

    def __init__(self, data: dict, path: str) -> None:
        self.path = path
        self.data = data
        self.models: list[dict] = data["models"]
        idx: dict[str, dict] = {}
        for m in self.models:
            for k in {m["id"].lower(), _norm(m["id"])}:
                if k in idx and idx[k] is not m:
                    raise FormatError(
                        f"{path}: model ids '{idx[k]['id']}' and '{m['id']}' are the same name; rename one"
                    )
                idx[k] = m
        primary = set(idx)
        for m in self.models:
            m["aliases"] = sorted({a for a in _derived_aliases(m) if a.lower() != m["id"].lower()})
            for a in m["aliases"]:
                for k in {a.lower(), _norm(a)}:
                    if k in primary:
                        continue  # a model's own id wins over another model's alias
                    if k in idx and idx[k] is not m:
                        raise FormatError(
                            f"{path}: alias '{a}' names both '{idx[k]['id']}' and '{m['id']}'; remove one"
                        )
                    idx[k] = m
        self._index = idx

    def get(self, model_id: str) -> dict:
        m = self._index.get(str(model_id).strip().lower()) or self._index.get(_norm(str(model_id)))
        if m is None:
            import difflib

            close = difflib.get_close_matches(_norm(str(model_id)), [_norm(x["id"]) for x in self.models], n=3)
            names = [self._index[c]["id"] for c in close]
            hint = f"did you mean {', '.join(names)}? " if names else ""
            raise SenetHubError(
                f"unknown model '{model_id}'; {hint}known: {', '.join(x['id'] for x in self.models)} (see `senet-hub list`)"
            )
        return copy.deepcopy(m)

    def list_models(self) -> list[dict]:
        return copy.deepcopy(self.models)

    def ids(self) -> list[str]:
        return [m["id"] for m in self.models]


def _fail(path: str, where: str, what: str) -> FormatError:
    return FormatError(f"{path}: {where}: {what}; fix the manifest (schema: senet_hub/weights_manifest.yaml)")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_file(path: str, mid: str, role: str, f: Any) -> None:
    where = f"model '{mid}' file '{role}'"
    if not isinstance(f, dict):
        raise _fail(path, where, "must be a mapping")
    if "bundled" in f:
        name = f["bundled"]
        if not isinstance(name, str) or not _ID_RE.match(name):
            raise _fail(path, where, f"'bundled' must be a plain file name, got {name!r}")
        return
    for key in ("filename", "urls"):
        if key not in f:
            raise _fail(path, where, f"missing key '{key}' (or 'bundled')")
    name = f["filename"]
    if not isinstance(name, str) or not _ID_RE.match(name) or name.endswith(".sha256"):
        raise _fail(path, where, f"'filename' must be a plain file name, got {name!r}")
    for key in ("urls", "mirrors"):
        urls = f.get(key) or []
        if not isinstance(urls, list) or not all(isinstance(u, str) and re.match(r"^https?://", u) for u in urls):
            raise _fail(path, where, f"'{key}' must be a list of http(s) URLs")
    if not f["urls"]:
        raise _fail(path, where, "'urls' is empty")
    sha = f.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _HEX64.match(sha.lower())):
        raise _fail(path, where, f"'sha256' must be 64 hex digits or null, got {sha!r}")
    pre = f.get("sha256_prefix")
    if pre is not None and not (isinstance(pre, str) and _HEXPREFIX.match(pre.lower())):
        raise _fail(path, where, f"'sha256_prefix' must be 8 to 63 hex digits or null, got {pre!r}")
    src = f.get("sha256_from")
    if src is not None and src not in SHA256_FROM:
        raise _fail(path, where, f"'sha256_from' must be one of {', '.join(SHA256_FROM)} or absent, got {src!r}")
    if sha and pre and not sha.lower().startswith(pre.lower()):
        raise _fail(path, where, "'sha256' does not start with 'sha256_prefix'")
    size = f.get("size_mb")
    if size is not None and not (_is_num(size) and size > 0):
        raise _fail(path, where, f"'size_mb' must be a positive number, got {size!r}")


def _check_convention(path: str, mid: str, c: Any) -> None:
    where = f"model '{mid}' input_convention"
    if not isinstance(c, dict):
        raise _fail(path, where, "must be a mapping")
    for key in ("channel_order", "range", "mean", "std", "size"):
        if key not in c:
            raise _fail(path, where, f"missing key '{key}'")
    if str(c["channel_order"]).upper() not in ("RGB", "BGR"):
        raise _fail(path, where, f"channel_order must be RGB or BGR, got {c['channel_order']!r}")
    for key, n in (("range", 2), ("mean", 3), ("std", 3)):
        v = c[key]
        if not (isinstance(v, list) and len(v) == n and all(_is_num(x) for x in v)):
            raise _fail(path, where, f"'{key}' must be a list of {n} numbers, got {v!r}")
    if any(s == 0 for s in c["std"]) or c["range"][1] <= c["range"][0]:
        raise _fail(path, where, "std must be non-zero and range increasing")
    if not (isinstance(c["size"], int) and 8 <= c["size"] <= 4096):
        raise _fail(path, where, f"'size' must be an integer crop size, got {c['size']!r}")


def validate(data: Any, path: str) -> dict:
    """Check the structure; raise FormatError naming the key and model on the first problem."""
    if not isinstance(data, dict):
        raise _fail(path, "top level", "must be a mapping with schema_version and models")
    ver = data.get("schema_version")
    if ver is None:
        raise _fail(path, "top level", "missing key 'schema_version'")
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise _fail(path, "schema_version", f"must be an integer, got {ver!r}")
    if ver > SCHEMA_VERSION:
        raise FormatError(
            f"{path}: schema_version {ver} is newer than this senet-hub understands ({SCHEMA_VERSION}); upgrade senet-hub"
        )
    if ver < 1:
        raise _fail(path, "schema_version", f"unknown version {ver}")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise _fail(path, "top level", "'models' must be a non-empty list")
    seen: set[str] = set()
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise _fail(path, f"models[{i}]", "must be a mapping")
        mid = m.get("id")
        if not isinstance(mid, str) or not _ID_RE.match(mid):
            raise _fail(path, f"models[{i}]", f"missing or invalid key 'id' ({mid!r})")
        for key in REQUIRED_MODEL_KEYS:
            if key not in m or m[key] is None:
                raise _fail(path, f"model '{mid}'", f"missing key '{key}'")
        if mid.lower() in seen:
            raise _fail(path, f"model '{mid}'", "duplicate id")
        seen.add(mid.lower())
        readers = file_sources()
        if m["source_format"] not in readers:
            raise _fail(path, f"model '{mid}'", f"source_format must be one of {', '.join(readers)}")
        if m["class_order"] not in CLASS_ORDERS:
            raise _fail(path, f"model '{mid}'", f"class_order must be one of {', '.join(CLASS_ORDERS)}")
        files = m["files"]
        if not isinstance(files, dict) or not files:
            raise _fail(path, f"model '{mid}'", "'files' must be a non-empty mapping of role -> file")
        for role, f in files.items():
            if not isinstance(role, str) or not _ID_RE.match(role):
                raise _fail(path, f"model '{mid}'", f"invalid file role {role!r}")
            _check_file(path, mid, role, f)
        pub = m["published"]
        if not isinstance(pub, dict) or pub.get("metric") not in ("error", "accuracy"):
            raise _fail(path, f"model '{mid}' published", "'metric' must be 'error' or 'accuracy'")
        for key in ("top1", "top5"):
            if not _is_num(pub.get(key)):
                raise _fail(path, f"model '{mid}' published", f"'{key}' must be a number")
        _check_convention(path, mid, m["input_convention"])
        t = m.get("timm")
        if t is not None and not (
            isinstance(t, dict) and isinstance(t.get("model"), str) and isinstance(t.get("tag"), str)
        ):
            raise _fail(path, f"model '{mid}'", "'timm' must be a mapping with 'model' and 'tag' (timm's names)")
        aliases = m.get("aliases")
        if aliases is not None and not (isinstance(aliases, list) and all(isinstance(a, str) for a in aliases)):
            raise _fail(path, f"model '{mid}'", "'aliases' must be a list of names")
    return data


_CACHE: dict[tuple[str, int, int], Manifest] = {}


def load(path: str | os.PathLike | None = None) -> Manifest:
    """The validated manifest: `path`, else $SENET_HUB_MANIFEST, else the one shipped in the package."""
    path = os.fspath(path) if path is not None else os.environ.get(ENV_MANIFEST) or None
    if path is None:
        key, where = ("<packaged>", 0, 0), manifest_path()
    else:
        try:
            st = os.stat(path)
            key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
        except OSError:
            key = (os.path.abspath(path), -1, -1)
        where = path
    if key in _CACHE:
        return _CACHE[key]
    text = _decode(_read_packaged() if path is None else _read_file(path), where)
    try:
        data = safe_load_guarded(text)
    except yaml.YAMLError as e:
        raise FormatError(f"{where}: not a valid manifest: {' '.join(str(e).split())}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer past Python's 4300-digit limit
        raise FormatError(f"{where}: not a valid manifest: {' '.join(str(e).split())[:200]}") from None
    man = Manifest(validate(data, where), where)
    _CACHE[key] = man
    return man


def get(model_id: str) -> dict:
    """One model's entry (a copy); case-insensitive, aliases accepted; unknown ids raise SenetHubError."""
    return load().get(model_id)


def list_models() -> list[dict]:
    """All models, in the manifest's order (copies)."""
    return load().list_models()


def published_accuracy(entry: dict) -> dict[str, float]:
    """Published top-1/top-5 as accuracy in % (Caffe's release states error)."""
    pub = entry["published"]
    if pub["metric"] == "error":
        return {"top1": round(100.0 - pub["top1"], 4), "top5": round(100.0 - pub["top5"], 4)}
    return {"top1": float(pub["top1"]), "top5": float(pub["top5"])}
