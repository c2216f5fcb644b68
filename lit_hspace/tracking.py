"""Weights & Biases tracking that never blocks a run: online where it can be, offline where it cannot.

Configs list it after the RunLogger, a CSVLogger that owns the run directory (runs/<experiment>/version_<n>/):

    trainer:
      logger:
        - class_path: lit_hspace.tracking.RunLogger
          init_args: {save_dir: runs, name: rbe_mouth}
        - class_path: lit_hspace.tracking.WandbTracker
          init_args: {project: lit_hspace}
"""

from __future__ import annotations

import netrc
import os
import urllib.error
import urllib.request
import warnings
from typing import Literal
from urllib.parse import urlparse

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

PROBE_SECONDS = 3.0


def wandb_server() -> str:
    """The W&B server's URL: WANDB_BASE_URL, by default the public one."""
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def has_credentials(host: str) -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def reachable(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether an HTTP server answers at `url` within `timeout` (any status counts as an answer)."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # no name, refused, timed out, TLS failure
        return False


Mode = Literal["online", "offline", "disabled"]


def choose_mode(offline: bool | None) -> tuple[Mode, str]:
    """(mode, why). An explicit choice or WANDB_MODE wins (W&B's own values: online, offline or dryrun, disabled);
    otherwise online only with credentials and a W&B server that answers within PROBE_SECONDS."""
    if offline is not None:
        return ("offline" if offline else "online"), "asked for"
    if os.environ.get("WANDB_MODE"):
        mode = os.environ["WANDB_MODE"]
        return ("disabled" if mode == "disabled" else "online" if mode == "online" else "offline"), f"WANDB_MODE={mode}"
    url = wandb_server()
    if not has_credentials(urlparse(url).hostname or ""):
        return "offline", "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    if not reachable(url):
        return "offline", f"{url} did not answer within {PROBE_SECONDS:g} s"
    return "online", f"credentials and {url} reachable"


class WandbTracker(WandbLogger):
    """A WandbLogger that picks online or offline mode itself (see `choose_mode`) and, without a `name`,
    names the run after the experiment (method, regions, timestep).

    Offline runs land in <save_dir>/wandb/; `wandb sync <save_dir>/wandb/offline-run-*` uploads them later.
    """

    def __init__(self, project: str = "lit_hspace", name: str | None = None, save_dir: str = "runs", offline: bool | None = None, **kwargs):
        mode, why = choose_mode(offline)
        if mode == "offline" and why != "asked for" and not os.environ.get("WANDB_MODE"):  # a fallback the user did not choose
            # Named by this module, not by the config machinery that builds the logger: one clean line for the user.
            warnings.warn_explicit(f"W&B logs offline: {why}. Upload later with `wandb sync {save_dir}/wandb/offline-run-*`.",
                                   UserWarning, "lit_hspace.tracking", 0)
        if mode == "disabled":  # W&B's own disabled mode: nothing is logged or written (WandbLogger's offline flag would override it)
            kwargs["mode"] = "disabled"
        else:
            os.makedirs(save_dir, exist_ok=True)
        super().__init__(project=project, name=name, save_dir=save_dir, offline=mode == "offline", **kwargs)
        self._wandb_init.pop("anonymous", None)  # W&B has dropped the setting and warns on every run that it is passed
        self.named_by_user = name is not None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Ends this run's W&B run with its status, so that the next run in the same process (a local sweep's next
        point) starts a W&B run of its own instead of logging into this one."""
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


class RunLogger(CSVLogger):
    """A CSVLogger whose next version_<n> directory is claimed by creating it (one atomic mkdir), so that sweep
    agents started together on one machine each get a run of their own instead of sharing the first free number."""

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        if rank_zero_only.rank != 0 or "://" in str(self._root_dir):
            return version  # other DDP ranks take rank 0's directory (Trainer.log_dir broadcasts it); remote roots as before
        root = os.path.join(self._root_dir, self.name)
        os.makedirs(root, exist_ok=True)
        while True:
            try:
                os.mkdir(os.path.join(root, f"version_{version}"))
                return version
            except FileExistsError:
                version += 1


def loggers_with(trainer, method: str) -> list:
    """The run's loggers that can `method` (log_image, log_table: W&B yes, CSV no)."""
    return [logger for logger in trainer.loggers if hasattr(logger, method)]


class SaveAndLogConfig(SaveConfigCallback):
    """Saves config.yaml in the run directory (as LightningCLI does) and logs the full config to the loggers."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams({"config": config})
