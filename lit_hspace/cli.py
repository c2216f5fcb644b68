"""`lit-hspace {predict,test,fit} --config CONFIG.yaml` (or `python -m lit_hspace ...`): LightningCLI over the
h-space editor and any data module.

`--help` leads with what the project does; `test --help` and `predict --help` with the editor's own settings,
grouped (diffusion, edit, discovery, regions, method), before the Trainer's options.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import warnings
from importlib import import_module

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_hspace.tracking import SaveAndLogConfig

PROGRAM = "lit-hspace"
ABOUT = (
    "lit_hspace: unsupervised local semantic directions in the h-space (the UNet bottleneck) of pretrained\n"
    "diffusion models: Haas et al., JIVE, RBE and Rayleigh side by side. `predict` discovers direction sets,\n"
    "`test` edits images along them and writes grids and metrics, `fit` trains the built-in synthetic-faces model.\n"
    "Example: lit-hspace test --config configs/synth/rbe_mouth.yaml --model.init_args.edit.strengths '[-20, 0, 20]'"
)
SUBCOMMANDS = {
    "predict": "Discover direction sets for every image and store them in the run directory (no edits).",
    "test": "Discover (or reuse) direction sets, edit every image along them, write grids, edits.csv and metrics.",
    "fit": "Train a model (configs/synth/train*.yaml: the built-in synthetic-faces DDPM).",
}

# Each run gets its own versioned directory (configs name a CSVLogger: runs/<experiment>/version_<n>/), so none
# is overwritten. No default logger here: jsonargparse would carry its arguments over to the loggers a config lists.
TRAINER_DEFAULTS = {
    "inference_mode": False,  # Jacobian products need autograd in predict and test
    "default_root_dir": "runs",  # without a logger in the config: runs/lightning_logs/version_<n>/
}


class HelpFormatter(DefaultHelpFormatter):
    """Descriptions keep their line breaks (the editor's settings are a formatted listing)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


class QuietLightning(logging.Filter):
    """Drops Lightning's advertising tips and its seed notice; everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("💡 Tip") or message.startswith("Seed set to"))


def quiet_lightning() -> None:
    # Lightning's own use of a torch API that torch deprecated: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=Warning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietLightning) for f in logger.filters):
            logger.addFilter(QuietLightning())


def editor_settings() -> str:
    """The editor's settings as `--help` lists them, grouped by concern (built only when help is asked for)."""
    from jsonargparse import ArgumentParser

    from lit_hspace.module import HSpaceEditor

    parser = ArgumentParser(prog=PROGRAM, usage="", add_help=False, formatter_class=DefaultHelpFormatter)
    parser.add_class_arguments(HSpaceEditor, "model.init_args", sub_configs=True)
    listing = parser.format_help().split("\n", 2)[-1]  # without the empty usage line
    return (
        "The editor's settings (model: lit_hspace.module.HSpaceEditor in the configs); a method's own settings: "
        "--model.init_args.method.help RBE (or Haas, JIVE, Rayleigh):\n" + listing
    )


TRACEBACK = "LIT_HSPACE_TRACEBACK"  # set to 1 for the full parser report and tracebacks


def class_keys(class_path: str, prefix: str) -> dict[str, object]:
    """Every command-line key of a class's settings under `prefix` (e.g. model.init_args.), with its type."""
    from jsonargparse import ArgumentParser

    module, name = class_path.rsplit(".", 1)
    parser = ArgumentParser(add_help=False)
    parser.add_class_arguments(getattr(import_module(module), name), prefix.rstrip("."), sub_configs=True)
    found = {a.dest: getattr(a, "_typehint", a.type) for a in parser._actions if a.dest and not a.dest.endswith(".help")}
    return {key: hint for key, hint in found.items() if not any(other.startswith(key + ".") for other in found)}  # leaves only


def type_name(hint: object) -> str:
    return re.sub(r"\btyping\.|<class '([^']*)'>", lambda m: m.group(1) or "", str(hint))


def explain(message: str, known: list[str]) -> str:
    """jsonargparse's report on bad arguments as one line: the key, the value, what is allowed, the nearest keys."""
    owner = re.search(r"class_path '([\w.]+)'", message)
    group = re.search(r'Parser key "(model|data)"', message)
    prefix = ""
    keys = dict.fromkeys(known)
    if owner and group:
        prefix = f"{group.group(1)}.init_args."
        keys = class_keys(owner.group(1), prefix)
    unknown = re.search(r"(?:unrecognized arguments: --|Option ')([\w.]+)", message, re.I)
    if unknown:
        key = prefix + unknown.group(1)
        near = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
        return f"no setting '{key}'" + (f"; did you mean {' or '.join(near)}?" if near else "")
    given = re.search(r"NestedArg\(key='([\w.]+)', val='(.*?)'\)", message)
    if given:
        key = prefix + given.group(1)
        wanted = f": expected {type_name(keys[key])}" if keys.get(key) is not None else ""
        return (f"{key}: the value {given.group(2)!r} is not accepted{wanted} (lists are written in brackets, "
                "e.g. '[-25, 0, 25]' or '[mouth]')")
    return message.strip().splitlines()[0]


class HSpaceParser(LightningArgumentParser):
    """Bad arguments end in one line that names the key, the value and what is allowed (or the nearest keys)."""

    def error(self, message: str, ex: Exception | None = None):
        if os.environ.get(TRACEBACK) or not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        known = [o.lstrip("-") for a in parser._actions for o in a.option_strings if o.startswith("--")]
        command = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {explain(message, known)}\n"
                         f"(`{command} --help` lists the settings; {TRACEBACK}=1 shows the parser's full report)\n")
        sys.exit(2)


class HSpaceCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in SUBCOMMANDS}

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:  # the subcommand list says what each does here, not Lightning's generic words
            for action in self.parser._subcommands_action._choices_actions:
                action.help = SUBCOMMANDS.get(action.dest, action.help)

    def add_arguments_to_parser(self, parser) -> None:
        # Images are resized to the model's size: the data module learns it from the model.
        parser.link_arguments(
            "model", "data.init_args.image_size", compute_fn=lambda model: getattr(model, "image_size", None), apply_on="instantiate"
        )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse reports a class that refuses its arguments (a missing checkpoint, a bad setting) inside a
            # message about Union subtypes; the class's own error, its cause, says what is wrong and what to do.
            reason = err
            while isinstance(reason, ValueError) and "Union subtypes" in str(reason) and reason.__cause__ is not None:
                reason = reason.__cause__
            if reason is err:
                raise
            raise reason from None


def parser_kwargs(args: list[str]) -> dict:
    """The main parser's and each subcommand's name, description and usage; the editor's settings where help is asked."""
    asks_help = any(a in ("-h", "--help") for a in args)
    found: dict = {"prog": PROGRAM, "description": ABOUT, "formatter_class": HelpFormatter}
    for name, what in SUBCOMMANDS.items():
        description = what
        if asks_help and name in args and name != "fit":
            description += "\n\n" + editor_settings() + "\nThe Trainer's and the data module's options follow."
        found[name] = {"description": description, "usage": f"{PROGRAM} {name} --config CONFIG.yaml [--KEY VALUE ...]",
                       "formatter_class": HelpFormatter}
    return found


def main(args: list[str] | None = None) -> HSpaceCLI:
    quiet_lightning()
    return HSpaceCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=SaveAndLogConfig,
        seed_everything_default=0,
        parser_class=HSpaceParser,
        parser_kwargs=parser_kwargs(sys.argv[1:] if args is None else args),
        args=args,
    )


def run() -> None:
    """The command: errors of the project's own checks (a bad setting, a missing file) as one line, no traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError, OSError, MemoryError) as err:
        if os.environ.get(TRACEBACK):
            raise
        sys.stderr.write(f"error: {err}\n({TRACEBACK}=1 shows the traceback)\n")
        sys.exit(1)
