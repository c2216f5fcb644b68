"""`python -m lit_hspace {fit,predict,test} --config CONFIG.yaml`: LightningCLI over any module and data module."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from lit_hspace.tracking import SaveAndLogConfig

# Each run gets its own versioned directory (configs name a CSVLogger: runs/<experiment>/version_<n>/), so none
# is overwritten. No default logger here: jsonargparse would carry its arguments over to the loggers a config lists.
TRAINER_DEFAULTS = {
    "inference_mode": False,  # Jacobian products need autograd in predict and test
    "default_root_dir": "runs",  # without a logger in the config: runs/lightning_logs/version_<n>/
}


class HSpaceCLI(LightningCLI):
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


def main(args: list[str] | None = None) -> HSpaceCLI:
    return HSpaceCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=SaveAndLogConfig,
        args=args,
    )
