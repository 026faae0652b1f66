"""FID and KID (plugins/flowkit_metrics/fid.py, inception.py): the Fréchet distance against the closed
form between two Gaussians, KID against a direct unbiased MMD, pytorch-fid's state dict loading into
the Inception written here, the reference cache, and the one-line errors (no weights: where to get
them). The tests measure through the stand-in ``features = "pixels"``, the same code path as Inception."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from flowkit_metrics.fid import FID, KID, frechet_from_moments
from flowkit_metrics.inception import (
    WEIGHTS_URL,
    WEIGHTS_VARIABLE,
    FIDInception,
    load_inception,
    weights_file,
)

from flowkit.errors import FlowkitError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(WEIGHTS_VARIABLE, raising=False)


def _spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.5 * np.eye(dim)


def _sqrt_psd(s):
    values, vectors = np.linalg.eigh(s)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _closed_form(m1, s1, m2, s2):
    """W2^2 between N(m1, S1) and N(m2, S2): |m1 - m2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)."""
    r1 = _sqrt_psd(s1)
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2 * _sqrt_psd(r1 @ s2 @ r1)))


def _with_moments(rng, n, mean, cov):
    """``n`` points whose sample mean and covariance (ddof 1) are exactly ``mean`` and ``cov``."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance: I
    return mean + z @ np.linalg.cholesky(cov).T


def test_frechet_of_moments_is_the_closed_form_between_gaussians():
    rng = np.random.default_rng(0)
    for dim in (1, 3, 8):
        m1, m2, s1, s2 = rng.normal(size=dim), rng.normal(size=dim), _spd(rng, dim), _spd(rng, dim)
        assert frechet_from_moments(m1, s1, m2, s2) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-9)
    assert frechet_from_moments(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_gaussian_image_sets_is_the_closed_form_of_their_gaussians():
    rng = np.random.default_rng(1)
    m1, m2, s1, s2 = rng.normal(size=4), rng.normal(size=4), _spd(rng, 4), _spd(rng, 4)
    a = torch.from_numpy(_with_moments(rng, 300, m1, s1)).reshape(300, 1, 2, 2)
    b = torch.from_numpy(_with_moments(rng, 500, m2, s2)).reshape(500, 1, 2, 2)
    fid = FID(FID.Params(features="pixels", batch=64))
    assert fid(a, b) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-7)


def _direct_mmd(x, y):
    """The unbiased squared MMD with k(a, b) = (a.b / F + 1)^3, written out pair by pair."""
    m, dim = len(x), x.shape[1]
    k = lambda a, b: (float(a @ b) / dim + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd_averaged_over_its_subsets():
    rng = np.random.default_rng(2)
    # float32 values: the feature network reads float32 (as Inception does), the MMD is float64
    a = torch.from_numpy(rng.normal(size=(12, 1, 1, 3)).astype(np.float32)).double()
    b = torch.from_numpy(rng.normal(0.5, 1.2, size=(15, 1, 1, 3)).astype(np.float32)).double()
    # one subset as large as the smaller set
    whole = KID(KID.Params(features="pixels", subsets=1, subset_size=12))
    generator = torch.Generator().manual_seed(0)
    rows_a, rows_b = torch.randperm(12, generator=generator), torch.randperm(15, generator=generator)[:12]
    x, y = a.reshape(12, 3).numpy()[rows_a.numpy()], b.reshape(15, 3).numpy()[rows_b.numpy()]
    assert whole(a, b) == pytest.approx(_direct_mmd(x, y), rel=1e-10)
    # several subsets: the mean of the direct MMD of each, drawn in the same order
    kid = KID(KID.Params(features="pixels", subsets=3, subset_size=5, seed=7))
    generator = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(3):
        ra, rb = torch.randperm(12, generator=generator)[:5], torch.randperm(15, generator=generator)[:5]
        expected.append(
            _direct_mmd(a.reshape(12, 3).numpy()[ra.numpy()], b.reshape(15, 3).numpy()[rb.numpy()])
        )
    assert kid(a, b) == pytest.approx(float(np.mean(expected)), rel=1e-10)


def test_the_reference_features_are_cached_per_reference(tmp_path):
    rng = np.random.default_rng(3)
    a, b = (torch.from_numpy(rng.normal(size=(40, 1, 2, 2))) for _ in range(2))
    fid = FID(FID.Params(features="pixels"))
    first = fid(a, b)
    cached = list((tmp_path / "cache" / "fid").glob("*.npy"))
    assert len(cached) == 1 and fid.last_reference["cache"] == str(cached[0])
    assert fid.last_reference["count"] == 40 and fid.last_reference["features"].startswith("pixels")
    # the cached features are what is read back: planting other features there changes the distance
    np.save(cached[0], np.zeros((40, 4)))
    assert fid(a, b) != first
    # another reference is another cache file
    fid(a, a)
    assert len(list((tmp_path / "cache" / "fid").glob("*.npy"))) == 2


# ---------------------------------------------------------------------------------------------------
# The Inception network and its weights
# ---------------------------------------------------------------------------------------------------


def _conv(prefix, cin, cout, kh, kw=None):
    """pytorch-fid's (torchvision's) BasicConv2d keys: conv without bias, batch norm."""
    kw = kh if kw is None else kw
    return {
        f"{prefix}.conv.weight": (cout, cin, kh, kw),
        **{f"{prefix}.bn.{name}": (cout,) for name in ("weight", "bias", "running_mean", "running_var")},
    }


def _pytorch_fid_shapes():
    """Every key of pt_inception-2015-12-05-6726825d.pth and its shape, written from torchvision's
    Inception3 (num_classes = 1008, aux_logits = False) with pytorch-fid's FIDInceptionA/C/E blocks."""
    keys = {}
    for name, cin, cout, k in (
        ("Conv2d_1a_3x3", 3, 32, 3),
        ("Conv2d_2a_3x3", 32, 32, 3),
        ("Conv2d_2b_3x3", 32, 64, 3),
        ("Conv2d_3b_1x1", 64, 80, 1),
        ("Conv2d_4a_3x3", 80, 192, 3),
    ):
        keys |= _conv(name, cin, cout, k)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        keys |= _conv(f"{name}.branch1x1", cin, 64, 1) | _conv(f"{name}.branch5x5_1", cin, 48, 1)
        keys |= _conv(f"{name}.branch5x5_2", 48, 64, 5) | _conv(f"{name}.branch3x3dbl_1", cin, 64, 1)
        keys |= _conv(f"{name}.branch3x3dbl_2", 64, 96, 3) | _conv(f"{name}.branch3x3dbl_3", 96, 96, 3)
        keys |= _conv(f"{name}.branch_pool", cin, pool, 1)
    keys |= _conv("Mixed_6a.branch3x3", 288, 384, 3) | _conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    keys |= _conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3) | _conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        keys |= _conv(f"{name}.branch1x1", 768, 192, 1) | _conv(f"{name}.branch7x7_1", 768, c7, 1)
        keys |= _conv(f"{name}.branch7x7_2", c7, c7, 1, 7) | _conv(f"{name}.branch7x7_3", c7, 192, 7, 1)
        keys |= _conv(f"{name}.branch7x7dbl_1", 768, c7, 1) | _conv(f"{name}.branch7x7dbl_2", c7, c7, 7, 1)
        keys |= _conv(f"{name}.branch7x7dbl_3", c7, c7, 1, 7) | _conv(f"{name}.branch7x7dbl_4", c7, c7, 7, 1)
        keys |= _conv(f"{name}.branch7x7dbl_5", c7, 192, 1, 7) | _conv(f"{name}.branch_pool", 768, 192, 1)
    keys |= _conv("Mixed_7a.branch3x3_1", 768, 192, 1) | _conv("Mixed_7a.branch3x3_2", 192, 320, 3)
    keys |= _conv("Mixed_7a.branch7x7x3_1", 768, 192, 1) | _conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    keys |= _conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1) | _conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        keys |= _conv(f"{name}.branch1x1", cin, 320, 1) | _conv(f"{name}.branch3x3_1", cin, 384, 1)
        keys |= _conv(f"{name}.branch3x3_2a", 384, 384, 1, 3) | _conv(f"{name}.branch3x3_2b", 384, 384, 3, 1)
        keys |= _conv(f"{name}.branch3x3dbl_1", cin, 448, 1) | _conv(f"{name}.branch3x3dbl_2", 448, 384, 3)
        keys |= _conv(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3)
        keys |= _conv(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1) | _conv(f"{name}.branch_pool", cin, 192, 1)
    return keys | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A state dict with pytorch-fid's keys and shapes, random values (positive variances)."""
    generator = torch.Generator().manual_seed(0)
    state = {
        key: torch.rand(shape, generator=generator) + 0.5
        if key.endswith("running_var")
        else 0.05 * torch.randn(shape, generator=generator)
        for key, shape in _pytorch_fid_shapes().items()
    }
    file = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, file)
    return file, state


def test_pytorch_fid_keys_and_shapes_load_into_the_inception_written_here(weights):
    file, state = weights
    network = load_inception(file)
    # every key with its shape: nothing missing, nothing unexpected (batch norm's counters aside)
    mine = {
        k: tuple(v.shape) for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    assert mine == {k: tuple(v.shape) for k, v in state.items()}
    assert torch.equal(network.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    # torchvision's Inception3 has 27,161,264 parameters; FID's drops the aux head and has 1008 classes
    assert sum(p.numel() for p in network.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    # a file with batch norm's step counters (as torchvision's state_dict() writes them) loads too
    counted = {
        **state,
        **{k: torch.tensor(0) for k in network.state_dict() if k.endswith("num_batches_tracked")},
    }
    torch.save(counted, file.with_name("counted.pth"))
    assert torch.equal(load_inception(file.with_name("counted.pth")).fc.bias, state["fc.bias"])
    with torch.no_grad():  # fully convolutional down to 75 x 75 (the metric always feeds 299 x 299)
        features = network(torch.zeros(2, 3, 75, 75))
    assert features.shape == (2, FIDInception.dim)


def test_inception_features_resize_grey_images_to_its_input_size(weights, monkeypatch):
    file, _ = weights
    fid = FID(FID.Params(weights=str(file), batch=3))
    # a smaller input size than 299 keeps the test cheap; the code path is the one of 299
    fid.network().input_size = 80
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    direct = torch.nn.functional.interpolate(
        images.expand(-1, 3, -1, -1), size=(80, 80), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        expected = fid.network()(direct).double()
    assert torch.allclose(fid.features(images), expected, atol=1e-5)
    # the environment variable names the file where the pipeline does not
    monkeypatch.setenv(WEIGHTS_VARIABLE, str(file))
    assert weights_file("") == file


def test_a_state_dict_of_another_network_is_one_line_naming_the_file(tmp_path):
    file = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, file)
    with pytest.raises(FlowkitError) as error:
        load_inception(file)
    message = str(error.value)
    assert message.startswith(f"Inception weights file '{file}' does not fit FID's Inception-v3")
    assert "\n" not in message


def test_without_weights_the_error_says_where_to_get_them():
    with pytest.raises(FlowkitError) as error:
        FID(FID.Params())(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    assert WEIGHTS_URL in str(error.value) and WEIGHTS_VARIABLE in str(error.value)
    assert "nothing is downloaded" in str(error.value) and "\n" not in str(error.value)


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FlowkitError, match=r"Inception weights file '.*nowhere.pth' .* does not exist"):
        FID(FID.Params(weights=str(tmp_path / "nowhere.pth"))).network()


# ---------------------------------------------------------------------------------------------------
# In a pipeline
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fid", "kid"])
def test_a_run_states_the_reference_and_the_held_out_floor(tmp_path, kind):
    from flowkit.engine import build_pipeline, run_pipeline
    from flowkit.testing import make_manager

    # unlabelled images (no reference classifier to train), 20% held out
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (150, 1, 4, 4), dtype=np.uint8))
    spec = {
        "run": {"seed": 0},
        "data": {"kind": "images", "path": str(tmp_path / "x.npy")},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
        "model": {"kind": "unet", "channels": 8, "channel_mults": [1], "attention": [], "groups": 4},
        "loss": {"kind": "cfm"},
        "train": {"steps": 2, "batch_size": 8},
        "sample": {"steps": 2, "n": 30, "trajectories": 0},
        "evaluate": {
            "metric": {"kind": kind, "features": "pixels", "subsets": 2}
            if kind == "kid"
            else {"kind": kind, "features": "pixels"},
            "n": 30,
            "floor_repeats": 2,
        },
    }
    manager = make_manager(warn=False)
    run = run_pipeline(build_pipeline(spec, (), manager), manager, out=str(tmp_path / "run"), quiet=True)
    metrics = json.loads((run.directory / "metrics.json").read_text())
    assert metrics["metric"] == kind and metrics["distance"] > 0
    record = metrics[f"{kind}_reference"]
    assert (
        record["count"] == 30
        and record["split"].startswith("train")
        and record["features"].startswith("pixels")
    )
    # held-out data lie far closer to the training reference than the samples of an untrained model
    assert metrics[f"{kind}_held_out_count"] == 30 and abs(metrics[f"{kind}_held_out"]) < metrics["distance"]


def test_a_pipeline_without_the_weights_is_refused_when_it_is_built(tmp_path):
    from flowkit.engine import build_pipeline
    from flowkit.testing import make_manager

    np.save(tmp_path / "x.npy", np.zeros((10, 1, 4, 4), dtype=np.uint8))
    spec = {
        "data": {"kind": "images", "path": str(tmp_path / "x.npy")},
        "path": {"kind": "gaussian"},
        "model": {"kind": "unet", "channels": 8, "channel_mults": [1], "attention": [], "groups": 4},
        "loss": {"kind": "cfm"},
        "evaluate": {"metric": "fid"},
    }
    with pytest.raises(FlowkitError) as error:
        build_pipeline(spec, (), make_manager(warn=False))
    assert WEIGHTS_URL in str(error.value) and "\n" not in str(error.value)
