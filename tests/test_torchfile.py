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
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(TorchFileError, match="garbage.pth"):
        read_torch_file(garbage)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_torch_file(tmp_path / "nothing.pth")
