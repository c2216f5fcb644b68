"""`python -m lit_hspace {fit,predict,test} --config CONFIG.yaml`: LightningCLI over any module and data module."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

# Each run gets its own runs/<experiment>/version_<n>/ (CSVLogger numbers them), so none is overwritten.
TRAINER_DEFAULTS = {
    "inference_mode": False,  # Jacobian products need autograd in predict and test
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "default"}},
}


class HSpaceCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Images are resized to the model's size: the data module learns it from the model.
        parser.link_arguments(
            "model", "data.init_args.image_size", compute_fn=lambda model: getattr(model, "image_size", None), apply_on="instantiate"
        )


def main(args: list[str] | None = None) -> HSpaceCLI:
    return HSpaceCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        args=args,
    )
