"""The torch-free reader of torch.save files against torch.load itself."""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from fomm_lessons.torchfile import TorchFileError, UnsafeCheckpointError, read_torch_file

torch = pytest.importorskip("torch")


def _checkpoint_like():
    """A small FOMM-shaped checkpoint: state dicts, optimizer state, epoch, odd tensors."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-4, betas=(0.5, 0.999))
    network(torch.randn(2, 3, 6, 6)).square().mean().backward()
    optimizer.step()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    nested = collections.OrderedDict(inner=collections.OrderedDict(x=torch.ones(2, dtype=torch.int64)))
    return {
        "kp_detector": network.state_dict(),
        "optimizer_kp_detector": optimizer.state_dict(),
        "epoch": 12,
        "transposed": base.t(),  # non-contiguous: stride (1, 6)
        "slice": base[1:3, 2:5],  # a view with a storage offset, sharing base's storage
        "base": base,
        "half": torch.randn(5).half(),
        "long": torch.arange(-3, 4, dtype=torch.int64),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
        "nested": nested,
        "plain": [1, 2.5, "text", None, (3, 4)],
    }


def _assert_same(ours, theirs, where="root"):
    if isinstance(theirs, torch.Tensor):
        expected = theirs.detach().numpy()
        assert isinstance(ours, np.ndarray), where
        assert ours.dtype == expected.dtype and ours.shape == expected.shape, where
        np.testing.assert_array_equal(ours, expected, err_msg=where)
    elif isinstance(theirs, dict):
        assert type(ours) is type(theirs), where
        assert list(ours) == list(theirs), where
        for key in theirs:
            _assert_same(ours[key], theirs[key], f"{where}/{key}")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs)):
            _assert_same(a, b, f"{where}[{index}]")
    else:
        assert type(ours) is type(theirs) and ours == theirs, where


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_read_equals_torch_load(tmp_path, zipped):
    path = tmp_path / "model.pth.tar"
    torch.save(_checkpoint_like(), path, _use_new_zipfile_serialization=zipped)
    ours = read_torch_file(path)
    _assert_same(ours, torch.load(path, weights_only=False))
    assert ours["epoch"] == 12
    assert ours["optimizer_kp_detector"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert ours["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(ours["slice"], ours["base"][1:3, 2:5])
    assert "" in ours["kp_detector"]._metadata  # the state dict's version metadata survives


def test_bfloat16_is_widened_exactly(tmp_path):
    values = torch.randn(7).bfloat16()
    torch.save({"w": values}, tmp_path / "bf16.pth")
    ours = read_torch_file(tmp_path / "bf16.pth")["w"]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, values.float().numpy())


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_forbidden_global_is_refused_without_running_it(tmp_path, zipped):
    marker = tmp_path / "it-ran"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _RunsAShellCommand(marker)}, path,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeCheckpointError, match=r"system") as error:
        read_torch_file(path)
    assert str(path) in str(error.value)
    assert not marker.exists()


def test_plain_pickle_with_forbidden_global_is_refused(tmp_path):
    marker = tmp_path / "it-ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsAShellCommand(marker), protocol=2))
    with pytest.raises(TorchFileError, match="system"):
        read_torch_file(path)
    assert not marker.exists()


def test_pickled_module_is_refused_naming_its_class(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 3), path)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        read_torch_file(path)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_truncated_file_names_the_file(tmp_path, zipped):
    path = tmp_path / "cut.pth.tar"
    torch.save(_checkpoint_like(), path, _use_new_zipfile_serialization=zipped)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(TorchFileError) as error:
        read_torch_file(path)
    assert str(path) in str(error.value)
    assert "truncated" in str(error.value)


@pytest.mark.parametrize("keep_bytes", [6, 8], ids=["partial-element", "too-few-elements"])
def test_corrupt_storage_entry_names_the_file(tmp_path, keep_bytes):
    path = tmp_path / "good.pth"
    torch.save({"w": torch.arange(10, dtype=torch.float32)}, path)
    broken = tmp_path / "broken.pth"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:keep_bytes] if name.endswith("/data/0") else data)
    with pytest.raises(TorchFileError, match="broken.pth") as error:
        read_torch_file(broken)
    assert ("multiple of 4" if keep_bytes == 6 else "reaches past") in str(error.value)


def test_garbage_and_missing_files(tmp_path):
    """Many seeded random files: each one is a TorchFileError naming it, never another error."""
    garbage = tmp_path / "garbage.pth"
    generator = np.random.default_rng(0)
    for size in [1, 8, 64, 512] * 100:
        garbage.write_bytes(generator.bytes(size))
        with pytest.raises(TorchFileError, match="garbage.pth"):
            read_torch_file(garbage)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_torch_file(tmp_path / "nothing.pth")


_HUGE = 2**40  # a terabyte: more than any test machine can allocate
_CLAIMS = {  # a pickle opcode whose argument claims _HUGE bytes, then a few bytes of data
    "BINBYTES8": b"\x8e" + _HUGE.to_bytes(8, "little"),
    "BINUNICODE8": b"\x8d" + _HUGE.to_bytes(8, "little"),
    "BYTEARRAY8": b"\x96" + _HUGE.to_bytes(8, "little"),
    "FRAME": b"\x95" + _HUGE.to_bytes(8, "little"),
    "LONG4": b"\x8b" + (2**31 - 1).to_bytes(4, "little"),
    "BINUNICODE": b"X" + (2**32 - 1).to_bytes(4, "little"),
}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("opcode", sorted(_CLAIMS))
def test_a_pickle_that_claims_a_terabyte_is_refused_before_allocating(tmp_path, zipped, opcode):
    """Nine bytes of pickle claim 1 TiB; CPython's unpickler would allocate it (MemoryError)."""
    crafted = b"\x80\x05" + _CLAIMS[opcode] + b"abc."
    path = tmp_path / "claims.pth"
    if zipped:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("claims/data.pkl", crafted)
    else:
        path.write_bytes(crafted)
    assert _refused(path, r"not a readable pickle .*(bytes|data)") < 1_000_000


def _peak_bytes(function, *args, **kwargs):
    """Peak of the memory allocated (NumPy arrays included) while ``function`` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        function(*args, **kwargs)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused(path, match, **kwargs):
    """Read ``path`` expecting a TorchFileError that matches; return the peak bytes allocated."""
    def read():
        with pytest.raises(TorchFileError, match=match) as error:
            read_torch_file(path, **kwargs)
        assert str(path) in str(error.value)

    return _peak_bytes(read)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("shape", [(2000, 2000), (25000, 25000)])
def test_expanded_tensor_is_refused_before_allocating(tmp_path, zipped, shape):
    """A stride-0 view of one element: a 1.6 kB file that would become 16 MB, or 2.5 GB."""
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(*shape)}, path, _use_new_zipfile_serialization=zipped)
    assert path.stat().st_size < 2000
    assert torch.load(path, weights_only=True)["w"].stride() == (0, 0)  # torch keeps the view
    peak = _refused(path, rf"size \({shape[0]}, {shape[1]}\), stride \(0, 0\).* only 1: refusing")
    assert peak < 1_000_000


def test_storage_longer_than_the_file_is_refused_before_reading(tmp_path):
    """Legacy layout: the element count before a storage's bytes claims 1 GiB."""
    path = tmp_path / "claims.pth"
    torch.save({"w": torch.arange(10, dtype=torch.float32)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    at = len(data) - 10 * 4 - 8  # the int64 element count of the last (only) storage
    assert int.from_bytes(data[at:at + 8], "little") == 10
    data[at:at + 8] = (2**28).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    assert _refused(path, r"claims 268435456 elements .* only 40 bytes are left") < 1_000_000


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_size_bound_for_one_tensor_and_in_total_can_be_raised(tmp_path, zipped):
    path = tmp_path / "two.pth"
    tensors = {"a": torch.randn(75_000), "b": torch.randn(75_000)}  # 300 kB each
    torch.save(tensors, path, _use_new_zipfile_serialization=zipped)
    _refused(path, r"needs 300000 bytes, over the limit of 200000 bytes", max_bytes=200_000)
    _refused(path, r"needs 300000 bytes \(after 300000 bytes .*\), over the limit of 500000",
             max_bytes=500_000)
    ours = read_torch_file(path, max_bytes=600_000)
    for key, tensor in tensors.items():
        np.testing.assert_array_equal(ours[key], tensor.numpy())


def test_compressed_storage_is_bounded_before_inflating(tmp_path):
    """A zip entry deflated from 8 MB of zeros to a few kB is refused from its stated size."""
    plain, bomb = tmp_path / "plain.pth", tmp_path / "bomb.pth"
    torch.save({"w": torch.zeros(2_000_000)}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
    assert bomb.stat().st_size < 100_000
    assert _refused(bomb, r"storage '0' needs 8000000 bytes, over the limit", max_bytes=4_000_000) < 1_000_000
    assert read_torch_file(bomb)["w"].shape == (2_000_000,)  # within the default bound it reads
