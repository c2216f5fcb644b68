"""The direction-set artifact: safetensors round trip, overwrite refusal, model checks and lookup."""

import os

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

import lit_hspace
from conftest import tiny_unet
from lit_hspace.directions import DISCOVERY_KEYS, DirectionSet, find_direction_set
from lit_hspace.hspace import HSpaceUNet


def make_meta(model, **overrides):
    meta = {
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "h_shape": list(model.h_shape),
        "t": 500,
        "num_steps": 50,
        "invert_to": "t",
        "method": "jive",
        "method_params": {"rank_joint": 2, "rank_individual": 1},
        "regions": ["eyes", "mouth"],
        "seed": 0,
        "image": "img0",
    }
    assert set(DISCOVERY_KEYS) <= set(meta)
    return {**meta, **overrides}


def make_set(model, rng=0, **meta_overrides):
    g = torch.Generator().manual_seed(rng)
    d = torch.randn(5, *model.h_shape, generator=g)
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    sv = torch.sort(torch.rand(5, generator=g) * 10, descending=True).values
    x_t = torch.randn(1, *model.image_shape, generator=g)
    labels = ["joint", "joint", "eyes", "mouth", "mouth"]
    return DirectionSet(d, sv, labels, x_t, make_meta(model, **meta_overrides))


def test_round_trip_is_exact(tiny_model, tmp_path):
    """save then load gives identical tensors, labels and meta, plus the package version."""
    ds = make_set(tiny_model)
    path = ds.save(tmp_path / "sub" / "img0.safetensors")
    assert path == tmp_path / "sub" / "img0.safetensors"
    back = DirectionSet.load(path)
    assert torch.equal(back.directions, ds.directions)
    assert torch.equal(back.singular_values, ds.singular_values)
    assert torch.equal(back.x_t, ds.x_t)
    assert back.labels == ds.labels
    assert back.meta == {**ds.meta, "lit_hspace_version": lit_hspace.__version__}
    assert back.groups == ["joint", "eyes", "mouth"] and back.indices("mouth") == [3, 4]


def test_file_is_plain_safetensors(tiny_model, tmp_path):
    """Any safetensors reader sees directions, singular_values and x_t as float32 tensors."""
    ds = make_set(tiny_model)
    ds.directions = ds.directions.double()
    path = ds.save(tmp_path / "img0.safetensors")
    raw = load_file(str(path))
    assert set(raw) == {"directions", "singular_values", "x_t"}
    assert raw["directions"].dtype == torch.float32
    assert torch.equal(raw["directions"], ds.directions.float())
    assert torch.equal(raw["singular_values"], ds.singular_values)
    assert torch.equal(raw["x_t"], ds.x_t)


def test_never_overwrites(tiny_model, tmp_path):
    """Saving onto an existing file raises FileExistsError and leaves the first file intact."""
    path = make_set(tiny_model, rng=0).save(tmp_path / "img0.safetensors")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="img0.safetensors' exists"):
        make_set(tiny_model, rng=1).save(path)
    assert path.read_bytes() == before
    assert torch.equal(DirectionSet.load(path).directions, make_set(tiny_model, rng=0).directions)


def test_check_fits_same_model(tiny_model):
    """A set made for the model (h_shape stored as a list) fits it."""
    make_set(tiny_model).check_fits(tiny_model)


def test_check_fits_refuses_other_weights(tiny_model):
    """Same architecture, other weights: refused, naming the fingerprint it was made for."""
    other = HSpaceUNet(tiny_unet(seed=1), DDPMScheduler().config, "other")
    assert other.h_shape == tiny_model.h_shape and other.fingerprint != tiny_model.fingerprint
    with pytest.raises(ValueError, match=rf"made for tiny .*fingerprint {tiny_model.fingerprint}\), not for other"):
        make_set(tiny_model).check_fits(other)


def test_check_fits_refuses_other_h_shape(tiny_model):
    """A set whose stored h_shape differs is refused, naming that h_shape."""
    ds = make_set(tiny_model, h_shape=[16, 4, 4])
    with pytest.raises(ValueError, match=r"made for tiny \(h-space \(16, 4, 4\)"):
        ds.check_fits(tiny_model)


def test_load_refuses_foreign_safetensors(tmp_path):
    """A safetensors file without lit_hspace metadata is not taken for a direction set."""
    path = tmp_path / "plain.safetensors"
    save_file({"directions": torch.zeros(2, 3)}, str(path))
    with pytest.raises(ValueError, match="plain.safetensors' is a safetensors file but not a lit_hspace"):
        DirectionSet.load(path)


def test_load_missing_raises(tmp_path):
    """Loading a path that does not exist raises FileNotFoundError naming it."""
    with pytest.raises(FileNotFoundError, match="missing.safetensors' does not exist"):
        DirectionSet.load(tmp_path / "missing.safetensors")


@pytest.fixture
def two_runs(tiny_model, tmp_path):
    """Run dirs a (seed 0, older) and b (seed 1, newer), each with directions/img0.safetensors."""
    runs = []
    for i, name in enumerate(["a", "b"]):
        run = tmp_path / name
        make_set(tiny_model, rng=10 + i, seed=i).save(run / "directions" / "img0.safetensors")
        os.utime(run, (1_000_000 + i * 100, 1_000_000 + i * 100))
        runs.append(run)
    return runs


@pytest.mark.parametrize("seed", [0, 1])
def test_find_returns_matching_set(tiny_model, two_runs, seed):
    """Of two stored sets differing only in seed, the one matching `wanted` is returned."""
    found = find_direction_set(two_runs, "img0", make_meta(tiny_model, seed=seed))
    assert found is not None
    assert found.meta["seed"] == seed
    assert torch.equal(found.directions, make_set(tiny_model, rng=10 + seed).directions)


def test_find_returns_none_without_match(tiny_model, two_runs):
    """No stored set matches another seed, another image id, or another method."""
    assert find_direction_set(two_runs, "img0", make_meta(tiny_model, seed=2)) is None
    assert find_direction_set(two_runs, "img1", make_meta(tiny_model, seed=0)) is None
    assert find_direction_set(two_runs, "img0", make_meta(tiny_model, seed=0, method="global")) is None


def test_find_prefers_newest_run(tiny_model, tmp_path):
    """When two runs both match, the set from the run dir modified last is returned."""
    runs = []
    for i, (name, mtime) in enumerate([("old", 2_000_000), ("new", 3_000_000), ("mid", 2_500_000)]):
        run = tmp_path / name
        make_set(tiny_model, rng=20 + i).save(run / "directions" / "img0.safetensors")
        os.utime(run, (mtime, mtime))
        runs.append(run)
    found = find_direction_set(runs, "img0", make_meta(tiny_model))
    assert torch.equal(found.directions, make_set(tiny_model, rng=21).directions)


def test_matches_ignores_non_discovery_keys_and_json_normalises(tiny_model):
    """matches compares only DISCOVERY_KEYS, after JSON round trip (tuple h_shape equals list)."""
    ds = make_set(tiny_model, note="anything")
    assert ds.matches(make_meta(tiny_model, h_shape=tuple(tiny_model.h_shape), note="else"))
    assert not ds.matches(make_meta(tiny_model, t=499))
    assert not ds.matches(make_meta(tiny_model, invert_to="T"))  # another x_t for an input image
