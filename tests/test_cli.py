"""End to end through the CLI, in-process, on a small model saved with save_pretrained; and bad input."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lit_hspace.callbacks import OVERVIEW_SIDE, Grid
from lit_hspace.cli import main
from lit_hspace.data import HSpaceData
from lit_hspace.directions import DirectionSet
from lit_hspace.methods import JIVE, Haas
from lit_hspace.regions import Region
from lit_hspace.jacobian import principal_angle_sine
from lit_hspace.discovery import ImageItem
from lit_hspace.module import HSpaceEditor
from lit_hspace.ddim import Latent
from lit_hspace.discovery import discover
from lit_hspace.figures import FONT_SIZE, PAD
from lit_hspace.layout import DirectionOrigin, RunLayout, RunManifest
from lit_hspace.settings import DiffusionSettings, DiscoverySettings, EditSettings
from conftest import STRENGTHS, inlined, read_png, write_config

def test_predict_then_test_reuses_directions_and_writes_a_run(tmp_path, tiny_model_dir, face_png):
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 3, "n_outside": 2, "max_iter": 4}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"images": [str(face_png)]})
    main(["predict", "--config", str(config)])
    run0 = tmp_path / "runs" / "exp" / "version_0"
    stored = DirectionSet.load(run0 / "directions" / "face.safetensors")
    assert stored.directions.shape == (3, 16, 8, 8) and stored.labels == ["mouth"] * 3
    torch.testing.assert_close(stored.directions.flatten(1).norm(dim=1), torch.ones(3))
    assert stored.meta["method"] == "rbe" and stored.meta["t"] == 600 and stored.meta["image"] == "face"
    assert (run0 / "config.yaml").is_file()

    main(["test", "--config", str(config)])
    run1 = tmp_path / "runs" / "exp" / "version_1"
    assert not (run1 / "directions").exists(), "test must reuse the set predict stored, not discover again"
    assert (run0 / "directions" / "face.safetensors").is_file()  # the earlier run is untouched
    # Where the set came from, in both manifests and in every edits.csv row.
    assert RunManifest.read(RunLayout(run0)).directions == {"face": DirectionOrigin("discovered", str(run0 / "directions" / "face.safetensors"))}
    manifest = RunManifest.read(RunLayout(run1))
    assert manifest.status == "finished" and manifest.directions == {"face": DirectionOrigin("reused", str(run0 / "directions" / "face.safetensors"))}

    grid = Image.open(run1 / "grids" / "face.png")
    # 2 directions x (input, reconstruction, 3 strengths), each cell 16 px upscaled 8 times to 128 px.
    assert grid.size[1] == FONT_SIZE + 2 * PAD + 2 * (128 + PAD) and grid.size[0] > 5 * (128 + PAD)
    with open(run1 / "edits.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(STRENGTHS)
    assert {(r["directions_source"], r["directions_file"]) for r in rows} == {("reused", str(run0 / "directions" / "face.safetensors"))}
    # Each row's MSE, recomputed from the written PNGs (8-bit, hence the tolerance), against the reconstruction.
    images = run1 / "images" / "face"
    reconstruction = read_png(images / "reconstruction.png")
    mask = torch.zeros(1, 16, 16)
    mask[:, 10:14, 5:11] = 1  # celebahq mouth box (0.33, 0.67, 0.67, 0.82) at 16 px
    for row in rows:
        d = int(row["direction"])
        edited = read_png(images / f"d{d:02d}_mouth_a{float(row['strength']):+g}.png")
        inside = ((edited - reconstruction) ** 2 * mask).sum() / (3 * mask.sum())
        assert abs(float(row["mse_inside"]) - inside.item()) < 2e-4 + 0.02 * inside.item()
    torch.testing.assert_close(read_png(images / "d00_mouth_a+0.png"), reconstruction, atol=0, rtol=0)
    # The input as the model sees it (centre-cropped and resized to 16 px), and the inversion's error logged.
    original = read_png(images / "input.png")
    assert original.shape == (3, 16, 16)
    expected_mae = (original - reconstruction).abs().mean().item()
    assert json.loads((run1 / "metrics.json").read_text())["test/reconstruction_mae"] == pytest.approx(expected_mae, abs=2 / 255)
    metrics = json.loads((run1 / "metrics.json").read_text())
    edited_rows = [r for r in rows if float(r["strength"]) != 0]
    for part in ("whole", "inside", "outside"):
        expected = np.mean([float(r[f"mse_{part}"]) for r in edited_rows])
        assert metrics[f"test/mse_{part}"] == pytest.approx(expected, rel=1e-5)
    assert metrics["test/mse_inside"] > 0


def test_another_image_under_the_same_name_is_never_given_an_earlier_set(tmp_path, tiny_model_dir, face_png):
    """The discovery key holds the pixels' digest: a different face.png in a later run of the experiment is
    discovered anew, not edited with the set stored for the first face.png."""
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"images": [str(face_png)]}, name="same_name")
    main(["predict", "--config", str(config)])
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(face_png)
    main(["test", "--config", str(config)])
    runs = tmp_path / "runs" / "same_name"
    first, second = (DirectionSet.load(runs / f"version_{v}" / "directions" / "face.safetensors") for v in (0, 1))
    assert first.key.content != second.key.content and first.key.image == second.key.image == "face"


def test_pooled_set_of_a_batch_is_the_summed_operators_directions(tmp_path, tiny_model_dir):
    """discovery.pool: one set for the batch's two seeds, equal to the directions of their stacked Jacobians
    computed here directly, stored once, used for both images, and reused by the next run of the experiment."""
    haas = {"class_path": "lit_hspace.methods.Haas", "init_args": {"k": 2, "tol": 1e-4, "max_iter": 60}}
    config = write_config(tmp_path, tiny_model_dir, haas, {"seeds": [0, 1], "batch_size": 2}, name="pooled")
    cli = main(["test", "--config", str(config), "--model.init_args.discovery.pool=true"])
    run = tmp_path / "runs" / "pooled" / "version_0"
    (stored,) = (run / "directions").glob("*.safetensors")
    assert stored.name == "seed000000+1.safetensors"
    module = cli.model
    weights = module.images.fixed_masks[:1].expand(1, 3, 16, 16).reshape(-1, 1)
    explicit = []
    for seed in (0, 1):
        enc = module.hspace.encode(module.images.latent(ImageItem(f"seed{seed:06d}", None, seed, None)).x, module.t)
        fn = lambda h: module.hspace.decode(h[None], enc)[0]  # noqa: E731
        explicit.append(weights * torch.autograd.functional.jacobian(fn, enc.h[0]).reshape(3 * 16 * 16, -1))
    stacked = torch.cat(explicit)  # (2 * 768, 1024): the two masked Jacobians, stacked
    _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    found = DirectionSet.load(stored)
    torch.testing.assert_close(found.singular_values, s[:2], rtol=1e-3, atol=0)
    assert principal_angle_sine(found.directions.flatten(1).T, vh[:2].T).item() < 1e-2
    with open(run / "edits.csv") as f:
        assert {r["image"] for r in csv.DictReader(f)} == {"seed000000", "seed000001"}
    # overview.png: both images' rows (image-major) in one figure; each edit cell is that edit's PNG upscaled 8 times.
    overview = np.asarray(Image.open(run / "overview.png").convert("RGB"), dtype=np.int16)
    assert overview.shape[0] == FONT_SIZE + 2 * PAD + 4 * (128 + PAD)
    left = overview.shape[1] - (1 + len(STRENGTHS)) * (128 + PAD)  # the sample, then the strengths
    for i, (seed, d) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for j, a in enumerate(STRENGTHS):
            png = np.asarray(Image.open(run / "images" / f"seed00000{seed}" / f"d{d:02d}_mouth_a{a:+g}.png"), dtype=np.int16)
            y, x = FONT_SIZE + 2 * PAD + i * (128 + PAD), left + (1 + j) * (128 + PAD)
            assert np.array_equal(overview[y : y + 128, x : x + 128], png.repeat(8, 0).repeat(8, 1)), (seed, d, a)
    main(["test", "--config", str(config), "--model.init_args.discovery.pool=true"])
    assert not (tmp_path / "runs" / "pooled" / "version_1" / "directions").exists()  # reused


def test_overview_shrinks_large_cells_and_keeps_small_ones():
    """A 512 px cell of four flat quadrants shrinks to 256 px with the same four quadrants; 16 px cells stay as they are."""
    quadrants = torch.rand(3, 2, 2)
    large, small = quadrants.repeat_interleave(256, 1).repeat_interleave(256, 2), torch.rand(3, 16, 16)
    shrunk = Grid([[large, small]], ["a", "b"], ["row"]).at_most(OVERVIEW_SIDE)
    torch.testing.assert_close(shrunk.cells[0][0], quadrants.repeat_interleave(128, 1).repeat_interleave(128, 2))
    assert shrunk.cells[0][1] is small


def test_jive_in_test_discovers_and_stores_per_region_directions(tmp_path, tiny_model_dir):
    jive = {"class_path": "lit_hspace.methods.JIVE", "init_args": {"k": 3, "rank_joint": 2, "rank_individual": 2, "max_iter": 3}}
    config = write_config(tmp_path, tiny_model_dir, jive, {"seeds": [5]}, regions=("eyes", "mouth"), name="jive")
    main(["test", "--config", str(config)])
    run = tmp_path / "runs" / "jive" / "version_0"
    stored = DirectionSet.load(run / "directions" / "seed000005.safetensors")
    assert stored.labels == ["joint"] * 2 + ["eyes"] * 2 + ["mouth"] * 2
    v = stored.directions.flatten(1)
    assert (v[2:] @ v[:2].T).abs().max() < 1e-5  # individual directions are orthogonal to the joint ones
    with open(run / "edits.csv") as f:
        assert {r["label"] for r in csv.DictReader(f)} == {"eyes", "mouth"}


SHIPPED = sorted(set(Path("configs").rglob("*.yaml")) - set(Path("configs/synth").glob("train*.yaml"))
                 - set(Path("configs/data").glob("*.yaml")) - set(Path("configs/base").glob("*.yaml")))


def printed_config(config, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_print_config_of_the_shipped_configs(capsys, tmp_path):
    """Each shipped config parses; composed from configs/base/ files, it prints exactly what the same config with those
    files written out in it (flat) prints."""
    assert len(SHIPPED) >= 10
    for config in SHIPPED:
        composed = printed_config(config, capsys)
        written_out = inlined(yaml.safe_load(config.read_text()), config.parent)
        # The base files' settings reach the parsed config (the default run edits from 0.3T, the rest from 0.6T).
        timestep = written_out["model"]["init_args"]["diffusion"]["timestep"]
        assert yaml.safe_load(composed)["model"]["init_args"]["diffusion"]["timestep"] == timestep in (0.3, 0.6)
        flat = tmp_path / config.name
        flat.write_text(yaml.safe_dump(written_out))
        assert printed_config(flat, capsys) == composed, config


def test_no_six_config_lines_are_repeated_in_more_than_three_configs():
    """What configs share lives in configs/base/: no run of 6 lines appears in more than 3 config files."""
    seen: dict[tuple[str, ...], set[str]] = {}
    for config in Path("configs").rglob("*.yaml"):
        lines = [line.strip() for line in config.read_text().splitlines() if line.strip()]
        for i in range(len(lines) - 5):
            seen.setdefault(tuple(lines[i : i + 6]), set()).add(str(config))
    assert {run: files for run, files in seen.items() if len(files) > 3} == {}


# -- bad input: a clear error before heavy compute ---------------------------------------------


def test_unreachable_hub_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="not in the local Hugging Face cache.*--local-dir"):
        HSpaceEditor(model="google/ddpm-ema-celebahq-256")


def test_cli_reports_the_missing_checkpoint_itself(monkeypatch, tmp_path):
    """Not jsonargparse's 'Does not validate against any of the Union subtypes' around it."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="not in the local Hugging Face cache") as raised:
        main(["test", "--config", str(Path(__file__).parents[1] / "configs" / "paper" / "rbe_table2.yaml")])
    assert "Union" not in str(raised.value)


def test_hub_that_does_not_answer(monkeypatch, tmp_path):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    with pytest.raises(OSError, match="nor reachable on the Hugging Face Hub.*--local-dir"):
        HSpaceEditor(model="google/ddpm-ema-church-256")


def test_missing_or_broken_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png' does not exist"):
        HSpaceData(images=[str(tmp_path / "nowhere.png")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="broken.png' is not an image"):
        HSpaceData(images=[str(broken)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        HSpaceData(images=[str(tmp_path / "empty")])


def box(name, *coords):
    return Region(name, tuple(coords))


@pytest.mark.parametrize(
    "settings, error",
    [
        (lambda: {"regions": [box("out", 0.2, 0.2, 1.3, 0.5)]}, r"box \(0.2, 0.2, 1.3, 0.5\) must be 4 numbers"),
        (lambda: {"regions": [box("flat", 0.2, 0.5, 0.6, 0.5)]}, "zero area"),
        (lambda: {"regions": [box("all", 0, 0, 1, 1)]}, "covers the whole image"),
        (lambda: {"diffusion": DiffusionSettings(timestep=1.5)}, "timestep=1.5 is outside the schedule"),
        (lambda: {"regions": ["eyes", "mouth"], "method": JIVE(k=3, rank_joint=7, rank_individual=2)}, "r_C=7"),
        (lambda: {"regions": ["eyes", "mouth"], "method": JIVE(k=3, rank_joint=2, rank_individual=4)}, "r_A=4"),
        (lambda: {"regions": [box("all", 0, 0, 1, 1)], "method": JIVE(k=3, rank_joint=2, rank_individual=2)}, "needs an outside"),
        (lambda: {"method": Haas(k=5000)}, "k=5000 directions"),
        (lambda: {"diffusion": DiffusionSettings(invert_to="middle")}, "invert_to 'middle' is not one of"),
        (lambda: {"discovery": DiscoverySettings(chunk_size=0)}, "chunk_size=0 must be at least 1"),
        (lambda: {"edit": EditSettings(per_group=0)}, "per_group=0 must be at least 1"),
        (lambda: {"edit": EditSettings(strengths=())}, "strengths is empty"),
        (lambda: {"edit": EditSettings(injection="both")}, "injection 'both' is not one of"),
        (lambda: {"metrics": ["mse", "sharpness"]}, r"unknown metrics \['sharpness'\]"),
    ],
)
def test_bad_settings(tiny_model_dir, settings, error):
    with pytest.raises(ValueError, match=error):
        HSpaceEditor(model=str(tiny_model_dir), **settings())


def test_artifact_for_another_model_is_refused_before_compute(tmp_path, tiny_model_dir):
    other = DirectionSet(
        torch.randn(2, 16, 8, 8), torch.ones(2), ["mouth"] * 2, torch.zeros(1, 3, 16, 16),
        {"model": "elsewhere", "model_fingerprint": "0123456789abcdef", "h_shape": [16, 8, 8], "image": "x"},
    )
    artifact = other.save(tmp_path / "other.safetensors")
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0]}, name="refuse")
    with pytest.raises(ValueError, match="made for elsewhere"):
        main(["test", "--config", str(config), "--model.init_args.discovery.directions", str(artifact)])
    assert not list((tmp_path / "runs" / "refuse").glob("*/edits.csv"))


def test_out_of_memory_names_what_to_lower(tiny_model_dir, monkeypatch):
    from lit_hspace.jacobian import JacobianOperator

    def too_big(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(JacobianOperator, "_linearised", too_big)
    module = HSpaceEditor(model=str(tiny_model_dir))
    key = module.images.key("img", None, module.images.fixed_masks)
    with pytest.raises(MemoryError, match=r"do not fit in memory on cpu: even one direction per product does not fit"):
        discover(module.hspace, module.method, module.regions, module.images.fixed_masks, Latent(torch.zeros(1, 3, 16, 16), module.t, False), key, chunk_size=48)


def test_images_of_another_size_are_resized_with_a_warning_or_refused(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(folder / "a_right.png")
    Image.new("RGB", (40, 24), (0, 0, 255)).save(folder / "b_wide.png")
    refusing = HSpaceData(images=[str(folder)], image_size=16, resize=False)
    with pytest.raises(ValueError, match=r"1 of 2 images are not 16 x 16.*b_wide.png' is 40 x 24.*resize: true"):
        refusing.dataset()
    resizing = HSpaceData(images=[str(folder)], image_size=16)
    with pytest.warns(UserWarning, match=r"1 of 2 images are not 16 x 16.*centre-cropped to a square and resized to 16 x 16"):
        data = resizing.dataset()
    wide = data[1]["image"]
    # A uniform blue 40 x 24 image stays uniformly blue: [-1, -1, 1] in [-1, 1] after crop and resize.
    assert wide.shape == (3, 16, 16)
    torch.testing.assert_close(wide, torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, 16, 16))
