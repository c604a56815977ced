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

Pickles can run any function they name, so ``_RestrictedUnpickler``
resolves a name only when it is in :data:`ALLOWED_GLOBALS`, and then to a small
function of this module (never to torch or to the named object itself).
Everything else raises :class:`UnsafeCheckpointError` naming the class before
anything is called.

A few bytes of pickle can describe a huge tensor (a stride-0 view of one
element, a storage that claims more elements than the file holds, a
compressed zip entry), so sizes are checked before anything is allocated: a
tensor may not have more elements than its storage, and the storages read and
the arrays made may each take at most ``max_bytes`` (:data:`MAX_BYTES` unless
the caller raises it).
"""

import collections
import io
import math
import os
import pickle
import struct
import zipfile

import numpy as np

__all__ = ["read_torch_file", "TorchFileError", "UnsafeCheckpointError", "ALLOWED_GLOBALS", "MAX_BYTES"]

MAX_BYTES = 4 * 2**30  # default bound on the storages read, and on the arrays made, per file

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> NumPy dtype of its elements (bfloat16 is read as uint16 bits).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
    "UntypedStorage": np.uint8,
}


class TorchFileError(ValueError):
    """A file that is not a readable ``torch.save`` file; the message names the file."""


class UnsafeCheckpointError(TorchFileError):
    """The pickle names a global that this reader refuses to load."""


class _Budget:
    """Bytes a reader may still allocate for one kind of thing (storages, or arrays)."""

    def __init__(self, path, max_bytes, kind):
        self.path, self.max_bytes, self.kind, self.used = path, max_bytes, kind, 0

    def take(self, nbytes, what):
        """Count ``nbytes`` for ``what``; refuse (before allocating) when over the bound."""
        if self.used + nbytes > self.max_bytes:
            total = "" if self.used == 0 else f" (after {self.used} bytes of {self.kind} already)"
            raise TorchFileError(
                f"{self.path}: {what} needs {nbytes} bytes{total}, over the limit of "
                f"{self.max_bytes} bytes of {self.kind} per file (raise it with max_bytes=)"
            )
        self.used += nbytes


class _StorageType:
    """Stands for a ``torch.*Storage`` class inside a persistent id; never callable."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    """A flat NumPy array of one storage's elements, filled when its bytes are read."""

    def __init__(self, storage_type, key, numel):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.array = None


class _LazyTensor:
    """A tensor waiting for its storage: (storage, offset, size, stride) in elements."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self, budget):
        """Copy the strided view out of the storage, checking it stays inside and fits ``budget``."""
        flat = self.storage.array
        dtype = self.storage.storage_type.name
        where = f"tensor of size {self.size}, stride {self.stride} and offset {self.offset}"
        if len(self.stride) != len(self.size) or not all(
                isinstance(n, int) and n >= 0 for n in (*self.size, *self.stride, self.offset)):
            raise TorchFileError(f"{where}: expected non-negative integers, a stride per dimension")
        numel = math.prod(self.size)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if numel and last >= flat.size:
            raise TorchFileError(
                f"{where} reaches past its {dtype} storage {self.storage.key!r} of "
                f"{flat.size} elements"
            )
        if numel > flat.size:  # a stride-0 (expanded) or overlapping view: more elements than stored
            raise TorchFileError(
                f"{where} has {numel} elements but its {dtype} storage {self.storage.key!r} "
                f"only {flat.size}: refusing to expand it"
            )
        itemsize = 4 if dtype == "BFloat16Storage" else flat.itemsize  # bfloat16 becomes float32
        budget.take(numel * itemsize, f"a {dtype} {where}")
        if numel == 0:
            out = np.empty(self.size, dtype=flat.dtype)
        else:
            view = np.lib.stride_tricks.as_strided(
                flat[self.offset:],
                shape=self.size,
                strides=[s * flat.itemsize for s in self.stride],
                writeable=False,
            )
            out = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C", copy=True)
        if dtype == "BFloat16Storage":  # bfloat16 is the upper half of a float32: widen exactly.
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


# --- the functions a whitelisted global resolves to -------------------------------------

def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"a tensor's first argument must be a storage, got {type(storage)}")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if not isinstance(new_type, _TensorTypeMarker):
        raise UnsafeCheckpointError(f"refusing to rebuild a tensor of type {new_type!r}")
    return func(*args)


class _TensorTypeMarker:
    """Stands for torch.Tensor / torch.nn.Parameter as a type argument; never callable."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


_TENSOR_TYPE = _TensorTypeMarker("torch.Tensor")
_PARAMETER_TYPE = _TensorTypeMarker("torch.nn.parameter.Parameter")


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError(f"refusing a NumPy scalar of dtype {dtype!r}")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"refusing the NumPy object dtype {name!r}")
    return dtype


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_TYPE,
    ("torch._tensor", "Tensor"): _TENSOR_TYPE,
    ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}
"""(module, name) -> what it becomes; plus the ``torch.<X>Storage`` markers of ``_STORAGE_DTYPES``."""


class _Global:
    """A whitelisted global as the pickle sees it: a fresh, attribute-free callable per lookup.

    Handing out wrappers (not our functions themselves) means a pickle's BUILD
    opcode cannot change attributes of this module's functions.
    """

    __slots__ = ("_function",)

    def __init__(self, function):
        self._function = function

    def __call__(self, *args, **kwargs):
        return self._function(*args, **kwargs)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and maps storages to arrays."""

    def __init__(self, file, load_storage, path):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage
        self._path = path

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            target = ALLOWED_GLOBALS[(module, name)]
            if isinstance(target, _TensorTypeMarker):
                return _TensorTypeMarker(target.name)
            return _Global(target)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"{self._path}: refused for safety: it holds objects other than tensors (the global "
            f"'{module}.{name}'); only tensors, parameters, (ordered) dicts, lists and plain "
            "Python values are read"
        )

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id or saved_id[0] != "storage":
            kind = saved_id[0] if isinstance(saved_id, tuple) and saved_id else saved_id
            raise UnsafeCheckpointError(
                f"{self._path}: refused for safety: it holds objects other than tensors (the "
                f"persistent object {kind!r}, a pickled nn.Module?): save the state_dict() instead"
            )
        storage_type = saved_id[1]
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self._path}: storage of unknown type {storage_type!r}")
        return self._load_storage(storage_type, *saved_id[2:])


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
    read_budget = _Budget(path, max_bytes, "storages")
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
                storage = _Storage(storage_type, key, numel)
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

        _Budget(path, max_bytes, "pickle").take(archive.getinfo(pickles[0]).file_size, "the pickle")
        with archive.open(pickles[0]) as file:
            result = _RestrictedUnpickler(io.BytesIO(file.read()), load_storage, path).load()
    return _resolve(result, _Budget(path, max_bytes, "arrays"))


def _read_legacy(path, max_bytes):
    """The legacy layout: magic, version, system info, the object, the keys, the storages."""
    read_budget = _Budget(path, max_bytes, "storages")
    with open(path, "rb") as file:
        small = _RestrictedUnpickler(file, None, path)
        magic = small.load()
        if magic != _LEGACY_MAGIC_NUMBER:
            raise TorchFileError(
                f"{path}: neither a zip archive nor a legacy torch.save file (magic number "
                f"{magic!r}); re-save it with torch >= 1.6 or load it with torch"
            )
        version = _RestrictedUnpickler(file, None, path).load()
        if version != _LEGACY_PROTOCOL_VERSION:
            raise TorchFileError(f"{path}: unsupported legacy protocol version {version!r}")
        sys_info = _RestrictedUnpickler(file, None, path).load()
        byteorder = "<" if sys_info.get("little_endian", True) else ">"
        storages, views = {}, []

        def load_storage(storage_type, root_key, location, numel, view_metadata=None):
            if root_key not in storages:
                storages[root_key] = _Storage(storage_type, root_key, numel)
            root = storages[root_key]
            if view_metadata is None:
                return root
            view_key, offset, view_numel = view_metadata
            view = _Storage(storage_type, view_key, view_numel)
            views.append((view, root, offset))
            return view

        result = _RestrictedUnpickler(file, load_storage, path).load()
        keys = _RestrictedUnpickler(file, None, path).load()
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
    return _resolve(result, _Budget(path, max_bytes, "arrays"))


def _read_exactly(file, count, path):
    data = file.read(count)
    if len(data) != count:
        raise TorchFileError(f"{path}: ends after {len(data)} of {count} bytes of a storage: truncated")
    return data


def _resolve(value, budget, memo=None):
    """Replace every :class:`_LazyTensor` inside dicts, lists and tuples by its array."""
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, _LazyTensor):
        result = value.to_numpy(budget)
    elif isinstance(value, _Storage):
        budget.take(value.array.nbytes, f"storage {value.key!r}")
        result = value.array.astype(value.array.dtype.newbyteorder("="))
    elif isinstance(value, dict):
        result = type(value)()
        memo[id(value)] = result
        for key, item in value.items():
            result[key] = _resolve(item, budget, memo)
        for attribute, item in getattr(value, "__dict__", {}).items():
            setattr(result, attribute, _resolve(item, budget, memo))  # e.g. a state_dict's _metadata
    elif isinstance(value, list):
        result = []
        memo[id(value)] = result
        result.extend(_resolve(item, budget, memo) for item in value)
    elif isinstance(value, tuple):
        result = tuple(_resolve(item, budget, memo) for item in value)
    else:
        result = value
    memo[id(value)] = result
    return result
