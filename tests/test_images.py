"""Images and conditional generation: the digits and image-file datasets, the U-Net, label dropout,
classifier-free guidance and the image metrics (docs/math.md, "Classifier-free guidance")."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from flowkit_data.images import Digits, ImageFile
from flowkit_metrics.images import frechet, image_metrics
from flowkit_nets.unet import UNet

import flowkit
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.engine.guidance import GuidedScore, GuidedVelocity, sample_labels
from flowkit.engine.loop import TrainLoop
from flowkit.errors import CapabilityError, ConfigError, FlowkitError
from flowkit.testing import make_manager

TINY_DIGITS = {
    "run": {"seed": 3},
    "data": {"kind": "digits"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "unet", "channels": 8, "channel_mults": [1, 1], "attention": [4], "groups": 4},
    "loss": {"kind": "cfm"},
    "train": {"steps": 4, "batch_size": 16, "log_every": 2, "ema_decay": 0.0, "label_dropout": 0.25},
    "sample": {"steps": 2, "n": 40, "trajectories": 4, "guidance": {"scale": 1.5, "classes": "all"}},
    "evaluate": {"metric": "sliced-w2", "n": 40},
}


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One classifier cache for the module: the reference classifier is trained once."""
    return tmp_path_factory.mktemp("cache")


def _pipeline(manager, **tables):
    spec = {**TINY_DIGITS, **tables}
    return build_pipeline(spec, (), manager)


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------


def test_digits_are_the_scaled_sklearn_images_split_into_disjoint_parts():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = Digits()
    held_x, _ = data.held_out()
    assert data.shape == (1, 8, 8) and data.num_classes == 10
    assert len(data) + len(held_x) == 1797 and len(held_x) == 359
    everything = torch.cat([data.images, held_x]).reshape(1797, 64)
    expected = torch.from_numpy(bunch.images.reshape(1797, 64).astype(np.float32) / 8 - 1)
    # the same images, each exactly once (a permutation of the rows): no image in both parts
    order = lambda rows: rows[np.lexsort(rows.numpy().T[::-1])]  # noqa: E731
    assert torch.equal(order(everything), order(expected))
    assert float(everything.min()) == -1.0 and float(everything.max()) == 1.0
    # each drawn image comes with its own label
    x, y = data.sample_labelled(200, generator=torch.Generator().manual_seed(0))
    lookup = {tuple(row.tolist()): int(label) for row, label in zip(expected, bunch.target, strict=True)}
    assert all(
        lookup[tuple(row.tolist())] == int(label) for row, label in zip(x.reshape(200, 64), y, strict=True)
    )
    assert y.dtype == torch.int64


def test_digits_sample_and_sample_labelled_draw_the_same_images():
    data = Digits()
    a = data.sample(64, generator=torch.Generator().manual_seed(5))
    b, _ = data.sample_labelled(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(FlowkitError, match=r'pip install "flowkit\[images\]"'):
        Digits()


def test_image_file_reads_nhwc_uint8_as_nchw_in_minus_one_one(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 7, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "imgs.npz", images=pixels, labels=labels)
    data = ImageFile(ImageFile.Params(path=str(tmp_path / "imgs.npz"), held_out=0.0))
    assert data.shape == (3, 5, 7) and data.num_classes == 3
    expected = torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
    assert torch.equal(data.images, expected[torch.randperm(6, generator=torch.Generator().manual_seed(0))])
    assert data.held_out() is None


def test_image_file_reads_grey_nhw_floats_and_a_labels_file(tmp_path):
    np.save(tmp_path / "x.npy", np.linspace(-1, 1, 4 * 9, dtype=np.float32).reshape(4, 3, 3))
    np.save(tmp_path / "y.npy", np.array([1, 0, 1, 0], dtype=np.int32))
    data = ImageFile(
        ImageFile.Params(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), held_out=0.25)
    )
    assert data.shape == (1, 3, 3) and data.num_classes == 2
    held_x, held_y = data.held_out()
    assert held_x.shape == (1, 1, 3, 3) and held_y.dtype == torch.int64


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (
            np.full((4, 3, 3), 2.0, np.float32),
            None,
            r"float values in \[0, 2\]; float images must lie in \[-1, 1\]",
        ),
        (np.zeros((4, 3, 3), np.int32), None, "holds int32 values; expected uint8 pixels"),
        (np.zeros((4, 9), np.uint8), None, r"shape \(4, 9\); expected \(N, C, H, W\)"),
        (np.zeros((4, 3, 3), np.uint8), np.array([0, 1, 2]), r"expected one label per image: \(4,\)"),
        (np.zeros((4, 3, 3), np.uint8), np.array([0.0, 1, 2, 3]), "are float64; expected integers"),
        (np.full((4, 3, 3), np.nan, np.float32), None, "NaN or infinite"),
    ],
)
def test_image_file_mistakes_are_clear_errors(tmp_path, images, labels, message):
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(FlowkitError, match=message) as info:
        ImageFile(ImageFile.Params(path=str(tmp_path / "bad.npz")))
    assert "bad.npz" in str(info.value)


def test_image_file_names_a_missing_key_and_a_wrong_suffix(tmp_path):
    np.savez(tmp_path / "a.npz", pixels=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(FlowkitError, match=r"has no array 'images' \(it holds pixels\); set \[data\] key"):
        ImageFile(ImageFile.Params(path=str(tmp_path / "a.npz")))
    with pytest.raises(FlowkitError, match=r"expected a \.npy or \.npz file"):
        ImageFile(ImageFile.Params(path=str(tmp_path / "a.png")))


def test_unlabelled_dataset_refuses_labelled_draws(manager):
    pipe = build_pipeline(
        {
            "data": {"kind": "moons"},
            "path": {"kind": "gaussian"},
            "model": {"kind": "mlp"},
            "loss": {"kind": "cfm"},
        },
        (),
        manager,
    )
    with pytest.raises(CapabilityError, match="dataset 'moons' has no labels"):
        pipe.dataset.sample_labelled(4)


# ---------------------------------------------------------------------------------------------------
# The U-Net
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "attention"), [((1, 8, 8), [4, 8]), ((1, 28, 28), [7, 14]), ((3, 28, 28), [])]
)
def test_unet_fits_8x8_and_28x28_and_starts_at_zero(shape, attention):
    net = UNet(
        UNet.Params(channels=8, channel_mults=[1, 2, 2], attention=attention, groups=4, heads=2),
        data_shape=shape,
        num_classes=10,
    )
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3), torch.tensor([0, 5, 10]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # zero-initialised output convolution


def test_unet_label_conditions_the_output_and_none_is_the_null_class():
    torch.manual_seed(0)
    net = UNet(UNet.Params(channels=8, groups=4, dropout=0.5), data_shape=(1, 8, 8), num_classes=10).eval()
    for parameter in net.parameters():  # leave the zero initialisation: every path contributes
        torch.nn.init.normal_(parameter, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a, b = net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    assert torch.equal(net(x, t), net(x, t, torch.tensor([10, 10])))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))  # dropout is active in training


def test_unet_refuses_vector_data_and_widths_groups_do_not_divide(manager):
    with pytest.raises(
        ConfigError, match=r"unet needs images of shape \(C, H, W\), but the data has shape \(2,\)"
    ):
        build_pipeline({**TINY_DIGITS, "data": {"kind": "moons"}, "sample": {"n": 40}}, (), manager)
    with pytest.raises(ConfigError, match=r"width 12 .* not a multiple of groups = 8"):
        UNet(UNet.Params(channels=12), data_shape=(1, 8, 8))


# ---------------------------------------------------------------------------------------------------
# Guidance
# ---------------------------------------------------------------------------------------------------


class ToyField(torch.nn.Module):
    """``f(x, t, y) = x * (y + 1) + t``: linear in the label, so the guided field is known exactly."""

    def forward(self, x, t, y=None):
        return x * (y.to(x.dtype)[:, None] + 1) + t[:, None]


def test_guided_field_is_one_plus_w_conditional_minus_w_null():
    x, t, y = torch.randn(5, 3), torch.rand(5), torch.tensor([0, 1, 2, 3, 10])
    guided = GuidedVelocity(ToyField(), scale=2.5, null=10)
    guided.labels = y
    f = ToyField()
    expected = 3.5 * f(x, t, y) - 2.5 * f(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(guided(x, t), expected)
    unguided = GuidedVelocity(ToyField(), scale=0.0, null=10)
    unguided.labels = y
    assert torch.equal(unguided(x, t), f(x, t, y))
    guided.labels = y[:3]
    with pytest.raises(RuntimeError, match="batch of 5 with 3 labels"):
        guided(x, t)


def test_guiding_the_score_or_the_velocity_of_a_gaussian_path_is_the_same(manager):
    pipe = build_pipeline(
        {
            "data": {"kind": "moons"},
            "path": {"kind": "gaussian", "schedule": "vp"},
            "model": {"kind": "mlp"},
            "loss": {"kind": "dsm"},
        },
        (),
        manager,
    )
    path = pipe.path
    x, t, y = torch.randn(6, 3), torch.rand(6) * 0.9 + 0.05, torch.tensor([0, 1, 2, 0, 1, 3])
    score = GuidedScore(ToyField(), scale=1.7, null=3)
    score.labels = y
    via_score = path.velocity_from_score(score)(x, t)

    class Converted(torch.nn.Module):  # the velocity of the conditional score, per label
        def forward(self, x, t, y=None):
            labelled = GuidedScore(ToyField(), scale=0.0, null=3)
            labelled.labels = y
            return path.velocity_from_score(labelled)(x, t)

    velocity = GuidedVelocity(Converted(), scale=1.7, null=3)
    velocity.labels = y
    torch.testing.assert_close(via_score, velocity(x, t))


def test_sample_labels_cycle_through_the_asked_classes(manager):
    assert sample_labels(_pipeline(manager), 23).tolist() == [*range(10), *range(10), 0, 1, 2]
    pick = _pipeline(manager, sample={**TINY_DIGITS["sample"], "guidance": {"scale": 1.0, "classes": [7, 3]}})
    assert sample_labels(pick, 5).tolist() == [7, 3, 7, 3, 7]
    null = _pipeline(manager, sample={**TINY_DIGITS["sample"], "guidance": {"classes": "null"}})
    assert sample_labels(null, 3).tolist() == [10, 10, 10]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"sample": {"n": 40, "guidance": {"scale": 2.0, "classes": [3, 12]}}},
            r"classes: \[12\] are not classes; the dataset's classes are 0 .. 9",
        ),
        (
            {"train": {"label_dropout": 0.0}},
            r"guidance scale = 1.5 needs the unconditional .* \[train\] label_dropout = 0 never trains it",
        ),
        (
            {"model": {"kind": "unet", "channels": 8, "groups": 4, "class_conditional": False}},
            "model 'unet' is not conditional",
        ),
    ],
)
def test_impossible_conditioning_is_refused_at_build_time(manager, tables, message):
    with pytest.raises(ConfigError, match=message):
        _pipeline(manager, **tables)


def test_guidance_of_an_unconditional_pipeline_is_refused(manager):
    spec = {
        "data": {"kind": "moons"},
        "path": {"kind": "gaussian"},
        "model": {"kind": "mlp"},
        "loss": {"kind": "cfm"},
        "sample": {"guidance": {"scale": 1.0}},
    }
    with pytest.raises(ConfigError, match=r"\[sample\] guidance: model 'mlp' is not conditional"):
        build_pipeline(spec, (), manager)
    with pytest.raises(
        ConfigError,
        match=r"\[sample.guidance\] key 'classes': expected one of 'all', 'null' or a list of integers",
    ):
        build_pipeline({**spec, "sample": {"guidance": {"classes": "some"}}}, (), manager)


# ---------------------------------------------------------------------------------------------------
# Training and runs
# ---------------------------------------------------------------------------------------------------


def test_label_dropout_replaces_labels_by_the_null_class_at_its_rate(manager):
    loop = TrainLoop(
        _pipeline(manager, train={**TINY_DIGITS["train"], "batch_size": 4000, "label_dropout": 0.3})
    )
    _, y = loop.labelled_batch()
    share = float((y == 10).double().mean())
    assert abs(share - 0.3) < 0.03, share  # 4000 draws: std 0.007
    none = TrainLoop(
        _pipeline(
            manager,
            train={**TINY_DIGITS["train"], "batch_size": 4000, "label_dropout": 0.0},
            sample={**TINY_DIGITS["sample"], "guidance": {"scale": 0.0}},
        )
    )
    assert int((none.labelled_batch()[1] == 10).sum()) == 0


def test_the_loss_is_given_the_labels(manager, monkeypatch):
    pipe = _pipeline(manager)
    seen = []
    original = type(pipe.loss).loss_at

    def spy(self, model, path, z, t, noise, generator=None, y=None):
        seen.append(y)
        return original(self, model, path, z, t, noise, generator, y=y)

    monkeypatch.setattr(type(pipe.loss), "loss_at", spy)
    TrainLoop(pipe).step()
    assert seen[0] is not None and seen[0].shape == (16,) and int(seen[0].max()) <= 10


def test_conditional_training_resumes_bitwise(manager):
    first = TrainLoop(_pipeline(manager))
    list(first.run(2))
    state = copy.deepcopy(first.state_dict())  # what a checkpoint holds (the live tensors move on)
    list(first.run(4))
    second = TrainLoop(_pipeline(manager))
    assert second.load_state_dict(state) == 2
    list(second.run(4))
    a, b = first.network.state_dict(), second.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_conditional_run_writes_labels_samples_grid_and_image_metrics(
    manager, tmp_path, monkeypatch, cache
):
    monkeypatch.setenv("FLOWKIT_CACHE", str(cache))
    pipe = _pipeline(manager)
    run = run_pipeline(pipe, manager, out=str(tmp_path / "run"), quiet=True)
    labels = np.load(run.directory / "labels.npy")
    samples = np.load(run.directory / "samples.npy")
    assert labels.tolist() == [i % 10 for i in range(40)]
    assert samples.shape == (40, 1, 8, 8)
    assert samples.min() == -1.0 and samples.max() == 1.0  # clipped to the digits' range (noise exceeds it)
    assert (run.directory / "samples.png").stat().st_size > 1000
    metrics = run.metrics
    assert metrics["classifier_accuracy"] >= 0.9
    assert 0.0 <= metrics["class_accuracy"] <= 1.0
    assert metrics["frechet_ratio"] == pytest.approx(metrics["frechet"] / metrics["frechet_floor"])
    assert list((cache / "classifiers").glob("*.pt"))  # cached for the next run


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(20000, 3, generator=g, dtype=torch.float64) + torch.tensor(
        [1.0, 0.0, 0.0], dtype=torch.float64
    )
    # N(0, I) vs N(m, 4 I): |m|^2 + 3 (1 + 4 - 2 * 2) = 1 + 3
    assert frechet(a, b) == pytest.approx(4.0, rel=0.03)
    assert frechet(a, a) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.slow
def test_the_reference_classifier_reads_real_digits_and_not_shuffled_labels(monkeypatch, cache):
    monkeypatch.setenv("FLOWKIT_CACHE", str(cache))
    data = Digits()
    x, y = data.held_out()
    right = image_metrics(data, x, y, seed=0)
    wrong = image_metrics(data, x, (y + 1) % 10, seed=0)
    assert right["class_accuracy"] >= 0.9 and wrong["class_accuracy"] <= 0.1
    # held-out images are as close to the held-out set as the training images are: ratio below 1
    assert right["frechet_ratio"] < 1.0
    noise = image_metrics(data, torch.rand_like(x) * 2 - 1, y, seed=0)
    assert noise["frechet_ratio"] > 10


# ---------------------------------------------------------------------------------------------------
# CUDA: bf16 autocast and torch.compile of the U-Net (skipped without a GPU)
# ---------------------------------------------------------------------------------------------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@CUDA
def test_unet_trains_under_bf16_autocast_and_compile_and_samples_guided_on_cuda(
    manager, tmp_path, monkeypatch
):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    device = {"kind": "cuda", "precision": "bf16", "compile": True}
    pipe = _pipeline(manager, run={"seed": 3, "device": device}, train={**TINY_DIGITS["train"], "steps": 6})
    assert pipe.capture  # heun on CUDA: the guided sampler runs as a captured graph
    with torch.autocast("cuda", dtype=torch.bfloat16):
        x = torch.randn(4, 1, 8, 8, device="cuda")
        out = pipe.network(x, torch.rand(4, device="cuda"), torch.tensor([0, 1, 2, 10], device="cuda"))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    run = run_pipeline(pipe, manager, out=str(tmp_path / "run"), quiet=True)
    samples = np.load(run.directory / "samples.npy")
    assert samples.shape == (40, 1, 8, 8) and np.isfinite(samples).all()
    assert np.isfinite(run.metrics["final_loss"])


def test_an_image_file_pipeline_resolves_its_files_and_samples_again_with_labels(manager, tmp_path):
    from flowkit.engine import sample_run

    pixels = np.random.default_rng(1).integers(0, 256, size=(30, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    np.save(tmp_path / "y.npy", np.arange(30) % 3)
    text = (
        '[data]\nkind = "images"\npath = "x.npy"\nlabels = "y.npy"\nlayout = "NCHW"\n'
        '[path]\nkind = "gaussian"\n[model]\nkind = "unet"\nchannels = 8\ngroups = 4\nchannel_mults = [1]\n'
        '[loss]\nkind = "cfm"\n[train]\nsteps = 2\nbatch_size = 8\n'
        "[sample]\nsteps = 1\nn = 6\ntrajectories = 0\nguidance = { scale = 1.0, classes = [2] }\n"
        '[evaluate]\nmetric = "sliced-w2"\nn = 6\n[report]\nplots = false\n'
    )
    (tmp_path / "images.toml").write_text(text)
    pipe = build_pipeline(tmp_path / "images.toml", (), manager)
    assert pipe.dataset.params.path == str((tmp_path / "x.npy").resolve())
    assert pipe.dataset.num_classes == 3 and pipe.model.num_classes == 3
    run = run_pipeline(pipe, manager, out=str(tmp_path / "run"), quiet=True)
    assert np.load(run.directory / "labels.npy").tolist() == [2] * 6
    target, record = sample_run(run.directory, manager, n=4)
    assert np.load(record["labels"]).tolist() == [2] * 4 and np.load(target).shape == (4, 1, 8, 8)
    done = flowkit.open_run(run.directory, manager)  # the Python API says the classes too
    assert done.labels is not None and done.labels.tolist() == [2] * 6
    assert done.pipeline.labels(3).tolist() == [2] * 3


def test_guided_dynamics_of_a_dsm_model_is_the_guided_combination_of_its_sde_drifts(manager):
    from flowkit.engine.guidance import guided_dynamics

    sample = {**TINY_DIGITS["sample"], "simulator": "euler-maruyama"}
    spec = {
        "path": {"kind": "gaussian", "schedule": "vp"},
        "loss": {"kind": "dsm"},
        "sample": {**sample, "dynamics": {"kind": "extension-sde", "sigma": 0.7}},
    }
    w = 1.5  # TINY_DIGITS' guidance scale
    guided_pipe = _pipeline(manager, **spec)
    plain_pipe = _pipeline(manager, **{**spec, "sample": {**spec["sample"], "guidance": {"scale": 0.0}}})
    for parameter in guided_pipe.model.parameters():  # a network whose output depends on the label
        torch.nn.init.normal_(parameter, std=0.05)
    plain_pipe.model.load_state_dict(guided_pipe.model.state_dict())
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5)
    y, null = torch.tensor([0, 3, 5, 9]), torch.full((4,), 10)
    # the drift u + sigma^2/2 s is affine in the score with label-free coefficients (docs/math.md)
    drift = guided_dynamics(guided_pipe, y).drift(x, t)
    expected = (1 + w) * guided_dynamics(plain_pipe, y).drift(x, t) - w * guided_dynamics(
        plain_pipe, null
    ).drift(x, t)
    torch.testing.assert_close(drift, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(drift, guided_dynamics(plain_pipe, y).drift(x, t), atol=1e-3)


def test_dropout_training_neither_reads_nor_changes_torchs_global_generator(manager):
    model = {**TINY_DIGITS["model"], "dropout": 0.3}

    def train(global_seed):
        loop = TrainLoop(_pipeline(manager, model=model))
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        list(loop.run(3))
        assert torch.equal(before, torch.get_rng_state()), "training consumed the global RNG"
        return loop.network.state_dict()

    a, b = train(1), train(2)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the dropout masks come from the run seed, not torch's

    first = TrainLoop(_pipeline(manager, model=model))  # and a resumed run draws the same masks
    list(first.run(2))
    state = copy.deepcopy(first.state_dict())
    list(first.run(4))
    second = TrainLoop(_pipeline(manager, model=model))
    second.load_state_dict(state)
    list(second.run(4))
    c, d = first.network.state_dict(), second.network.state_dict()
    assert all(torch.equal(c[k], d[k]) for k in c)
