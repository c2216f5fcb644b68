"""W&B sweep files: their keys are CLI keys, and the local runner expands and runs them."""

import json
from pathlib import Path

import pytest
import yaml

from lit_hspace import sweep
from lit_hspace.editing import Editor
from lit_hspace.layout import RunLayout, RunManifest
from conftest import inlined, write_config, write_sweep

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
    with pytest.raises(ValueError, match=r"sweep key 'model.init_args.timestamp' is not accepted by the CLI \(no setting 'model.init_args.timestamp'"):
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
    sweep.main([write_sweep(tmp_path / "timestep.yaml", config, {"model.init_args.diffusion.timestep": [0.4, 0.8]}),
                "--ledger", str(tmp_path / "ledger.json")])
    runs = sorted((tmp_path / "runs" / "ablation").glob("version_*"))
    assert len(runs) == 2
    timesteps = [yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["diffusion"]["timestep"] for run in runs]
    assert timesteps == [0.4, 0.8]
    assert all((run / "metrics.json").is_file() for run in runs)


def tiny_twin(shipped: str | Path, tmp_path: Path, model_dir) -> str:
    """A shipped config on the tiny model: its method, regions and edit settings, 2 steps, 3 iterations (20 of JIVE's
    alternation), one seed, MSE only."""
    config = inlined(yaml.safe_load(Path(shipped).read_text()), Path(shipped).parent)
    args = config["model"]["init_args"]
    args.update(model=str(model_dir), metrics=["mse"])
    args["diffusion"]["num_steps"] = 2
    args["method"]["init_args"]["max_iter"] = 3  # the grid's shape is what is tested, not converged directions
    if args["method"]["class_path"].endswith(".JIVE"):
        args["method"]["init_args"]["jive_max_iter"] = 20
    config["data"] = {"class_path": "lit_hspace.data.HSpaceData", "init_args": {"seeds": [0]}}
    config["trainer"] = {"logger": [{"class_path": "lit_hspace.tracking.RunLogger",
                                     "init_args": {"save_dir": str(tmp_path / "runs"), "name": Path(shipped).stem}},
                                    {"class_path": "lit_hspace.tracking.WandbTracker", "init_args": {"save_dir": str(tmp_path / "runs")}}],
                         "enable_progress_bar": False}
    path = tmp_path / Path(shipped).name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_sweep_runs_to_the_end_one_run_per_point(path, tmp_path, tiny_model_dir, monkeypatch):
    """Each shipped grid (its keys and values, the strength sweep's 0 included) on the tiny model: every point
    finishes as a run of its own, with its own run.json and its own W&B run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = yaml.safe_load(path.read_text())
    command = spec["command"]
    if "--config" in command:
        i = command.index("--config") + 1
        command[i] = tiny_twin(command[i], tmp_path, tiny_model_dir)
    if "config" in spec["parameters"]:
        spec["parameters"]["config"]["values"] = [tiny_twin(c, tmp_path, tiny_model_dir) for c in spec["parameters"]["config"]["values"]]
    local = tmp_path / path.name
    local.write_text(yaml.safe_dump(spec))
    outcomes = sweep.main([str(local), "--ledger", str(tmp_path / "ledger.json")])
    points = len(sweep.expand(sweep.load_sweep(path)))
    assert [o.status for o in outcomes] == ["finished"] * points
    manifests = [RunManifest.read(RunLayout(Path(o.run))) for o in outcomes]
    assert len({o.run for o in outcomes}) == points and all(m.status == "finished" for m in manifests)
    wandb_runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == points
    if path.stem == "strength":  # the reconstruction alone is a run like the others, with no edit to average
        zero = next(m for m in manifests if m.edit["strengths"] == [0])
        assert zero.images == ["seed000000"] and "test/mse_inside" not in zero.metrics


def test_a_failed_point_is_recorded_and_the_sweep_resumes(tmp_path, tiny_model_dir, monkeypatch):
    """A point that fails while it runs stops the sweep (recorded as failed in the ledger and in its run.json, with
    the error); --resume skips the finished points and --continue-on-error goes past failed ones."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    edit = Editor.edit

    def fails_at_20(self, *args, **kwargs):
        if 20 in self.settings.strengths:
            raise RuntimeError("planted failure")
        return edit(self, *args, **kwargs)

    monkeypatch.setattr(Editor, "edit", fails_at_20)
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0]}, name="ablation")
    path = write_sweep(tmp_path / "a.yaml", config, {"model.init_args.edit.strengths": [[10], [20], [30]]})
    ledger = tmp_path / "ledger.json"
    with pytest.raises(SystemExit, match=r"sweep point 2/3 failed \(RuntimeError: planted failure\)"):
        sweep.main([path, "--ledger", str(ledger)])
    assert [p["status"] for p in json.loads(ledger.read_text())["points"]] == ["finished", "failed"]
    manifests = [RunManifest.read(run) for run in RunLayout.under(tmp_path / "runs")]
    assert [(m.status, m.error) for m in manifests] == [("finished", None), ("failed", "RuntimeError: planted failure")]
    outcomes = sweep.main([path, "--ledger", str(ledger), "--resume", "--continue-on-error"])
    assert [o.status for o in outcomes] == ["failed", "finished"]  # points 2 and 3; point 1 skipped
    assert [p["status"] for p in json.loads(ledger.read_text())["points"]] == ["finished", "failed", "finished"]
