"""DDPM training through the CLI (fit), resuming from a checkpoint, sample grids and EMA export."""

import pytest
import torch
import yaml

from lit_hspace.cli import main
from lit_hspace.hspace import HSpaceUNet
from lit_hspace.synth.data import SynthFaces


def fit_config(tmp_path, max_steps: int) -> str:
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "lit_hspace.training.DDPMTrainer",
            "init_args": {
                "sample_size": 16,
                "block_out_channels": [8, 16],
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
                "norm_num_groups": 4,
                "ema_decay": 0.9,
                "sample_steps": 3,
            },
        },
        "data": {"class_path": "lit_hspace.synth.data.SynthFacesData", "init_args": {"num_images": 8, "batch_size": 4, "num_workers": 0}},
        "trainer": {
            "max_steps": max_steps,
            "enable_progress_bar": False,
            "logger": {"class_path": "lit_hspace.tracking.RunLogger", "init_args": {"save_dir": str(tmp_path / "runs"), "name": "train"}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "every_n_train_steps": 1}},
                {"class_path": "lit_hspace.training.SampleGrid", "init_args": {"every_n_steps": 2, "num_samples": 4}},
                {"class_path": "lit_hspace.training.ExportEMA"},
            ],
        },
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_fit_resume_and_export(tmp_path):
    cli = main(["fit", "--config", fit_config(tmp_path, max_steps=2)])
    run0 = tmp_path / "runs" / "train" / "version_0"
    assert cli.trainer.global_step == 2
    assert sorted(p.name for p in (run0 / "samples").iterdir()) == ["step_0000002.png"]
    last = run0 / "checkpoints" / "last.ckpt"
    assert last.is_file()

    # Resuming continues from step 2 with the checkpoint's weights, in a new run directory.
    cli = main(["fit", "--config", fit_config(tmp_path, max_steps=4), "--ckpt_path", str(last)])
    assert cli.trainer.global_step == 4
    run1 = tmp_path / "runs" / "train" / "version_1"

    # The exported EMA directory loads as an h-space model with exactly the EMA weights.
    exported = HSpaceUNet.from_pretrained(str(run1 / "ema_unet"))
    ema = cli.model.ema.module.state_dict()
    for name, value in exported.unet.state_dict().items():
        torch.testing.assert_close(value, ema[name], rtol=0, atol=0)
    # EMA differs from the raw weights after training (the average lags).
    raw = cli.model.unet.state_dict()
    assert any(not torch.equal(raw[n], ema[n]) for n in raw)
    assert exported.scheduler_config["num_train_timesteps"] == 1000


def test_data_set_bounds():
    data = SynthFaces(num_images=3, size=16)
    assert data[2]["id"] == "synth0000002"
    with pytest.raises(IndexError, match="image 3 asked for, but the data set has 3"):
        data[3]


def test_checkpoints_keep_adams_moments_in_bfloat16_and_resume_them_in_float32():
    """on_save_checkpoint stores the moments in bfloat16; a fresh optimizer loading them gets float32 moments equal to
    the originals within bfloat16's precision, and the same step count."""
    import torch

    from lit_hspace.training import DDPMTrainer

    torch.manual_seed(0)
    trainer = DDPMTrainer(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4)
    optimizer = trainer.configure_optimizers()
    x = torch.randn(2, 3, 16, 16)
    trainer.unet(x, torch.tensor([10, 500])).sample.square().mean().backward()
    optimizer.step()
    checkpoint = {"optimizer_states": [optimizer.state_dict()]}
    trainer.on_save_checkpoint(checkpoint)
    saved = checkpoint["optimizer_states"][0]["state"]
    assert all(v.dtype == torch.bfloat16 for s in saved.values() for k, v in s.items() if k != "step")
    fresh = trainer.configure_optimizers()
    fresh.load_state_dict(checkpoint["optimizer_states"][0])
    for p in trainer.unet.parameters():
        original, restored = optimizer.state[p], fresh.state[p]
        assert restored["exp_avg"].dtype == torch.float32 and torch.equal(restored["step"], original["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(restored[key], original[key], rtol=1e-2, atol=0)
