"""The built-in synthetic-faces model: name resolution, the factor probe, its metrics and FID, bad input."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import linalg
from torchmetrics.image.fid import FrechetInceptionDistance

from conftest import inlined
from lit_hspace.cli import main
from lit_hspace.data import HSpaceData
from lit_hspace.directions import DirectionSet
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.metrics import FactorChange
from lit_hspace.module import HSpaceEditor
from lit_hspace.settings import EditSettings
from lit_hspace.synth.faces import FACTOR_NAMES, FACTORS, render, sample_factors
from lit_hspace.synth.probe import FactorProbe, ProbeFeatures, held_out_error, normalise_factors, synth_batch


@pytest.fixture(scope="module")
def probe() -> FactorProbe:
    return FactorProbe.load()


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255


def test_synth_faces_loads_from_the_package_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = HSpaceUNet.from_pretrained("synth-faces")
    assert model.name == "synth-faces" and model.image_shape == (3, 32, 32)
    assert model.num_train_timesteps == 1000
    # Its DDPM schedule and architecture are those it was trained with.
    assert model.scheduler_config["beta_schedule"] == "linear"


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'synth-face'.*synth-faces, synth-faces-8x8, tiny-random, random-celebahq-256"):
        HSpaceUNet.from_pretrained("synth-face")


def test_probe_reads_the_factors_of_faces_it_never_saw(probe):
    errors = held_out_error(probe, num_images=300)
    assert set(errors) == set(FACTOR_NAMES)
    # Mean absolute error in units of each factor's range; guessing the middle would give 0.25. At 32 x 32
    # the finest factors are a pixel or less (gaze, iris colour, brow angle): those are read least well.
    assert max(errors.values()) < 0.1, errors
    assert max(errors[name] for name in ("smile", "mouth_open", "lip_red")) < 0.04, errors


def test_factor_change_of_a_rendered_local_edit(probe):
    """Moving one mouth factor in the generator: the probe sees that change and (almost) nothing else."""
    change = FactorChange(32, ["mouth", "eyes"])
    for seed in range(6):
        factors = sample_factors(np.random.default_rng(seed))
        factors["smile"], edited = -0.5, dict(factors, smile=0.5)  # half the smile's range [-1, 1]
        ref_img, edit_img = to_tensor(render(factors, 32)), to_tensor(render(edited, 32))
        out = change(edit_img, ref_img, ["mouth"])
        smile = out.changes[0, FACTOR_NAMES.index("smile")].item()
        assert smile == pytest.approx(0.5, abs=0.1)
        assert out.target.item() == pytest.approx(abs(smile))
        assert out.off_target.item() < 0.015
        # Labelled "eyes", the same edit is all off-target.
        assert change(edit_img, ref_img, ["eyes"]).target.item() < 0.05


def test_probe_fid_equals_the_frechet_distance_of_its_features(probe):
    real, _ = synth_batch(range(30_000_000, 30_000_200), 32)
    factors = [sample_factors(np.random.default_rng(s)) for s in range(200)]
    for f in factors:  # another distribution: every face smiles
        f["smile"] = 0.9
    fake = torch.cat([to_tensor(render(f, 32)) for f in factors])
    fid = FrechetInceptionDistance(feature=ProbeFeatures(probe), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)

    def stats(images):
        features = probe.features(images).double().numpy()
        return features.mean(0), np.cov(features, rowvar=False)

    (m1, c1), (m2, c2) = stats(real), stats(fake)
    expected = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert fid.compute().item() == pytest.approx(expected, rel=1e-3)

    same = FrechetInceptionDistance(feature=ProbeFeatures(probe), normalize=True)
    same.update(real[:100], real=True)
    same.update(real[100:], real=False)
    assert same.compute().item() < 0.5 * expected  # two halves of one distribution are closer


def test_normalised_factors_span_zero_to_one():
    low = torch.tensor([f.low for f in FACTORS])
    high = torch.tensor([f.high for f in FACTORS])
    assert torch.equal(normalise_factors(low), torch.zeros(len(FACTORS)))
    assert torch.allclose(normalise_factors(high), torch.ones(len(FACTORS)))


# -- bad input ---------------------------------------------------------------------------------


def test_probe_that_does_not_match_the_model_resolution(tiny_model_dir, probe):
    with pytest.raises(ValueError, match="reads 32 x 32 images, but the model makes 16 x 16"):
        HSpaceEditor(model=str(tiny_model_dir), metrics=["factors"])
    with pytest.raises(ValueError, match="reads 32 x 32 images, but the model makes 64 x 64"):
        probe(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"metrics": ["mse", "fidelity"]}, r"unknown metrics \['fidelity'\]: choose from"),
        ({"metrics": ["factors"], "regions": [{"name": "chin", "box": (0.4, 0.8, 0.6, 0.95)}]}, r"regions that have factors .*got \['chin'\]"),
        ({"regions": ["eyes", "mouth"], "edit": EditSettings(regions=("nose",))}, r"edit.regions \['nose'\] are not among the regions"),
    ],
)
def test_bad_metric_and_region_settings(tiny_model_dir, settings, error):
    from lit_hspace.regions import Region

    settings = dict(settings)
    settings["regions"] = [Region(**r) if isinstance(r, dict) else r for r in settings.get("regions", ["mouth"])]
    with pytest.raises(ValueError, match=error):
        HSpaceEditor(model=str(tiny_model_dir), region_preset="synth", **settings)


def test_more_images_asked_for_than_exist(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match=r"num_images=5 asked for, but images .* hold 3; allowed: 1 .. 3"):
        HSpaceData(images=[str(tmp_path)], num_images=5)
    with pytest.raises(ValueError, match="num_images=9 asked for, but seeds hold 4"):
        HSpaceData(seeds=4, num_images=9)
    assert HSpaceData(seeds=4, num_images=2).seeds == [0, 1]
    assert len(HSpaceData(images=[str(tmp_path)], num_images=2).files) == 2


# -- end to end --------------------------------------------------------------------------------


def short_synth_run(tmp_path, name: str, data: dict, strengths: list[float], per_group: int, k: int):
    """configs/synth/rbe_mouth.yaml made short (10 steps, k directions) on `data`; returns the config file."""
    config = inlined(yaml.safe_load(open("configs/synth/rbe_mouth.yaml")), Path("configs/synth"))  # base files written out
    args = config["model"]["init_args"]
    args["diffusion"].update(num_steps=10)
    args["edit"].update(strengths=strengths, per_group=per_group)
    args["method"]["init_args"].update(k=k, n_outside=k, max_iter=3)
    config["data"] = data
    config["trainer"] = {
        "logger": {"class_path": "lit_hspace.tracking.RunLogger", "init_args": {"save_dir": str(tmp_path), "name": name}},
        "enable_progress_bar": False,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_synth_run_writes_factor_changes_that_match_its_images(tmp_path, probe):
    """A short RBE run on synth-faces: every edits.csv factor change is the probe's reading of the written PNGs."""
    main(["test", "--config", str(short_synth_run(tmp_path, "synth", {"class_path": "lit_hspace.data.HSpaceData", "init_args": {"seeds": 1}},
                                                   strengths=[-30.0, 0.0, 30.0], per_group=2, k=2))])

    (run,) = (tmp_path / "synth").glob("version_*")
    rows = list(csv.DictReader(open(run / "edits.csv")))
    assert len(rows) == 2 * 3
    images = run / "images" / "seed000000"
    reference = to_tensor(Image.open(images / f"d{int(rows[0]['direction']):02d}_mouth_a+0.png").convert("RGB"))
    mouth = [f.name for f in FACTORS if f.region == "mouth"]
    for row in rows:
        edited = to_tensor(Image.open(images / f"d{int(row['direction']):02d}_mouth_a{float(row['strength']):+g}.png").convert("RGB"))
        delta = (probe(edited) - probe(reference))[0]
        for i, name in enumerate(FACTOR_NAMES):  # PNGs are rounded to 8 bits: measured up to 0.006 apart
            assert float(row[f"d_{name}"]) == pytest.approx(delta[i].item(), abs=0.02)
        target = max(abs(float(row[f"d_{n}"])) for n in mouth)
        assert float(row["factor_target"]) == pytest.approx(target, abs=1e-6)
    metrics = yaml.safe_load(open(run / "metrics.json"))
    moved = [r for r in rows if float(r["strength"]) != 0]
    assert metrics["test/factor_target"] == pytest.approx(np.mean([float(r["factor_target"]) for r in moved]), rel=1e-5)


def test_dataset_faces_run_starts_from_known_factors(tmp_path, probe):
    """Two dataset faces as input images: each is reconstructed closely, and the logged probe error at the start is
    the probe's reading of the written reconstructions against the generator's factors, recomputed by hand."""
    from lit_hspace.synth.faces import synth_face

    faces = {"class_path": "lit_hspace.synth.data.DatasetFaces", "init_args": {"num_images": 2}}
    main(["test", "--config", str(short_synth_run(tmp_path, "faces", faces, strengths=[0.0, 30.0], per_group=1, k=1))])

    (run,) = (tmp_path / "faces").glob("version_*")
    metrics = yaml.safe_load(open(run / "metrics.json"))
    errors, maes = [], []
    for i in range(2):
        image, factors = synth_face(40_000_000 + i, 32)
        folder = run / "images" / f"synth{40_000_000 + i:07d}"
        reconstruction = to_tensor(Image.open(folder / "reconstruction.png").convert("RGB"))
        errors.append((probe(reconstruction)[0] - normalise_factors(factors)).abs().mean().item())
        maes.append((reconstruction[0] - (image + 1) / 2).abs().mean().item())
    assert metrics["test/probe_start_error"] == pytest.approx(np.mean(errors), abs=0.01)  # 8-bit PNGs
    assert metrics["test/reconstruction_mae"] == pytest.approx(np.mean(maes), abs=2 / 255)
    assert metrics["test/reconstruction_mae"] < 0.03  # 10 steps; the clipped sampler of before: 0.08 at 50 steps


def test_a_pooled_set_is_named_after_what_it_moves_over_all_its_images(tmp_path):
    """discovery.pool on two dataset faces: the stored set's names are the factor each direction moves most in
    edits.csv, averaged over both images and the non-zero strengths (recomputed here from the rows)."""
    faces = {"class_path": "lit_hspace.synth.data.DatasetFaces", "init_args": {"num_images": 2, "batch_size": 2}}
    config = short_synth_run(tmp_path, "pooled", faces, strengths=[-30.0, 0.0, 30.0], per_group=2, k=2)
    main(["test", "--config", str(config), "--model.init_args.discovery.pool=true"])

    (run,) = (tmp_path / "pooled").glob("version_*")
    rows = [r for r in csv.DictReader(open(run / "edits.csv")) if float(r["strength"]) != 0]
    assert {r["image"] for r in rows} == {"synth40000000", "synth40000001"}
    expected = {}
    for direction in sorted({int(r["direction"]) for r in rows}):
        mine = [r for r in rows if int(r["direction"]) == direction]
        top = max(FACTOR_NAMES, key=lambda n: np.mean([abs(float(r[f"d_{n}"])) for r in mine]))
        expected[direction] = top if top not in expected.values() else f"{top}_{direction}"
    (stored,) = (run / "directions").glob("*.safetensors")
    assert DirectionSet.load(stored).names == expected
    assert {r["name"] for r in rows} == set(expected.values())  # both images' rows carry the set's names


def test_training_progress_reads_a_checkpoints_ema_weights(tmp_path):
    """A DDPMTrainer checkpoint (Lightning's layout: hyper-parameters, state dict, step) loads with weights_only, and
    the model measured is its EMA weights, not the raw ones."""
    from lit_hspace.training import DDPMTrainer

    torch.manual_seed(0)
    trainer = DDPMTrainer(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with torch.no_grad():
        for p in trainer.ema.module.parameters():
            p.add_(1.0)  # EMA weights unlike the raw ones
    path = tmp_path / "last.ckpt"
    hparams = dict(trainer.hparams) | {"_class_path": "lit_hspace.training.DDPMTrainer"}  # as LightningCLI records them
    torch.save({"hyper_parameters": hparams, "state_dict": trainer.state_dict(), "global_step": 7}, path)
    loaded, step = DDPMTrainer.from_checkpoint(path)
    model = loaded.ema_hspace_model()
    assert step == 7
    for (name, loaded), expected in zip(model.unet.state_dict().items(), trainer.ema.module.state_dict().values()):
        assert torch.equal(loaded, expected), name
