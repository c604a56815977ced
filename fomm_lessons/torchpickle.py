"""What a ``torch.save`` pickle may hold, unpickled without torch and without running its code.

Pickles can run any function they name, so :class:`RestrictedUnpickler`
resolves a name only when it is in :data:`ALLOWED_GLOBALS`, and then to a small
function of this module (never to torch or to the named object itself).
Everything else raises :class:`UnsafeCheckpointError` naming the class before
anything is called. A pickle's own lengths are checked too before it is read:
an opcode can claim a string or a frame of a terabyte in nine bytes, and
CPython's unpickler (before 3.14) allocates what is claimed before it reads.
Tensors come out of the pickle as lazy views of their
storages; :func:`resolve` copies them into NumPy arrays once the storages'
bytes are read, checking every size against a :class:`Budget` first.
:mod:`fomm_lessons.torchfile` reads the two file layouts around this pickle.
"""

import collections
import io
import math
import pickle
import pickletools

import numpy as np


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


class Budget:
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


class Storage:
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
    if not isinstance(storage, Storage):
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


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS` and maps storages to arrays.

    ``load_storage(storage_type, key, ...)`` turns a persistent id into its :class:`Storage`
    (None for the layouts' small pickles, which hold no tensors); ``path`` names the file in errors.
    """

    def __init__(self, file, load_storage, path):
        super().__init__(file, encoding="utf-8")
        self._file = file
        self._load_storage = load_storage
        self._path = path

    def load(self):
        """Unpickle one object, after :func:`check_lengths` has walked its opcodes."""
        check_lengths(self._file, self._path)
        return super().load()

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


class _Bounded:
    """A read-only view of a seekable file that never reads (or allocates) past its end."""

    def __init__(self, file):
        self._file = file
        start = file.tell()
        self.end = file.seek(0, io.SEEK_END)
        file.seek(start)

    def left(self):
        return self.end - self._file.tell()

    def read(self, count=-1):
        return self._file.read(self.left() if count < 0 else min(count, self.left()))

    def readline(self):
        return self._file.readline(self.left())

    def tell(self):
        return self._file.tell()


def check_lengths(file, path):
    """Check that every length in the pickle starting at ``file``'s position fits in the file.

    Walks the opcodes up to STOP with ``pickletools.genops`` (which reads, and
    so checks, every counted string, bytes and long) through a reader that stops at
    the end of the file, and checks each FRAME's length (which genops does not
    read) against what is left. Nothing is unpickled; the position is restored.
    """
    start = file.tell()
    bounded = _Bounded(file)
    try:
        for opcode, argument, position in pickletools.genops(bounded):
            if opcode.name == "FRAME" and argument > bounded.left():
                raise ValueError(
                    f"a frame at byte {position} claims {argument} bytes, but only "
                    f"{bounded.left()} are left"
                )
    except ValueError as error:
        raise TorchFileError(f"{path}: not a readable pickle (truncated or corrupt?): {error}") from error
    finally:
        file.seek(start)


def resolve(value, budget, memo=None):
    """Replace every tensor of an unpickled ``value`` (inside dicts, lists and tuples) by its NumPy array.

    Each array is counted against ``budget`` before it is made; ``memo`` keeps shared objects shared.
    """
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, _LazyTensor):
        result = value.to_numpy(budget)
    elif isinstance(value, Storage):
        budget.take(value.array.nbytes, f"storage {value.key!r}")
        result = value.array.astype(value.array.dtype.newbyteorder("="))
    elif isinstance(value, dict):
        result = type(value)()
        memo[id(value)] = result
        for key, item in value.items():
            result[key] = resolve(item, budget, memo)
        for attribute, item in getattr(value, "__dict__", {}).items():
            setattr(result, attribute, resolve(item, budget, memo))  # e.g. a state_dict's _metadata
    elif isinstance(value, list):
        result = []
        memo[id(value)] = result
        result.extend(resolve(item, budget, memo) for item in value)
    elif isinstance(value, tuple):
        result = tuple(resolve(item, budget, memo) for item in value)
    else:
        result = value
    memo[id(value)] = result
    return result
