"""The command line as a user sees it: help that leads with the project, runs without noise, a strength-0 run."""

import json
import os
import subprocess
import sys

import pytest

from lit_hspace.cli import main, run
from conftest import write_config


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lit_hspace", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_help_leads_with_the_project_and_names_the_program(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: lit-hspace ")
    assert "local semantic directions in the h-space" in shown.split("options:")[0]
    assert "Discover (or reuse) direction sets, edit every image" in shown  # test, in the subcommand list
    assert "validate" not in shown and "Lightning Trainer command line tool" not in shown


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_subcommand_help_shows_the_editors_settings_before_the_trainers(subcommand, capsys):
    with pytest.raises(SystemExit):
        main([subcommand, "--help"])
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: lit-hspace {subcommand} --config CONFIG.yaml")
    editor = shown.index("--model.init_args.diffusion.timestep")
    assert editor < shown.index("--model.init_args.edit.strengths") < shown.index("--trainer.max_epochs")
    assert editor < shown.index("--trainer.")


def test_a_run_prints_no_advertising_or_irrelevant_warnings_and_a_zero_strength_run_finishes(tmp_path, tiny_model_dir):
    """The README's kind of run, as a subprocess: no Lightning tips, no seed notice, no W&B 'anonymous' warning.
    With strength 0 alone it is a reconstruction run: it finishes, with no edit means."""
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0]}, name="quiet")
    done = run_cli("test", "--config", str(config), "--model.init_args.edit.strengths", "[0]",
                   "--trainer.logger+=lit_hspace.tracking.WandbTracker", f"--trainer.logger.save_dir={tmp_path / 'runs'}", cwd=tmp_path)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    for noise in ("Tip:", "No seed found", "Seed set to", "anonymous", "args parameter is intended", "LeafSpec", "W&B logs offline"):
        assert noise not in shown, noise
    manifest = json.loads((tmp_path / "runs" / "quiet" / "version_0" / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["images"] == ["seed000000"]
    assert not any(k.startswith("test/mse") for k in manifest["metrics"])


@pytest.mark.parametrize("args, code, said", [
    (["--model.init_args.diffusion.timesteps", "0.4"], 2,
     "error: no setting 'model.init_args.diffusion.timesteps'; did you mean model.init_args.diffusion.timestep"),
    (["--model.init_args.edit.strengths", "50"], 2,
     "error: model.init_args.edit.strengths: the value '50' is not accepted: expected tuple[float, ...]"),
    (["--model.init_args.regions", "mouth"], 2, "error: model.init_args.regions: the value 'mouth' is not accepted"),
    (["--model.init_args.diffusion.timestep", "1.5"], 1, "error: diffusion.timestep=1.5 is outside the schedule"),
    (["--model.init_args.discovery.directions", "{notes}"], 1, "notes.txt' is not a direction set: it is not a safetensors file"),
], ids=["typo_in_a_key", "scalar_for_a_list", "list_without_brackets", "own_check", "text_file_as_directions"])
def test_bad_input_is_one_clear_line_without_a_traceback(args, code, said, tmp_path, tiny_model_dir, monkeypatch, capsys):
    """As a user sees it: the key (and the nearest keys, or what is allowed) in one line, no usage dump, no traceback.
    The entry point `python -m lit_hspace` calls, run in this process (a traceback would escape as an exception)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a direction set")
    config = write_config(tmp_path, tiny_model_dir, {"class_path": "lit_hspace.methods.Haas", "init_args": {"k": 2}}, {"seeds": [0]})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-hspace", "test", "--config", str(config), *[a.format(notes=notes) for a in args]])
    with pytest.raises(SystemExit) as exit_:
        run()
    stderr = capsys.readouterr().err
    assert exit_.value.code == code
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], stderr
    assert "Traceback" not in stderr and "usage:" not in stderr and "Union subtypes" not in stderr


def test_each_images_edits_show_a_bar_with_their_total(tiny_model, capsys):
    """A long step is not a silent `0/?`: the edits of an image count up to their known total (non-zero strengths)."""
    import torch

    from lit_hspace.ddim import DDIM, Latent
    from lit_hspace.directions import DirectionSet
    from lit_hspace.editing import Editor
    from lit_hspace.regions import region_masks, resolve_regions
    from lit_hspace.settings import EditSettings

    ddim = DDIM(tiny_model, 3)
    regions = resolve_regions(["mouth"], "celebahq")
    dset = DirectionSet(torch.eye(2, 16 * 8 * 8).reshape(2, 16, 8, 8), torch.ones(2), ["mouth", "mouth"], torch.zeros(1, 3, 16, 16))
    latent = Latent(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), ddim.timestep_at(0.6), False)
    editor = Editor(ddim, regions, EditSettings(strengths=(-5.0, 0.0, 5.0), per_group=2, batch_size=1), progress=True)
    editor.edit("img", latent, dset, None, region_masks(regions, 16))
    shown = capsys.readouterr().err
    assert "img: edits:" in shown and "0/4 [" in shown  # a known total: 2 directions x 2 non-zero strengths


def test_strength_in_h_norm_units_is_a_percent_of_the_images_h(tiny_model):
    """edit.units h_norm: strength a shifts h by a / 100 of the norm of the image's h at the edit timestep, i.e. the
    same edit as the absolute strength a ||h_t|| / 100 (||h_t|| computed here from the encoder directly)."""
    import torch

    from lit_hspace.ddim import DDIM, Latent
    from lit_hspace.directions import DirectionSet
    from lit_hspace.editing import Editor
    from lit_hspace.regions import region_masks, resolve_regions
    from lit_hspace.settings import EditSettings

    ddim = DDIM(tiny_model, 3)
    regions = resolve_regions(["mouth"], "celebahq")
    dset = DirectionSet(torch.eye(1, 16 * 8 * 8).reshape(1, 16, 8, 8), torch.ones(1), ["mouth"], torch.zeros(1, 3, 16, 16))
    latent = Latent(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), ddim.timestep_at(0.6), False)
    norm = tiny_model.encode(latent.x, latent.t).h.norm().item()
    masks = region_masks(regions, 16)
    relative = Editor(ddim, regions, EditSettings(strengths=(30.0,), per_group=1, units="h_norm")).edit("img", latent, dset, None, masks)
    absolute = Editor(ddim, regions, EditSettings(strengths=(30.0 * norm / 100,), per_group=1)).edit("img", latent, dset, None, masks)
    assert relative.shift_per_unit == pytest.approx((norm / 100,)) and absolute.shift_per_unit == (1.0,)
    torch.testing.assert_close(relative.edits, absolute.edits, rtol=1e-5, atol=1e-5)
    assert (relative.edits - relative.reconstruction).abs().max() > 1e-3


def test_strength_in_output_units_is_a_percent_of_the_predictions_scale(tiny_model, explicit_jacobian):
    """edit.units output: along each direction, strength 1 is the shift whose first-order change of the noise
    prediction has norm sqrt(3 * 16 * 16) / 100, checked with the explicit Jacobian."""
    import torch

    from lit_hspace.ddim import Latent
    from lit_hspace.editing import shift_per_unit

    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # where `explicit_jacobian` is taken
    vectors = torch.linalg.qr(torch.randn(16 * 8 * 8, 3, generator=torch.Generator().manual_seed(1)))[0].T
    per_unit = shift_per_unit(tiny_model, Latent(x_t, 600, False), "output", vectors.reshape(3, 16, 8, 8))
    changes = (explicit_jacobian @ (per_unit[:, None] * vectors).T).norm(dim=0)
    torch.testing.assert_close(changes, torch.full((3,), (3 * 16 * 16) ** 0.5 / 100), rtol=1e-4, atol=0)


def test_the_readmes_image_example_works_on_a_config_that_sets_seeds(tmp_path, tiny_model_dir, face_png):
    """`--data.init_args.images '[folder]' --data.init_args.seeds null`, as the README writes it, on a seeds config."""
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0, 1]}, name="photos")
    cli = main(["test", "--config", str(config), "--data.init_args.images", f"[{face_png.parent}]", "--data.init_args.seeds", "null"])
    run = tmp_path / "runs" / "photos" / "version_0"
    assert json.loads((run / "run.json").read_text())["images"] == ["face"] and cli.datamodule.seeds is None
