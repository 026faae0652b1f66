"""Your own images: the image-folder dataset (PNG/JPEG through Pillow, class subfolders as labels,
resize / crop / flip) and memory-mapped image arrays (``kind = "images"``, ``mmap = true``). Each test
writes its own small folder or file in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flowkit_data.folders import ImageFolder
from flowkit_data.images import ImageFile, MappedImageFile

from flowkit.engine import build_pipeline
from flowkit.errors import FlowkitError
from flowkit.testing import make_manager

Image = pytest.importorskip("PIL.Image")


def _write(path, array, suffix=".png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path.with_suffix(suffix))


def _pixels(seed, shape=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def classes(tmp_path):
    """Two class folders of grey 6x5 PNGs: 'ant' (3 images) and 'bee' (2 images)."""
    root = tmp_path / "pets"
    for name, count, offset in (("ant", 3, 0), ("bee", 2, 10)):
        for i in range(count):
            _write(root / name / f"{i}", _pixels(offset + i))
    return root


def test_class_folders_are_labels_in_sorted_order_and_pixels_scale_as_uint8_arrays(classes):
    data = ImageFolder(ImageFolder.Params(root=str(classes), held_out=0.0))
    assert data.shape == (1, 6, 5) and data.num_classes == 2 and data.classes == ["ant", "bee"]
    expected = {
        tuple((_pixels(seed).astype(np.float32) / 127.5 - 1.0).ravel()): label
        for seed, label in ((0, 0), (1, 0), (2, 0), (10, 1), (11, 1))
    }
    got = {tuple(x.ravel().tolist()): int(y) for x, y in zip(data.images, data.labels, strict=True)}
    assert got == expected  # every image once, with its folder's label, scaled like kind = "images"


def test_loose_images_are_unlabelled_and_rgb_keeps_three_channels(tmp_path):
    for i in range(3):
        _write(tmp_path / f"{i}", np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8))
    data = ImageFolder(ImageFolder.Params(root=str(tmp_path), held_out=0.0))
    assert data.shape == (3, 4, 4) and data.num_classes == 0 and data.labels is None


def test_resize_then_centre_crop_matches_pillow(tmp_path):
    array = _pixels(0, (8, 12))
    _write(tmp_path / "a", array)
    data = ImageFolder(ImageFolder.Params(root=str(tmp_path), resize=4, crop=4, held_out=0.0))
    resized = Image.fromarray(array).resize((6, 4), Image.Resampling.BILINEAR).crop((1, 0, 5, 4))
    expected = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
    assert torch.equal(data.images[0, 0], torch.from_numpy(expected))


def test_flip_mirrors_drawn_images_from_the_data_generator(classes):
    plain = ImageFolder(ImageFolder.Params(root=str(classes), held_out=0.0))
    flipped = ImageFolder(ImageFolder.Params(root=str(classes), held_out=0.0, flip=True))
    x = plain.sample(64, generator=torch.Generator().manual_seed(1))
    f = flipped.sample(64, generator=torch.Generator().manual_seed(1))
    same = torch.tensor([torch.equal(a, b) for a, b in zip(x, f, strict=True)])
    mirror = torch.tensor([torch.equal(a.flip(-1), b) for a, b in zip(x, f, strict=True)])
    assert bool((same | mirror).all()) and 10 < int(mirror.sum()) < 54
    # the same generator state gives the same flips (what a resumed run relies on)
    again = flipped.sample(64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(f, again)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "cat").mkdir(parents=True), "class folder '{root}/cat' holds no images"),
        (lambda root: root.mkdir(), "image folder '{root}' holds no images"),
        (lambda root: None, "image folder '{root}' does not exist"),
    ],
)
def test_empty_folders_name_the_folder(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    if (root / "cat").exists():
        _write(root / "dog" / "0", _pixels(0))
    with pytest.raises(FlowkitError) as error:
        ImageFolder(ImageFolder.Params(root=str(root)))
    assert message.format(root=root) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_corrupt_image_is_named(tmp_path):
    _write(tmp_path / "good", _pixels(0))
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(FlowkitError, match=r"image file '.*bad\.png' cannot be read as an image"):
        ImageFolder(ImageFolder.Params(root=str(tmp_path)))


def test_mixed_sizes_without_a_resize_name_both_files(tmp_path):
    _write(tmp_path / "a", _pixels(0, (6, 5)))
    _write(tmp_path / "b", _pixels(1, (7, 5)))
    with pytest.raises(FlowkitError) as error:
        ImageFolder(ImageFolder.Params(root=str(tmp_path)))
    assert str(error.value) == (
        f"image file '{tmp_path / 'b.png'}' is 5x7 but '{tmp_path / 'a.png'}' is 5x6; images of one "
        "dataset need one size: set [data] resize and crop (e.g. resize = 32, crop = 32)"
    )
    # with a resize and crop the same files make one dataset
    data = ImageFolder(ImageFolder.Params(root=str(tmp_path), resize=4, crop=4, held_out=0.0))
    assert data.shape == (1, 4, 4)


def test_images_beside_class_folders_are_refused(classes):
    _write(classes / "stray", _pixels(0))
    with pytest.raises(FlowkitError, match=r"holds both images \('stray\.png'\) and class folders"):
        ImageFolder(ImageFolder.Params(root=str(classes)))


def test_a_relative_root_is_resolved_against_the_pipeline_file(classes, tmp_path):
    pipeline = tmp_path / "pipe.toml"
    pipeline.write_text(
        '[data]\nkind = "image-folder"\nroot = "pets"\nheld_out = 0.4\n'
        '[path]\nkind = "gaussian"\n[model]\nkind = "unet"\nchannels = 8\nchannel_mults = [1]\n'
        "groups = 4\nattention = []\n"
        '[loss]\nkind = "cfm"\n[train]\nsteps = 1\nbatch_size = 2\n'
    )
    pipe = build_pipeline(pipeline, (), make_manager(warn=False))
    assert pipe.dataset.root == classes and pipe.dataset.params.root == str(classes.resolve())
    assert len(pipe.dataset) == 3 and len(pipe.dataset.held_out()[0]) == 2


# ---------------------------------------------------------------------------------------------------
# Memory-mapped arrays
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_mapped_file_draws_bitwise_what_the_loaded_file_draws(tmp_path, dtype):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    array = pixels if dtype == "uint8" else pixels.astype(np.float32) / 255.0 * 2 - 1
    np.save(tmp_path / "x.npy", array)
    np.save(tmp_path / "y.npy", rng.integers(0, 4, 50))
    params = ImageFile.Params(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))
    loaded = ImageFile(params)
    mapped = ImageFile(ImageFile.Params(**{**params.__getstate__(), "mmap": True}))
    assert isinstance(mapped, MappedImageFile) and not isinstance(loaded, MappedImageFile)
    assert mapped.shape == loaded.shape == (3, 6, 6) and len(mapped) == len(loaded) == 40
    assert mapped.num_classes == loaded.num_classes
    for seed in range(3):
        a = loaded.sample_labelled(17, generator=torch.Generator().manual_seed(seed))
        b = mapped.sample_labelled(17, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    held_a, held_b = loaded.held_out(), mapped.held_out()
    assert torch.equal(held_a[0], held_b[0]) and torch.equal(held_a[1], held_b[1])


def test_a_mapped_file_is_not_read_whole(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((20, 1, 4, 4), dtype=np.uint8))
    mapped = ImageFile(ImageFile.Params(path=str(tmp_path / "x.npy"), mmap=True))
    assert isinstance(mapped.array, np.memmap)


@pytest.mark.parametrize(
    ("name", "array", "message"),
    [
        ("x.npz", None, "mmap = true reads a .npy file"),
        ("x.npy", np.full((4, 1, 2, 2), 3.0, dtype=np.float32), "holds float values in [0, 3]"),
        ("x.npy", np.zeros((4, 2, 2), dtype=np.int32), "holds int32 values"),
    ],
)
def test_a_bad_mapped_file_is_named(tmp_path, name, array, message):
    file = tmp_path / name
    if array is None:
        np.savez(file, images=np.zeros((2, 2, 2), np.uint8))
    else:
        np.save(file, array)
    with pytest.raises(FlowkitError) as error:
        ImageFile(ImageFile.Params(path=str(file), mmap=True))
    assert message in str(error.value) and str(file) in str(error.value)


def test_workers_read_bitwise_the_rows_the_training_process_reads(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (60, 1, 5, 5), dtype=np.uint8))
    params = ImageFile.Params(path=str(tmp_path / "x.npy"), mmap=True)
    here = ImageFile(params)
    workers = ImageFile(ImageFile.Params(**{**params.__getstate__(), "workers": 2}))
    assert workers.rows.reader.workers == 2 and workers.rows.reader._loader is not None
    for seed in range(3):  # the persistent workers serve one draw after another
        a = here.sample(33, generator=torch.Generator().manual_seed(seed))
        b = workers.sample(33, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)


def test_workers_need_mmap(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 1, 2, 2), np.uint8))
    with pytest.raises(FlowkitError, match="workers = 2 read a memory-mapped file; set mmap = true"):
        ImageFile(ImageFile.Params(path=str(tmp_path / "x.npy"), workers=2))


def test_under_torchrun_each_rank_draws_from_its_own_shard(tmp_path, monkeypatch):
    # row i holds the value i: a drawn image tells which row it came from
    rows = np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None, None], (40, 1, 2, 2)).copy()
    np.save(tmp_path / "x.npy", rows)
    params = ImageFile.Params(path=str(tmp_path / "x.npy"), mmap=True, held_out=0.25)
    whole = ImageFile(params).rows.train_rows
    seen = []
    for rank in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        data = ImageFile(params)
        drawn = data.sample(200, generator=torch.Generator().manual_seed(0))
        values = {round((float(v) + 1.0) * 127.5) for v in drawn[:, 0, 0, 0]}
        assert values == set(whole[rank::2].tolist())  # every row of its shard, and only those
        seen.append(values)
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(whole.tolist())


def test_a_run_from_a_mapped_file_read_by_workers_resumes_bitwise(tmp_path):
    import os
    import signal

    from flowkit import hookimpl
    from flowkit.engine import resume_run, run_pipeline
    from flowkit.engine.interrupts import Interrupted

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (64, 1, 4, 4), dtype=np.uint8))
    spec = {
        "run": {"seed": 1},
        "data": {"kind": "images", "path": str(tmp_path / "x.npy"), "mmap": True, "workers": 1},
        "path": {"kind": "gaussian"},
        "model": {"kind": "unet", "channels": 8, "channel_mults": [1], "attention": [], "groups": 4},
        "loss": {"kind": "cfm"},
        "train": {"steps": 12, "batch_size": 8, "checkpoint_every": 5},
        "sample": {"steps": 2, "n": 8, "trajectories": 0},
        "evaluate": {"metric": "sliced-w2", "n": 8, "floor_repeats": 1},
    }

    class Stopper:
        @staticmethod
        @hookimpl
        def flowkit_train_step(run, step, loss):
            if step == 7 and run.resumed_from is None:
                os.kill(os.getpid(), signal.SIGINT)

    plain, stopping = make_manager(warn=False), make_manager(warn=False, plugins=[("stopper", Stopper())])
    whole = run_pipeline(build_pipeline(spec, (), plain), plain, out=str(tmp_path / "whole"), quiet=True)
    with pytest.raises(Interrupted):
        run_pipeline(build_pipeline(spec, (), stopping), stopping, out=str(tmp_path / "cut"), quiet=True)
    resumed = resume_run(tmp_path / "cut", stopping, quiet=True, command="test")
    assert resumed.metrics["resumed_from_step"] == 7
    a, b = (
        torch.load(d / "model.pt", weights_only=True)["model"] for d in (whole.directory, tmp_path / "cut")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (whole.directory / "samples.npy").read_bytes() == (tmp_path / "cut" / "samples.npy").read_bytes()
