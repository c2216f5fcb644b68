"""The discovery cache: hits are bit-identical to computing, any change of what decides a result misses, entries
are written atomically, and a corrupt or foreign entry is never trusted."""

import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DDPMScheduler

from conftest import tiny_unet, write_config, write_sweep
from lit_hspace import sweep
from lit_hspace.cli import main as cli
from lit_hspace.cache import DiscoveryCache, tensor_digest
from lit_hspace.ddim import Inversion, Latent
from lit_hspace.directions import DirectionSet, DiscoveryKey
from lit_hspace.discovery import discover
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.jacobian import principal_angle_sine
from lit_hspace.methods import JIVE, RBE, Haas, Rayleigh
from lit_hspace.discovery import ImageItem
from lit_hspace.module import HSpaceEditor
from lit_hspace.regions import Region, grown_mask, region_masks
from lit_hspace.settings import DiffusionSettings, DiscoverySettings

MOUTH, EYES = Region("mouth", box=(0.25, 0.6, 0.75, 0.85)), Region("eyes", box=(0.2, 0.25, 0.8, 0.45))


def x_t(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def run(model, method, regions=(MOUTH,), cache=None, t=600, seed=0, latent=None):
    regions = list(regions)
    masks = region_masks(regions, 16)
    key = DiscoveryKey.of(model, t, 50, "seed", method.name, method.params(), [r.name for r in regions], tensor_digest(masks), seed, "img0")
    return discover(model, method, regions, masks, Latent(x_t() if latent is None else latent, t, False), key, cache=cache)


def solves(dset: DirectionSet) -> tuple[int, int]:
    return dset.meta["convergence"]["solves_cached"], dset.meta["convergence"]["solves_computed"]


METHODS = {
    "haas": lambda: Haas(k=3, max_iter=8),
    "rbe": lambda: RBE(k=3, n_outside=4, max_iter=8),  # two solves: the second's start depends on the first's draws
    "jive": lambda: JIVE(k=3, rank_joint=2, rank_individual=1, max_iter=8),
    "rayleigh": lambda: Rayleigh(k=3, max_iter=8),
}


@pytest.mark.parametrize("name", METHODS)
def test_a_hit_is_bit_identical_to_computing(tiny_model, tmp_path, name):
    regions = (MOUTH, EYES) if name == "jive" else (MOUTH,)
    uncached = run(tiny_model, METHODS[name](), regions)
    first = run(tiny_model, METHODS[name](), regions, DiscoveryCache(tmp_path))
    second = run(tiny_model, METHODS[name](), regions, DiscoveryCache(tmp_path))  # another run, same folder
    expected_solves = {"haas": 1, "rbe": 2, "jive": 1, "rayleigh": 2}[name]
    assert solves(first) == (0, expected_solves) and solves(second) == (expected_solves, 0)
    for dset in (first, second):
        assert torch.equal(dset.directions, uncached.directions)
        assert torch.equal(dset.singular_values, uncached.singular_values)


@pytest.mark.parametrize("change", ["mask", "t", "k", "seed", "weights", "x_t", "projection"])
def test_any_change_of_what_decides_a_solve_misses(tiny_model, tmp_path, change):
    """Unlike a cache keyed by image and timestep alone, another mask (or anything else) never returns the
    stored directions."""
    cache = DiscoveryCache(tmp_path)
    base = run(tiny_model, RBE(k=3, n_outside=4, max_iter=8), cache=cache)
    model, method, kwargs = tiny_model, RBE(k=3, n_outside=4, max_iter=8), {}
    if change == "mask":
        kwargs["regions"] = (EYES,)
    elif change == "t":
        kwargs["t"] = 400
    elif change == "k":
        method = RBE(k=4, n_outside=4, max_iter=8)
    elif change == "seed":
        kwargs["seed"] = 1
    elif change == "weights":
        unet = tiny_unet()
        with torch.no_grad():
            unet.mid_block.resnets[0].conv1.weight[0, 0, 0, 0] += 1e-3  # one weight, deep inside
        model = HSpaceUNet(unet, DDPMScheduler().config, "tiny")
    elif change == "x_t":
        kwargs["latent"] = x_t(1)
    elif change == "projection":
        method = RBE(k=3, n_outside=5, max_iter=8)
    changed = run(model, method, cache=cache, **kwargs)
    fresh = run(model, method, **kwargs)  # no cache at all
    cached, computed = solves(changed)
    # k and the seed's draws after the outside solve leave that one shared; a new projection shares nothing.
    assert computed >= 1 and cached <= (1 if change == "k" else 0)
    assert torch.equal(changed.directions, fresh.directions)
    assert not torch.allclose(changed.directions[:3], base.directions[:3])


def test_latents_hit_for_the_same_inversion_and_miss_for_another(tiny_model_dir, tmp_path):
    image = torch.rand(3, 16, 16) * 2 - 1
    item = ImageItem("img0", image, None, None)

    def editor(inversion: Inversion) -> HSpaceEditor:
        diffusion = DiffusionSettings(timestep=0.6, num_steps=5, inversion=inversion)
        return HSpaceEditor(str(tiny_model_dir), RBE(k=2, n_outside=2), ["mouth"], diffusion=diffusion,
                            discovery=DiscoverySettings(cache=str(tmp_path)))

    fixed = editor(Inversion("fixed_point"))
    first = fixed.images.latent(item)
    again = editor(Inversion("fixed_point")).images.latent(item)
    assert torch.equal(again.x, first.x) and again.residual == first.residual and again.clip is False
    assert torch.equal(first.x, fixed.images.compute_latent(item).x)
    other = editor(Inversion("ddim"))
    assert not torch.equal(other.images.latent(item).x, first.x)
    assert torch.equal(other.images.latent(item).x, other.images.compute_latent(item).x)
    ddpm = editor(Inversion("ddpm"))
    stored = ddpm.images.latent(item)
    hit = editor(Inversion("ddpm")).images.latent(item)  # the noise maps come back with the latent
    assert torch.equal(hit.noise, stored.noise) and torch.equal(hit.x, stored.x)
    assert len(list((tmp_path / "latents").glob("*.safetensors"))) == 3


def test_automatic_parts_hit_for_the_same_latent_and_settings_and_miss_for_others(tiny_model_dir, tmp_path):
    from lit_hspace.segment import Segmentation, auto_regions

    item = ImageItem("seed000003", None, 3, None)

    def editor(segmentation: Segmentation) -> HSpaceEditor:
        return HSpaceEditor(str(tiny_model_dir), Haas(k=2), [Region("part0", auto=True)], region_preset=None,
                            diffusion=DiffusionSettings(timestep=0.6, num_steps=5), segmentation=segmentation,
                            discovery=DiscoverySettings(cache=str(tmp_path)))

    first = editor(Segmentation(parts=4))
    latent = first.images.latent(item)
    masks, parts = first.images.image_masks(latent, item.id)
    expected = auto_regions(first.ddim, latent, None, Segmentation(parts=4))
    assert [(p.name, p.share) for p in parts] == [(p.name, p.share) for p in expected]
    assert all(torch.equal(p.mask, q.mask) for p, q in zip(parts, expected))

    again = editor(Segmentation(parts=4))
    hits = again.images.cache.counts.hits
    masks_again, parts_again = again.images.image_masks(again.images.latent(item), item.id)
    assert again.images.cache.counts.hits == hits + 2 and again.images.cache.counts.computed == 0  # the latent and the parts
    assert torch.equal(masks_again, masks) and all(p.mask.dtype == q.mask.dtype for p, q in zip(parts_again, parts))
    assert [(p.name, p.share) for p in parts_again] == [(p.name, p.share) for p in parts]

    grown = editor(Segmentation(parts=4, grow=1))  # parts are stored before any margin: one entry serves every grow
    hits = grown.images.cache.counts.hits
    masks_grown, parts_grown = grown.images.image_masks(grown.images.latent(item), item.id)
    assert grown.images.cache.counts.hits == hits + 2 and grown.images.cache.counts.computed == 0
    assert torch.equal(masks_grown[0], grown_mask(masks[0], 1))  # one region: nothing to grow apart from
    # The parts a run writes are the ones discovery saw: its region with its margin, the others as found.
    assert parts_grown[0].name == "part0" and torch.equal(parts_grown[0].mask, masks_grown[0]) and not torch.equal(parts_grown[0].mask, parts[0].mask)
    assert all(torch.equal(p.mask, q.mask) for p, q in zip(parts_grown[1:], parts[1:]))

    other = editor(Segmentation(parts=5, connected=False))  # another setting: computed, never the stored parts
    _, parts_other = other.images.image_masks(other.images.latent(item), item.id)
    assert other.images.cache.counts.computed == 1 and len(parts_other) == 5
    assert len(list((tmp_path / "parts").glob("*.safetensors"))) == 2


def test_corrupt_or_foreign_entries_are_recomputed_with_a_warning(tiny_model, tmp_path):
    cache = DiscoveryCache(tmp_path)
    good = run(tiny_model, Haas(k=3, max_iter=8), cache=cache)
    (entry,) = (tmp_path / "solves").glob("*.safetensors")
    entry.write_bytes(b"\x00" * 100)  # a truncated copy
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        again = run(tiny_model, Haas(k=3, max_iter=8), cache=cache)
    assert solves(again) == (0, 1) and torch.equal(again.directions, good.directions)
    assert solves(run(tiny_model, Haas(k=3, max_iter=8), cache=cache)) == (1, 0)  # rewritten, valid
    # Another key's entry under this key's name (a digest collision, or a file copied by hand).
    run(tiny_model, Haas(k=3, max_iter=8), (EYES,), cache=cache)
    eyes = next(p for p in (tmp_path / "solves").glob("*.safetensors") if p != entry)
    entry.write_bytes(eyes.read_bytes())
    with pytest.warns(UserWarning, match="another key"):
        foreign = run(tiny_model, Haas(k=3, max_iter=8), cache=cache)
    assert solves(foreign) == (0, 1) and torch.equal(foreign.directions, good.directions)


def test_a_disabled_cache_writes_nothing(tiny_model, tmp_path):
    dset = run(tiny_model, Haas(k=3, max_iter=8), cache=DiscoveryCache(None))
    assert solves(dset) == (0, 1) and not any(tmp_path.iterdir())


WRITER = textwrap.dedent("""
    import sys, torch
    from lit_hspace.cache import DiscoveryCache
    cache, value = DiscoveryCache(sys.argv[1]), float(sys.argv[2])
    for _ in range(40):
        cache.write("solves", {"same": "entry"}, {"x": torch.full((200_000,), value)}, {"writer": value})
""")


def test_two_processes_writing_one_entry_leave_one_valid_file(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(v)]) for v in (1.0, 2.0)]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    tensors, facts = DiscoveryCache(tmp_path).read("solves", {"same": "entry"})
    assert torch.equal(tensors["x"], torch.full((200_000,), facts["writer"]))  # whole, from one writer
    assert [p.suffix for p in (tmp_path / "solves").iterdir()] == [".safetensors"]  # no partial file left


def test_a_rank_sweep_reuses_the_per_region_solves(tmp_path, tiny_model_dir):
    """Through `python -m lit_hspace.sweep`: the second run of a JIVE rank sweep computes no solve, and the
    cache sits beside the experiments (runs/cache)."""
    jive = {"class_path": "lit_hspace.methods.JIVE", "init_args": {"k": 2, "rank_joint": 1, "rank_individual": 1, "max_iter": 4}}
    config = write_config(tmp_path, tiny_model_dir, jive, {"seeds": [0]}, regions=("mouth", "eyes"), name="ranks")
    sweep.main([write_sweep(tmp_path / "rank_sweep.yaml", config, {"model.init_args.method.init_args.rank_joint": [1, 2]}),
                "--ledger", str(tmp_path / "ledger.json")])
    first, second = (DirectionSet.load(tmp_path / "runs" / "ranks" / f"version_{v}" / "directions" / "seed000000.safetensors") for v in (0, 1))
    assert solves(first) == (0, 1) and solves(second) == (1, 0)
    assert first.meta["method_params"]["rank_joint"] == 1 and second.meta["method_params"]["rank_joint"] == 2
    assert len(list((tmp_path / "runs" / "cache" / "latents").glob("*.safetensors"))) == 1


def test_warm_start_reuses_the_basis_of_a_smaller_k(tiny_model, tmp_path):
    """Opt-in: a k = 5 solve that misses starts from the stored k = 3 basis of the same problem; fewer products,
    the same subspace to tolerance. Without warm_start nothing is kept for it."""
    cold = run(tiny_model, Haas(k=5, tol=1e-4, max_iter=60))
    cache = DiscoveryCache(tmp_path, warm_start=True)
    run(tiny_model, Haas(k=3, tol=1e-4, max_iter=60), cache=cache)
    warm = run(tiny_model, Haas(k=5, tol=1e-4, max_iter=60), cache=cache)
    assert solves(warm) == (0, 1)
    assert warm.meta["convergence"]["products"] < cold.meta["convergence"]["products"]
    assert principal_angle_sine(cold.directions.flatten(1).T, warm.directions.flatten(1).T).item() < 1e-2
    run(tiny_model, Haas(k=3, tol=1e-4, max_iter=60), cache=DiscoveryCache(tmp_path / "off"))
    assert not (tmp_path / "off" / "starts").exists()


def test_cache_false_on_the_command_line_turns_it_off(tmp_path, tiny_model_dir):
    haas = {"class_path": "lit_hspace.methods.Haas", "init_args": {"k": 2, "max_iter": 4}}
    config = write_config(tmp_path, tiny_model_dir, haas, {"seeds": [0]}, name="off")
    cli(["test", "--config", str(config), "--model.init_args.discovery.cache=false"])
    assert (tmp_path / "runs" / "off" / "version_0" / "metrics.json").is_file()
    assert not (tmp_path / "runs" / "cache").exists()
