import numpy as np
import pytest
import torch

from cluster.config import DataConfig
from pretrain.data import DataError, load_data, plan_data
from tests.conftest import write_image_folder


def test_digits_split_is_stratified_fixed_and_disjoint():
    plan = plan_data(DataConfig())
    again = plan_data(DataConfig())
    assert plan.test == again.test
    assert not set(plan.pool) & set(plan.test)
    assert len(plan.pool) + len(plan.test) == 1797
    test_share = np.bincount(plan.test_labels) / np.bincount(np.concatenate([plan.pool_labels, plan.test_labels]))
    assert np.allclose(test_share, 0.3, atol=0.02)
    data = load_data(plan)
    assert data.pool.images.shape == (len(plan.pool), 1, 16, 16)
    assert data.pool.images.dtype.is_floating_point is False
    assert len(data.unlabeled) == len(data.pool)


def test_image_folder_with_test_split_and_extra_unlabeled(tmp_path):
    write_image_folder(tmp_path / "ds" / "train", {"a": 6, "b": 7})
    write_image_folder(tmp_path / "ds" / "test", {"a": 2, "b": 3})
    write_image_folder(tmp_path / "more" / "x" / "deep", {"u": 4})
    cfg = DataConfig(name="folder", path=str(tmp_path / "ds"), unlabeled_path=str(tmp_path / "more"), image_size=8)
    plan = plan_data(cfg)
    assert plan.classes == ("a", "b")
    assert plan.class_counts() == {"a": 6, "b": 7}
    data = load_data(plan)
    assert data.test.labels.tolist() == [0, 0, 1, 1, 1]
    assert data.pool.images.shape == (13, 3, 8, 8)
    assert len(data.unlabeled) == 13 + 4
    assert (data.unlabeled.labels == -1).all()
    assert len(data.mean) == 3


def test_folder_without_test_is_split_and_capped_per_class(tmp_path):
    write_image_folder(tmp_path, {"a": 20, "b": 20, "c": 20})
    plan = plan_data(DataConfig(name="folder", path=str(tmp_path), test_fraction=0.25, max_per_class=10))
    assert np.bincount(plan.test_labels).tolist() == [5, 5, 5]
    assert np.bincount(plan.pool_labels).tolist() == [10, 10, 10]


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    write_image_folder(tmp_path / "train", {"a": 5, "b": 5})
    write_image_folder(tmp_path / "test", {"a": 2, "b": 2})
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "train" / "b" / "empty.jpg").write_bytes(b"")
    data = load_data(plan_data(DataConfig(name="folder", path=str(tmp_path))))
    assert data.skipped == 2
    assert len(data.pool) == 10


def test_missing_path_and_empty_folder_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist: point it at an ImageFolder root"):
        plan_data(DataConfig(name="folder", path=str(tmp_path / "missing")))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found under"):
        plan_data(DataConfig(name="folder", path=str(tmp_path / "empty")))


def test_cifar10_copy_loads_as_image_folder(cifar_root):
    plan = plan_data(DataConfig(name="folder", path=str(cifar_root), max_per_class=20))
    assert len(plan.classes) == 10 and "cat" in plan.classes
    assert len(plan.test) == 10_000
    assert plan.class_counts()["cat"] == 20
    capped = plan_data(DataConfig(name="folder", path=str(cifar_root), max_per_class=20, max_test_per_class=30))
    assert np.bincount(capped.test_labels).tolist() == [30] * 10
    data = load_data(capped)
    assert data.pool.images.shape == (200, 3, 32, 32) and data.channels == 3
    extra = plan_data(
        DataConfig(name="folder", path=str(cifar_root), unlabeled_path=str(cifar_root / "train"), max_unlabeled=500)
    ).extra_unlabeled
    assert len(extra) == 500 and len({p.parent.name for p in extra}) == 10  # a sample, not the first folders


def _fake_cifar10(root, per_split=20):
    """CIFAR-10's python layout with random images (class c brighter in channel c % 3)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(name, n):
        labels = np.arange(n) % 10
        images = rng.integers(0, 100, (n, 3, 32, 32), dtype=np.uint8)
        images[np.arange(n), labels % 3] += 120
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(n, -1), "labels": labels.tolist()}, f)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_split)
    batch("test_batch", per_split)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)


def _fake_stl10(root, n=20, unlabeled=30):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", n), ("unlabeled", unlabeled)):
        rng.integers(0, 255, (count, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(count) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names))


def test_torchvision_cifar10_and_stl10_roots_load_offline(tmp_path, monkeypatch):
    import torchvision.datasets.cifar
    import torchvision.datasets.stl10

    # The fake files cannot match the official MD5 sums; everything after that check is real.
    for module in (torchvision.datasets.cifar, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)
    _fake_cifar10(tmp_path / "cifar")
    data = load_data(plan_data(DataConfig(name="cifar10", path=str(tmp_path / "cifar"))))
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    assert (len(data.pool), len(data.test), data.image_size, data.channels) == (100, 20, 32, 3)
    assert data.pool.labels.bincount().tolist() == [10] * 10

    gray = load_data(plan_data(DataConfig(name="cifar10", path=str(tmp_path / "cifar"), image_size=16, channels=1)))
    assert tuple(gray.pool.images.shape[1:]) == (1, 16, 16)

    _fake_stl10(tmp_path / "stl")
    stl = load_data(plan_data(DataConfig(name="stl10", path=str(tmp_path / "stl"), image_size=48, max_unlabeled=25)))
    assert (len(stl.pool), len(stl.test), stl.image_size) == (20, 20, 48)
    assert len(stl.unlabeled) == 20 + 25  # the labeled pool plus the capped unlabeled split


def test_online_knn_slice_is_a_stratified_split_of_the_pool_only():
    from pretrain.train import knn_subset

    data = load_data(plan_data(DataConfig()))
    knn = knn_subset(data, 200)
    assert len(knn["bank_labels"]) + len(knn["query_labels"]) == 200
    assert set(knn["bank_labels"]) == set(knn["query_labels"]) == set(range(10))
    assert knn["bank"].shape[1:] == (1, 16, 16) and knn["bank"].dtype == torch.float32
    assert knn_subset(data, 5) is None  # 10 classes cannot be stratified into 5 images
