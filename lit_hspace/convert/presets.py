"""Published OpenAI-format checkpoints that convert exactly: where each is published and its flags, as its README
gives them (read with the defaults of the codebase that trained it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    codebase: str  # whose script_util defaults the flags are read with
    file: str
    url: str
    flags: str
    about: str


# jychoi118/P2-weighting README: all its models are 256 px with the same "lightweight ADM" flags.
P2_URL = "https://drive.google.com/drive/folders/1bcWh3XuQzdct4-UPTrIX-lvs47OiLaOM (folder linked from github.com/jychoi118/P2-weighting)"
P2_FLAGS = (
    "--attention_resolutions 16 --class_cond False --diffusion_steps 1000 --dropout 0.0 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 128 --num_res_blocks 1 --num_head_channels 64 "
    "--resblock_updown True --use_fp16 False --use_scale_shift_norm True"
)
# openai/guided-diffusion README, "LSUN models" and "256x256 model (unconditional)".
ADM_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
ADM_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
# openai/improved-diffusion README, "Models and Hyperparameters" (MODEL_FLAGS and DIFFUSION_FLAGS).
IDDPM_URL = "https://openaipublic.blob.core.windows.net/diffusion/march-2021/"
IDDPM_CIFAR = "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine"
IDDPM_BEDROOM = (
    "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False "
    "--attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False"
)
ILVR_URL = "https://drive.google.com/file/d/{} (linked from github.com/jychoi118/ilvr_adm)"


def _p2(name: str, file: str, about: str) -> Preset:
    return Preset(name, "p2-weighting", file, P2_URL, P2_FLAGS, about)


def _adm(name: str, file: str, about: str, dropout: str = "0.1") -> Preset:
    return Preset(name, "guided-diffusion", file, ADM_URL + file, ADM_FLAGS.replace("--dropout 0.1", f"--dropout {dropout}"), about)


PRESETS = {
    p.name: p
    for p in [
        _p2("p2-ffhq", "ffhq_p2.pt", "FFHQ faces, P2 weighting (Choi et al., 2022)"),
        _p2("p2-celebahq", "celebahq_p2.pt", "CelebA-HQ faces, P2 weighting"),
        _p2("p2-metfaces", "metface_p2.pt", "MetFaces (art portraits), P2 weighting"),
        _p2("p2-afhqdog", "afhqdog_p2.pt", "AFHQ dogs, P2 weighting (the README's earlier list named it afhq_p2.pt)"),
        _p2("p2-cub", "cub_p2.pt", "CUB birds, P2 weighting"),
        _p2("p2-flowers", "flower_p2.pt", "Oxford flowers, P2 weighting"),
        Preset("ilvr-ffhq", "guided-diffusion", "ffhq_10m.pt", ILVR_URL.format("117Y6Z6-Hg6TMZVIXMmgYbpZy7QvTXign"), P2_FLAGS,
               "FFHQ faces, 10M images seen (ILVR; used by DiffusionCLIP and Asyrp)"),
        Preset("ilvr-afhqdog", "guided-diffusion", "afhq_dog_4m.pt", ILVR_URL.format("14OG_o3aa8Hxmfu36IIRyOgRwEP6ngLdo"), P2_FLAGS,
               "AFHQ dogs, 4M images seen (ILVR)"),
        _adm("adm-256-uncond", "256x256_diffusion_uncond.pt", "ImageNet 256 px, unconditional (Dhariwal & Nichol, 2021)", "0.0"),
        _adm("adm-lsun-bedroom", "lsun_bedroom.pt", "LSUN bedroom 256 px"),
        _adm("adm-lsun-cat", "lsun_cat.pt", "LSUN cat 256 px"),
        _adm("adm-lsun-horse", "lsun_horse.pt", "LSUN horse 256 px"),
        _adm("adm-lsun-horse-nodropout", "lsun_horse_nodropout.pt", "LSUN horse 256 px, trained without dropout", "0.0"),
        Preset("iddpm-cifar10", "improved-diffusion", "cifar10_uncond_50M_500K.pt", IDDPM_URL + "cifar10_uncond_50M_500K.pt",
               IDDPM_CIFAR, "CIFAR-10 32 px, L_hybrid, cosine schedule (Nichol & Dhariwal, 2021)"),
        Preset("iddpm-cifar10-vlb", "improved-diffusion", "cifar10_uncond_vlb_50M_500K.pt", IDDPM_URL + "cifar10_uncond_vlb_50M_500K.pt",
               IDDPM_CIFAR + " --use_kl True", "CIFAR-10 32 px, L_vlb, cosine schedule"),
        Preset("iddpm-lsun-bedroom", "improved-diffusion", "lsun_uncond_100M_1200K_bs128.pt", IDDPM_URL + "lsun_uncond_100M_1200K_bs128.pt",
               IDDPM_BEDROOM, "LSUN bedroom 256 px, lr 1e-4"),
        Preset("iddpm-lsun-bedroom-2400k", "improved-diffusion", "lsun_uncond_100M_2400K_bs64.pt", IDDPM_URL + "lsun_uncond_100M_2400K_bs64.pt",
               IDDPM_BEDROOM, "LSUN bedroom 256 px, lr 2e-5"),
    ]
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: presets are {', '.join(PRESETS)} (`python -m lit_hspace.convert adm --list`)")
    return PRESETS[name]
