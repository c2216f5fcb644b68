"""Edit metrics against direct computations, with weights the tests make; missing weights fail early."""

import json
import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from scipy import linalg
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

import lit_hspace.metrics
from lit_hspace.cli import main
from lit_hspace.editing import EditedDirection, ImageEdits
from lit_hspace.metrics import LPIPS, EditMetrics, IdentitySimilarity, inception_fid, masked_mse
from lit_hspace.module import HSpaceEditor
from conftest import write_config


def images(n, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_masked_mse_by_hand():
    edited, reference = images(2), images(1, seed=1)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:16, 4:20] = 1
    diff = (edited - reference).square()
    inside = diff[..., 8:16, 4:20].flatten(1).mean(1)
    outside = (diff.sum((1, 2, 3)) - diff[..., 8:16, 4:20].sum((1, 2, 3))) / (3 * (32 * 32 - 8 * 16))
    torch.testing.assert_close(masked_mse(edited, reference, mask, "inside"), inside)
    torch.testing.assert_close(masked_mse(edited, reference, mask, "outside"), outside)


def test_edit_metrics_score_every_edit_and_average_the_moved_ones():
    """Per-edit scores of 2 directions x 3 strengths against the reconstruction, and means over the non-zero
    strengths accumulated over two images, each recomputed by hand."""
    metrics = EditMetrics(["mse"], 32, ["mouth"])
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:16, 4:20] = 1
    directions = [EditedDirection(0, "mouth", "", mask), EditedDirection(3, "mouth", "", torch.ones(1, 32, 32))]
    expected_inside, shares = [], []
    for seed in (0, 1):
        reconstruction = images(1, seed=10 + seed)[0] * 2 - 1
        edits = images(6, seed=seed).reshape(2, 3, 3, 32, 32) * 2 - 1
        edits[:, 1] = reconstruction  # strength 0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            scores = metrics(ImageEdits(f"img{seed}", None, reconstruction, directions, (-1.0, 0.0, 1.0), edits))
        diff = ((edits + 1) / 2 - (reconstruction + 1) / 2).square()
        inside = torch.stack([(diff[d] * directions[d].mask).flatten(1).sum(1) / (3 * directions[d].mask.sum()) for d in range(2)])
        torch.testing.assert_close(scores.mse["inside"], inside)
        assert scores.mse["inside"][:, 1].abs().max() == 0  # strength 0 is the reconstruction
        moved = diff[:, [0, 2]]
        share = (moved * torch.stack([d.mask for d in directions])[:, None]).flatten(1).sum(1) / moved.flatten(1).sum(1)
        torch.testing.assert_close(scores.inside_share, share)
        expected_inside.append(inside[:, [0, 2]])
        assert scores.reconstruction_mae is None  # seeds: no input to compare with
    means = {k: v.item() for k, v in metrics.means.compute().items()}
    assert means["test/mse_inside"] == pytest.approx(torch.cat(expected_inside).mean().item(), rel=1e-5)
    assert set(means) == {"test/mse_whole", "test/mse_inside", "test/mse_outside"}


def test_reconstruction_error_of_input_images():
    metrics = EditMetrics([], 8, ["mouth"])
    reconstruction, image = torch.zeros(3, 8, 8), torch.full((3, 8, 8), 0.5)  # 0.25 apart in [0, 1]
    edits = ImageEdits("img", image, reconstruction, [EditedDirection(0, "mouth", "", torch.ones(1, 8, 8))], (0.0,), reconstruction[None, None])
    assert metrics(edits).reconstruction_mae == pytest.approx(0.25)
    assert metrics.reconstruction_mae.compute().item() == pytest.approx(0.25)


def lpips_by_hand(net, x, y):
    """The LPIPS formula: unit-normalise each layer's features over channels, square the difference,
    weight channels by the linear head, average over space, sum over layers."""
    fx, fy = net.net(net.scaling_layer(x)), net.net(net.scaling_layer(y))
    total = 0
    for layer, (a, b) in enumerate(zip(fx, fy)):
        a = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
        weights = net.lins[layer].model[-1].weight.flatten()
        total = total + ((a - b).square() * weights[None, :, None, None]).sum(1).mean((1, 2))
    return total


def test_lpips_equals_its_formula():
    torch.manual_seed(0)
    metric = LPIPS(pretrained_backbone=False)  # random AlexNet, the package's linear heads
    edited, reference = images(3), images(1, seed=1)
    expected = lpips_by_hand(metric.net, 2 * edited - 1, (2 * reference - 1).expand(3, -1, -1, -1))
    torch.testing.assert_close(metric(edited, reference), expected, rtol=1e-4, atol=1e-6)
    assert metric(reference, reference).abs().max() < 1e-6


@pytest.fixture(scope="module")
def tiny_arcface(tmp_path_factory):
    """A small ONNX model with ArcFace's interface: (B, 3, 112, 112) -> (B, 16)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.Flatten(), nn.LazyLinear(16))
    x = torch.randn(2, 3, 112, 112)
    net(x)
    path = tmp_path_factory.mktemp("arcface") / "tiny_arcface.onnx"
    torch.onnx.export(net, (x,), str(path), input_names=["data"], output_names=["embedding"],
                      dynamic_axes={"data": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)
    return path


def test_identity_similarity_equals_cosine_of_direct_embeddings(tiny_arcface):
    metric = IdentitySimilarity(tiny_arcface)
    edited, reference = images(3, size=112), images(1, size=112, seed=1)
    session = onnxruntime.InferenceSession(str(tiny_arcface), providers=["CPUExecutionProvider"])

    def embed(x):  # ArcFace input: RGB, (pixel - 127.5) / 127.5, pixels rounded to 8 bits
        pixels = (x * 255).round()
        return torch.from_numpy(session.run(None, {"data": ((pixels - 127.5) / 127.5).numpy()})[0])

    e, r = embed(edited), embed(reference)
    expected = (e @ r.T).flatten() / (e.norm(dim=1) * r.norm())
    torch.testing.assert_close(metric(edited, reference), expected, rtol=1e-4, atol=1e-5)
    assert metric(reference, reference).item() == pytest.approx(1.0, abs=1e-5)


# -- missing weights: the file, where it goes, how to get it; before any compute ----------------------


def test_missing_weights_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=r"lpips metric needs '.*torch/hub/checkpoints/alexnet-owt-7be5be79.pth'.*download"):
        LPIPS()
    with pytest.raises(FileNotFoundError, match=r"fid metric needs '.*torch/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth'"):
        inception_fid()
    with pytest.raises(FileNotFoundError, match=r"id metric needs '.*nowhere/w600k_r50.onnx'.*buffalo_l"):
        IdentitySimilarity(tmp_path / "nowhere" / "w600k_r50.onnx")


def test_a_run_with_missing_metric_weights_stops_before_loading_anything(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        HSpaceEditor(model=str(tiny_model_dir), metrics=["mse", "lpips"])


def test_an_onnx_file_that_is_not_arcface(tmp_path):
    net = nn.Conv2d(3, 2, 3)
    path = tmp_path / "not_arcface.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 50, 50),), str(path), dynamo=False)
    with pytest.raises(ValueError, match="is not an ArcFace recognition model"):
        IdentitySimilarity(path)


class MeanColour(nn.Module):
    """A small FID feature module: per-channel means and standard deviations (6 features)."""

    num_features = 6

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


def frechet(real, fake):
    f1, f2 = MeanColour()(real).double().numpy(), MeanColour()(fake).double().numpy()
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)


def test_fid_of_a_run_compares_edits_with_originals(monkeypatch, tmp_path, tiny_model_dir):
    """The run's FID (here on a small feature module) equals the Frechet distance between the features of its
    originals and of its edits with a non-zero strength, recomputed from the written PNGs."""
    monkeypatch.setattr(lit_hspace.metrics, "inception_fid", lambda: FrechetInceptionDistance(feature=MeanColour(), normalize=True))
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0, 1, 2]}, name="fid")
    cli = main(["test", "--config", str(config), "--model.init_args.metrics=[mse, fid]"])

    run = cli.trainer.log_dir

    def png(path):
        return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float()[None] / 255

    real, fake = [], []
    for seed in range(3):
        folder = f"{run}/images/seed{seed:06d}"
        real.append(png(f"{folder}/reconstruction.png"))  # seeds: the original is the unedited sample
        fake += [png(f"{folder}/d{d:02d}_mouth_a{a:+g}.png") for d in range(2) for a in (-40.0, 40.0)]
    fid = json.load(open(f"{run}/metrics.json"))["test/fid"]
    assert fid == pytest.approx(frechet(torch.cat(real), torch.cat(fake)), rel=0.02, abs=1e-4)

    one = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0]}, name="fid_one")
    with pytest.raises(ValueError, match="fid metric compares two sets of images and needs at least 2 images; the data has 1"):
        main(["test", "--config", str(one), "--model.init_args.metrics=[fid]"])


@pytest.mark.parametrize("metric, module", [("lpips", "lpips"), ("id", "insightface"), ("fid", "torch_fidelity")])
def test_a_missing_evaluation_package_names_the_extra(metric, module, monkeypatch):
    """Without the `metrics` extra, asking for a metric that needs it says which package and how to install it."""
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    for name in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=rf"the {metric} metric needs the package '{module}' .*pip install 'lit_hspace\[metrics\]'"):
        EditMetrics([metric], 16, ["mouth"])
