"""The direction-set artifact: safetensors round trip, overwrite refusal, model checks and lookup."""

import os

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

import lit_hspace
from conftest import tiny_unet
from lit_hspace.directions import DirectionSet, DiscoveryKey
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.layout import DirectionOrigin, RunLayout
from lit_hspace.store import DirectionStore


def make_key(model, **overrides) -> DiscoveryKey:
    settings = dict(t=500, num_steps=50, latent="seed", method="jive", method_params={"rank_joint": 2, "rank_individual": 1},
                    regions=[{"name": "eyes"}, {"name": "mouth"}], masks="masks0", seed=0, image="img0")
    return DiscoveryKey.of(model, **(settings | overrides))


KEY_SETTINGS = ("t", "num_steps", "latent", "method", "method_params", "regions", "masks", "seed", "image", "content")


def make_meta(model, **overrides):
    """A set's metadata: its key, plus any other entries given (or a key field written over, e.g. h_shape)."""
    key = make_key(model, **{k: v for k, v in overrides.items() if k in KEY_SETTINGS})
    return {"model": model.name, **key.to_meta(), **{k: v for k, v in overrides.items() if k not in KEY_SETTINGS}}


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
    """Run dirs a (seed 0, older) and b (seed 1, newer), each with directions/img0.safetensors; newest first."""
    runs = []
    for i, name in enumerate(["a", "b"]):
        run = tmp_path / name
        make_set(tiny_model, rng=10 + i, seed=i).save(run / "directions" / "img0.safetensors")
        (run / "run.json").write_text("{}")
        os.utime(run, (1_000_000 + i * 100, 1_000_000 + i * 100))
        runs.append(run)
    return RunLayout(tmp_path / "c").siblings()


@pytest.mark.parametrize("seed", [0, 1])
def test_store_finds_the_set_with_an_equal_key(tiny_model, two_runs, seed):
    """Of two stored sets differing only in seed, the one whose key equals the wanted key is returned."""
    found = DirectionStore(None, tiny_model).find(make_key(tiny_model, seed=seed), two_runs)
    assert found is not None and found.dset.key == make_key(tiny_model, seed=seed)
    assert torch.equal(found.dset.directions, make_set(tiny_model, rng=10 + seed).directions)
    assert found.origin == DirectionOrigin("reused", str(two_runs[1 - seed].directions("img0")))


@pytest.mark.parametrize(
    "change",
    [dict(seed=2), dict(image="img1"), dict(method="haas"), dict(t=499), dict(num_steps=20), dict(latent="fixed_point"),
     dict(regions=[{"name": "eyes"}, {"name": "nose"}]), dict(regions=[{"name": "mouth", "box": [0, 0, 1, 0.5]}]),
     dict(method_params={"rank_joint": 2, "rank_individual": 2}), dict(content="0123456789abcdef"), dict(masks="masks1")],
)
def test_store_misses_when_any_key_field_differs(tiny_model, two_runs, change):
    """Another seed, image, method, timestep, schedule, inversion, region (its name or its mask), parameter,
    pixels under the same image name or mask values (the same region settings, masks made another way): no hit."""
    assert DirectionStore(None, tiny_model).find(make_key(tiny_model, **change), two_runs) is None


def test_store_misses_for_other_weights(tiny_model, two_runs):
    other = HSpaceUNet(tiny_unet(seed=1), DDPMScheduler().config, "other")
    assert DirectionStore(None, tiny_model).find(make_key(other), two_runs) is None


def test_store_prefers_the_newest_run(tiny_model, tmp_path):
    """When two runs both match, the set from the run dir modified last is returned."""
    for i, (name, mtime) in enumerate([("old", 2_000_000), ("new", 3_000_000), ("mid", 2_500_000)]):
        run = tmp_path / name
        make_set(tiny_model, rng=20 + i).save(run / "directions" / "img0.safetensors")
        (run / "run.json").write_text("{}")
        os.utime(run, (mtime, mtime))
    found = DirectionStore(None, tiny_model).find(make_key(tiny_model), RunLayout(tmp_path / "this").siblings())
    assert torch.equal(found.dset.directions, make_set(tiny_model, rng=21).directions)


def test_key_round_trips_through_the_artifact(tiny_model, tmp_path):
    """The key survives save and load (tuples come back as lists in JSON); a set without one has no key."""
    path = make_set(tiny_model, note="anything").save(tmp_path / "img0.safetensors")
    assert DirectionSet.load(path).key == make_key(tiny_model)
    bare = DirectionSet(torch.zeros(1, 2), torch.ones(1), ["mouth"], torch.zeros(1, 3, 4, 4), {"image": "img0"})
    assert bare.key is None


def test_given_sets_one_for_all_or_per_image(tiny_model, tmp_path):
    one = make_set(tiny_model, rng=1).save(tmp_path / "one.safetensors")
    store = DirectionStore(str(one), tiny_model)
    found = store.find(make_key(tiny_model, image="anything"), [])
    assert torch.equal(found.dset.directions, make_set(tiny_model, rng=1).directions)
    assert found.origin == DirectionOrigin("given", str(one))
    folder = tmp_path / "sets"
    make_set(tiny_model, rng=2).save(folder / "img0.safetensors")
    store = DirectionStore(str(folder), tiny_model)
    found = store.find(make_key(tiny_model), [])
    assert torch.equal(found.dset.directions, make_set(tiny_model, rng=2).directions)
    assert found.origin == DirectionOrigin("given", str(folder / "img0.safetensors"))
    assert store.find(make_key(tiny_model, image="img9"), []) is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .safetensors files"):
        DirectionStore(str(tmp_path / "empty"), tiny_model)
    with pytest.raises(ValueError, match="no direction named 'smile'"):
        DirectionStore(str(one), tiny_model, names=("smile",))


def test_only_run_directories_are_earlier_runs(tmp_path):
    """Without a logger the run directory is the current one: its other folders (source, data) are not earlier runs;
    only folders with a run.json are."""
    (tmp_path / "src" / "directions").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "old_run").mkdir()
    (tmp_path / "old_run" / "run.json").write_text("{}")
    assert RunLayout(tmp_path / "runs").siblings() == [RunLayout(tmp_path / "old_run")]
