"""A test run over several processes (DDP, gloo on the CPU) gives the results of a single-process run."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import write_config

RBE = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 4}}


def run(config, devices: int) -> None:
    command = [sys.executable, "-m", "lit_hspace", "test", "--config", str(config),
               "--trainer.accelerator=cpu", f"--trainer.devices={devices}"]
    if devices > 1:
        command.append("--trainer.strategy=ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Its own process group, so that a hung run's DDP workers are killed with it.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stderr[-3000:]


def read_run(root):
    (run_dir,) = root.glob("version_*")
    with open(run_dir / "edits.csv") as f:
        rows = list(csv.DictReader(f))
    return run_dir, rows, json.loads((run_dir / "metrics.json").read_text())


def test_two_processes_equal_one(tmp_path, tiny_model_dir):
    seeds = {"seeds": [0, 1, 2]}  # odd: one process gets two images, the other one; none is repeated
    run(write_config(tmp_path, tiny_model_dir, RBE, seeds, name="single"), devices=1)
    run(write_config(tmp_path, tiny_model_dir, RBE, seeds, name="ddp"), devices=2)

    single_dir, single_rows, single_metrics = read_run(tmp_path / "runs" / "single")
    ddp_dir, ddp_rows, ddp_metrics = read_run(tmp_path / "runs" / "ddp")
    assert [(r["image"], r["direction"], r["strength"]) for r in ddp_rows] == [
        (r["image"], r["direction"], r["strength"]) for r in single_rows
    ]
    for a, b in zip(single_rows, ddp_rows):
        for key in ("mse_whole", "mse_inside", "mse_outside"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-9)
    assert ddp_metrics.keys() == single_metrics.keys() == {"test/mse_whole", "test/mse_inside", "test/mse_outside"}
    for key, value in single_metrics.items():  # synchronised over processes: the mean over all edits
        assert ddp_metrics[key] == pytest.approx(value, rel=1e-4)
    assert sorted(p.name for p in (ddp_dir / "directions").iterdir()) == sorted(p.name for p in (single_dir / "directions").iterdir())
    assert not list(ddp_dir.glob("edits.rank*.csv"))
