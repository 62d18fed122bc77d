"""The Fashion-MNIST IDX reader, the demo's IDX writer and subset carving, and locating the data."""

import os

import numpy as np
import pytest
import torch
from fmnist_support import idx_bytes, write_tiny_fmnist

from data_processing.datasets import FashionMNIST, build_dataset, read_idx
from experiments import fmnist_data
from ops import validate
from ops.errors import UsageError


@pytest.mark.parametrize("gz", [True, False])
def test_reader_shapes_labels_and_three_channels(tmp_path, gz):
    root = write_tiny_fmnist(str(tmp_path), n_train=30, n_test=12, gz=gz)
    train = FashionMNIST(root, "train")
    test = build_dataset("FashionMNIST", root, "val", None)
    assert len(train) == 30 and len(test) == 12
    img, label = train[13]
    assert img.mode == "RGB" and img.size == (28, 28) and label == 3
    arr = np.asarray(img)
    assert arr.shape == (28, 28, 3) and (arr[..., 0] == arr[..., 2]).all()
    assert arr[2 + 2 * 3 + 1, 10, 0] == 230  # the label-3 bar is where the writer put it
    assert [test[i][1] for i in range(12)] == [i % 10 for i in range(12)]
    assert train.classes[9] == "Ankle boot"


def test_reader_with_transform_gives_tensors(tmp_path):
    from data_processing.transforms import normalize
    root = write_tiny_fmnist(str(tmp_path), n_train=10, n_test=10)
    x, y = FashionMNIST(root, "test", transform=normalize())[4]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 28, 28) and y == 4


def test_bad_idx_files_raise_one_clear_error(tmp_path):
    bad = tmp_path / "x-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x03" + bytes(20))
    with pytest.raises(UsageError, match="not an unsigned-byte IDX"):
        read_idx(str(bad))
    short = tmp_path / "y-ubyte"
    short.write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-5])
    with pytest.raises(UsageError, match="truncated"):
        read_idx(str(short))
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST(str(tmp_path), "train")


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_writer_round_trips_through_the_reader(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9, 2], np.uint8)
    fmnist_data.write_idx(str(tmp_path / f"i{suffix}"), images)
    fmnist_data.write_idx(str(tmp_path / f"l{suffix}"), labels)
    assert np.array_equal(read_idx(str(tmp_path / f"i{suffix}")), images)
    assert np.array_equal(read_idx(str(tmp_path / f"l{suffix}")), labels)
    if not suffix:
        with open(tmp_path / "i", "rb") as f:
            assert f.read() == idx_bytes(images)


def test_carve_balances_classes_and_keeps_validation_apart(tmp_path):
    src = write_tiny_fmnist(str(tmp_path / "src"), n_train=200, n_test=50)
    folders = fmnist_data.carve(src, str(tmp_path / "out"), pretrain=60, bank=40, queries=20, seed=0,
                                validation=30, monitor=10)
    pre, bank = FashionMNIST(folders["pretrain"], "train"), FashionMNIST(folders["eval"], "train")
    val, queries, mon = (FashionMNIST(folders["val"], "test"), FashionMNIST(folders["eval"], "test"),
                         FashionMNIST(folders["monitor"], "test"))
    assert (len(pre), len(bank), len(val), len(queries), len(mon)) == (60, 40, 30, 20, 10)
    assert np.bincount(pre.targets, minlength=10).tolist() == [6] * 10
    assert np.bincount(queries.targets, minlength=10).tolist() == [2] * 10
    as_rows = lambda d: {d.images[i].tobytes() for i in range(len(d))}  # noqa: E731 - images are unique (noise)
    assert not as_rows(val) & (as_rows(pre) | as_rows(bank))
    assert as_rows(mon) <= as_rows(queries)
    src_test = FashionMNIST(src, "test")
    assert as_rows(queries) <= as_rows(src_test)


def test_locate_uses_the_flag_then_the_env_variable(tmp_path, monkeypatch):
    root = write_tiny_fmnist(str(tmp_path / "fm"), n_train=10, n_test=10)
    assert fmnist_data.locate(root, install=False) == root
    monkeypatch.setenv(fmnist_data.ENV_VAR, root)
    assert fmnist_data.locate(None, install=False) == root
    monkeypatch.setenv(fmnist_data.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="dataset-fashion-mnist"):
        fmnist_data.locate(None, install=False)


def test_locate_without_any_copy_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(fmnist_data.ENV_VAR, raising=False)
    monkeypatch.setattr(fmnist_data, "FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UsageError) as err:
        fmnist_data.locate(None, install=False)
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and fmnist_data.ENV_VAR in msg
    assert os.path.basename(str(tmp_path / "nowhere")) in msg


def test_default_data_folder_is_used_when_it_holds_the_files(tmp_path, monkeypatch):
    """--data data (the default) reads ./data when it has the IDX files, else the Debian package's folder."""
    monkeypatch.chdir(tmp_path)
    write_tiny_fmnist(str(tmp_path / "data"), n_train=30, n_test=10)
    assert len(build_dataset("FashionMNIST", validate.resolve_fashion_mnist("data"), "train", None)) == 30
    empty = tmp_path / "elsewhere"
    (empty / "data").mkdir(parents=True)
    monkeypatch.chdir(empty)
    monkeypatch.setattr(validate, "FASHION_MNIST_DIR", str(tmp_path / "data"))
    assert len(build_dataset("FashionMNIST", validate.resolve_fashion_mnist("data"), "val", None)) == 10
