"""Datasets: determinism, device/dtype/shape, the documented moments and shapes, the file dataset's errors."""

from __future__ import annotations

import math

import flowkit_data
import numpy as np
import pytest
import torch
from flowkit_data.files import FileDataset
from flowkit_data.folders import ImageFolder
from flowkit_data.hf import HFDataset
from flowkit_data.images import Digits, ImageFile
from flowkit_data.toy import Checkerboard, Circles, EightGaussians, Moons

from flowkit.engine import build_pipeline
from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext
from flowkit.testing import check_component, make_manager

TOYS = [Moons, Circles, EightGaussians, Checkerboard]
N = 100_000


def draw(dataset, n=N, seed=0):
    return dataset.sample(n, torch.Generator().manual_seed(seed))


def test_registers_every_dataset():
    added = {}

    class Recorder:
        def add(self, kind, name, cls):
            added[(kind, name)] = cls

    flowkit_data.flowkit_register(Recorder())
    assert added == {
        ("dataset", "moons"): Moons,
        ("dataset", "circles"): Circles,
        ("dataset", "eight-gaussians"): EightGaussians,
        ("dataset", "checkerboard"): Checkerboard,
        ("dataset", "file"): FileDataset,
        ("dataset", "digits"): Digits,
        ("dataset", "images"): ImageFile,
        ("dataset", "image-folder"): ImageFolder,
        ("dataset", "hf-dataset"): HFDataset,
    }
    for cls in added.values():
        check_component("dataset", cls)


@pytest.mark.parametrize("cls", TOYS)
def test_toy_is_deterministic_per_seed_and_has_shape_dtype_device(cls):
    dataset = cls()
    a, b, c = draw(dataset, 500, seed=1), draw(dataset, 500, seed=1), draw(dataset, 500, seed=2)
    assert dataset.shape == (2,)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1
    assert torch.isfinite(a).all()
    assert dataset.sample(0, torch.Generator().manual_seed(0)).shape == (0, 2)


@pytest.mark.parametrize("cls", TOYS)
def test_toy_has_mean_zero_and_mean_variance_one_plus_noise_squared(cls):
    # The documented standardisation: mean 0, (Var x + Var y) / 2 = 1 + noise^2. With 1e5 samples the
    # standard error of the mean is about 0.004 and that of the variance about 0.005, so 0.02 is
    # four standard errors.
    dataset = cls()
    x = draw(dataset).double()
    noise = getattr(dataset.params, "noise", 0.0)
    assert x.mean(0).abs().max() < 0.02
    assert x.var(0).mean().item() == pytest.approx(1.0 + noise**2, abs=0.02)


@pytest.fixture
def float64_default():
    """torch's default dtype set to float64 for the test (as in a user's float64 session), then restored."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("cls", TOYS)
def test_toy_samples_float32_whatever_the_default_dtype(cls, float64_default):
    # The Dataset contract says float32; every draw names its dtype, so a float64 default changes nothing.
    dataset = cls()
    x = draw(dataset, seed=4)
    assert x.shape == (N, 2) and x.dtype == torch.float32
    noise = getattr(dataset.params, "noise", 0.0)
    assert x.double().mean(0).abs().max() < 0.02  # as in the float32 test: four standard errors
    assert x.double().var(0).mean().item() == pytest.approx(1.0 + noise**2, abs=0.02)
    torch.set_default_dtype(torch.float32)
    assert torch.equal(x, draw(dataset, seed=4))  # the same samples as under the float32 default


def test_moons_have_the_documented_axis_stds():
    x = draw(Moons(Moons.Params(noise=0.0))).double()
    var_y = 5 / 8 - 1 / math.pi - 1 / 16
    scale2 = 1 / ((0.75 + var_y) / 2)
    assert x.std(0)[0].item() == pytest.approx(math.sqrt(0.75 * scale2), abs=0.01)  # about 1.23
    assert x.std(0)[1].item() == pytest.approx(math.sqrt(var_y * scale2), abs=0.01)  # about 0.70


def test_noise_adds_its_variance():
    clean = draw(Moons(Moons.Params(noise=0.0))).double().var(0).mean()
    noisy = draw(Moons(Moons.Params(noise=0.5))).double().var(0).mean()
    assert (noisy - clean).item() == pytest.approx(0.25, abs=0.02)


def test_noiseless_circles_lie_on_their_two_radii_in_equal_proportion():
    dataset = Circles(Circles.Params(noise=0.0, factor=0.3))
    radius = draw(dataset).norm(dim=1)
    outer = 2 / math.sqrt(1 + 0.3**2)
    on_outer = (radius - outer).abs() < 1e-5
    on_inner = (radius - 0.3 * outer).abs() < 1e-5
    assert (on_outer | on_inner).all()
    assert on_outer.double().mean().item() == pytest.approx(0.5, abs=0.01)


def test_noiseless_eight_gaussians_are_their_centres_in_equal_proportion():
    dataset = EightGaussians(EightGaussians.Params(noise=0.0))
    x = draw(dataset)
    distance = torch.cdist(x, dataset.centres())
    assert distance.min(dim=1).values.max() < 1e-5
    counts = torch.bincount(distance.argmin(dim=1), minlength=8).double()
    assert (counts / N - 1 / 8).abs().max() < 0.01  # sd of a share is 0.001


@pytest.mark.parametrize("squares", [4, 5, 2])
def test_checkerboard_samples_only_its_dark_squares_uniformly(squares):
    dataset = Checkerboard(Checkerboard.Params(squares=squares))
    x = draw(dataset)
    assert dataset.is_dark(x).all()
    assert (x.abs() <= math.sqrt(3) + 1e-6).all()
    # Every dark cell equally likely: each holds 1 / n_dark of the samples (sd < 0.0016 here).
    cells = torch.floor((x + math.sqrt(3)) / dataset.cell_width).long()
    flat = cells[:, 1] * squares + cells[:, 0]
    counts = torch.bincount(flat, minlength=squares * squares).double() / N
    n_dark = (squares * squares + 1) // 2
    dark = counts > 0
    assert int(dark.sum()) == n_dark
    assert (counts[dark] - 1 / n_dark).abs().max() < 0.01


def test_checkerboard_is_dark_classifies_cells():
    board = Checkerboard()  # 4 x 4 cells of width sqrt(3) / 2 on [-sqrt(3), sqrt(3)]^2
    w = board.cell_width
    corner = -math.sqrt(3)
    points = torch.tensor(
        [
            [corner + 0.5 * w, corner + 0.5 * w],  # cell (0, 0): dark
            [corner + 1.5 * w, corner + 0.5 * w],  # cell (1, 0): light
            [corner + 1.5 * w, corner + 1.5 * w],  # cell (1, 1): dark
            [3.0, 0.0],  # off the board
        ]
    )
    assert board.is_dark(points).tolist() == [True, False, True, False]


def test_generator_on_another_device_is_refused():
    with pytest.raises(FlowkitError) as error:
        Moons().sample(4, torch.Generator().manual_seed(0), device=torch.device("meta"))
    assert str(error.value) == (
        "the generator lives on 'cpu' but samples were requested on 'meta'; pass a generator made on "
        "the same device (torch.Generator(device='meta'))"
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", TOYS)
def test_toy_generates_on_the_gpu_deterministically(cls):
    device = torch.device("cuda")
    a = cls().sample(1000, torch.Generator(device=device).manual_seed(0), device=device)
    b = cls().sample(1000, torch.Generator(device=device).manual_seed(0), device=device)
    assert a.device.type == "cuda" and a.dtype == torch.float32 and a.shape == (1000, 2)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# The file dataset
# --------------------------------------------------------------------------------------------------


def test_file_dataset_draws_rows_of_the_file(tmp_path):
    rows = np.arange(5 * 3 * 2, dtype=np.float64).reshape(5, 3, 2)
    np.save(tmp_path / "data.npy", rows)
    dataset = FileDataset(FileDataset.Params(path=str(tmp_path / "data.npy")))
    assert dataset.shape == (3, 2) and len(dataset) == 5
    x = draw(dataset, 2000, seed=4)
    assert x.shape == (2000, 3, 2) and x.dtype == torch.float32
    assert torch.equal(x, draw(dataset, 2000, seed=4))
    index = (x[:, 0, 0] / 6).long()  # row i starts with 6 i
    assert torch.equal(x, torch.from_numpy(rows).float()[index])
    share = torch.bincount(index, minlength=5).double() / 2000
    assert (share - 0.2).abs().max() < 0.05  # uniform rows: sd of a share is 0.009


def test_file_dataset_reads_pt_and_resolves_paths_against_the_pipeline_file(tmp_path):
    (tmp_path / "sub").mkdir()
    torch.save(torch.randn(7, 2, dtype=torch.float64), tmp_path / "sub" / "points.pt")
    pipeline = tmp_path / "sub" / "pipe.toml"
    pipeline.write_text("")
    dataset = FileDataset.from_params(
        FileDataset.Params(path="points.pt"), BuildContext(source=str(pipeline))
    )
    assert dataset.file == tmp_path / "sub" / "points.pt"
    assert dataset.shape == (2,) and draw(dataset, 3).shape == (3, 2)


def _error(tmp_path, name):
    with pytest.raises(FlowkitError) as error:
        FileDataset(FileDataset.Params(path=str(tmp_path / name)))
    return str(error.value)


def test_file_dataset_errors_name_the_file(tmp_path):
    f = tmp_path
    assert _error(f, "missing.npy") == f"data file '{f / 'missing.npy'}' does not exist"
    (f / "data.csv").write_text("1,2\n")
    assert (
        _error(f, "data.csv")
        == f"data file '{f / 'data.csv'}' has the suffix '.csv'; expected a .npy or .pt file"
    )
    np.save(f / "ints.npy", np.arange(6).reshape(3, 2))
    assert _error(f, "ints.npy") == (
        f"data file '{f / 'ints.npy'}' holds int64 values; expected floating point samples: float16, "
        "float32 or float64, either byte order (convert with array.astype(numpy.float32))"
    )
    np.save(f / "flat.npy", np.zeros(5))
    assert _error(f, "flat.npy") == (
        f"data file '{f / 'flat.npy'}' holds an array of shape (5,); expected at least 2 dimensions "
        "(N samples, *event shape), e.g. (N, 2)"
    )
    with_nan = np.zeros((4, 2))
    with_nan[1, 0] = np.nan
    with_nan[3, 1] = np.inf
    np.save(f / "nan.npy", with_nan)
    assert _error(f, "nan.npy") == (
        f"data file '{f / 'nan.npy'}' contains 2 NaN or infinite values; remove or impute them first"
    )
    np.save(f / "empty.npy", np.zeros((0, 2)))
    assert _error(f, "empty.npy") == f"data file '{f / 'empty.npy'}' holds no samples (shape (0, 2))"
    torch.save({"x": torch.zeros(3, 2)}, f / "dict.pt")
    assert _error(f, "dict.pt") == (
        f"data file '{f / 'dict.pt'}' holds a dict; expected one tensor of samples "
        "(save it with torch.save(tensor, path))"
    )
    torch.save(torch.zeros(3, 2, dtype=torch.int32), f / "ints.pt")
    assert _error(f, "ints.pt") == (
        f"data file '{f / 'ints.pt'}' holds torch.int32 values; expected floating point samples "
        "(convert with tensor.float())"
    )


#: A pipeline around a ``file`` dataset reading ``{path}``.
FILE_PIPELINE = """
data = {{ kind = "file", path = "{path}" }}

[path]
kind = "gaussian"

[model]
kind = "mlp"
hidden = [16]

[loss]
kind = "cfm"
"""


def test_an_empty_data_file_is_a_clear_error(tmp_path, write_pipeline):
    (tmp_path / "empty.npy").write_bytes(b"")
    path = write_pipeline(FILE_PIPELINE.format(path="empty.npy"))
    with pytest.raises(FlowkitError) as err:
        build_pipeline(path, (), make_manager())
    assert str(err.value).endswith("is not a readable .npy array: No data left in file")


def test_the_resolved_pipeline_finds_a_relative_data_file(tmp_path, write_pipeline):
    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    path = write_pipeline(FILE_PIPELINE.format(path="points.npy"))
    pipe = build_pipeline(path, (), make_manager())
    assert pipe.resolved()["data"]["path"] == str((tmp_path / "points.npy").resolve())
