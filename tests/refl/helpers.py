"""Builders shared by the reward fine-tuning tests (tiny UNet, schedulers, a prompt encoder)."""

import torch


def make_unet(seed: int = 0, channels: int = 3, size: int = 8):
    """A UNet2DConditionModel of ~30k parameters: two levels, cross-attention at the lower one."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def make_scheduler(kind: str = "ddim"):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if kind == "flow":
        return FlowMatchEulerDiscreteScheduler()
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        # v-prediction: a random UNet's clean estimate sqrt(a) x - sqrt(1 - a) v stays O(1); with epsilon
        # prediction it is divided by sqrt(a) ~ 0 at the first step and saturates every pixel
        prediction_type="v_prediction",
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


class PromptTable:
    """``prompts -> [B, 4, 16]``: a fixed random embedding per prompt length (deterministic)."""

    def __init__(self):
        self.table = torch.randn(64, 4, 16, generator=torch.Generator().manual_seed(3))

    def __call__(self, prompts):
        return torch.stack([self.table[len(p) % 64] for p in prompts])
