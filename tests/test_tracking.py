"""W&B tracking: mode choice without hanging, and an offline run that holds the metrics, grids, table and config."""

import json
import socket
import time

import pytest
import wandb
import yaml

from lit_hspace import tracking
from lit_hspace.tracking import WandbTracker
from lit_hspace.cli import main
from conftest import write_config


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))


def test_offline_without_credentials(no_wandb_env):
    assert tracking.choose_mode(None) == ("offline", "no W&B credentials (WANDB_API_KEY or `wandb login`)")
    assert tracking.choose_mode(False) == ("online", "asked for")


@pytest.mark.parametrize("mode, expected", [("online", "online"), ("offline", "offline"), ("dryrun", "offline"), ("disabled", "disabled")])
def test_wandb_mode_wins(no_wandb_env, monkeypatch, mode, expected):
    monkeypatch.setenv("WANDB_MODE", mode)
    assert tracking.choose_mode(None)[0] == expected


def test_disabled_writes_nothing(no_wandb_env, monkeypatch, tmp_path, tiny_model_dir):
    """WANDB_MODE=disabled, as W&B documents it: a run logs nowhere and leaves no wandb folder behind."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config_path = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0]}, name="quiet")
    config = yaml.safe_load(config_path.read_text())
    wandb_dir = tmp_path / "tracking"
    config["trainer"]["logger"] = [config["trainer"]["logger"], {"class_path": "lit_hspace.tracking.WandbTracker", "init_args": {"save_dir": str(wandb_dir)}}]
    config_path.write_text(yaml.safe_dump(config))
    cli = main(["test", "--config", str(config_path)])
    cli.trainer.loggers[1].experiment.finish()
    wandb.teardown()  # W&B keeps process-wide settings (the disabled mode) until torn down
    assert (tmp_path / "runs" / "quiet" / "version_0" / "metrics.json").is_file()
    assert not list(wandb_dir.rglob("*run-*")), list(wandb_dir.rglob("*"))


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.mark.parametrize("kind", ["no such host", "refused", "never answers"])
def test_unreachable_server_falls_back_offline_in_bounded_time(no_wandb_env, monkeypatch, silent_server, kind):
    url = {"no such host": "https://wandb.invalid", "refused": "http://127.0.0.1:9", "never answers": silent_server}[kind]
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    start = time.perf_counter()
    offline, why = tracking.choose_mode(None)
    assert offline and why == f"{url} did not answer within 3 s"
    assert time.perf_counter() - start < tracking.PROBE_SECONDS + 1


def test_offline_run_logs_grids_table_and_config(no_wandb_env, tmp_path, tiny_model_dir, monkeypatch):
    rbe = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}
    config_path = write_config(tmp_path, tiny_model_dir, rbe, {"seeds": [0, 1]}, name="tracked")
    config = yaml.safe_load(config_path.read_text())
    csv_logger = config["trainer"]["logger"]
    wandb_dir = tmp_path / "tracking"
    config["trainer"]["logger"] = [csv_logger, {"class_path": "lit_hspace.tracking.WandbTracker", "init_args": {"save_dir": str(wandb_dir)}}]
    config_path.write_text(yaml.safe_dump(config))
    seen = {}
    finalize = WandbTracker.finalize

    def record(self, status):  # the run as it ends
        seen.update(name=self.experiment.name, config=json.loads(self.experiment.config["config"]), status=status)
        finalize(self, status)

    monkeypatch.setattr(WandbTracker, "finalize", record)
    with pytest.warns(UserWarning, match="W&B logs offline: no W&B credentials"):
        main(["test", "--config", str(config_path)])

    assert seen["name"] == "rbe_mouth_t0.6" and seen["status"] == "success"
    assert seen["config"]["model"]["init_args"]["diffusion"]["timestep"] == 0.6
    assert wandb.run is None  # the W&B run ended with the run: a next run in this process gets its own
    metrics = json.loads((tmp_path / "runs" / "tracked" / "version_0" / "metrics.json").read_text())
    assert set(metrics) == {"test/mse_whole", "test/mse_inside", "test/mse_outside"}
    (run,) = wandb_dir.glob("wandb/offline-run-*")
    files = run / "files"
    assert len(list(files.glob("media/images/grids_*.png"))) == 2  # one grid per image
    (table,) = files.glob("media/table/edits_*.table.json")
    rows = json.loads(table.read_text())
    assert rows["columns"][:5] == ["image", "direction", "label", "name", "strength"]
    assert len(rows["data"]) == 2 * 2 * 3  # images x directions x strengths


def test_agents_started_together_each_get_their_own_run_directory(tmp_path):
    """Parallel sweep agents on one machine: each RunLogger claims a version directory of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from lit_hspace.tracking import RunLogger

    (tmp_path / "exp" / "version_0").mkdir(parents=True)  # an earlier run
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: RunLogger(str(tmp_path), name="exp").log_dir, range(8)))
    assert sorted(dirs) == sorted(str(tmp_path / "exp" / f"version_{v}") for v in range(1, 9))
