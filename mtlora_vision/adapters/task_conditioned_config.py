"""Configs of the task-conditioned adapters: MTL-LoRA and the TA-LoRA-inspired prompt adapter.

* MTL-LoRA (Yang et al., arXiv 2410.09437): :class:`~.mtl_lora.MTLLoRALinear`.
* TA-LoRA-inspired visual prompts (Zhang et al., arXiv 2505.00009, abstract only; our design, see
  :mod:`~.prompt`): :class:`~.prompt.TaskAdaptiveLowRankPrompt`.

Both make backbone features task-specific, so predicting every task of an image needs one stream
per task. ``branch_stage`` names the first backbone stage that is task-specific: the stages before
it run once on the shared batch (MTL-LoRA: plain LoRA layers with the same shared ``A``/``B`` and
scale ``alpha / rank``; prompts: none), and from it on the stream is replicated task-major to
``(T * B, ...)``. Like :mod:`~.config`, this module knows nothing about Swin.

Each setting is validated once, here: the layers build their settings object
(:class:`MTLLoRASettings`, :class:`PromptSettings`) from their arguments, and the model-level
configs extend those with where the adapters go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtlora_vision.adapters.checks import check_int

#: Allowed values of the prompt adapter's string options.
PROMPT_CHOICES: dict[str, tuple[str, ...]] = {
    "compose": ("add", "hadamard"),
    "shared_factor": ("left", "right"),
    "shared_mode": ("gated", "joint"),
    "warmup_mode": ("frozen_gate", "learn_gate"),
    "slow_init": ("svd", "normal"),
    "fast_slow": ("lr_ratio", "lookahead", "two_phase"),
}
MTL_LORA_INITS: tuple[str, ...] = ("official", "adapters")


def _check_branch_stage(branch_stage: int, num_stages: int) -> None:
    """``num_stages`` >= 1 and ``branch_stage``, the first task-specific stage, one of them."""
    check_int("num_stages", num_stages)
    check_int("branch_stage", branch_stage, 0, num_stages - 1)


@dataclass(frozen=True)
class MTLLoRASettings:
    """Settings of one MTL-LoRA layer (:class:`~.mtl_lora.MTLLoRALinear` documents each).

    Attributes:
        rank: Rank ``r`` of the update.
        alpha: Scale numerator; the update is scaled by ``alpha / rank``.
        num_up: Number of shared up-projections ``B^i``.
        temperature: Softmax temperature of the mixing weights (> 0).
        dropout: Dropout on the adapter input, in [0, 1).
        diagonal: Diagonal ``Lambda_t`` instead of full ``(r, r)``; ``None`` takes the default of
            ``init`` (full for ``"official"``, diagonal for ``"adapters"``).
        init: ``"official"`` or ``"adapters"`` (AdapterHub) initialisation.
    """

    rank: int
    alpha: float
    num_up: int
    temperature: float
    dropout: float
    diagonal: bool | None
    init: str

    def __post_init__(self) -> None:
        check_int("rank", self.rank)
        check_int("num_up", self.num_up)
        for name in ("alpha", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got dropout={self.dropout!r}.")
        if self.init not in MTL_LORA_INITS:
            raise ValueError(f"Unknown init={self.init!r}; choose from {list(MTL_LORA_INITS)}.")
        if self.diagonal is not None and not isinstance(self.diagonal, bool):
            raise ValueError(f"diagonal must be True, False or None, got {self.diagonal!r}.")

    @property
    def diagonal_lambda(self) -> bool:
        """Whether ``Lambda_t`` is diagonal: ``diagonal``, or if None the default of ``init``.

        The official release trains with a full ``(r, r)`` ``Lambda_t`` (``diagonal_format=False``
        in every script); the ``adapters`` library defaults to ``"singular_values"``, a diagonal.
        """
        return self.init == "adapters" if self.diagonal is None else self.diagonal


@dataclass(frozen=True)
class MTLLoRAConfig(MTLLoRASettings):
    """MTL-LoRA on the targeted linear layers; task-specific from ``branch_stage`` on.

    Defaults: rank 64 and 2 up-projections (temperature 0.8) as in the released VL-BART script
    (``docs/methods.md#mtl-lora-official-release``), full ``Lambda_t``, official initialisation,
    and ``alpha = 256`` so that the update scale ``alpha / rank = 4`` equals MTLoRA r64's shared
    scale under the same recipe.
    ``branch_stage=0`` (every adapted layer task-specific) is the method as published.

    Attributes:
        rank, alpha, num_up, temperature, dropout, diagonal, init: The layer settings
            (:class:`MTLLoRASettings`).
        target_modules: Leaf names of the block linears to adapt.
        branch_stage: First task-specific stage; earlier stages get plain shared LoRA.
        num_stages: Number of backbone stages.
    """

    rank: int = 64
    alpha: float = 256.0
    num_up: int = 2
    temperature: float = 0.8
    dropout: float = 0.05
    diagonal: bool | None = None
    init: str = "official"
    target_modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    branch_stage: int = 0
    num_stages: int = 4

    def __post_init__(self) -> None:
        _check_branch_stage(self.branch_stage, self.num_stages)
        super().__post_init__()
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules:
            raise ValueError("target_modules is empty; name at least one linear layer.")

    @property
    def scale(self) -> float:
        """Update scale ``alpha / rank``, shared by the LoRA layers before the branch."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class PromptSettings:
    """Settings of one prompt layer (:class:`~.prompt.TaskAdaptiveLowRankPrompt` documents each).

    Attributes:
        num_tokens: Prompt length ``L``.
        rank: Rank of the task part, ``1 <= rank <= num_tokens`` (the layer also needs it
            ``<=`` its token width).
        compose: ``"add"`` or ``"hadamard"``.
        shared_factor: ``"left"`` or ``"right"``: which factor is shared (slow).
        shared_mode: ``"gated"`` or ``"joint"``.
        warmup_mode: ``"learn_gate"`` or ``"frozen_gate"``.
        slow_init: ``"svd"`` or ``"normal"``.
        fast_slow: ``"lr_ratio"`` (fast weights at their own learning rate, set by the optimizer
            config), ``"lookahead"`` or ``"two_phase"`` (driven by the hooks of
            :mod:`mtlora_vision.engine.fast_slow`; ``docs/methods.md`` explains the three).
    """

    num_tokens: int
    rank: int
    compose: str
    shared_factor: str
    shared_mode: str
    warmup_mode: str
    slow_init: str
    fast_slow: str

    def __post_init__(self) -> None:
        for name, allowed in PROMPT_CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"Unknown {name}={value!r}; choose from {list(allowed)}.")
        check_int("num_tokens", self.num_tokens)
        check_int("rank", self.rank, 1, self.num_tokens)


@dataclass(frozen=True)
class TALoRAPromptConfig(PromptSettings):
    """TA-LoRA-inspired prompts (``ta_lora_prompt``) in every block from ``branch_stage`` on.

    Our design from the paper's abstract (``docs/methods.md#ta-lora``): per block, ``num_tokens``
    prompt keys and values in window attention, a shared prompt plus a low-rank task part behind a
    per-head zero-initialised gate. The shared prompt has its own gated softmax branch
    (``shared_mode="gated"``, an exact identity at step 0) or joins the image keys in the window
    softmax (``"joint"``, the literal prefix design). Default ``branch_stage=2``: task prompts in
    Swin stages 3-4 only (``docs/methods.md#branch-stage``); stages before it carry no prompts.

    Attributes:
        num_tokens, rank, compose, shared_factor, shared_mode, warmup_mode, slow_init, fast_slow:
            The layer settings (:class:`PromptSettings`).
        branch_stage: First stage with (task) prompts.
        num_stages: Number of backbone stages.
    """

    num_tokens: int = 10
    rank: int = 4
    compose: str = "add"
    shared_factor: str = "left"
    shared_mode: str = "gated"
    warmup_mode: str = "learn_gate"
    slow_init: str = "svd"
    fast_slow: str = "lr_ratio"
    branch_stage: int = 2
    num_stages: int = 4

    def __post_init__(self) -> None:
        _check_branch_stage(self.branch_stage, self.num_stages)
        super().__post_init__()


TaskConditionedConfig = MTLLoRAConfig | TALoRAPromptConfig
