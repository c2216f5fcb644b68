"""Automatic region masks: planted Jacobian groups, k-means, naming by overlap, ground truth, bad input."""

import numpy as np
import pytest
import torch

from lit_hspace.jacobian import JacobianOperator
from lit_hspace.regions import PRESETS, Region
from lit_hspace.segment import (
    auto_regions,
    check_auto_names,
    image_masks,
    jacobian_features,
    kmeans,
    label_masks,
    name_parts,
    segment_features,
)
from lit_hspace.segment.truth import changeable_pixels, dataset_factors
from lit_hspace.synth.faces import FACTORS, render

SIDE = 8


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two label maps split the pixels identically, whatever the label numbers."""
    pairs = set(zip(a.flatten().tolist(), b.flatten().tolist()))
    return len(pairs) == len(set(a.flatten().tolist())) == len(set(b.flatten().tolist()))


def planted_operator(groups: torch.Tensor, h_dim: int = 12, channels: int = 3, seed: int = 0) -> JacobianOperator:
    """A linear map h -> (channels, SIDE, SIDE) whose output rows at a pixel of group g are multiples
    (between 1 and 2) of that group's own h-space direction, one orthonormal direction per group and channel."""
    gen = torch.Generator().manual_seed(seed)
    n_groups = int(groups.max()) + 1
    directions = torch.linalg.qr(torch.randn(h_dim, n_groups * channels, generator=gen, dtype=torch.float64)).Q.T
    directions = directions.float().reshape(n_groups, channels, h_dim)
    scale = 1 + torch.rand(channels, SIDE, SIDE, generator=gen)
    rows = scale[..., None] * directions[groups].permute(2, 0, 1, 3)  # (channels, SIDE, SIDE, h_dim)
    jacobian = rows.reshape(-1, h_dim)
    return JacobianOperator(lambda h: (h.flatten(1) @ jacobian.T).reshape(len(h), channels, SIDE, SIDE), torch.zeros(1, h_dim))


@pytest.fixture
def planted_groups() -> torch.Tensor:
    """Four groups: two blocks, a stripe and the rest (the rest in two places, not connected)."""
    groups = torch.zeros(SIDE, SIDE, dtype=torch.long)
    groups[1:3, 1:4] = 1
    groups[5:7, 4:8] = 2
    groups[:, 0] = 3
    return groups


def test_planted_groups_recovered_exactly(planted_groups):
    """Pixels whose Jacobian rows respond to the same h-space directions form one part, exactly."""
    features = jacobian_features(planted_operator(planted_groups), k=12, generator=torch.Generator().manual_seed(0))
    features = features / features.norm(dim=0, keepdim=True)
    masks = segment_features(features, parts=4)
    assert same_partition(masks.argmax(0)[0], planted_groups)


def test_kmeans_finds_planted_clusters_in_raster_order():
    """Three tight, far-apart clusters come back exactly, numbered by first appearance, the same every run."""
    gen = torch.Generator().manual_seed(1)
    truth = torch.tensor([2, 2, 0, 1, 0, 1, 2, 0, 1, 1] * 5)
    centres = torch.tensor([[0.0, 10.0], [10.0, 0.0], [-10.0, -10.0]])
    points = centres[truth] + 0.1 * torch.randn(len(truth), 2, generator=gen)
    labels = kmeans(points, 3, seed=3)
    assert same_partition(labels, truth)
    assert labels[:4].tolist() == [0, 0, 1, 2]
    assert torch.equal(labels, kmeans(points, 3, seed=3))


def test_label_masks_are_a_binary_partition():
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 2, 1, 0])
    masks = label_masks(labels, 3, 3, 3)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(masks.sum(0), torch.ones(1, 3, 3))
    assert torch.equal(masks[1, 0], torch.tensor([[0.0, 1, 1], [0, 0, 0], [0, 1, 0]]))


def test_names_follow_the_preset_by_overlap():
    """Each part takes the name of the preset box it overlaps most, one part per name; the rest are part<i>."""
    size = 32
    mouth, eyes = Region("m", PRESETS["synth"]["mouth"]).to_mask(size), Region("e", PRESETS["synth"]["eyes"]).to_mask(size)
    inner_mouth = mouth.clone()
    inner_mouth[:, :21, :] = 0  # the lower right of the mouth box, clear of the nose box: overlaps mouth less
    inner_mouth[:, :, :14] = 0
    outside = torch.zeros(1, size, size)
    outside[:, 28:, :3] = 1  # overlaps no box
    rest = 1 - torch.clamp(mouth + eyes + outside, max=1)
    parts = name_parts(torch.stack([outside, inner_mouth, eyes, mouth, rest]), "synth")
    assert [p.name for p in parts] == ["part0", "part1", "eyes", "mouth", "hair"]
    assert parts[2].overlap == 1.0 and parts[3].overlap == 1.0 and parts[0].overlap == 0.0
    hair = Region("hair", PRESETS["synth"]["hair"]).to_mask(size).bool()
    assert parts[4].overlap == pytest.approx((hair & rest.bool()).sum().item() / (hair | rest.bool()).sum().item())
    assert [p.name for p in name_parts(torch.stack([rest, mouth]), None)] == ["part0", "part1"]


def test_auto_regions_on_a_model_are_binary_masks_covering_the_image(tiny_model):
    """Every signal gives `parts` binary masks that together cover each pixel exactly once."""
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for signal in ("jacobian", "decoder", "both"):
        parts = auto_regions(tiny_model, x_t, 600, parts=5, preset="celebahq", signal=signal, k=4, iterations=2)
        masks = torch.stack([p.mask for p in parts])
        assert masks.shape == (5, 1, 16, 16)
        assert set(masks.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(masks.sum(0), torch.ones(1, 16, 16))
        for p in parts:  # each named part overlaps its preset box by the IoU it reports
            if not p.name.startswith("part"):
                box = Region(p.name, PRESETS["celebahq"][p.name]).to_mask(16).bool()
                assert p.overlap == pytest.approx((p.mask.bool() & box).sum().item() / (p.mask.bool() | box).sum().item())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(parts=1), r"parts=1: an image of 256 pixels splits into 2 \.\. 256 parts"),
        (dict(parts=257), r"parts=257: an image of 256 pixels splits into 2 \.\. 256 parts"),
        (dict(preset="faces"), r"unknown preset 'faces': presets are celebahq, church, synth"),
        (dict(signal="attention"), r"unknown signal 'attention': choose one of jacobian, decoder, both"),
    ],
)
def test_bad_settings_raise_before_compute(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        auto_regions(tiny_model, torch.zeros(1, 3, 16, 16), 600, **kwargs)


def test_latent_of_another_size_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"x_t has shape \(1, 3, 32, 32\); this model needs \(1, 3, 16, 16\)"):
        auto_regions(tiny_model, torch.zeros(1, 3, 32, 32), 600)


def test_image_masks_mix_automatic_and_box_regions(tiny_model):
    """Automatic regions take their part's mask, box regions their box; names are checked before compute."""
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    box = Region("own", (0.0, 0.0, 0.5, 0.5))
    options = dict(k=4, iterations=2)
    found = auto_regions(tiny_model, x_t, 600, parts=4, preset=None, **options)
    masks = image_masks(tiny_model, x_t, 600, [Region("part2", auto=True), box], None, parts=4, **options)
    assert torch.equal(masks[0], found[2].mask) and torch.equal(masks[1], box.to_mask(16))
    with pytest.raises(ValueError, match=r"automatic region 'mouth' cannot be named: with preset 'None' and 4 parts"):
        check_auto_names([Region("mouth", auto=True)], None, 4)


def test_ground_truth_holds_exactly_the_pixels_the_factors_change():
    """Random joint values of a region's factors change pixels inside its ground truth only, and the ground
    truth lies inside the region's preset box (the generator's promise)."""
    factors = dataset_factors(0)
    rng = np.random.default_rng(0)
    base = np.asarray(render(factors, 32), dtype=np.int16)
    for region in ("mouth", "eyes", "nose"):
        truth = changeable_pixels(factors, region, 32)[0].bool().numpy()
        box = Region(region, PRESETS["synth"][region]).to_mask(32)[0].bool().numpy()
        assert truth.any() and not (truth & ~box).any()
        for _ in range(3):
            moved = {**factors, **{f.name: rng.uniform(f.low, f.high) for f in FACTORS if f.region == region}}
            changed = (np.asarray(render(moved, 32), dtype=np.int16) != base).any(-1)
            assert not (changed & ~truth).any()
    with pytest.raises(ValueError, match="no factor changes region 'chin'"):
        changeable_pixels(factors, "chin", 32)


def test_cli_writes_masks_regions_and_figure(tiny_model_dir, tmp_path):
    """Per image: one binary PNG per part (together the whole image), a regions.yaml whose entries are
    Regions that load those same masks, and the figure; seeds and files side by side."""
    import yaml
    from PIL import Image

    from lit_hspace.segment.cli import main

    image = tmp_path / "face.png"
    Image.new("RGB", (16, 16), (200, 120, 90)).save(image)
    folders = main(["--model", str(tiny_model_dir), "--images", str(image), "--parts", "3", "--preset", "celebahq",
                    "--out", str(tmp_path / "out"), "--steps", "5"])
    folders += main(["--model", str(tiny_model_dir), "--seeds", "7", "--parts", "3", "--out", str(tmp_path / "out"), "--steps", "5"])
    assert [f.name for f in folders] == ["face", "seed000007"]
    for folder in folders:
        entries = yaml.safe_load((folder / "regions.yaml").read_text())
        assert len(entries) == 3
        union = torch.zeros(1, 16, 16)
        for entry in entries:
            pixels = np.asarray(Image.open(entry["mask"]))
            assert pixels.shape == (16, 16) and set(np.unique(pixels)) <= {0, 255}
            mask = Region(**entry).resolved(None).to_mask(16)
            assert torch.equal(mask[0], torch.from_numpy(pixels == 255).float())
            union += mask
        assert torch.equal(union, torch.ones(1, 16, 16))
        assert Image.open(folder / "parts.png").size[1] >= 256


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--parts", "1"], r"parts=1: an image of 256 pixels splits into 2 \.\. 256 parts"),
        (["--preset", "faces"], r"unknown preset 'faces'"),
    ],
)
def test_cli_bad_settings_raise(tiny_model_dir, tmp_path, extra, match):
    from lit_hspace.segment.cli import main

    with pytest.raises(ValueError, match=match):
        main(["--model", str(tiny_model_dir), "--seeds", "0", "--out", str(tmp_path), *extra])


def test_cli_refuses_an_image_of_another_size(tiny_model_dir, tmp_path):
    from PIL import Image

    from lit_hspace.segment.cli import main

    image = tmp_path / "big.png"
    Image.new("RGB", (20, 16)).save(image)
    with pytest.raises(ValueError, match=r"image '.*big\.png' is 20 x 16, the model's size is 16 x 16: .*--resize"):
        main(["--model", str(tiny_model_dir), "--images", str(image), "--out", str(tmp_path)])
