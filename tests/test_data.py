import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cluster.config import DataConfig
from finetune.budgets import BudgetError, check_budgets
from pretrain.data import DataError, load_data, plan_data, recorded_data, verification_record
from pretrain.images import ImageSource
from pretrain.manifest import POOL, TEST, UNLABELED
from tests.conftest import write_image_folder


def test_digits_split_is_stratified_fixed_and_disjoint():
    plan = plan_data(DataConfig())
    again = plan_data(DataConfig())
    assert plan.frame.equals(again.frame) and plan.digest == again.digest
    pool, test = plan.split(POOL), plan.split(TEST)
    assert not set(pool.item) & set(test.item)
    assert len(pool) + len(test) == 1797
    test_share = np.bincount(test.label) / np.bincount(np.concatenate([pool.label, test.label]))
    assert np.allclose(test_share, 0.3, atol=0.02)
    data = load_data(plan)
    assert data.source.read(data.items(POOL)[0]).shape == (1, 16, 16)
    assert data.pretraining_items == data.items(POOL)  # digits has no extra unlabeled images
    assert 0.2 < data.mean[0] < 0.4 and 0.2 < data.std[0] < 0.5
    assert data.skipped == data.leaked == 0


def test_image_folder_with_test_split_and_extra_unlabeled(tmp_path):
    write_image_folder(tmp_path / "ds" / "train", {"a": 6, "b": 7})
    write_image_folder(tmp_path / "ds" / "test", {"a": 2, "b": 3}, seed=1)
    write_image_folder(tmp_path / "more" / "x" / "deep", {"u": 4}, seed=2)
    cfg = DataConfig(
        name="folder",
        path=str(tmp_path / "ds"),
        unlabeled_path=str(tmp_path / "more"),
        image_size=8,
        min_test_per_class=0,  # 2 and 3 test images: too few to measure, enough to test the listing
    )
    plan = plan_data(cfg)
    assert plan.classes == ("a", "b")
    assert plan.class_counts() == {"a": 6, "b": 7}
    data = load_data(plan)
    assert data.labels(TEST).tolist() == [0, 0, 1, 1, 1]
    assert len(data.items(POOL)) == 13 and len(data.items(UNLABELED)) == 4
    assert len(data.pretraining_items) == 13 + 4
    assert (data.frame.label[data.frame.split == UNLABELED] == -1).all()
    images, ok = data.source.read_many(data.items(POOL))
    assert images.shape == (13, 3, 8, 8) and ok.all() and len(data.mean) == 3


def test_uri_and_local_path_list_the_same_files(tmp_path):
    write_image_folder(tmp_path / "ds", {"a": 4, "b": 4})
    local = plan_data(DataConfig(name="folder", path=str(tmp_path / "ds")))
    uri = plan_data(DataConfig(name="folder", path=f"file://{tmp_path / 'ds'}"))
    assert local.frame.item.tolist() == uri.frame.item.tolist()
    with pytest.raises(DataError, match="the URI scheme 'nosuch' cannot be read"):
        plan_data(DataConfig(name="folder", path="nosuch://bucket/images"))


def test_folder_without_test_is_split_and_capped_per_class(tmp_path):
    write_image_folder(tmp_path, {"a": 20, "b": 20, "c": 20})
    plan = plan_data(DataConfig(name="folder", path=str(tmp_path), test_fraction=0.25, max_per_class=10))
    assert np.bincount(plan.split(TEST).label).tolist() == [5, 5, 5]
    assert np.bincount(plan.split(POOL).label).tolist() == [10, 10, 10]


def test_corrupt_images_are_skipped_counted_and_budgets_see_what_decoded(tmp_path):
    write_image_folder(tmp_path / "train", {"a": 5, "b": 5})
    write_image_folder(tmp_path / "test", {"a": 2, "b": 2}, seed=1)
    for name in ("broken.png", "empty.jpg", "zz.png"):
        (tmp_path / "train" / "b" / name).write_bytes(b"not an image" if name != "empty.jpg" else b"")
    plan = plan_data(DataConfig(name="folder", path=str(tmp_path), min_test_per_class=0))
    assert plan.class_counts() == {"a": 5, "b": 8}  # listed
    data = load_data(plan)
    assert data.skipped == 3 and len(data.skipped_files) == 3
    assert data.class_counts() == {"a": 5, "b": 5}  # decoded
    check_budgets([5], plan.class_counts())
    with pytest.raises(BudgetError, match="budget 6 labels per class is larger than class 'a'"):
        check_budgets([6], data.class_counts())


def test_what_verification_found_reads_back_without_decoding(tmp_path, monkeypatch):
    """A resumed study reads the verification record instead of decoding every labeled image."""
    write_image_folder(tmp_path / "train", {"a": 5, "b": 5})
    write_image_folder(tmp_path / "test", {"a": 2, "b": 2}, seed=1)
    (tmp_path / "train" / "b" / "broken.png").write_bytes(b"not an image")
    plan = plan_data(DataConfig(name="folder", path=str(tmp_path), min_test_per_class=0))
    data = load_data(plan)
    (tmp_path / "verified.parquet").write_bytes(verification_record(data))
    monkeypatch.setattr(ImageSource, "decode", lambda *_: pytest.fail("decoded an image"))
    again = recorded_data(plan, tmp_path / "verified.parquet")
    assert again.frame.equals(data.frame) and again.digest == data.digest == plan.digest
    assert (again.mean, again.std) == (data.mean, data.std)
    assert (again.skipped, again.skipped_files) == (1, data.skipped_files) and again.leaked == data.leaked
    (tmp_path / "train" / "a" / "new.png").write_bytes((tmp_path / "train" / "b" / "broken.png").read_bytes())
    with pytest.raises(DataError, match="is of manifest"):  # another listing: not this record's
        recorded_data(plan_data(_folder(tmp_path, min_test_per_class=0)), tmp_path / "verified.parquet")


def _png_claiming(path, width: int, height: int) -> None:
    """A valid 1x1 PNG whose header claims ``width x height``: PIL refuses it as a decompression bomb."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_oversized_image_is_skipped_like_any_unreadable_file(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 20000, 20000)
    assert ImageSource(8, 3).read(str(bomb)) is None


def test_16_bit_and_float_images_keep_their_contrast(tmp_path):
    ramp = np.linspace(1000, 5000, 64).reshape(8, 8)  # a 12-bit scan in a 16-bit container
    Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "scan.png")
    Image.fromarray(ramp.astype(np.float32) / 7.0).save(tmp_path / "scan.tif")
    assert Image.open(tmp_path / "scan.png").mode.startswith("I")
    for name in ("scan.png", "scan.tif"):
        array = ImageSource(8, 1).read(str(tmp_path / name))
        assert array.min() == 0 and array.max() == 255, name  # not all 255 (clipped) or all 0 (truncated)
        assert np.all(np.diff(array.ravel().astype(int)) >= 0), name  # the ramp survives, in order
    rgb = ImageSource(8, 3).read(str(tmp_path / "scan.png"))
    assert rgb.shape == (3, 8, 8) and rgb.max() == 255


def test_symlinked_class_folder_and_pool_test_duplicates_are_not_leakage(tmp_path):
    write_image_folder(tmp_path / "train", {"a": 6, "b": 6})
    write_image_folder(tmp_path / "test", {"a": 3, "b": 3}, seed=1)
    os.symlink(tmp_path / "train", tmp_path / "train" / "link")  # train/link -> train: every image again
    (tmp_path / "test" / "a" / "0000.png").write_bytes((tmp_path / "train" / "a" / "0000.png").read_bytes())
    plan = plan_data(DataConfig(name="folder", path=str(tmp_path), min_test_per_class=0))
    assert plan.classes == ("a", "b") and plan.duplicates >= 12  # link/a, link/link/a, ... until ELOOP
    assert plan.class_counts() == {"a": 6, "b": 6}
    data = load_data(plan)
    assert data.leaked == 1 and len(data.items(TEST)) == 5
    assert str(tmp_path / "test" / "a" / "0000.png") not in data.items(TEST)


def test_changed_files_change_the_manifest_digest(tmp_path):
    write_image_folder(tmp_path, {"a": 5, "b": 5})
    before = plan_data(DataConfig(name="folder", path=str(tmp_path))).digest
    assert plan_data(DataConfig(name="folder", path=str(tmp_path))).digest == before
    write_image_folder(tmp_path, {"a": 5}, seed=7)  # same names, other pixels
    os.utime(tmp_path / "a" / "0000.png", ns=(1, 1))
    assert plan_data(DataConfig(name="folder", path=str(tmp_path))).digest != before


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
    assert len(plan.split(TEST)) == 10_000
    assert plan.class_counts()["cat"] == 20
    capped = plan_data(DataConfig(name="folder", path=str(cifar_root), max_per_class=20, max_test_per_class=30))
    assert np.bincount(capped.split(TEST).label).tolist() == [30] * 10
    data = load_data(capped)
    assert len(data.items(POOL)) == 200 and data.channels == 3 and data.image_size == 32
    extra = plan_data(
        DataConfig(name="folder", path=str(cifar_root), unlabeled_path=str(cifar_root / "train"), max_unlabeled=500)
    ).split(UNLABELED)
    assert len(extra) == 500 and extra.item.str.split("/").str[-2].nunique() == 10  # a sample, not the first folders


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
    few = {"min_test_per_class": 0}  # 2 test images per class: enough to test the reading
    data = load_data(plan_data(DataConfig(name="cifar10", path=str(tmp_path / "cifar"), **few)))
    assert data.classes[0] == "airplane" and len(data.classes) == 10
    assert (len(data.items(POOL)), len(data.items(TEST)), data.image_size, data.channels) == (100, 20, 32, 3)
    assert np.bincount(data.labels(POOL)).tolist() == [10] * 10

    gray = load_data(
        plan_data(DataConfig(name="cifar10", path=str(tmp_path / "cifar"), image_size=16, channels=1, **few))
    )
    assert gray.source.read(gray.items(POOL)[0]).shape == (1, 16, 16)

    _fake_stl10(tmp_path / "stl")
    stl = load_data(
        plan_data(DataConfig(name="stl10", path=str(tmp_path / "stl"), image_size=48, max_unlabeled=25, **few))
    )
    assert (len(stl.items(POOL)), len(stl.items(TEST)), stl.image_size) == (20, 20, 48)
    assert len(stl.pretraining_items) == 20 + 25  # the labeled pool plus the capped unlabeled split
    assert stl.source.read(stl.items(UNLABELED)[0]).shape == (3, 48, 48)


def test_online_knn_slice_is_a_stratified_split_of_the_pool_only():
    from pretrain.train import knn_subset

    data = load_data(plan_data(DataConfig()))
    knn = knn_subset(data, 200)
    assert len(knn["bank_labels"]) + len(knn["query_labels"]) == 200
    assert set(knn["bank_labels"]) == set(knn["query_labels"]) == set(range(10))
    assert knn["bank"].shape[1:] == (1, 16, 16) and knn["bank"].dtype.is_floating_point
    from pretrain.views import normalize

    test = normalize(data.source.read_many(data.items(TEST))[0], data.mean, data.std)
    pool = normalize(data.source.read_many(data.items(POOL))[0], data.mean, data.std)
    sliced = {x.numpy().tobytes() for x in torch.cat([knn["bank"], knn["queries"]])}
    assert len(sliced) == 200 and sliced <= {x.numpy().tobytes() for x in pool}
    assert not sliced & {x.numpy().tobytes() for x in test}  # no image of the test split in the slice
    assert knn_subset(data, 5) is None  # 10 classes cannot be stratified into 5 images


def test_one_class_and_a_test_split_that_empties_a_class_are_one_line_errors(tmp_path):
    write_image_folder(tmp_path / "one", {"a": 5})
    with pytest.raises(DataError, match="the data has one class"):
        plan_data(DataConfig(name="folder", path=str(tmp_path / "one")))
    write_image_folder(tmp_path / "two", {"a": 2, "b": 8})
    with pytest.raises(DataError, match="leaves a class no image in the labeled pool or the test split"):
        plan_data(DataConfig(name="folder", path=str(tmp_path / "two"), test_fraction=0.9))


def _split_root(root, folders: dict[str, dict[str, int]]):
    """A dataset root of split folders, each holding class folders: ``{split folder: {class: count}}``."""
    for seed, (folder, per_class) in enumerate(folders.items()):
        write_image_folder(root / folder, per_class, seed=seed)
    return root


def _folder(path, **settings) -> DataConfig:
    return DataConfig(name="folder", path=str(path), **settings)


def test_training_and_testing_folders_are_splits_not_classes(tmp_path):
    _split_root(tmp_path, {"Training": {"a": 4, "b": 5}, "Testing": {"a": 2, "b": 3}})
    plan = plan_data(_folder(tmp_path))
    assert plan.classes == ("a", "b")
    assert plan.class_counts() == {"a": 4, "b": 5}
    assert len(plan.split(TEST)) == 5 and plan.split(TEST).item.str.contains("/Testing/").all()
    assert "Testing/ -> test" in plan.summary() and "Training/ -> labeled pool" in plan.summary()


@pytest.mark.parametrize(
    "names", [("TRAIN", "Test", "VAL"), ("train", "TESTING", "Validation"), ("Training", "test", "Valid")], ids="-".join
)
def test_split_folder_names_are_case_insensitive(tmp_path, names):
    train, test, val = names
    _split_root(tmp_path, {train: {"a": 3, "b": 3}, test: {"a": 2, "b": 2}, val: {"a": 1, "b": 1}})
    plan = plan_data(_folder(tmp_path))
    assert plan.classes == ("a", "b")
    assert plan.class_counts() == {"a": 4, "b": 4}  # train and validation
    assert plan.split(TEST).item.str.contains(f"/{test}/").all() and len(plan.split(TEST)) == 4


def test_validation_folder_joins_the_pool_or_the_test_split(tmp_path):
    _split_root(tmp_path, {"train": {"a": 4, "b": 4}, "valid": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    pooled = plan_data(_folder(tmp_path))
    assert pooled.class_counts() == {"a": 6, "b": 6} and len(pooled.split(TEST)) == 2
    held_out = plan_data(_folder(tmp_path, validation="test"))
    assert held_out.class_counts() == {"a": 4, "b": 4} and len(held_out.split(TEST)) == 6
    assert held_out.split(TEST).item.str.contains("/valid/").sum() == 4
    assert "valid/ -> test" in held_out.summary()


def test_csv_of_path_label_and_split_relative_or_absolute(tmp_path):
    write_image_folder(tmp_path / "img", {"a": 4, "b": 4})
    rows = [f"img/{c}/{i:04d}.png,{c},{'TRAIN' if c == 'a' else 'Training'}" for c in "ab" for i in range(3)]
    rows += [f"{tmp_path}/img/a/0003.png,a,Test", "img/b/0003.png,b,val"]
    (tmp_path / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    plan = plan_data(_folder(tmp_path / "labels.csv", min_test_per_class=0))
    assert plan.classes == ("a", "b") and plan.class_counts() == {"a": 3, "b": 4}  # val joins the pool
    assert sorted(plan.split(TEST).item) == [str(tmp_path / "img" / "a" / "0003.png")]
    assert (plan.frame["size"] > 0).all() and "a CSV of path,label,split" in plan.summary()
    data = load_data(plan)
    assert len(data.items(POOL)) == 7 and data.skipped == 0
    (tmp_path / "nosplit.csv").write_text("path,label\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    drawn = plan_data(_folder(tmp_path / "nosplit.csv", test_fraction=0.25))
    assert len(drawn.frame) == 8 and len(drawn.split(TEST)) == 2  # no split column: stratified test split


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "path,label\n" + "".join(f"gone/{i}.png,a\n" for i in range(5)) + "img/a/0000.png,a\n",
            r"lists 5 files that do not exist \(.*/gone/0.png, .*/gone/1.png, .*/gone/2.png\)",
        ),
        ("file,class\nimg/a/0000.png,a\n", "needs the columns path,label: it has file,class"),
        ("path,label,split\nimg/a/0000.png,a,train\nimg/b/0000.png,b,holdout\n", r"split values \['holdout'\]"),
        ("path,label\nimg/a/0000.png,a\nimg/b/0000.png,\n", "has 1 rows without a label"),
        ("path,label,split\nimg/a/0000.png,a,test\nimg/b/0000.png,b,test\n", "has no train rows"),
        ("", "cannot be read as a CSV"),
    ],
    ids=["missing-files", "columns", "split-values", "empty-label", "no-train-rows", "empty-file"],
)
def test_csv_problems_are_one_line_errors(tmp_path, text, message):
    write_image_folder(tmp_path / "img", {"a": 1, "b": 1})
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=message) as error:
        plan_data(_folder(tmp_path / "labels.csv"))
    assert "\n" not in str(error.value) and str(tmp_path / "labels.csv") in str(error.value)


def test_missing_csv_says_what_to_point_at(tmp_path):
    with pytest.raises(DataError, match=r"labels\.csv' does not exist: point it at a CSV of path,label"):
        plan_data(_folder(tmp_path / "labels.csv"))


@pytest.mark.parametrize(
    "folders, message",
    [
        ({"test": {"a": 2, "b": 2}}, "has test but no train folder: add .*/train/<class>/<image>"),
        ({"Validation": {"a": 2, "b": 2}, "Testing": {"a": 2, "b": 2}}, "has Testing, Validation but no train"),
        ({"train": {"a": 2, "b": 2}, "cat": {"x": 2}}, r"mixes split folders \(train\) with other folders \(cat\)"),
        ({"Training": {"a": 2, "b": 2}, "train": {"a": 2, "b": 2}}, r"has 2 train folders \(Training, train\)"),
        ({"train/train": {"a": 2, "b": 2}, "test/test": {"a": 1}}, r"class folders named like splits \(test/test, tr"),
        ({"dl": {"a": 2, "b": 2}}, "holds one folder 'dl' of class folders: point data.path at .*/dl$"),
        ({"dl/Training": {"a": 2}, "dl/Testing": {"a": 1}}, "holds one folder 'dl' of split folders: point data.path"),
    ],
    ids=["test-only", "no-train", "mixed", "two-train", "nested", "wrapped-classes", "wrapped-splits"],
)
def test_layouts_that_would_be_misread_are_one_line_errors(tmp_path, folders, message):
    _split_root(tmp_path / "root", folders)
    with pytest.raises(DataError, match=message) as error:
        plan_data(_folder(tmp_path / "root"))
    assert "\n" not in str(error.value) and f"data.path '{tmp_path / 'root'}'" in str(error.value)


def test_validation_classes_held_out_must_be_in_the_pool(tmp_path):
    _split_root(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "c": 2}})
    assert plan_data(_folder(tmp_path)).classes == ("a", "b", "c")  # pooled, c is a class
    with pytest.raises(DataError, match=r"test classes \['c'\] are not in the labeled pool"):
        plan_data(_folder(tmp_path, validation="test"))


def test_summary_names_the_layout_classes_and_split_sizes(tmp_path):
    write_image_folder(tmp_path / "few", {"a": 10, "b": 10})
    lines = plan_data(_folder(tmp_path / "few")).summary().splitlines()
    assert (
        lines[0] == f"data: {tmp_path / 'few'} read as class folders <class>/<image>; no test split given: 30% "
        "of each class drawn as the test split"
    )
    assert lines[1] == "data: 2 classes (a 7, b 7); labeled pool 14, test 6, unlabeled 0"
    write_image_folder(tmp_path / "many", {f"c{i:02d}": 2 for i in range(12)})
    many = plan_data(_folder(tmp_path / "many", test_fraction=0.5)).summary()
    assert "12 classes (c00 1, c01 1, c02 1" in many and "c09 1, 2 more)" in many and "c10" not in many


def test_read_threads_share_one_load_of_an_in_memory_dataset(monkeypatch):
    """A rereading local rank reads with several threads: the first reads must load digits (or a
    torchvision split, 2.7 GB for STL-10's unlabeled one) once per process, not once per thread."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import sklearn.datasets

    import pretrain.images as images

    loads = []
    real = sklearn.datasets.load_digits

    def slow_load(*args, **kwargs):
        loads.append(1)
        time.sleep(0.2)  # every thread arrives while the first one loads
        return real(*args, **kwargs)

    monkeypatch.setattr(sklearn.datasets, "load_digits", slow_load)
    images._digits.cache_clear()
    try:
        source = ImageSource(image_size=8, channels=1)
        with ThreadPoolExecutor(8) as threads:
            arrays = list(threads.map(source.read, [f"digits:{i}" for i in range(8)]))
    finally:
        images._digits.cache_clear()
    assert len(loads) == 1
    assert all(a is not None and a.shape == (1, 8, 8) for a in arrays)


def _thinned_by_the_guard(root):
    """Training/Testing folders where most test images of b and c are copies of training images,
    as on a public set: the duplicate guard leaves b 3 test images and c none."""
    _split_root(root, {"Training": {c: 20 for c in "abcd"}, "Testing": {c: 12 for c in "abcd"}})
    for name, copies in (("b", 9), ("c", 12)):
        for i in range(copies):
            shutil.copy(root / "Training" / name / f"{i:04d}.png", root / "Testing" / name / f"{i:04d}.png")
    return root


def test_a_test_split_the_duplicate_guard_thinned_is_refused_with_its_counts(tmp_path):
    root = _thinned_by_the_guard(tmp_path / "set")
    with pytest.raises(DataError) as error:
        load_data(plan_data(_folder(root)))
    message = str(error.value)
    assert "\n" not in message
    assert "2 of 4 classes have fewer than 10 test images" in message
    assert "the duplicate guard left out 21 test images also in the pool" in message
    assert "test split: a 12, b 3, c 0, d 12" in message
    assert "set data.test_split=resplit" in message and "data.min_test_per_class=0 to go on as is" in message
    as_is = load_data(plan_data(_folder(root, min_test_per_class=0)))  # the user's choice: go on
    assert np.bincount(as_is.labels(TEST), minlength=4).tolist() == [12, 3, 0, 12] and as_is.leaked == 21
    with pytest.raises(DataError, match="2 of 4 classes have fewer than 4 test images"):
        load_data(plan_data(_folder(root, min_test_per_class=4)))


def test_resplit_draws_a_stratified_test_split_from_the_deduplicated_images(tmp_path):
    root = _thinned_by_the_guard(tmp_path / "set")
    for i in range(6):  # copies inside the pool too: a copy and its original land on the same side
        shutil.copy(root / "Training" / "a" / f"{i:04d}.png", root / "Training" / "a" / f"copy{i}.png")
    plan = plan_data(_folder(root, test_split="resplit", test_fraction=0.5, split_seed=3))
    data = load_data(plan)
    test, pool = np.bincount(data.labels(TEST), minlength=4), np.bincount(data.labels(POOL), minlength=4)
    assert (pool + test).tolist() == [32 + 6, 23, 20, 32]  # the test copies of pool images are gone
    pixels = {item: ImageSource(12, 3).read(item).tobytes() for item in data.frame.item}
    assert not {pixels[i] for i in data.items(TEST)} & {pixels[i] for i in data.items(POOL)}  # no leakage
    tested = list(zip(data.items(TEST), data.labels(TEST), strict=True))
    distinct = [len({pixels[i] for i, y in tested if y == c}) for c in range(4)]
    assert np.all(np.abs(np.array(distinct) - 0.5 * np.array([32, 23, 20, 32])) <= 1)  # stratified, half
    again = load_data(plan_data(_folder(root, test_split="resplit", test_fraction=0.5, split_seed=3)))
    assert again.frame.equals(data.frame)  # reproducible from data.split_seed
    assert "test split redrawn" in " ".join(data.summary())
    with pytest.raises(DataError, match=r"raise data.test_fraction or add images.*data.min_test_per_class=0"):
        load_data(plan_data(_folder(root, test_split="resplit", test_fraction=0.1)))


def test_the_refusal_comes_through_the_cli_as_one_line_and_exit_2_before_pretraining(labelcurve, tmp_path):
    root = _thinned_by_the_guard(tmp_path / "set")
    result = labelcurve("run", "study=thin", "data.name=folder", f"data.path={root}", "finetune.budgets=[1, 2]")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "test split: a 12, b 3, c 0, d 12" in last
    assert not (tmp_path / "labelcurve-runs").exists()  # no pretraining started


def test_a_stray_copy_beside_the_split_folders_is_named_and_can_be_ignored(tmp_path):
    _split_root(tmp_path, {"train": {"a": 3, "b": 3}, "valid": {"a": 1, "b": 1}, "test": {"a": 2, "b": 2}})
    _split_root(tmp_path / "raw", {"a": {"x": 2}, "b": {"x": 2}})  # a copy of the whole dataset, as downloaded
    with pytest.raises(DataError) as error:
        plan_data(_folder(tmp_path))
    message = str(error.value)
    assert "other folders (raw)" in message and "data.ignore=[raw]" in message
    assert "point data.path at a folder without them" in message and "\n" not in message
    plan = plan_data(_folder(tmp_path, ignore=["raw"]))
    assert plan.classes == ("a", "b") and not plan.frame.item.str.contains("/raw/").any()
    assert plan.class_counts() == {"a": 4, "b": 4} and len(plan.split(TEST)) == 4
    with pytest.raises(DataError, match=r"data.ignore names 'rwa', not a folder of .*: its folders are raw, test"):
        plan_data(_folder(tmp_path, ignore=["rwa"]))


def test_summary_after_the_guard_counts_the_test_split_and_grayscale_conversions(tmp_path):
    root = _thinned_by_the_guard(tmp_path / "set")
    for path in sorted((root / "Training" / "a").iterdir())[:5]:
        Image.open(path).convert("L").save(path)
    data = load_data(plan_data(_folder(root, min_test_per_class=0)))
    lines = data.summary()
    assert "data: test split after the duplicate guard: a 12, b 3, c 0, d 12 (27 images)" in lines
    assert "data: 5 grayscale images converted to 3 channels (data.channels=1 keeps one)" in lines
    assert data.converted == 5 and data.test_counts() == {"a": 12, "b": 3, "c": 0, "d": 12}
