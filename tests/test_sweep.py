"""W&B sweep files: their keys are CLI keys, and the local runner expands and runs them."""

from pathlib import Path

import pytest
import yaml

from lit_hspace import sweep
from conftest import write_config, write_sweep

SWEEPS = sorted(Path("sweeps").glob("*.yaml"))


def test_the_four_ablations_are_shipped():
    assert {p.stem for p in SWEEPS} == {"timestep", "ranks", "strength", "method"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_parse_with_the_cli(path):
    spec = sweep.load_sweep(path)
    runs = sweep.expand(spec)
    sweep.check(spec, runs)
    sizes = {"timestep": 5, "ranks": 12, "strength": 9, "method": 4}
    assert len(runs) == sizes[path.stem]


def test_expansion_puts_the_config_first_and_writes_lists_as_json():
    spec = {
        "method": "grid",
        "command": ["${env}", "python", "-m", "lit_hspace", "test", "${args}"],
        "parameters": {"model.init_args.edit.strengths": {"values": [[-20, 20]]}, "config": {"values": ["a.yaml", "b.yaml"]}},
    }
    assert sweep.expand(spec) == [
        ["test", "--config", "a.yaml", "--model.init_args.edit.strengths=[-20, 20]"],
        ["test", "--config", "b.yaml", "--model.init_args.edit.strengths=[-20, 20]"],
    ]


def test_unknown_key_stops_the_sweep_before_any_run(tmp_path, tiny_model_dir, monkeypatch):
    config = write_config(tmp_path, tiny_model_dir, {"class_path": "lit_hspace.methods.Haas", "init_args": {"k": 2}}, {"seeds": [0]})
    path = write_sweep(tmp_path / "bad.yaml", config, {"model.init_args.diffusion.timestep": [0.4], "model.init_args.timestamp": [0.2]})
    with pytest.raises(ValueError, match=r"sweep key 'model.init_args.timestamp' is not accepted by the CLI \(Option 'timestamp'"):
        sweep.main([path])
    assert not (tmp_path / "runs").exists()


def test_only_grids_run_locally(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump({"method": "bayes", "parameters": {"x": {"values": [1]}}}))
    with pytest.raises(ValueError, match="expands grids only"):
        sweep.load_sweep(path)


def test_local_sweep_runs_every_point(tmp_path, tiny_model_dir):
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0]}, name="ablation")
    sweep.main([write_sweep(tmp_path / "timestep.yaml", config, {"model.init_args.diffusion.timestep": [0.4, 0.8]})])
    runs = sorted((tmp_path / "runs" / "ablation").glob("version_*"))
    assert len(runs) == 2
    timesteps = [yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["diffusion"]["timestep"] for run in runs]
    assert timesteps == [0.4, 0.8]
    assert all((run / "metrics.json").is_file() for run in runs)
