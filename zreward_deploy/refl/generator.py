"""A tiny text-to-image diffusion model built from ``diffusers`` parts, small enough to train on a CPU.

It is the generator that ``zreward refl`` fine-tunes against the reward on machines without a GPU, and
the model the tests and docs/refl.md run on. Its parts are the ones a Stable Diffusion pipeline has, so
the fine-tuning code (:mod:`.finetune`) that runs on it runs on a real pipeline unchanged:

* a ``UNet2DConditionModel`` (cross-attention on the prompt's hidden states) on 32 x 32 "latents";
* a DDIM scheduler (10 sampling steps by default; trained on the DDPM squared-cosine schedule with
  v-prediction: with epsilon prediction, a model this small cannot predict the noise of the first,
  pure-noise step well enough, and the clean estimate divides that error by sqrt(ᾱ) ≈ 5e-5: its samples
  were noise);
* the "VAE": a fixed, invertible space-to-depth transform. A 64 x 64 RGB image in [-1, 1] is 12 x 32 x 32
  latents (``pixel_unshuffle`` by 2) and back (``pixel_shuffle``). It keeps the image at the reward
  model's 64 px, where the synthetic set's blur, noise and pixelation are visible (at 32 px they largely
  average away), while the UNet runs at 32 x 32 (a quarter of the cost of 64 x 64);
* a text encoder of its own (:class:`PromptEncoder`): token embeddings of the package's offline
  tokenizer, learned positions and one transformer layer. Prompts are dropped to "" with probability
  ``prompt_dropout`` in pretraining, so classifier-free guidance works.

Pretraining (:func:`pretrain_generator`) is the usual denoising objective on a ``zreward data synth``
train split, whose images carry blur, noise and pixelation defects: the generator learns to produce
some of them. The result is cached in a folder named by the hash of everything that determines it
(:func:`cache_key`): the configs and the dataset's bytes. Files: ``unet.safetensors`` +
``unet_config.json``, ``text_encoder.safetensors``, ``tokenizer/``, ``scheduler_config.json`` and
``generator.json`` (configs, key, SHA-256 of every weight file, wall time, loss curve). Written to a
temporary folder and renamed; a folder whose files do not match their recorded hashes is refused
(:class:`InvalidModelError` naming the file), never loaded. No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidModelError, MissingDependencyError, ZRewardInputError
from ..fileio import atomic_directory, read_json_object
from .progress import Progress

GENERATOR_FILE = "generator.json"
WEIGHT_FILES = ("unet.safetensors", "text_encoder.safetensors")
FORMAT_VERSION = 1


def require_diffusers() -> Any:
    """``import diffusers``, or :class:`MissingDependencyError` naming the ``refl`` extra."""
    try:
        import diffusers
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("diffusers", "refl", "the tiny generator of `zreward refl`") from exc
    return diffusers


@dataclass(frozen=True)
class TinyGeneratorConfig:
    """Architecture of the tiny generator (every field enters the cache key)."""

    image_size: int = field(default=64, metadata={"help": "side of the generated RGB images, pixels"})
    patch: int = field(
        default=2, metadata={"help": "space-to-depth factor of the 'VAE': latents are image_size / patch"}
    )
    block_out_channels: tuple[int, ...] = field(
        default=(32, 32, 64), metadata={"help": "UNet channels per resolution level"}
    )
    attention_levels: int = field(
        default=1, metadata={"help": "cross-attention in the lowest N levels (attention at 32 x 32 is slow)"}
    )
    layers_per_block: int = field(default=1, metadata={"help": "ResNet layers per UNet block"})
    text_dim: int = field(default=64, metadata={"help": "text encoder width = UNet cross_attention_dim"})
    max_prompt_tokens: int = field(default=24, metadata={"help": "prompts are padded / cut to this length"})
    num_train_timesteps: int = field(default=1000, metadata={"help": "DDPM training timesteps"})
    beta_schedule: str = field(default="squaredcos_cap_v2", metadata={"help": "DDPM beta schedule"})
    prediction_type: str = field(
        default="v_prediction",
        metadata={
            "help": "what the UNet predicts: v_prediction (well-conditioned at every noise level) or epsilon",
            "choices": ("v_prediction", "epsilon"),
        },
    )
    sampling_steps: int = field(default=10, metadata={"help": "default DDIM sampling steps"})

    def __post_init__(self) -> None:
        if self.image_size % self.patch or (self.image_size // self.patch) % 2 ** (
            len(self.block_out_channels) - 1
        ):
            raise ZRewardInputError(
                "image_size",
                f"{self.image_size} must be divisible by patch ({self.patch}) times "
                f"2^(levels - 1) = {2 ** (len(self.block_out_channels) - 1)}",
            )
        if not 0 <= self.attention_levels <= len(self.block_out_channels):
            raise ZRewardInputError("attention_levels", f"must be in [0, {len(self.block_out_channels)}]")
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ZRewardInputError(
                "prediction_type", f"must be v_prediction or epsilon, got {self.prediction_type!r}"
            )
        if self.sampling_steps < 1 or self.max_prompt_tokens < 1:
            raise ZRewardInputError("sampling_steps", "sampling_steps and max_prompt_tokens must be >= 1")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image's latents."""
        side = self.image_size // self.patch
        return (3 * self.patch**2, side, side)


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining run (every field enters the cache key)."""

    steps: int = field(default=1200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate (cosine decay)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    ema_decay: float = field(default=0.995, metadata={"help": "EMA of the weights that are saved"})
    prompt_dropout: float = field(default=0.1, metadata={"help": "probability a prompt is replaced by ''"})
    snr_gamma: float = field(
        default=5.0,
        metadata={"help": "min-SNR-γ loss weighting (Hang et al., 2023), which converges faster; 0: uniform"},
    )
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batches, noise"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ZRewardInputError("steps", "steps and batch_size must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ZRewardInputError("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if not self.snr_gamma >= 0:
            raise ZRewardInputError("snr_gamma", f"must be >= 0, got {self.snr_gamma}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ZRewardInputError("prompt_dropout", f"must be in [0, 1), got {self.prompt_dropout}")


class PromptEncoder(nn.Module):
    """Token ids ``[B, L]`` -> hidden states ``[B, L, D]``: embeddings + learned positions + one
    transformer layer (padding masked in self-attention). The UNet's cross-attention reads all L."""

    def __init__(self, vocab_size: int, dim: int, max_tokens: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(max_tokens, dim))
        self.layer = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions[: ids.shape[1]]
        return self.norm(self.layer(x, src_key_padding_mask=~mask))


@dataclass
class TinyGenerator:
    """The generator's parts. ``encode_prompt``, ``decode`` and ``unet``/``scheduler`` are what
    :class:`~.finetune.RewardFinetuner` takes, as it takes a diffusers pipeline's."""

    unet: Any
    scheduler: Any
    text_encoder: PromptEncoder
    tokenizer: Any
    config: TinyGeneratorConfig
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``ids [B, L]``, ``mask [B, L]`` (bool), L = ``max_prompt_tokens``; the empty prompt is
        one padding token that attends to itself (the unconditional input of guidance)."""
        n = self.config.max_prompt_tokens
        ids = torch.full((len(prompts), n), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), n, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ZRewardInputError(i, f"prompt must be a string, got {type(prompt).__name__}")
            tokens = self.tokenizer(prompt, add_special_tokens=False)["input_ids"][:n]
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[i, : max(1, len(tokens))] = True
        return ids, mask

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, L, text_dim]`` cross-attention states on the generator's device (differentiable)."""
        ids, mask = self.tokenize(prompts)
        return self.text_encoder(ids.to(self.device), mask.to(self.device))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 3 p², H/p, W/p]`` -> images ``[B, 3, H, W]`` in [0, 1] (differentiable)."""
        return (torch.nn.functional.pixel_shuffle(latents, self.config.patch) / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> latents (the exact inverse of :meth:`decode` inside [0, 1])."""
        return torch.nn.functional.pixel_unshuffle(images * 2 - 1, self.config.patch)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        noise: torch.Tensor | None = None,
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Sample images ``[B, 3, H, W]`` in [0, 1] for ``prompts`` (initial noise given or drawn from
        ``seed``)."""
        from .sampler import sample_latents

        if noise is None:
            noise = initial_noise(len(prompts), self.config.latent_shape, seed)
        cond = self.encode_prompt(prompts)
        uncond = self.encode_prompt([""] * len(prompts)) if guidance_scale != 1.0 else None
        out = sample_latents(
            self.unet,
            self.scheduler,
            noise.to(self.device),
            cond,
            num_inference_steps or self.config.sampling_steps,
            guidance_scale=guidance_scale,
            uncond=uncond,
        )
        return self.decode(out.latents)


def initial_noise(n: int, shape: Sequence[int], seed: int | Sequence[int]) -> torch.Tensor:
    """``[n, *shape]`` standard normal noise from a numpy generator seeded with ``seed`` (the same on every
    platform and torch version, unlike torch's CPU generator across devices)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((n, *shape)).astype(np.float32))


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def unet_config(cfg: TinyGeneratorConfig) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` keyword arguments of ``cfg``."""
    levels = len(cfg.block_out_channels)
    attn = [i >= levels - cfg.attention_levels for i in range(levels)]
    channels, side = cfg.latent_shape[0], cfg.latent_shape[1]
    return {
        "sample_size": side,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": list(cfg.block_out_channels),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "layers_per_block": cfg.layers_per_block,
        "cross_attention_dim": cfg.text_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 16 if min(cfg.block_out_channels) % 16 == 0 else 8,
    }


def scheduler_config(cfg: TinyGeneratorConfig) -> dict[str, Any]:
    """The DDIM scheduler's settings: the DDPM training schedule, the first sampling step at the last
    training timestep ("trailing"), which is pure noise."""
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_schedule": cfg.beta_schedule,
        "prediction_type": cfg.prediction_type,
        "clip_sample": False,
        "set_alpha_to_one": True,
        "timestep_spacing": "trailing",
    }


def build_generator(cfg: TinyGeneratorConfig | None = None, seed: int = 0) -> TinyGenerator:
    """A freshly initialised generator (seeded), on the CPU, in train mode."""
    diffusers = require_diffusers()
    from ..tokenization import build_tokenizer

    cfg = cfg or TinyGeneratorConfig()
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(**unet_config(cfg))
        encoder = PromptEncoder(len(tokenizer), cfg.text_dim, cfg.max_prompt_tokens)
    scheduler = diffusers.DDIMScheduler(**scheduler_config(cfg))
    return TinyGenerator(unet, scheduler, encoder, tokenizer, cfg)


# --------------------------------------------------------------------------------------------------
# Saving, loading, the cache
# --------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_generator(gen: TinyGenerator, folder: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``gen`` to ``folder`` atomically (replacing it): weights as safetensors, configs as JSON,
    ``generator.json`` last inside the temporary folder, with the SHA-256 of every weight file."""
    from safetensors.torch import save_file

    final = Path(folder)
    with atomic_directory(final) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in gen.unet.state_dict().items()}
        save_file(state, tmp / "unet.safetensors")
        text = {k: v.detach().contiguous().cpu() for k, v in gen.text_encoder.state_dict().items()}
        save_file(text, tmp / "text_encoder.safetensors")
        gen.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "unet_config.json").write_text(json.dumps(unet_config(gen.config), indent=2) + "\n")
        (tmp / "scheduler_config.json").write_text(json.dumps(scheduler_config(gen.config), indent=2) + "\n")
        full = {
            **record,
            "format": FORMAT_VERSION,
            "generator_config": dataclasses.asdict(gen.config),
            "sha256": {name: _sha256(tmp / name) for name in WEIGHT_FILES},
        }
        (tmp / GENERATOR_FILE).write_text(json.dumps(full, indent=2) + "\n")
    return final


def load_generator(folder: str | os.PathLike, device: str | torch.device = "cpu") -> TinyGenerator:
    """Load a generator folder written by :func:`save_generator`, in eval mode.

    Raises:
        InvalidModelError: naming the file that is missing, is not valid JSON, or whose bytes do not match
            the SHA-256 recorded when it was written (a damaged or edited cache is never loaded).
    """
    diffusers = require_diffusers()
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    root = Path(folder)
    record = read_json_object(root / GENERATOR_FILE, InvalidModelError)
    if record.get("format") != FORMAT_VERSION:
        raise InvalidModelError(str(root / GENERATOR_FILE), f"format {record.get('format')!r} is not 1")
    for name in WEIGHT_FILES:
        path = root / name
        if not path.is_file():
            raise InvalidModelError(str(path), "is missing")
        if _sha256(path) != record.get("sha256", {}).get(name):
            raise InvalidModelError(
                str(path), "does not match the SHA-256 recorded in generator.json (damaged)"
            )
    try:
        cfg_dict = dict(record["generator_config"])
        cfg_dict["block_out_channels"] = tuple(cfg_dict["block_out_channels"])
        cfg = TinyGeneratorConfig(**cfg_dict)
    except (KeyError, TypeError) as exc:
        raise InvalidModelError(str(root / GENERATOR_FILE), f"generator_config is invalid ({exc})") from None
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(root / "tokenizer"))
    unet = diffusers.UNet2DConditionModel(**read_json_object(root / "unet_config.json", InvalidModelError))
    _load_state(unet, load_file(root / "unet.safetensors"), root / "unet.safetensors")
    encoder = PromptEncoder(len(tokenizer), cfg.text_dim, cfg.max_prompt_tokens)
    _load_state(encoder, load_file(root / "text_encoder.safetensors"), root / "text_encoder.safetensors")
    scheduler = diffusers.DDIMScheduler(**read_json_object(root / "scheduler_config.json", InvalidModelError))
    unet.to(device).eval()
    encoder.to(device).eval()
    return TinyGenerator(unet, scheduler, encoder, tokenizer, cfg, record)


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidModelError(str(path), f"does not fit the architecture in the configs ({exc})") from None


def dataset_fingerprint(data_dir: str | os.PathLike, split: str = "train") -> str:
    """SHA-256 over a split's JSONL and the bytes of every image it names (any change retrains)."""
    from ..data import load_split

    root = Path(data_dir)
    h = hashlib.sha256((root / f"{split}.jsonl").read_bytes())
    for record in load_split(root, split):
        h.update(_sha256(root / record.image).encode())
    return h.hexdigest()


def cache_key(gen_cfg: TinyGeneratorConfig, pre_cfg: PretrainConfig, fingerprint: str) -> str:
    """16 hex digits of the SHA-256 of the configs and the data fingerprint: the cache folder's name."""
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "generator": dataclasses.asdict(gen_cfg),
            "pretrain": dataclasses.asdict(pre_cfg),
            "data": fingerprint,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------


def load_training_images(data_dir: str | os.PathLike, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """A split's images as ``uint8 [N, 3, S, S]`` and their prompts (resized if the set's size differs)."""
    from PIL import Image

    from ..data import load_split

    root = Path(data_dir)
    records = load_split(root, "train")
    if not records:
        raise ZRewardInputError(str(root / "train.jsonl"), "has no records to pretrain on")
    arrays = []
    for record in records:
        with Image.open(root / record.image) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.LANCZOS)
            arrays.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)), [r.prompt for r in records]


def pretrain_generator(
    data_dir: str | os.PathLike,
    cache_root: str | os.PathLike,
    gen_cfg: TinyGeneratorConfig | None = None,
    pre_cfg: PretrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[TinyGenerator, Path, bool]:
    """The generator pretrained on ``data_dir``'s train split, from the cache when it holds it.

    Returns:
        ``(generator, folder, from_cache)``: the folder is ``cache_root/<cache_key>``.
    """
    gen_cfg, pre_cfg = gen_cfg or TinyGeneratorConfig(), pre_cfg or PretrainConfig()
    fingerprint = dataset_fingerprint(data_dir)
    key = cache_key(gen_cfg, pre_cfg, fingerprint)
    folder = Path(cache_root) / key
    if (folder / GENERATOR_FILE).is_file():
        return load_generator(folder), folder, True
    start, cpu = time.perf_counter(), time.process_time()
    gen, losses = _train(data_dir, gen_cfg, pre_cfg, progress, log)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    record = {
        "key": key,
        "data": str(Path(data_dir).resolve()),
        "data_fingerprint": fingerprint,
        "pretrain_config": dataclasses.asdict(pre_cfg),
        "pretrain_wall_s": round(wall, 1),
        "pretrain_cpu_s": round(cpu, 1),
        "loss_curve": losses,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "diffusers": require_diffusers().__version__,
        "load_avg": list(os.getloadavg()),
    }
    save_generator(gen, folder, record)
    return load_generator(folder), folder, False


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))


def _train(
    data_dir: str | os.PathLike,
    gen_cfg: TinyGeneratorConfig,
    cfg: PretrainConfig,
    progress: bool,
    log: Callable[[str], None] | None,
) -> tuple[TinyGenerator, list[list[float]]]:
    """The pretraining loop: v (or epsilon) prediction at uniform timesteps, AdamW, cosine decay, EMA."""
    gen = build_generator(gen_cfg, seed=cfg.seed)
    images, prompts = load_training_images(data_dir, gen_cfg.image_size)
    ids, mask = gen.tokenize(prompts)
    empty_ids, empty_mask = gen.tokenize([""])
    params = [*gen.unet.parameters(), *gen.text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    alphas = gen.scheduler.alphas_cumprod.float()
    rng = torch.Generator().manual_seed(cfg.seed)
    gen.unet.train()
    gen.text_encoder.train()
    bar = Progress("pretrain generator", cfg.steps, enabled=progress, log=log)
    losses: list[list[float]] = []
    running = 0.0
    for step in range(cfg.steps):
        idx = torch.randint(len(images), (cfg.batch_size,), generator=rng)
        x0 = gen.encode_images(images[idx].float() / 255)
        drop = torch.rand(cfg.batch_size, generator=rng) < cfg.prompt_dropout
        b_ids = torch.where(drop[:, None], empty_ids, ids[idx])
        b_mask = torch.where(drop[:, None], empty_mask, mask[idx])
        t = torch.randint(gen_cfg.num_train_timesteps, (cfg.batch_size,), generator=rng)
        eps = torch.randn(x0.shape, generator=rng)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        target = a.sqrt() * eps - (1 - a).sqrt() * x0 if gen_cfg.prediction_type == "v_prediction" else eps
        pred = gen.unet(xt, t, encoder_hidden_states=gen.text_encoder(b_ids, b_mask)).sample
        per_item = (pred - target).pow(2).flatten(1).mean(1)
        if cfg.snr_gamma > 0:
            # min-SNR-γ: weight min(SNR, γ) / SNR for epsilon, / (SNR + 1) for v (the x0-error weight
            # min(SNR, γ) expressed in each target's units)
            snr = alphas[t] / (1 - alphas[t])
            denominator = snr + 1 if gen_cfg.prediction_type == "v_prediction" else snr
            per_item = per_item * snr.clamp(max=cfg.snr_gamma) / denominator
        loss = per_item.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # the usual EMA warm-up
            for e, p in zip(ema, params, strict=True):
                e.lerp_(p.detach(), 1 - decay)
        running += float(loss.detach())
        every = max(1, cfg.steps // 50)
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            losses.append([step + 1, round(running / (step % every + 1), 5)])
            running = 0.0
        bar.update(step + 1, f"loss {float(loss.detach()):.4f}")
    with torch.no_grad():
        for e, p in zip(ema, params, strict=True):
            p.copy_(e)
    gen.unet.eval()
    gen.text_encoder.eval()
    return gen, losses
