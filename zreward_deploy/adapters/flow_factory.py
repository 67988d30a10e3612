"""Flow-Factory: a pointwise reward class, loadable by dotted path with no code change.

The contract met is that of ``X-GenGroup/Flow-Factory: src/flow_factory/rewards/abc.py``
(``PointwiseRewardModel``) and ``src/flow_factory/rewards/loader.py``: the loader resolves
``reward_model: zreward_deploy.adapters.flow_factory.ZRewardPointwise`` and constructs
``cls(config=<RewardArguments>, accelerator=<Accelerator>)``; the trainer calls
``model(prompt=[B strings], image=[B PIL images], **extra)`` (``[C, H, W]`` tensors when
``use_tensor_inputs`` is set) and reads ``.rewards`` (``[B]``) and ``.extra_info`` of the returned
``RewardModelOutput``.

The target comes from the reward's keyword arguments (``RewardArguments.extra_kwargs`` or
``reward_model_kwargs``): ``server_url`` for ``zreward serve``, else ``model_path`` for an in-process
scorer; ``dims`` limits the dimensions. ``extra_info`` holds each dimension's means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import resolve_target, score_target


@dataclass
class ZRewardOutput:
    """Flow-Factory's ``RewardModelOutput`` fields (used when flow_factory itself is not importable)."""

    rewards: Any
    extra_info: dict[str, Any] | None = None


def _output_class() -> type:
    try:  # the trainer's own output class when it is installed, so isinstance checks hold
        from flow_factory.rewards.abc import RewardModelOutput
    except Exception:  # not installed (or its heavy imports fail): the same fields
        return ZRewardOutput
    return RewardModelOutput


class ZRewardPointwise:
    """A Flow-Factory pointwise reward: ``model(prompt=[...], image=[...]) -> RewardModelOutput``."""

    required_fields: tuple[str, ...] = ("image", "prompt")
    use_tensor_inputs: bool = False

    def __init__(self, config: Any, accelerator: Any = None):
        self.config = config
        self.accelerator = accelerator
        options = dict(
            getattr(config, "extra_kwargs", None) or getattr(config, "reward_model_kwargs", None) or {}
        )
        target = options.pop("server_url", None) or options.pop("model_path", None)
        if target is None:
            raise ValueError(
                "ZRewardPointwise needs server_url (zreward serve) or model_path in the reward's kwargs"
            )
        self.dims = options.pop("dims", None)
        self.target = resolve_target(
            target, **{k: v for k, v in options.items() if k in ("token", "timeout_s")}
        )
        self.device = getattr(config, "device", "cpu")

    def to(self, device: Any) -> ZRewardPointwise:
        self.device = device  # the scorer stays where it was loaded (remote or in-process)
        return self

    def __call__(self, prompt: list[str], image: list[Any] | None = None, **_: Any) -> Any:
        if image is None:
            raise ValueError("ZRewardPointwise scores images; the sample carries none")
        reward, dims = score_target(self.target, list(image), list(prompt), self.dims)
        return _output_class()(rewards=reward, extra_info={f"zreward_{d}": v for d, v in dims.items()})
