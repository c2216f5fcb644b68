"""The synthetic face generator: deterministic, independent factors, each changing only its own region."""

import numpy as np
import pytest
import torch

from lit_hspace.synth.faces import FACTORS, REGIONS, render, sample_factors, synth_face


def test_deterministic_from_the_seed():
    image, factors = synth_face(3, 32)
    again, factors_again = synth_face(3, 32)
    assert torch.equal(image, again) and torch.equal(factors, factors_again)
    other, other_factors = synth_face(4, 32)
    assert not torch.equal(image, other) and not torch.equal(factors, other_factors)
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1


def test_factors_are_uniform_and_independent():
    values = np.array([[f[n.name] for n in FACTORS] for f in (sample_factors(np.random.default_rng(s)) for s in range(2000))])
    low, high = np.array([f.low for f in FACTORS]), np.array([f.high for f in FACTORS])
    assert (values >= low).all() and (values <= high).all()
    np.testing.assert_allclose((values.mean(0) - low) / (high - low), 0.5, atol=0.05)
    corr = np.corrcoef(values.T) - np.eye(len(FACTORS))
    assert np.abs(corr).max() < 0.1


def box_mask(region: str, size: int, grow: int = 1) -> np.ndarray:
    x0, y0, x1, y1 = REGIONS[region]
    mask = np.zeros((size, size), bool)
    rows = slice(max(0, int(y0 * size) - grow), int(np.ceil(y1 * size)) + grow)
    cols = slice(max(0, int(x0 * size) - grow), int(np.ceil(x1 * size)) + grow)
    mask[rows, cols] = True
    return mask


@pytest.mark.parametrize("factor", FACTORS, ids=lambda f: f.name)
def test_each_factor_changes_only_its_region(factor):
    """Moving one factor from its low to its high end changes no pixel outside its region's box
    (grown by the one-pixel antialias border) and visibly changes pixels inside it."""
    size = 64
    mask = box_mask(factor.region, size)
    for seed in range(3):
        base = sample_factors(np.random.default_rng(seed))
        low, high = (np.asarray(render({**base, factor.name: v}, size)).astype(int) for v in (factor.low, factor.high))
        diff = np.abs(low - high).sum(-1)
        assert diff[~mask].sum() == 0, f"{factor.name} changed pixels outside {factor.region}"
        assert diff[mask].mean() > 0.5, f"{factor.name} hardly changes {factor.region}"


def test_part_boxes_are_disjoint_and_inside_the_image():
    parts = ["eyes", "brows", "nose", "mouth", "hair"]
    for name in parts:
        x0, y0, x1, y1 = REGIONS[name]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = REGIONS[a], REGIONS[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a} and {b} overlap"
