"""Deterministic skops archives: one fitted model, one sequence of bytes.

`skops.io.dumps` is not canonical: every zip entry carries the time it was written, array files are
named after `id()` of the array (a memory address), `bytes` attributes after a random UUID, and every
node of `schema.json` records the `id()` of the object it came from. Two honest trainers of one spec
therefore fit equal models but publish different bytes, and a sha256 on chain cannot tell them apart
from a copier or a cheat. `canonical_dumps` rewrites skops' archive into a canonical one:

- node ids are numbered 1, 2, 3, ... in the order `schema.json` lists the nodes (no object identity
  is kept: skops uses the ids only to share one loaded object between equal references, and the
  fitted estimators of the allow-list hold no shared mutable state a prediction depends on);
- stored files are named by their order of first use (`00000001.npy`, ...), equal contents stored
  once; `.npz` members (sparse matrices) are rewritten the same way, since they are zips too;
- the padding bytes of structured arrays are zeroed: a decision tree's `nodes` array is a C struct
  of 57 bytes of fields in 64, and the other 7 are whatever the allocator left there, which numpy
  saves as they are (two fits of one tree differ there, and only there);
- the zip has fixed metadata (1980-01-01 00:00:00, mode 0644, Unix, stored without compression)
  and its entries sorted by name; `schema.json` is compact JSON in skops' own key order (which
  `DictNode.key_types` depends on).

Everything else, the node tree and the array bytes, is what skops wrote, so `skops.io.loads` reads
the result unchanged and the same model always gives the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import numpy as np

from ethml import safejson
from ethml.ml.loader import SCHEMA

_EPOCH = (1980, 1, 1, 0, 0, 0)


def canonical_dumps(model: Any) -> bytes:
    """The model as a canonical skops archive (see the module docstring)."""
    import skops.io as sio

    return canonicalize(sio.dumps(model))


def canonicalize(archive: bytes) -> bytes:
    """A skops archive rewritten into the canonical form; a canonical archive comes back unchanged."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        schema = safejson.loads(source.read(SCHEMA))  # (a trainer's archive: see ethml.safejson)
        renamer = _Renamer(source)
        _renumber(schema, renamer, iter(range(1, 2**62)), {})
        files = renamer.files
    files[SCHEMA] = json.dumps(schema, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    return write_zip(files)


def write_zip(files: dict[str, bytes]) -> bytes:
    """A zip of `files` with fixed metadata and sorted entries: equal inputs give equal bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, whatever platform wrote it
            info.external_attr = 0o100644 << 16
            archive.writestr(info, files[name])
    return out.getvalue()


class _Renamer:
    """Stored files renamed by first use; equal contents share one name."""

    def __init__(self, source: zipfile.ZipFile) -> None:
        self.source = source
        self.files: dict[str, bytes] = {}
        self._by_old: dict[str, str] = {}
        self._by_digest: dict[str, str] = {}

    def __call__(self, old: str) -> str:
        known = self._by_old.get(old)
        if known is not None:
            return known
        data = self.source.read(old)
        suffix = old.rsplit(".", 1)[1] if "." in old else "bin"
        if suffix == "npz":
            data = _canonical_npz(data)
        elif suffix == "npy":
            data = _without_padding(data)
        digest = hashlib.sha256(data).hexdigest()
        name = self._by_digest.get(digest)
        if name is None:
            name = f"{len(self._by_digest) + 1:08d}.{suffix}"
            self._by_digest[digest] = name
            self.files[name] = data
        self._by_old[old] = name
        return name


def _canonical_npz(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as inner:
        return write_zip({name: _without_padding(inner.read(name)) for name in inner.namelist()})


def _without_padding(data: bytes) -> bytes:
    """An .npy file with the padding bytes of its structured dtype zeroed (unchanged without any)."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    mask = _meaningful(array.dtype)
    if mask.all() or array.size == 0:
        return data
    array = np.array(array, copy=True, order="K")
    array.ravel(order="K").view(np.uint8).reshape(-1, array.dtype.itemsize)[:, ~mask] = 0
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def _meaningful(dtype: np.dtype[Any]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which bytes of one item of `dtype` belong to a field (False: padding)."""
    if dtype.fields is None:
        if dtype.subdtype is not None:
            base, shape = dtype.subdtype
            return np.tile(_meaningful(base), int(np.prod(shape)))
        return np.ones(dtype.itemsize, dtype=bool)
    mask = np.zeros(dtype.itemsize, dtype=bool)
    for field in dtype.fields.values():
        sub, offset = field[0], field[1]
        mask[offset : offset + sub.itemsize] |= _meaningful(sub)
    return mask


def _renumber(node: Any, rename: _Renamer, ids: Any, first: dict[Any, int]) -> None:
    """Depth-first, in the schema's own order: fresh ids, renamed files."""
    if isinstance(node, list):
        for item in node:
            _renumber(item, rename, ids, first)
        return
    if not isinstance(node, dict):
        return
    if "__loader__" in node and "__id__" in node:
        old = node["__id__"]
        if node["__loader__"] == "CachedNode":  # a reference to an earlier node: keep it pointing there
            if old not in first:
                raise ValueError(f"the archive refers to an unknown node id {old!r}")
            node["__id__"] = first[old]
        else:
            new = next(ids)
            first.setdefault(old, new)
            node["__id__"] = new
        if isinstance(node.get("file"), str):
            node["file"] = rename(node["file"])
    for key, value in node.items():
        if key != "__id__":
            _renumber(value, rename, ids, first)
