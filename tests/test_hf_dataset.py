"""The hf-dataset dataset: images and labels of a Hugging Face ``datasets`` dataset saved with
``save_to_disk``, transformed as image-folder transforms them, each mistake one error line naming the
directory and the column. Each test saves its own tiny dataset in tmp_path."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from flowkit_data.folders import ImageFolder
from flowkit_data.hf import HFDataset

from flowkit.errors import FlowkitError

datasets = pytest.importorskip("datasets")
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pixels(seed, shape=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path, columns, features=None):
    table = datasets.Dataset.from_dict(columns, features=datasets.Features(features) if features else None)
    datasets.disable_progress_bars()
    table.save_to_disk(str(path))
    return path


def _images(arrays):
    return [Image.fromarray(array) for array in arrays]


@pytest.fixture
def saved(tmp_path):
    """Five grey 6x5 images in column 'img', labels 0, 1, 2, 0, 1 in column 'label', names in 'name'."""
    arrays = [_pixels(i) for i in range(5)]
    features = {
        "img": datasets.Image(),
        "label": datasets.ClassLabel(names=["a", "b", "c"]),
        "name": datasets.Value("string"),
    }
    columns = {"img": _images(arrays), "label": [0, 1, 2, 0, 1], "name": list("vwxyz")}
    return _save(tmp_path / "saved", columns, features), np.stack(arrays)


def test_images_and_labels_are_the_saved_pixels_scaled_bitwise(saved):
    directory, arrays = saved
    data = HFDataset(HFDataset.Params(path=str(directory), image="img", label="label", held_out=0.0))
    order = torch.randperm(5, generator=torch.Generator().manual_seed(0))  # the split's permutation
    expected = torch.from_numpy(arrays.astype(np.float32) / 127.5 - 1.0)[:, None]
    assert torch.equal(data.images, expected[order])
    assert torch.equal(data.labels, torch.tensor([0, 1, 2, 0, 1])[order])
    assert data.num_classes == 3 and data.shape == (1, 6, 5)


def test_rgb_images_keep_three_channels_and_no_label_column_is_unlabelled(tmp_path):
    arrays = [_pixels(i, (4, 3, 3)) for i in range(3)]
    directory = _save(tmp_path / "rgb", {"image": _images(arrays)}, {"image": datasets.Image()})
    data = HFDataset(HFDataset.Params(path=str(directory), held_out=0.0))
    order = torch.randperm(3, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(np.stack(arrays).astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    assert torch.equal(data.images, expected[order]) and data.labels is None


def test_resize_crop_and_flips_are_image_folders_bitwise(saved, tmp_path):
    # the same PNGs in a folder and in a dataset: the same transforms, the same draws
    directory, arrays = saved
    (tmp_path / "folder").mkdir()
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / "folder" / f"{i}.png")
    options = {"resize": 4, "crop": 3, "flip": True, "held_out": 0.2}
    folder = ImageFolder(ImageFolder.Params(root=str(tmp_path / "folder"), **options))
    hf = HFDataset(HFDataset.Params(path=str(directory), image="img", **options))
    assert torch.equal(hf.images, folder.images) and torch.equal(hf.held_out()[0], folder.held_out()[0])
    a, b = (d.sample(16, generator=torch.Generator().manual_seed(3)) for d in (folder, hf))
    assert a.shape == (16, 1, 3, 3) and torch.equal(a, b)


def test_a_split_of_a_dataset_dict_is_chosen(tmp_path):
    features = {"image": datasets.Image()}
    splits = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {"image": _images([_pixels(seed)])}, features=datasets.Features(features)
            )
            for name, seed in (("train", 0), ("test", 1))
        }
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    data = HFDataset(HFDataset.Params(path=str(tmp_path / "dict"), split="test", held_out=0.0))
    assert torch.equal(data.images[0, 0], torch.from_numpy(_pixels(1).astype(np.float32) / 127.5 - 1.0))
    with pytest.raises(FlowkitError) as error:
        HFDataset(HFDataset.Params(path=str(tmp_path / "dict")))
    assert str(error.value) == (
        f"hf dataset '{tmp_path / 'dict'}' holds several splits (its splits: train, test); "
        "set [data] split to one"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"path": "missing"}, "hf dataset '{tmp}/missing' does not exist"),
        (
            {"path": "."},
            "hf dataset '{tmp}' is not a dataset saved with save_to_disk (it holds neither state.json "
            "nor dataset_dict.json); save it with datasets' Dataset.save_to_disk",
        ),
        (
            {"image": "picture"},
            "hf dataset '{tmp}/saved' has no column 'picture' (its columns: img, label, name); set [data] "
            "image to the column of images (a datasets.Image feature)",
        ),
        (
            {"image": "img", "label": "class"},
            "hf dataset '{tmp}/saved' has no column 'class' (its columns: img, label, name); set [data] "
            "label to the column of class labels",
        ),
        (
            {"image": "name"},
            "column 'name' of hf dataset '{tmp}/saved' holds string values, not images (a datasets.Image "
            "feature); set [data] image to the column of images",
        ),
        (
            {"image": "img", "label": "name"},
            "column 'name' of hf dataset '{tmp}/saved' holds string values; [data] label names a column of "
            "class labels 0 .. K-1 (ClassLabel or integers)",
        ),
        (
            {"image": "img", "split": "train"},
            "hf dataset '{tmp}/saved' is one Dataset, not a DatasetDict of splits; remove [data] split = "
            '"train"',
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_directory_and_column(saved, tmp_path, options, message):
    params = HFDataset.Params(**{"path": "saved", **options})
    with pytest.raises(FlowkitError) as error:
        HFDataset(params, base_dir=tmp_path)
    assert str(error.value) == message.format(tmp=tmp_path)


def test_mixed_sizes_without_a_resize_name_both_rows(tmp_path):
    directory = _save(
        tmp_path / "mixed", {"image": _images([_pixels(0), _pixels(1, (7, 5))])}, {"image": datasets.Image()}
    )
    for lazy in (False, True):
        with pytest.raises(FlowkitError) as error:
            HFDataset(HFDataset.Params(path=str(directory), lazy=lazy))
        assert str(error.value) == (
            f"row 1 of hf dataset '{directory}' (column 'image') is 5x7 but row 0 is 5x6; images of one "
            "dataset need one size: set [data] resize and crop (e.g. resize = 32, crop = 32)"
        )
    assert HFDataset(HFDataset.Params(path=str(directory), resize=4, crop=4)).shape == (1, 4, 4)


def test_an_unreadable_image_names_its_row(tmp_path):
    good = {"bytes": Image.fromarray(_pixels(0)).tobytes(), "path": None}  # raw pixels: no image format
    directory = _save(tmp_path / "bad", {"image": [good]}, {"image": datasets.Image()})
    with pytest.raises(FlowkitError) as error:
        HFDataset(HFDataset.Params(path=str(directory), held_out=0.0))
    assert str(error.value) == (
        f"row 0 of hf dataset '{directory}' (column 'image') cannot be read as an image: Pillow cannot "
        "identify the image data"
    )


def test_negative_labels_are_refused(tmp_path):
    columns = {"image": _images([_pixels(0), _pixels(1)]), "y": [0, -1]}
    directory = _save(tmp_path / "neg", columns, {"image": datasets.Image(), "y": datasets.Value("int64")})
    with pytest.raises(FlowkitError, match=r"column 'y' of hf dataset '.*neg' holds the label -1; expected"):
        HFDataset(HFDataset.Params(path=str(directory), label="y"))


def test_without_datasets_the_error_names_the_extra(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(FlowkitError) as error:
        HFDataset(HFDataset.Params(path=str(saved[0]), image="img"))
    assert str(error.value) == (
        "dataset 'hf-dataset' reads Hugging Face datasets; install them: pip install \"flowkit[hf]\""
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_lazy_decoding_draws_the_eager_batches_bitwise(saved, workers):
    directory, _ = saved
    options = {"path": str(directory), "image": "img", "label": "label", "flip": True, "held_out": 0.4}
    eager = HFDataset(HFDataset.Params(**options))
    lazy = HFDataset(HFDataset.Params(**options, lazy=True, workers=workers))
    assert type(lazy).__name__ == "LazyHFDataset" and lazy.shape == eager.shape and len(lazy) == len(eager)
    for seed in range(3):
        a, b = (d.sample_labelled(9, generator=torch.Generator().manual_seed(seed)) for d in (eager, lazy))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    (x, y), (u, v) = eager.held_out(), lazy.held_out()
    assert torch.equal(x, u) and torch.equal(y, v)


def test_workers_need_lazy(saved):
    with pytest.raises(FlowkitError, match="workers = 2 decode images when drawn; set lazy = true"):
        HFDataset(HFDataset.Params(path=str(saved[0]), image="img", workers=2))


def test_a_pipeline_file_names_the_dataset_relative_to_itself(saved, tmp_path):
    from flowkit.engine import build_pipeline
    from flowkit.testing import make_manager

    pipeline = tmp_path / "pipe.toml"
    pipeline.write_text(
        '[data]\nkind = "hf-dataset"\npath = "saved"\nimage = "img"\nlabel = "label"\nlazy = true\n'
        '[path]\nkind = "gaussian"\n[model]\nkind = "unet"\nchannels = 8\nchannel_mults = [1]\n'
        "groups = 4\nattention = []\n"
        '[loss]\nkind = "cfm"\n[train]\nsteps = 1\nbatch_size = 2\n'
    )
    pipe = build_pipeline(pipeline, (), make_manager(warn=False))
    # the resolved pipeline (in the run directory) finds the dataset from anywhere
    assert pipe.dataset.directory == saved[0] and pipe.dataset.params.path == str(saved[0].resolve())
    assert len(pipe.dataset) == 4 and pipe.dataset.num_classes == 3


def test_a_row_damaged_past_its_header_is_named_when_a_worker_draws_it(tmp_path):
    import io

    buffer = io.BytesIO()
    Image.fromarray(_pixels(0, (16, 16))).save(buffer, format="PNG")
    rows = [{"bytes": buffer.getvalue(), "path": None}, {"bytes": buffer.getvalue()[:60], "path": None}]
    directory = _save(tmp_path / "cut", {"image": rows}, {"image": datasets.Image()})
    lazy = HFDataset(HFDataset.Params(path=str(directory), held_out=0.0, lazy=True, workers=1))
    with pytest.raises(FlowkitError) as error:
        lazy.sample(32, generator=torch.Generator().manual_seed(0))
    assert str(error.value).startswith(
        f"row 1 of hf dataset '{directory}' (column 'image') cannot be read as an image: image file is "
        "truncated"
    )
    assert "\n" not in str(error.value)
