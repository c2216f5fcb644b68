"""Automatic region masks: planted Jacobian groups, k-means, naming by overlap, ground truth, bad input."""

import numpy as np
import pytest
import torch

from lit_hspace.ddim import DDIM, Latent
from lit_hspace.jacobian import JacobianOperator
from lit_hspace.regions import PRESETS, Region
from lit_hspace.segment import (
    Segmentation,
    auto_regions,
    check_auto_names,
    connected_pieces,
    grown,
    principal_components,
    image_masks,
    jacobian_features,
    kmeans,
    label_masks,
    masks_of_parts,
    name_parts,
    pixel_features,
    segment_features,
)
from lit_hspace.segment.truth import changeable_pixels, dataset_factors, locally_changed_pixels
from lit_hspace.synth.faces import FACTORS, render

from conftest import read_png, write_config

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


def test_names_follow_the_preset_by_share_and_merge():
    """A part takes the name of the box holding the largest share of its pixels, if at least min_share; parts
    of one name merge into one mask; the rest stay part<i>, after the named regions in the preset's order."""
    size = 32
    box = {name: Region(name, PRESETS["synth"][name]).to_mask(size) for name in ("mouth", "eyes", "nose")}
    inner_mouth = box["mouth"].clone()
    inner_mouth[:, :, :16] = 0  # the mouth box's right half
    outer_mouth = box["mouth"] - inner_mouth
    corner = torch.zeros(1, size, size)
    corner[:, 28:, :3] = 1  # in no box
    straddle = torch.zeros(1, size, size)  # 6 of its 10 pixels in the nose box
    nose_rows = box["nose"][0].any(1).nonzero().flatten()
    straddle[:, nose_rows[1], 16:19] = 1  # rows of the nose box alone (its first touches the eyes box)
    straddle[:, nose_rows[2], 16:19] = 1
    straddle[:, 30, 10:14] = 1
    assert (straddle * box["nose"]).sum() == 6 and (straddle * (box["mouth"] + box["eyes"])).sum() == 0
    rest = 1 - (box["mouth"] + box["eyes"] + corner + straddle).clamp(max=1)
    masks = torch.stack([corner, inner_mouth, box["eyes"], outer_mouth, straddle, rest])

    parts = name_parts(masks, "synth")
    assert [p.name for p in parts] == ["eyes", "nose", "mouth", "part0", "part5"]
    named = {p.name: p for p in parts}
    assert torch.equal(named["mouth"].mask, box["mouth"]) and named["mouth"].share == 1.0
    assert named["nose"].share == pytest.approx(0.6) and torch.equal(named["nose"].mask, straddle)
    assert torch.equal(torch.stack([p.mask for p in parts]).sum(0), torch.ones(1, size, size))  # still a partition
    assert [p.name for p in name_parts(masks, "synth", min_share=0.7)] == ["eyes", "mouth", "part0", "part4", "part5"]
    assert [p.name for p in name_parts(masks[:2], None)] == ["part0", "part1"]


def tiny_latent(tiny_model, t: int = 600, seed: int = 0) -> Latent:
    return Latent(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)), t, clip=False)


def test_auto_regions_on_a_model_are_binary_masks_covering_the_image(tiny_model):
    """Every signal gives binary masks that together cover each pixel exactly once, each named part with
    the share of its pixels inside its box that it reports."""
    ddim = DDIM(tiny_model, 50)
    for signal in ("jacobian", "decoder", "both"):
        parts = auto_regions(ddim, tiny_latent(tiny_model), "celebahq", Segmentation(parts=5, signal=signal, k=4, iterations=2, connected=False))
        masks = torch.stack([p.mask for p in parts])
        assert 1 <= len(parts) <= 5 and masks.shape[1:] == (1, 16, 16)
        assert set(masks.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(masks.sum(0), torch.ones(1, 16, 16))
        for p in parts:
            if not p.name.startswith("part"):
                box = Region(p.name, PRESETS["celebahq"][p.name]).to_mask(16)
                assert p.share == pytest.approx((p.mask * box).sum().item() / p.mask.sum().item()) and p.share >= 0.5


def within(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """(H, W): the pixels within `pixels` (Chebyshev distance) of a (1, H, W) mask, counted pixel by pixel."""
    ys, xs = mask[0].nonzero(as_tuple=True)
    height, width = mask.shape[-2:]
    near = torch.zeros(height, width)
    for y in range(height):
        for x in range(width):
            near[y, x] = float(bool((torch.maximum((ys - y).abs(), (xs - x).abs()) <= pixels).any()))
    return near


def test_the_cli_grows_every_part_alone_by_the_margin(tiny_model):
    """auto_regions gives the parts as found whatever segmentation.grow says; `grown` (what lit_hspace.segment
    writes) adds every pixel within g of the part, counted pixel by pixel, keeping names and shares."""
    ddim, latent = DDIM(tiny_model, 50), tiny_latent(tiny_model)
    plain = auto_regions(ddim, latent, "celebahq", Segmentation(parts=5, connected=False))
    for g in (1, 2):
        found = auto_regions(ddim, latent, "celebahq", Segmentation(parts=5, connected=False, grow=g))
        assert all(torch.equal(a.mask, b.mask) and (a.name, a.share) == (b.name, b.share) for a, b in zip(found, plain))
        for before in plain:
            after = grown(before, g)
            assert (after.name, after.share) == (before.name, before.share)
            assert torch.equal(after.mask[0], within(before.mask, g))
            assert after.mask.sum() > before.mask.sum() or before.mask.sum() == 256


def test_a_runs_regions_grow_apart_each_by_its_own_margin(tiny_model):
    """A run's regions grow by segmentation.grow (automatic ones) plus their own grow, each only into pixels that
    no other region holds or reaches: computed here pixel by pixel from the parts. Adjacent parts of the partition
    stay disjoint, and a region with no neighbour within reach grows as it would alone."""
    ddim, latent = DDIM(tiny_model, 50), tiny_latent(tiny_model)
    found = auto_regions(ddim, latent, None, Segmentation(parts=5, connected=False))
    parts = {p.name: p.mask for p in found}
    regions = [Region("part1", auto=True, grow=1), Region("part3", auto=True), Region("part0", auto=True)]
    masks = masks_of_parts(regions, found, 16, grow=1)
    margins = [2, 1, 1]
    reach = [within(parts[r.name], g) for r, g in zip(regions, margins)]
    for i, region in enumerate(regions):
        others = torch.stack([reach[j] for j in range(len(regions)) if j != i]).amax(0)
        expected = torch.maximum(parts[region.name][0], reach[i] * (1 - others))
        assert torch.equal(masks[i, 0], expected)
    assert (torch.stack(reach).sum(0) > 1).any()  # grown alone, they would overlap
    assert masks.sum(0).max() == 1  # the parts are disjoint, and so are the grown masks
    assert all(masks[i].sum() > parts[r.name].sum() for i, r in enumerate(regions))


def test_features_are_read_at_the_segmentation_timestep(tiny_model):
    """The parts are those of the features at the latent sampled down to the segmentation timestep: the same
    k-means of the decoder features at x_s, computed here from DDIM's own sampling."""
    ddim = DDIM(tiny_model, 50)
    latent = tiny_latent(tiny_model)
    settings = Segmentation(parts=4, timestep=0.2, min_share=1.0)
    s = ddim.timestep_at(0.2)
    x_s = ddim.sample(latent, stop=s)
    features = pixel_features(tiny_model, x_s, s, settings)
    expected = connected_pieces(segment_features(features, 4, smoothing=settings.smoothing, components=settings.components))
    found = auto_regions(ddim, latent, None, settings)
    assert torch.equal(torch.stack([p.mask for p in found]), expected)


def test_principal_components_keep_a_planted_subspace():
    """Features that span 3 dimensions of 40: 3 components keep every distance between pixels; 2 keep the
    variance of the covariance's top 2 eigenvalues (numpy's eigh)."""
    generator = torch.Generator().manual_seed(0)
    planted = torch.randn(3, 64, generator=generator) * torch.tensor([[5.0], [2.0], [1.0]])
    embed = torch.linalg.qr(torch.randn(40, 3, generator=generator, dtype=torch.float64))[0].float()
    features = (embed @ planted + 3.0).reshape(40, 8, 8)
    kept = principal_components(features, 3).flatten(1).T.double()
    pixels = features.flatten(1).T.double()
    assert torch.allclose(torch.pdist(kept), torch.pdist(pixels), atol=1e-4)
    two = principal_components(features, 2).flatten(1).T.double()
    points = features.flatten(1).T.double().numpy()
    eigenvalues = np.linalg.eigh(np.cov(points.T, bias=True))[0][::-1][:2]
    assert np.allclose(two.var(0, unbiased=False).numpy(), eigenvalues, rtol=1e-4)


def test_connected_pieces_of_planted_masks():
    """Two separate blocks split in two, a pixel touching one only at a corner is its own piece (4-connectivity),
    a ring stays one piece, and the rest splits into the ring's inside and its outside; the pieces still cover each
    pixel once."""
    two = torch.zeros(1, 8, 8)
    two[:, :2, :2] = 1
    two[:, 5:, 5:] = 1
    two[:, 2, 2] = 1  # touches the first block at a corner only: its own piece
    ring = torch.zeros(1, 8, 8)
    ring[:, 1:6, 4] = ring[:, 1, 4:7] = ring[:, 5, 4:7] = ring[:, 1:6, 6] = 1
    ring = ring * (1 - two)
    rest = 1 - two - ring
    pieces = connected_pieces(torch.stack([two, ring, rest]))
    assert torch.equal(pieces.sum(0), torch.ones(1, 8, 8))
    sizes = sorted(int(p.sum()) for p in pieces[:3])
    assert sizes == [1, 4, 9]  # the corner pixel, the 2 x 2 block, the 3 x 3 block
    assert len(pieces) == 6 and torch.equal(pieces[3], ring)
    assert sorted(int(p.sum()) for p in pieces[4:]) == [3, int(rest.sum()) - 3]  # the ring's inside: 3 pixels


def test_large_images_are_clustered_on_a_coarser_grid(tiny_model):
    """cluster_side 8 on a 16 px model: every part is a union of whole 2 x 2 blocks, and the parts still cover each
    pixel exactly once; parts beyond the grid's 64 pixels are refused."""
    ddim = DDIM(tiny_model, 50)
    parts = auto_regions(ddim, tiny_latent(tiny_model), None, Segmentation(parts=6, cluster_side=8, min_share=1.0))
    masks = torch.stack([p.mask for p in parts])
    assert torch.equal(masks.sum(0), torch.ones(1, 16, 16))
    blocks = masks.unflatten(-1, (8, 2)).unflatten(-3, (8, 2))  # (P, 1, 8, 2, 8, 2)
    assert torch.equal(blocks.amax((-3, -1)), blocks.amin((-3, -1)))
    with pytest.raises(ValueError, match=r"parts=65: an image of 64 pixels splits into 2 \.\. 64 parts"):
        auto_regions(ddim, tiny_latent(tiny_model), None, Segmentation(parts=65, cluster_side=8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cluster_side=1), r"segmentation.cluster_side=1: the grid needs at least 2 pixels a side"),
        (dict(parts=1), r"segmentation.parts=1: an image splits into at least 2 parts"),
        (dict(signal="attention"), r"unknown signal 'attention': choose one of jacobian, decoder, both"),
        (dict(timestep=0.0), r"segmentation.timestep=0.0 must be a fraction of T in \(0, 1\]"),
        (dict(min_share=1.5), r"segmentation.min_share=1.5 must lie in \(0, 1\]"),
        (dict(smoothing=-1.0), r"segmentation.smoothing=-1.0 and position_weight=0.0 must be >= 0"),
        (dict(components=-1), r"segmentation.components=-1 must be >= 0 \(0: all features\)"),
        (dict(grow=-1), r"segmentation.grow=-1 must be an integer number of pixels >= 0"),
        (dict(grow=1.5), r"segmentation.grow=1.5 must be an integer number of pixels >= 0"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Segmentation(**kwargs)


def test_bad_use_raises_before_compute(tiny_model):
    ddim = DDIM(tiny_model, 50)
    with pytest.raises(ValueError, match=r"parts=257: an image of 256 pixels splits into 2 \.\. 256 parts"):
        auto_regions(ddim, tiny_latent(tiny_model), None, Segmentation(parts=257))
    with pytest.raises(ValueError, match=r"unknown preset 'faces': presets are celebahq, church, synth"):
        auto_regions(ddim, tiny_latent(tiny_model), "faces")
    with pytest.raises(ValueError, match=r"segmentation.timestep=0.8 \(t = 800\) lies above the edit timestep \(t = 600\)"):
        auto_regions(ddim, tiny_latent(tiny_model), None, Segmentation(timestep=0.8))
    with pytest.raises(ValueError, match=r"x_t has shape \(1, 3, 32, 32\); this model needs \(1, 3, 16, 16\)"):
        auto_regions(ddim, Latent(torch.zeros(1, 3, 32, 32), 600, False))


def test_image_masks_mix_automatic_and_box_regions(tiny_model):
    """Automatic regions take their part's mask, box regions their box; names are checked before compute."""
    ddim = DDIM(tiny_model, 50)
    box = Region("own", (0.0, 0.0, 0.5, 0.5))
    settings = Segmentation(parts=4, k=4, iterations=2)
    found = {p.name: p.mask for p in auto_regions(ddim, tiny_latent(tiny_model), None, settings)}
    masks = image_masks(ddim, tiny_latent(tiny_model), [Region("part2", auto=True), box], None, settings)
    assert torch.equal(masks[0], found["part2"]) and torch.equal(masks[1], box.to_mask(16))
    with pytest.raises(ValueError, match=r"automatic region 'mouth' cannot be named: with preset 'None' and 4 parts"):
        check_auto_names([Region("mouth", auto=True)], None, settings)
    whole = Segmentation(parts=4, connected=False)
    with pytest.raises(ValueError, match=r"automatic region 'part4' cannot be named: .* the names are part0 \.\. part3"):
        check_auto_names([Region("part4", auto=True)], None, whole)
    check_auto_names([Region("part4", auto=True)], None, settings)  # pieces: their number is the image's


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


def test_local_change_is_what_small_factor_steps_move():
    """The face's own view of a region: the pixels that renderings with one factor 10% up or down change,
    rendered here one by one; within the region's ground truth."""
    factors = dataset_factors(3)
    base = np.asarray(render(factors, 32), dtype=np.int16)
    expected = np.zeros((32, 32), dtype=bool)
    for f in (f for f in FACTORS if f.region == "mouth"):
        for step in (-0.1, 0.1):
            value = float(np.clip(factors[f.name] + step * (f.high - f.low), f.low, f.high))
            expected |= (np.asarray(render({**factors, f.name: value}, 32), dtype=np.int16) != base).any(-1)
    local = locally_changed_pixels(factors, "mouth", 32, 0.1)[0].bool().numpy()
    assert expected.any() and np.array_equal(local, expected)
    assert not (local & ~changeable_pixels(factors, "mouth", 32)[0].bool().numpy()).any()


def test_cli_writes_masks_regions_and_figure(tiny_model_dir, tmp_path):
    """Per image: one binary PNG per part (together the whole image), a regions.yaml whose entries are
    Regions that load those same masks, and the figure; seeds and files side by side."""
    import yaml
    from PIL import Image

    from lit_hspace.segment.cli import main

    image = tmp_path / "face.png"
    Image.new("RGB", (16, 16), (200, 120, 90)).save(image)
    folders = main(["--model", str(tiny_model_dir), "--images", str(image), "--segmentation.parts", "3", "--preset", "celebahq",
                    "--out", str(tmp_path / "out"), "--steps", "5"])
    folders += main(["--model", str(tiny_model_dir), "--seeds", "7", "--segmentation.parts", "3", "--out", str(tmp_path / "out"), "--steps", "5"])
    assert [f.name for f in folders] == ["face", "seed000007"]
    for folder in folders:
        entries = yaml.safe_load((folder / "regions.yaml").read_text())
        assert len(entries) >= 1  # 3 parts, split into their connected pieces
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
        (["--segmentation.parts", "1"], r"segmentation.parts=1: an image splits into at least 2 parts"),
        (["--segmentation.parts", "300"], r"parts=300: an image of 256 pixels splits into 2 \.\. 256 parts"),
        (["--segmentation.timestep", "0.9"], r"segmentation.timestep=0.9 \(t = 900\) lies above the edit timestep \(t = 600\)"),
        (["--preset", "faces"], r"unknown preset 'faces'"),
        (["--segmentation.grow", "-2"], r"segmentation.grow=-2 must be an integer number of pixels >= 0"),
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


def test_a_run_discovers_and_edits_on_automatic_regions(tmp_path, tiny_model_dir):
    """regions: [{name: part0, auto: true}] end to end: each seed's mask is its own automatic part (found here
    again from the seed's latent), Haas' directions are those of the explicit Jacobian inside that mask, the
    parts are written beside the image, and another segmentation setting never reuses the stored sets."""
    import csv

    from lit_hspace.cli import main
    from lit_hspace.directions import DirectionSet
    from lit_hspace.jacobian import principal_angle_sine
    from lit_hspace.discovery import ImageItem
    from lit_hspace.report import main as report


    haas = {"class_path": "lit_hspace.methods.Haas", "init_args": {"k": 2, "tol": 1e-5, "max_iter": 100}}
    auto = [{"name": "part0", "auto": True}]
    config = write_config(tmp_path, tiny_model_dir, haas, {"seeds": [3, 4]}, regions=auto, name="auto")
    segmentation = ["--model.init_args.region_preset=null", "--model.init_args.segmentation.parts=4"]
    module = main(["test", "--config", str(config), *segmentation]).model
    run = tmp_path / "runs" / "auto" / "version_0"
    masks = []
    for seed in (3, 4):
        image_id = f"seed{seed:06d}"
        latent = module.images.latent(ImageItem(image_id, None, seed, None))
        (mask,) = image_masks(module.ddim, latent, module.regions, None, Segmentation(parts=4))
        masks.append(mask)
        written = read_png(run / "images" / image_id / "parts" / "part0.png")[:1] > 0.5
        assert torch.equal(written.float(), mask)
        assert (run / "images" / image_id / "parts" / "parts.png").is_file()
        enc = module.hspace.encode(latent.x, module.t)
        fn = lambda h: module.hspace.decode(h[None], enc)[0]  # noqa: E731
        explicit = mask.expand(3, 16, 16).reshape(-1, 1) * torch.autograd.functional.jacobian(fn, enc.h[0]).reshape(3 * 16 * 16, -1)
        _, s, vh = torch.linalg.svd(explicit, full_matrices=False)
        found = DirectionSet.load(run / "directions" / f"{image_id}.safetensors")
        torch.testing.assert_close(found.singular_values, s[:2], rtol=1e-3, atol=0)
        assert principal_angle_sine(found.directions.flatten(1).T, vh[:2].T).item() < 1e-2
    assert not torch.equal(masks[0], masks[1])  # one mask per image, not one for the run
    with open(run / "edits.csv") as f:
        assert {r["image"] for r in csv.DictReader(f)} == {"seed000003", "seed000004"}
    report(["--out", str(tmp_path / "report"), str(run)])  # a figure of the parts per image
    for image_id in ("seed000003", "seed000004"):
        shown = (tmp_path / "report" / f"parts_{image_id}.png").read_bytes()
        assert shown == (run / "images" / image_id / "parts" / "parts.png").read_bytes()
        assert f"parts_{image_id}.png" in (tmp_path / "report" / "index.html").read_text()

    main(["test", "--config", str(config), *segmentation])  # the same settings: the stored sets are reused
    assert not (tmp_path / "runs" / "auto" / "version_1" / "directions").exists()
    main(["test", "--config", str(config), "--model.init_args.region_preset=null", "--model.init_args.segmentation.parts=5"])
    assert len(list((tmp_path / "runs" / "auto" / "version_2" / "directions").glob("*.safetensors"))) == 2
    # A predict run writes the parts each set was found in, beside the set, as a test run does.
    main(["predict", "--config", str(config), "--model.init_args.region_preset=null", "--model.init_args.segmentation.parts=6"])
    predicted = tmp_path / "runs" / "auto" / "version_3"
    for seed in (3, 4):
        image_id = f"seed{seed:06d}"
        latent = module.images.latent(ImageItem(image_id, None, seed, None))
        (mask,) = image_masks(module.ddim, latent, module.regions, None, Segmentation(parts=6))
        written = read_png(predicted / "images" / image_id / "parts" / "part0.png")[:1] > 0.5
        assert torch.equal(written.float(), mask)
        assert (predicted / "images" / image_id / "parts" / "parts.png").is_file()
        assert (predicted / "directions" / f"{image_id}.safetensors").is_file()


def test_automatic_regions_are_refused_where_they_cannot_work(tiny_model_dir):
    from lit_hspace.hspace import HSpaceUNet
    from lit_hspace.module import HSpaceEditor
    from lit_hspace.settings import DiscoverySettings

    with pytest.raises(ValueError, match=r"automatic region 'chin' cannot be named: with preset 'celebahq' and 20 parts"):
        HSpaceEditor(model=str(tiny_model_dir), regions=[Region("chin", auto=True)])
    with pytest.raises(ValueError, match=r"discovery.pool finds one set with one mask per region for all images"):
        HSpaceEditor(model=str(tiny_model_dir), regions=[Region("mouth", auto=True)], discovery=DiscoverySettings(pool=True))
    with pytest.raises(ValueError, match=r"segmentation.timestep=0.8 \(t = 800\) lies above the edit timestep"):
        HSpaceEditor(model=str(tiny_model_dir), regions=[Region("mouth", auto=True)], segmentation=Segmentation(timestep=0.8))
    with pytest.raises(ValueError, match=r"parts=300: an image of 256 pixels splits into 2 \.\. 256 parts"):
        HSpaceEditor(model=str(tiny_model_dir), regions=[Region("part0", auto=True)], region_preset=None,
                     segmentation=Segmentation(parts=300))
    up_blocks = len(HSpaceUNet.from_pretrained(str(tiny_model_dir)).unet.up_blocks)
    with pytest.raises(ValueError, match=rf"segmentation.blocks \[{up_blocks}\]: this UNet has {up_blocks} up blocks, indices -{up_blocks} \.\. {up_blocks - 1}"):
        HSpaceEditor(model=str(tiny_model_dir), regions=[Region("mouth", auto=True)], segmentation=Segmentation(blocks=(up_blocks,)))
