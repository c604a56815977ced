"""Read files written by ``torch.save`` without torch and without running pickled code.

A ``.pth`` / ``.pth.tar`` file is a pickle whose tensors point at raw storages.
Two layouts exist:

* the zip layout (torch >= 1.6): ``<root>/data.pkl`` holds the pickle,
  ``<root>/data/<key>`` the bytes of each storage, ``<root>/byteorder`` the
  byte order;
* the legacy layout (torch < 1.6, e.g. the published FOMM checkpoints): three
  small pickles (magic number, protocol version, system info), the object
  pickle, a pickle of the storage keys, then for each key an int64 element
  count followed by the storage's bytes.

Pickles can run any function they name, so the object pickle is read by
:class:`~fomm_lessons.torchpickle.RestrictedUnpickler`, which resolves a name
only when it is in :data:`ALLOWED_GLOBALS` (see :mod:`fomm_lessons.torchpickle`).
Everything else raises :class:`UnsafeCheckpointError` naming the class before
anything is called.

A few bytes of pickle can describe a huge tensor (a stride-0 view of one
element, a storage that claims more elements than the file holds, a
compressed zip entry), so sizes are checked before anything is allocated: a
tensor may not have more elements than its storage, and the storages read and
the arrays made may each take at most ``max_bytes`` (:data:`MAX_BYTES` unless
the caller raises it).
"""

import io
import os
import pickle
import struct
import zipfile

import numpy as np

from fomm_lessons.torchpickle import (ALLOWED_GLOBALS, Budget, RestrictedUnpickler, Storage, TorchFileError,
                                      UnsafeCheckpointError, resolve)

__all__ = ["read_torch_file", "TorchFileError", "UnsafeCheckpointError", "ALLOWED_GLOBALS", "MAX_BYTES"]

MAX_BYTES = 4 * 2**30  # default bound on the storages read, and on the arrays made, per file

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


def read_torch_file(path, max_bytes=MAX_BYTES):
    """Read a ``torch.save`` file into nested dicts/lists of NumPy arrays and plain values.

    Tensors and parameters become NumPy arrays (C-contiguous copies, native byte
    order; bfloat16 is widened to float32 exactly). Dicts keep their type
    (``OrderedDict`` stays ordered). Raises :class:`UnsafeCheckpointError` for
    any global outside :data:`ALLOWED_GLOBALS` and :class:`TorchFileError` for a
    truncated or corrupt file, both naming ``path``; a file whose storages, or
    whose arrays, would take more than ``max_bytes`` is refused before they are
    allocated, and so is a tensor with more elements than its storage.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path, max_bytes)
        with open(path, "rb") as file:
            head = file.read(4)
        if head[:4] == b"PK\x03\x04":
            raise TorchFileError(
                f"{path}: starts like a zip archive but has no zip directory: truncated or corrupt"
            )
        if _is_tar(path):
            raise TorchFileError(
                f"{path}: this is the tar layout of torch < 0.4, which is not supported without "
                "torch: load it with torch and re-save it with torch >= 1.6"
            )
        return _read_legacy(path, max_bytes)
    except TorchFileError as error:
        if path in str(error):
            raise
        raise type(error)(f"{path}: {error}") from error
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, struct.error,
            ValueError, TypeError, IndexError, AttributeError, RecursionError) as error:
        raise TorchFileError(
            f"{path}: not a readable torch.save file (truncated or corrupt?): "
            f"{type(error).__name__}: {error}"
        ) from error


def _is_tar(path):
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _read_zip(path, max_bytes):
    """The zip layout: one pickle, one zip entry per storage."""
    read_budget = Budget(path, max_bytes, "storages")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: expected one '<root>/data.pkl' in the zip, found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = archive.read(root + "byteorder").decode("ascii").strip()
        if byteorder not in ("little", "big"):
            raise TorchFileError(f"{path}: unknown byte order {byteorder!r}")
        storages = {}

        def load_storage(storage_type, key, location, numel, *unused):
            if key not in storages:
                storage = Storage(storage_type, key, numel)
                entry = archive.getinfo(f"{root}data/{key}")
                read_budget.take(entry.file_size, f"storage {key!r}")  # before inflating it
                raw = archive.read(entry)
                dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
                if len(raw) % dtype.itemsize:
                    raise TorchFileError(
                        f"{path}: storage {key!r} has {len(raw)} bytes, not a multiple of "
                        f"{dtype.itemsize} ({storage_type.name})"
                    )
                storage.array = np.frombuffer(raw, dtype=dtype)
                storages[key] = storage
            return storages[key]

        Budget(path, max_bytes, "pickle").take(archive.getinfo(pickles[0]).file_size, "the pickle")
        with archive.open(pickles[0]) as file:
            result = RestrictedUnpickler(io.BytesIO(file.read()), load_storage, path).load()
    return resolve(result, Budget(path, max_bytes, "arrays"))


def _read_legacy(path, max_bytes):
    """The legacy layout: magic, version, system info, the object, the keys, the storages."""
    read_budget = Budget(path, max_bytes, "storages")
    with open(path, "rb") as file:
        small = RestrictedUnpickler(file, None, path)
        magic = small.load()
        if magic != _LEGACY_MAGIC_NUMBER:
            raise TorchFileError(
                f"{path}: neither a zip archive nor a legacy torch.save file (magic number "
                f"{magic!r}); re-save it with torch >= 1.6 or load it with torch"
            )
        version = RestrictedUnpickler(file, None, path).load()
        if version != _LEGACY_PROTOCOL_VERSION:
            raise TorchFileError(f"{path}: unsupported legacy protocol version {version!r}")
        sys_info = RestrictedUnpickler(file, None, path).load()
        byteorder = "<" if sys_info.get("little_endian", True) else ">"
        storages, views = {}, []

        def load_storage(storage_type, root_key, location, numel, view_metadata=None):
            if root_key not in storages:
                storages[root_key] = Storage(storage_type, root_key, numel)
            root = storages[root_key]
            if view_metadata is None:
                return root
            view_key, offset, view_numel = view_metadata
            view = Storage(storage_type, view_key, view_numel)
            views.append((view, root, offset))
            return view

        result = RestrictedUnpickler(file, load_storage, path).load()
        keys = RestrictedUnpickler(file, None, path).load()
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise TorchFileError(f"{path}: storage {key!r} is stored but never used")
            dtype = storage.storage_type.dtype.newbyteorder(byteorder)
            (numel,) = struct.unpack(byteorder + "q", _read_exactly(file, 8, path))
            left = os.fstat(file.fileno()).st_size - file.tell()
            if not 0 <= numel * dtype.itemsize <= left:  # checked before reading (and allocating)
                raise TorchFileError(
                    f"{path}: storage {key!r} claims {numel} elements of {dtype.itemsize} bytes, "
                    f"but only {left} bytes are left in the file: truncated or corrupt"
                )
            read_budget.take(numel * dtype.itemsize, f"storage {key!r}")
            raw = _read_exactly(file, numel * dtype.itemsize, path)
            storage.array = np.frombuffer(raw, dtype=dtype)
        for view, root, offset in views:
            view.array = root.array[offset: offset + view.numel]
    missing = [key for key, storage in storages.items() if storage.array is None]
    if missing:
        raise TorchFileError(f"{path}: storages {missing} are used but not stored")
    return resolve(result, Budget(path, max_bytes, "arrays"))


def _read_exactly(file, count, path):
    data = file.read(count)
    if len(data) != count:
        raise TorchFileError(f"{path}: ends after {len(data)} of {count} bytes of a storage: truncated")
    return data

