"""Regions: box masks, presets, mask files and the errors for bad regions."""

import re

import pytest
import torch
from PIL import Image

from lit_hspace.regions import PRESETS, Region, region_masks, resolve_regions


def hand_mask(size, rows, cols):
    mask = torch.zeros(1, size, size)
    mask[:, rows, cols] = 1.0
    return mask


def test_box_mask_covers_exact_pixels():
    """Box (0.25, 0.5, 0.75, 1.0) at 16 px is ones exactly at rows 8..15, cols 4..11."""
    mask = Region("m", (0.25, 0.5, 0.75, 1.0)).to_mask(16)
    assert torch.equal(mask, hand_mask(16, slice(8, 16), slice(4, 12)))


def test_box_mask_includes_partially_touched_pixels():
    """A box edge inside a pixel includes that pixel: (0.1, 0.3, 0.45, 0.55) at 10 px -> rows 3..5, cols 1..4."""
    mask = Region("m", (0.1, 0.3, 0.45, 0.55)).to_mask(10)
    assert torch.equal(mask, hand_mask(10, slice(3, 6), slice(1, 5)))


def test_tiny_box_never_vanishes():
    """A box smaller than a pixel still covers exactly one pixel, the one it lies in."""
    mask = Region("m", (0.5, 0.5, 0.51, 0.51)).to_mask(8)
    assert mask.sum() == 1
    assert mask[0, 4, 4] == 1


def test_grown_box_adds_a_margin_clipped_at_the_border():
    """grow = 1 adds one pixel on every side of the box (rows 8..15, cols 4..11 -> rows 7..15, cols 3..12: the
    bottom edge is the image's); a preset region keeps its grow when its box is filled in."""
    mask = Region("m", (0.25, 0.5, 0.75, 1.0), grow=1).to_mask(16)
    assert torch.equal(mask, hand_mask(16, slice(7, 16), slice(3, 13)))
    (mouth,) = resolve_regions([Region("mouth", grow=2)], "synth")
    # The synth mouth box touches rows 20..25 and cols 10..21 at 32 px (72 pixels); grown by 2: 18..27, 8..23.
    assert torch.equal(Region("mouth").resolved("synth").to_mask(32), hand_mask(32, slice(20, 26), slice(10, 22)))
    assert torch.equal(mouth.to_mask(32), hand_mask(32, slice(18, 28), slice(8, 24)))


def test_adjacent_boxes_grow_apart():
    """Two boxes meeting along a row, each grown by 1 among a run's regions: neither takes the other's pixels nor
    the pixels both reach; each takes the rest of its margin. Top rows 0..3, bottom rows 4..7, cols 2..5 at 8 px."""
    top, bottom = Region("top", (0.25, 0.0, 0.75, 0.5), grow=1), Region("bottom", (0.25, 0.5, 0.75, 1.0), grow=1)
    masks = region_masks([top, bottom], 8)
    # Grown alone, top takes rows 0..4 and cols 1..6: row 4 is bottom's, and bottom reaches row 3 too, so of its
    # margin top keeps cols 1 and 6 of rows 0..2 (bottom alike: rows 5..7).
    expected_top = hand_mask(8, slice(0, 4), slice(2, 6)) + hand_mask(8, slice(0, 3), [1, 6])
    expected_bottom = hand_mask(8, slice(4, 8), slice(2, 6)) + hand_mask(8, slice(5, 8), [1, 6])
    assert torch.equal(masks, torch.stack([expected_top, expected_bottom]))
    assert torch.equal(top.to_mask(8), hand_mask(8, slice(0, 5), slice(1, 7)))  # alone, it grows as before


@pytest.mark.parametrize("grow", [-1, 1.5, True])
def test_bad_grow_raises(grow):
    with pytest.raises(ValueError, match=re.escape(f"region 'mouth': grow={grow!r} must be an integer number of pixels >= 0")):
        resolve_regions([Region("mouth", grow=grow, auto=True)], None)


def test_region_masks_stacks_in_order():
    """region_masks stacks one mask per region, in the given order."""
    regions = [Region("a", (0.0, 0.0, 0.5, 0.5)), Region("b", (0.5, 0.5, 1.0, 1.0))]
    masks = region_masks(regions, 4)
    expected = torch.stack([hand_mask(4, slice(0, 2), slice(0, 2)), hand_mask(4, slice(2, 4), slice(2, 4))])
    assert torch.equal(masks, expected)


def test_preset_names_resolve_to_preset_boxes():
    """Plain names take their box from the preset; explicit boxes pass through unchanged."""
    resolved = resolve_regions(["mouth", "eyes", Region("own", (0.1, 0.2, 0.3, 0.4))], "celebahq")
    assert [r.name for r in resolved] == ["mouth", "eyes", "own"]
    assert resolved[0].box == PRESETS["celebahq"]["mouth"]
    assert resolved[1].box == PRESETS["celebahq"]["eyes"]
    assert resolved[2].box == (0.1, 0.2, 0.3, 0.4)


@pytest.mark.parametrize(
    "preset, names", [("celebahq", ["eyes", "mouth", "nose", "brows", "hair"]), ("church", ["windows", "door"])]
)
def test_presets_have_expected_regions_with_valid_boxes(preset, names):
    """The presets hold the documented regions, and every preset box validates."""
    assert set(names) <= set(PRESETS[preset])
    for name in PRESETS[preset]:
        assert resolve_regions([name], preset)[0].box == PRESETS[preset][name]


def test_mask_file_resized_to_output(tmp_path):
    """A 64 px mask with a white top-left quarter becomes ones exactly in rows 0..7, cols 0..7 at 16 px."""
    pixels = Image.new("L", (64, 64), 0)
    pixels.paste(255, (0, 0, 32, 32))
    path = tmp_path / "sq.png"
    pixels.save(path)
    region = resolve_regions([Region("sq", mask=str(path))], None)[0]
    assert torch.equal(region.to_mask(16), hand_mask(16, slice(0, 8), slice(0, 8)))


def test_mask_of_another_shape_is_centre_cropped_as_images_are(tmp_path):
    """A 100 x 60 mask is cut to its centre 60 x 60 square (columns 20..79), as an image of that shape is, then
    resized: white columns 20..34 (the square's first quarter) become columns 0..3 at 16 px, white columns 0..14
    (outside the square) vanish; with a warning naming the mask."""
    pixels = Image.new("L", (100, 60), 0)
    pixels.paste(255, (0, 0, 15, 60))  # outside the centre square: cut away
    pixels.paste(255, (20, 0, 35, 60))  # the square's first 15 of 60 columns
    path = tmp_path / "wide.png"
    pixels.save(path)
    with pytest.warns(UserWarning, match=r"wide.png' is 100 x 60, not the model's 16 x 16: it is centre-cropped"):
        mask = Region("wide", mask=str(path)).to_mask(16)
    assert torch.equal(mask, hand_mask(16, slice(0, 16), slice(0, 4)))


def test_rgb_mask_file_bottom_right(tmp_path):
    """An RGB mask with a white bottom-right quarter maps to rows 8..15, cols 8..15; dark pixels stay out."""
    pixels = Image.new("RGB", (64, 64), (40, 40, 40))
    pixels.paste((255, 255, 255), (32, 32, 64, 64))
    path = tmp_path / "br.png"
    pixels.save(path)
    assert torch.equal(Region("br", mask=str(path)).to_mask(16), hand_mask(16, slice(8, 16), slice(8, 16)))


@pytest.mark.parametrize(
    "box, match",
    [
        ((0.2, 0.2, 1.3, 0.5), r"1\.3.*in \[0, 1\]"),
        ((-0.1, 0.2, 0.3, 0.5), r"-0\.1.*in \[0, 1\]"),
        ((0.4, 0.2, 0.4, 0.5), r"\(0\.4, 0\.2, 0\.4, 0\.5\) has zero area"),
        ((0.1, 0.6, 0.4, 0.5), r"\(0\.1, 0\.6, 0\.4, 0\.5\) has zero area"),
    ],
)
def test_bad_box_raises(box, match):
    """Boxes outside [0, 1] or without area are refused, naming the box."""
    with pytest.raises(ValueError, match=match):
        resolve_regions([Region("bad", box)], None)


def test_unknown_name_lists_presets():
    """A name that is not in the preset raises, naming it and listing the presets' regions."""
    with pytest.raises(ValueError, match=r"'chin' .* preset 'celebahq' \(presets: celebahq: hair.*church: sky"):
        resolve_regions(["chin"], "celebahq")
    with pytest.raises(ValueError, match=r"'eyes' .* preset 'None'"):
        resolve_regions(["eyes"], None)


def test_missing_mask_file_raises(tmp_path):
    """A mask path that does not exist raises FileNotFoundError naming the path."""
    path = tmp_path / "nowhere.png"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        resolve_regions([Region("m", mask=str(path))], None)


def test_non_image_mask_file_raises(tmp_path):
    """A mask file that is not an image raises ValueError naming the file."""
    path = tmp_path / "fake.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=re.escape(f"'{path}' is not an image")):
        Region("m", mask=str(path)).to_mask(16)


def test_empty_mask_file_raises(tmp_path):
    """An all-black mask is refused instead of giving an empty region."""
    path = tmp_path / "black.png"
    Image.new("L", (32, 32), 0).save(path)
    with pytest.raises(ValueError, match=re.escape(f"mask '{path}' is empty at 16 x 16")):
        Region("m", mask=str(path)).to_mask(16)


def test_box_and_mask_together_raise(tmp_path):
    """A region with both a box and a mask file is refused."""
    path = tmp_path / "m.png"
    Image.new("L", (8, 8), 255).save(path)
    with pytest.raises(ValueError, match="region 'both': give a box or a mask file, not both"):
        resolve_regions([Region("both", (0.1, 0.1, 0.5, 0.5), mask=str(path))], None)


def test_duplicate_names_raise():
    """Two regions with the same name are refused, listing the names."""
    with pytest.raises(ValueError, match=re.escape("distinct, got ['eyes', 'mouth', 'eyes']")):
        resolve_regions(["eyes", "mouth", Region("eyes", (0.1, 0.1, 0.2, 0.2))], "celebahq")


def test_auto_region_resolves_without_a_box():
    """An automatic region keeps its name and needs neither box nor preset."""
    assert resolve_regions([Region("mouth", auto=True)], None) == [Region("mouth", auto=True)]


def test_auto_region_with_box_or_mask_raises(tmp_path):
    with pytest.raises(ValueError, match=r"region 'mouth': auto: true finds the mask per image; it takes no box"):
        resolve_regions([Region("mouth", (0.1, 0.1, 0.5, 0.5), auto=True)], None)
    with pytest.raises(ValueError, match=r"it takes no mask 'm.png'"):
        resolve_regions([Region("mouth", mask="m.png", auto=True)], None)


def test_auto_region_needs_a_name():
    with pytest.raises(ValueError, match="a region needs a non-empty name, got ''"):
        resolve_regions([Region("", auto=True)], None)


def test_auto_region_has_no_fixed_mask():
    with pytest.raises(ValueError, match=r"region 'mouth' is automatic: .*lit_hspace\.segment\.auto_regions"):
        Region("mouth", auto=True).to_mask(16)
