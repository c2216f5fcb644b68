"""Naming directions, editing by name, and applying one image's directions to other images."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lit_hspace.cli import main
from lit_hspace.directions import DirectionSet, main as directions_cli, name_directions
from lit_hspace.ddim import Edit
from lit_hspace.module import HSpaceEditor
from lit_hspace.settings import EditSettings
from lit_hspace.synth.naming import factor_names
from conftest import STRENGTHS, write_config
from test_directions import make_set

RBE = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 3, "n_outside": 2, "max_iter": 4}}


def test_name_command_adds_names_and_keeps_the_tensors(tiny_model, tmp_path, capsys):
    path = make_set(tiny_model).save(tmp_path / "img0.safetensors")
    before = load_file(path)
    directions_cli(["name", str(path), "3=smile", "2=eyes_closed"])
    assert "smile" in capsys.readouterr().out
    named = DirectionSet.load(path)
    assert named.names == {2: "eyes_closed", 3: "smile"}
    assert named.index_of("smile") == 3
    after = load_file(path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    name_directions(path, ["4=lip_red"])  # names accumulate
    assert DirectionSet.load(path).names == {2: "eyes_closed", 3: "smile", 4: "lip_red"}
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    "assignments, error",
    [
        (["smile"], "'smile' is not INDEX=NAME"),
        (["9=smile"], r"direction index 9 does not exist: the set has 5 directions \(0 .. 4\)"),
        (["1=smile", "2=smile"], r"unique; \['smile'\]"),
        (["1=big smile"], "must be letters, digits"),
    ],
)
def test_bad_names(tiny_model, tmp_path, assignments, error):
    path = make_set(tiny_model).save(tmp_path / "img0.safetensors")
    with pytest.raises(ValueError, match=error):
        name_directions(path, assignments)
    assert DirectionSet.load(path).names == {}  # unchanged


def test_unknown_name_lists_the_names_it_has(tiny_model):
    dset = make_set(tiny_model).with_names({3: "smile", 0: "age"})
    with pytest.raises(ValueError, match=r"no direction named 'frown' \(its names: 0=age, 3=smile\)"):
        dset.index_of("frown")


def test_factor_names_pick_the_factor_moved_most():
    # (directions, strengths -1, 0, 1, factors smile and eye_open): the strength-0 column must not count.
    changes = torch.tensor([
        [[-0.4, 0.1], [0.0, 0.9], [0.5, -0.1]],
        [[0.3, 0.2], [0.0, 0.0], [0.3, 0.2]],  # smile again: gets its index
        [[0.01, 0.2], [0.0, 0.0], [0.01, -0.2]],
    ])
    assert factor_names(changes, (-1.0, 0.0, 1.0), [0, 1, 2], ["smile", "eye_open"]) == {0: "smile", 1: "smile_1", 2: "eye_open"}


def test_edit_names_needs_a_direction_set(tiny_model_dir):
    with pytest.raises(ValueError, match="edit.names picks named directions of given direction sets"):
        HSpaceEditor(model=str(tiny_model_dir), edit=EditSettings(names=("smile",)))


def test_one_set_applied_to_other_images_by_name(tmp_path, tiny_model_dir):
    """Discover on seed 5, name a direction, then edit seeds 0 and 1 with it: the same direction, by name,
    at the same strengths, on each image; a name the set lacks is refused before any edit."""
    reference = write_config(tmp_path, tiny_model_dir, RBE, {"seeds": [5]}, name="reference")
    main(["predict", "--config", str(reference)])
    (artifact,) = (tmp_path / "runs" / "reference").glob("version_0/directions/seed000005.safetensors")
    name_directions(artifact, ["1=smile"])
    direction = DirectionSet.load(artifact).directions[1]

    transfer = write_config(tmp_path, tiny_model_dir, RBE, {"seeds": [0, 1]}, name="transfer")
    with pytest.raises(ValueError, match="no direction named 'frown'"):
        main(["test", "--config", str(transfer), "--model.init_args.discovery.directions", str(artifact), "--model.init_args.edit.names=[frown]"])
    assert not list((tmp_path / "runs" / "transfer").glob("*/edits.csv"))
    cli = main(["test", "--config", str(transfer), "--model.init_args.discovery.directions", str(artifact), "--model.init_args.edit.names=[smile]"])
    run = cli.trainer.log_dir
    with open(f"{run}/edits.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["image"], r["direction"], r["name"], float(r["strength"])) for r in rows] == [
        (image, "1", "smile", s) for image in ("seed000000", "seed000001") for s in STRENGTHS
    ]
    # The edit really is along the stored direction: re-run one edit by hand.
    module = cli.model
    x_T = torch.randn(module.hspace.image_shape, generator=torch.Generator().manual_seed(0))[None]
    x_t = module.ddim.sample(x_T, stop=module.t)
    by_hand = module.ddim.sample(x_t, start=module.t, edit=Edit(STRENGTHS[-1] * direction[None], module.t))[0]
    written = np.array(Image.open(f"{run}/images/seed000000/d01_mouth_a{STRENGTHS[-1]:+g}.png")).astype(np.float32) / 255
    assert np.abs(written - ((by_hand.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()).max() < 1 / 255 + 1e-4
