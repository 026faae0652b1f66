"""Image folders larger than memory: ``lazy = true`` decodes each file when a batch draws it (in worker
processes with ``workers = N``) and gives bitwise the batches, the trained weights and the resumed run
of the eager folder; a bad file found only then is still one error line naming it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flowkit_data.folders import ImageFolder, LazyImageFolder

from flowkit.engine import build_pipeline
from flowkit.errors import FlowkitError
from flowkit.testing import make_manager

Image = pytest.importorskip("PIL.Image")


def _pixels(seed, shape=(6, 5)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def classes(tmp_path):
    """Two class folders of RGB 6x5 PNGs: 'ant' (4 images) and 'bee' (3 images)."""
    root = tmp_path / "pets"
    for name, count, offset in (("ant", 4, 0), ("bee", 3, 10)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_pixels(offset + i, (6, 5, 3))).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_lazy_decoding_draws_the_eager_batches_bitwise(classes, workers):
    options = {"root": str(classes), "resize": 4, "crop": 4, "flip": True, "held_out": 0.3}
    eager = ImageFolder(ImageFolder.Params(**options))
    lazy = ImageFolder(ImageFolder.Params(**options, lazy=True, workers=workers))
    assert isinstance(lazy, LazyImageFolder) and not hasattr(lazy, "images")  # nothing decoded up front
    assert lazy.shape == eager.shape == (3, 4, 4) and len(lazy) == len(eager) and lazy.num_classes == 2
    for seed in range(3):  # the persistent workers serve one draw after another
        a, b = (d.sample_labelled(11, generator=torch.Generator().manual_seed(seed)) for d in (eager, lazy))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    (x, y), (u, v) = eager.held_out(), lazy.held_out()
    assert torch.equal(x, u) and torch.equal(y, v)


def _truncated_png(path, seed):
    """A PNG whose header reads (size, mode) but whose pixels are cut off."""
    buffer = io.BytesIO()
    Image.fromarray(_pixels(seed, (16, 16))).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:60])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_file_found_when_drawn_is_one_line_naming_it(tmp_path, workers):
    for i in range(3):
        Image.fromarray(_pixels(i, (16, 16))).save(tmp_path / f"{i}.png")
    _truncated_png(tmp_path / "3.png", 3)
    with pytest.raises(
        FlowkitError, match=r"image file '.*3\.png' cannot be read as an image: image file is"
    ):
        ImageFolder(ImageFolder.Params(root=str(tmp_path)))  # eager: found when built
    lazy = ImageFolder(ImageFolder.Params(root=str(tmp_path), held_out=0.0, lazy=True, workers=workers))
    with pytest.raises(FlowkitError) as error:
        lazy.sample(64, generator=torch.Generator().manual_seed(0))  # draws every row
    assert str(error.value).startswith(
        f"image file '{tmp_path / '3.png'}' cannot be read as an image: image file is truncated"
    )
    assert "\n" not in str(error.value) and "Traceback" not in str(error.value)


def test_mixed_sizes_and_unreadable_headers_are_found_when_built(tmp_path):
    Image.fromarray(_pixels(0, (6, 5))).save(tmp_path / "a.png")
    Image.fromarray(_pixels(1, (7, 5))).save(tmp_path / "b.png")
    with pytest.raises(FlowkitError) as error:
        ImageFolder(ImageFolder.Params(root=str(tmp_path), lazy=True))
    assert str(error.value) == (
        f"image file '{tmp_path / 'b.png'}' is 5x7 but '{tmp_path / 'a.png'}' is 5x6; images of one "
        "dataset need one size: set [data] resize and crop (e.g. resize = 32, crop = 32)"
    )
    (tmp_path / "c.png").write_bytes(b"not a png at all")
    with pytest.raises(FlowkitError, match=r"image file '.*c\.png' cannot be read as an image"):
        ImageFolder(ImageFolder.Params(root=str(tmp_path), lazy=True, resize=4, crop=4))


def test_workers_need_lazy(classes):
    with pytest.raises(FlowkitError) as error:
        ImageFolder(ImageFolder.Params(root=str(classes), workers=2))
    assert str(error.value) == (
        "dataset 'image-folder': workers = 2 decode images when drawn; set lazy = true (images decoded "
        "when the dataset is built need no workers)"
    )


def test_under_torchrun_each_rank_decodes_only_its_shard(tmp_path, monkeypatch):
    # image i is filled with the value i: a drawn image tells which file it came from
    for i in range(12):
        Image.fromarray(np.full((2, 2), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    params = ImageFolder.Params(root=str(tmp_path), lazy=True, held_out=0.25)
    whole = ImageFolder(params).rows.train_rows
    seen = []
    for rank in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        drawn = ImageFolder(params).sample(100, generator=torch.Generator().manual_seed(0))
        seen.append({round((float(v) + 1.0) * 127.5) for v in drawn[:, 0, 0, 0]})
        assert seen[-1] == set(whole[rank::2].tolist())
    assert not seen[0] & seen[1]


def test_a_lazy_run_read_by_workers_and_resumed_trains_the_eager_runs_weights(classes, tmp_path):
    import os
    import signal

    from flowkit import hookimpl
    from flowkit.engine import resume_run, run_pipeline
    from flowkit.engine.interrupts import Interrupted

    def spec(**lazy):
        return {
            "run": {"seed": 1},
            "data": {
                "kind": "image-folder",
                "root": str(classes),
                "resize": 4,
                "crop": 4,
                "flip": True,
                "held_out": 0.0,
                **lazy,
            },
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
    eager = run_pipeline(build_pipeline(spec(), (), plain), plain, out=str(tmp_path / "eager"), quiet=True)
    lazy = spec(lazy=True, workers=1)
    with pytest.raises(Interrupted):
        run_pipeline(build_pipeline(lazy, (), stopping), stopping, out=str(tmp_path / "cut"), quiet=True)
    resumed = resume_run(tmp_path / "cut", stopping, quiet=True, command="test")
    assert resumed.metrics["resumed_from_step"] == 7
    a, b = (
        torch.load(d / "model.pt", weights_only=True)["model"] for d in (eager.directory, tmp_path / "cut")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (eager.directory / "samples.npy").read_bytes() == (tmp_path / "cut" / "samples.npy").read_bytes()
