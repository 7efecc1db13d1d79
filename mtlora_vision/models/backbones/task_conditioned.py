"""Task-conditioned Swin: MTL-LoRA or TA-LoRA-style prompts, with a shared trunk and a branch stage.

* MTL-LoRA (Yang et al., arXiv 2410.09437).
* TA-LoRA-inspired visual prompts (Zhang et al., arXiv 2505.00009; our design from the abstract).

Both adapters make every layer's output depend on the task, so all tasks of an image need one stream
per task (``docs/methods.md#branch-stage``). Stages before ``branch_stage`` are task-agnostic and
run once on the batch ``(B, H, W, C)``; at ``branch_stage`` the stream is replicated task-major to
``(T * B, H, W, C)`` and every later layer runs batched over the tasks (MTL-LoRA layers and prompts
read the stacking from their active task layout). Each stage's feature is then the task rows
``(T, B, ...)``; before the branch every task gets the shared feature (an expanded view).

This module injects the adapters (:func:`inject_task_conditioned`) and holds the backbone's
task-conditioned forward pass (:class:`TaskConditionedForward`, a mix-in of
:class:`~.swin.SwinBackbone`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn

from mtlora_vision.adapters.config import AdapterSpec
from mtlora_vision.adapters.inject import inject_adapters, match_targets
from mtlora_vision.adapters.mtl_lora import MTLLoRASpec, set_active_tasks
from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt
from mtlora_vision.adapters.prompt_attention import gated_prompt_attention, project_prompt_kv
from mtlora_vision.adapters.task_conditioned_config import (
    MTLLoRAConfig,
    TALoRAPromptConfig,
    TaskConditionedConfig,
)
from mtlora_vision.models.backbones.swin_blocks import block_forward, patch_merge

logger = logging.getLogger(__name__)

#: Linear layers of a block, by their name inside the block.
BLOCK_LINEARS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


class WindowPrompt(TaskAdaptiveLowRankPrompt):
    """Prompt of one Swin block's window attention, with the task layout set by the backbone.

    Installed as ``block.attn.prompt``; :func:`~.swin_blocks.window_attention` adds
    :meth:`attention_residual` to its output and, with ``shared_mode="joint"``, first appends
    :meth:`joint_kv` to the image keys and values. Arguments as :class:`TaskAdaptiveLowRankPrompt`.

    Attributes:
        active_tasks: Task names stacked task-major in the current forward pass, or None.
    """

    active_tasks: tuple[str, ...] | None = None

    def set_active_tasks(self, tasks: Sequence[str] | None) -> None:
        """Set the task stacking of the windows seen next (``None`` clears it)."""
        self.active_tasks = None if tasks is None else tuple(tasks)

    def attention_residual(self, q: Tensor, qkv: nn.Module, scale: float) -> Tensor:
        """Gated prompt branches for the queries of a window attention.

        Args:
            q: Unscaled queries ``(T * M, h, N, hd)``, task-major over ``active_tasks``.
            qkv: The block's fused ``qkv`` layer (an ``nn.Linear`` or an adapter wrapping one);
                its frozen weights project the prompts.
            scale: Logit scale of the attention.

        Returns:
            ``(T * M, h, N, hd)``, to add to the image attention output.
        """
        if self.active_tasks is None:
            raise ValueError(
                "WindowPrompt has no task layout; the backbone sets it in forward (or call "
                "set_active_tasks)."
            )
        linear = getattr(qkv, "base_layer", qkv)
        if self.shared_mode == "gated":
            return self.residual(q, linear.weight, linear.bias, self.active_tasks, scale)
        kv = self.prompt_kv(linear.weight, linear.bias, self.active_tasks)
        return gated_prompt_attention(  # joint: only the task branch (P0 is in the softmax)
            q, task_k=kv.task_k, task_v=kv.task_v, task_gate=self._task_gate(), scale=scale
        )

    def joint_kv(self, qkv: nn.Module) -> tuple[Tensor, Tensor]:
        """P0's keys and values ``(h, L, hd)``, which join the image keys in ``"joint"`` mode."""
        linear = getattr(qkv, "base_layer", qkv)
        tokens = self.shared_prompt().to(linear.weight.dtype)
        return project_prompt_kv(tokens, linear.weight, linear.bias, self.num_heads)


def _mtl_lora_specs(
    backbone: nn.Module, cfg: MTLLoRAConfig, tasks: Sequence[str]
) -> dict[str, AdapterSpec | MTLLoRASpec]:
    """Plain shared LoRA before ``branch_stage``, MTL-LoRA from it on, for the targeted linears."""
    shared = AdapterSpec(shared_rank=cfg.rank, shared_scale=cfg.scale, dropout=cfg.dropout)
    task_conditioned = MTLLoRASpec(cfg, tuple(tasks))
    specs: dict[str, AdapterSpec | MTLLoRASpec] = {}
    for i, stage in enumerate(backbone.layers):
        names = [
            f"layers.{i}.blocks.{j}.{leaf}"
            for j in range(len(stage.blocks))
            for leaf in BLOCK_LINEARS
        ]
        for name in match_targets(names, cfg.target_modules):
            specs[name] = shared if i < cfg.branch_stage else task_conditioned
    return specs


def _inject_prompts(backbone: nn.Module, cfg: TALoRAPromptConfig, tasks: Sequence[str]) -> int:
    """A :class:`WindowPrompt` in every block from ``branch_stage`` on; return the count."""
    count = 0
    for i in range(cfg.branch_stage, backbone.num_stages):
        for block in backbone.layers[i].blocks:
            attn = block.attn
            attn.prompt = WindowPrompt(
                attn.qkv.in_features,
                attn.num_heads,
                tasks,
                num_tokens=cfg.num_tokens,
                rank=cfg.rank,
                compose=cfg.compose,
                shared_factor=cfg.shared_factor,
                shared_mode=cfg.shared_mode,
                warmup_mode=cfg.warmup_mode,
                slow_init=cfg.slow_init,
                fast_slow=cfg.fast_slow,
            ).to(attn.qkv.weight.device)
            count += 1
    return count


def inject_task_conditioned(
    backbone: nn.Module, cfg: TaskConditionedConfig, tasks: Sequence[str]
) -> None:
    """Add MTL-LoRA layers or window prompts to a Swin backbone in place.

    Args:
        backbone: A :class:`~.swin.SwinBackbone` without adapters.
        cfg: The adapter config; ``cfg.branch_stage`` is the first task-specific stage.
        tasks: Task names of the backbone (order of the streams).

    Raises:
        ValueError: Without tasks, or if ``cfg.num_stages`` differs from the backbone's.
    """
    if not tasks:
        raise ValueError(f"{type(cfg).__name__} is task-conditioned; the backbone needs tasks.")
    if cfg.num_stages != backbone.num_stages:
        raise ValueError(
            f"Adapter config has num_stages={cfg.num_stages}; the backbone has "
            f"{backbone.num_stages}."
        )
    if isinstance(cfg, MTLLoRAConfig):
        count = len(inject_adapters(backbone, _mtl_lora_specs(backbone, cfg, tasks)))
    else:
        count = _inject_prompts(backbone, cfg, tasks)
    logger.info(
        "%s: %d adapted modules, task-specific from stage %d.",
        type(cfg).__name__,
        count,
        cfg.branch_stage,
    )


def set_task_layout(module: nn.Module, tasks: Sequence[str] | None) -> None:
    """Set the task-major stacking of every MTL-LoRA layer and window prompt inside ``module``."""
    layout = None if tasks is None else tuple(tasks)
    set_active_tasks(module, layout)
    for sub in module.modules():
        if isinstance(sub, WindowPrompt):
            sub.set_active_tasks(layout)


def replicate_task_major(x: Tensor, num_tasks: int) -> Tensor:
    """``(B, ...)`` -> ``(T * B, ...)``: rows ``[t*B:(t+1)*B]`` copy ``x`` for task ``t``."""
    return x.unsqueeze(0).expand(num_tasks, *x.shape).reshape(-1, *x.shape[1:])


class TaskConditionedForward:
    """The task-conditioned forward pass, a method of :class:`~.swin.SwinBackbone` (a mix-in).

    Kept apart from the shared-stream forward of ``swin.py`` because only task-conditioned adapters
    replicate the stream per task.
    """

    def forward_task_conditioned(
        self, images: Tensor, tasks: Sequence[str], fused: bool
    ) -> list[Tensor]:
        """Per-task features of every stage, the trunk before ``branch_stage`` computed once.

        Args:
            images: ``(B, 3, H, W)``, checked by the caller.
            tasks: Tasks to compute, in output order (a subset of the backbone's tasks).
            fused: Use fused attention.

        Returns:
            One tensor ``(T, B, C_s, H_s, W_s)`` per stage, ``T = len(tasks)``.
        """
        branch = self.branch_stage
        num_tasks, batch = len(tasks), images.shape[0]
        for stage in self.layers[branch:]:
            set_task_layout(stage, tasks)
        x = self.patch_embed(images)  # B, H/4, W/4, C
        feats = []
        for i, stage in enumerate(self.layers):
            if i == branch:
                x = replicate_task_major(x, num_tasks)  # T*B, H_s, W_s, C
            for block in stage.blocks:  # the task layout set above holds until the backward
                x = self.maybe_checkpoint(i, block_forward, block, x, fused)
            if i + 1 < self.num_stages:
                x = patch_merge(self.layers[i + 1].downsample, x)
            if i < branch:
                feat = x.unsqueeze(0).expand(num_tasks, *x.shape)
            else:
                feat = x.view(num_tasks, batch, *x.shape[1:])
            feats.append(feat.permute(0, 1, 4, 2, 3))  # T, B, C, H, W
        return feats
