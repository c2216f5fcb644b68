"""Synthetic faces: determinism, uniform independent factors, and that every factor is local and visible."""

import itertools
import math

import numpy as np
import pytest
import torch

from lit_hspace.synth.faces import FACTOR_NAMES, FACTORS, REGIONS, render, sample_factors, synth_face

PARTS = ("eyes", "brows", "nose", "mouth", "hair")

# The factor table as specified: name -> (region, low, high).
EXPECTED_FACTORS = {
    "eye_open": ("eyes", 0, 1), "gaze": ("eyes", -1, 1), "iris_hue": ("eyes", 0, 1),
    "brow_height": ("brows", 0, 1), "brow_angle": ("brows", -1, 1),
    "smile": ("mouth", -1, 1), "mouth_open": ("mouth", 0, 1), "lip_red": ("mouth", 0, 1),
    "nose_length": ("nose", 0, 1), "hair_hue": ("hair", 0, 1), "hair_length": ("hair", 0, 1),
    "skin_tone": ("face", 0, 1), "background_hue": ("background", 0, 1),
}


def factors_of(seed):
    return sample_factors(np.random.default_rng(seed))


def pixels(factors, size=64):
    return np.asarray(render(factors, size), dtype=np.float64) / 255


def grown_box_mask(box, size, grow=1):
    """Pixels a box touches at `size`, grown by `grow` pixels for the antialiased border."""
    x0, y0, x1, y1 = box
    mask = np.zeros((size, size), dtype=bool)
    rows = slice(max(0, math.floor(y0 * size) - grow), math.ceil(y1 * size) + grow)
    cols = slice(max(0, math.floor(x0 * size) - grow), math.ceil(x1 * size) + grow)
    mask[rows, cols] = True
    return mask


def test_factor_table():
    assert {f.name: (f.region, f.low, f.high) for f in FACTORS} == EXPECTED_FACTORS
    assert FACTOR_NAMES == tuple(f.name for f in FACTORS)


def test_same_seed_same_face():
    image_a, factors_a = synth_face(7)
    image_b, factors_b = synth_face(7)
    assert torch.equal(image_a, image_b) and torch.equal(factors_a, factors_b)


def test_different_seeds_different_faces():
    (image_a, factors_a), (image_b, factors_b) = synth_face(7), synth_face(8)
    assert (image_a - image_b).abs().mean() > 0.01
    assert (factors_a - factors_b).abs().min() > 0


def test_synth_face_is_the_render_of_the_seeds_factors():
    image, values = synth_face(3, size=32)
    factors = factors_of(3)
    expected = torch.from_numpy(pixels(factors, 32)).permute(2, 0, 1).float() * 2 - 1
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(values, torch.tensor([factors[name] for name in FACTOR_NAMES]))


@pytest.fixture(scope="module")
def samples():
    return np.array([[factors_of(seed)[name] for name in FACTOR_NAMES] for seed in range(2000)])


def test_factors_uniform_in_their_ranges(samples):
    low = np.array([f.low for f in FACTORS])
    high = np.array([f.high for f in FACTORS])
    assert ((samples >= low) & (samples <= high)).all()
    np.testing.assert_allclose(samples.mean(axis=0), (low + high) / 2, atol=0.05)
    # Uniform, not just centred: the spread is that of a uniform distribution.
    np.testing.assert_allclose(samples.std(axis=0), (high - low) / math.sqrt(12), rtol=0.1)


def test_factors_independent(samples):
    correlation = np.corrcoef(samples, rowvar=False)
    off_diagonal = correlation[~np.eye(len(FACTORS), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.1


# A closed eye hides the iris (see test_closed_eye_hides_the_iris), so the base faces have open eyes.
BASE_SEEDS = [seed for seed in range(100) if factors_of(seed)["eye_open"] > 0.4][:3]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("factor", FACTORS, ids=FACTOR_NAMES)
def test_factor_changes_only_its_region(factor, size):
    inside = grown_box_mask(REGIONS[factor.region], size)
    for seed in BASE_SEEDS:
        base = factors_of(seed)
        low, high = (pixels({**base, factor.name: value}, size) for value in (factor.low, factor.high))
        for moved in (low, high):
            changed = (moved != pixels(base, size)).any(axis=-1)
            assert not changed[~inside].any(), f"{factor.name} (seed {seed}) changed {changed[~inside].sum()} pixels outside '{factor.region}'"
        assert np.abs(high - low)[inside].mean() > 0.005, f"{factor.name} (seed {seed}) barely changes '{factor.region}'"


def test_closed_eye_hides_the_iris():
    closed = {**factors_of(0), "eye_open": 0.0}
    for name in ("gaze", "iris_hue"):
        low, high = (pixels({**closed, name: value}) for value in (-1.0, 1.0))
        assert np.array_equal(low, high)


def test_part_boxes_disjoint_and_inside_the_image():
    assert set(REGIONS) == set(PARTS) | {"face", "background"}
    assert REGIONS["background"] == (0, 0, 1, 1)
    for x0, y0, x1, y1 in REGIONS.values():
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    for a, b in itertools.combinations(PARTS, 2):
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = REGIONS[a], REGIONS[b]
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a} and {b} overlap"


def test_layout_like_aligned_celebahq():
    """Eyes at y ~ 0.45 above the nose, above the mouth at y ~ 0.72; hair on top."""
    centre_y = {name: (box[1] + box[3]) / 2 for name, box in REGIONS.items()}
    assert abs(centre_y["eyes"] - 0.45) < 0.03 and abs(centre_y["mouth"] - 0.72) < 0.03
    assert centre_y["hair"] < centre_y["brows"] < centre_y["eyes"] < centre_y["nose"] < centre_y["mouth"]
