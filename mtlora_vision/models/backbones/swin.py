"""Swin Transformer backbone with MTLoRA adapters and per-task stage features.

* Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (Liu et al., ICCV 2021).
* MTLoRA: Low-Rank Adaptation Approach for Efficient Multi-Task Learning (Agiza et al., CVPR 2024).

Built from timm's Swin modules and weight layout (``patch_embed``, ``layers.{i}.downsample`` at the
start of stage ``i``, ``layers.{i}.blocks.{j}``), without final norm or classifier, like the
official MTLoRA backbone. Our forward walks the timm modules (:mod:`.swin_blocks`) so that the last
block of each stage can branch per task (``docs/model.md#stage-outputs``): task streams pass
through the next stage's shared patch merging and feed only the decoders; the next stage reads the
shared stream.

Input sizes: any ``H, W`` that are multiples of 32 (patch 4 and three 2x mergings). The modules
do not depend on the size given at construction (``img_size`` is kept for tools and defaults):
windows, shifts, padding and masks are derived per input size as described in :mod:`.swin_blocks`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.layers import PatchEmbed, calculate_drop_path_rates, trunc_normal_
from timm.models.swin_transformer import SwinTransformerStage
from torch import Tensor, nn

from mtlora_vision.adapters.config import AdapterConfig, AdapterSpec, per_stage
from mtlora_vision.adapters.inject import inject_adapters, match_targets
from mtlora_vision.adapters.state_dict import WRAPPER_TYPES, adapter_parameter_names
from mtlora_vision.adapters.task_conditioned_config import MTLLoRAConfig, TALoRAPromptConfig
from mtlora_vision.models.backbones.activation_memory import ActivationMemory
from mtlora_vision.models.backbones.swin_blocks import (
    block_forward,
    patch_merge,
    task_branch_after_attention,
    windowed_attention,
)
from mtlora_vision.models.backbones.swin_checkpoint import (
    filter_swin_checkpoint,
    load_checkpoint_file,
)
from mtlora_vision.models.backbones.swin_trainable import (
    PARAM_GROUPS,
    TrainablePolicy,
    apply_trainable_policy,
    module_parameter_groups,
)
from mtlora_vision.models.backbones.task_branch import (
    block_forward_task_streams,
    patch_merge_task_streams,
    supports_factored_branch,
)
from mtlora_vision.models.backbones.task_conditioned import (
    TaskConditionedForward,
    inject_task_conditioned,
)
from mtlora_vision.models.state_dict_check import compare_state_dicts
from mtlora_vision.recompute import lean_activations

logger = logging.getLogger(__name__)

#: Swin v1 variants (Liu et al., Table 1).
ARCHS: Mapping[str, Mapping[str, Any]] = {
    "tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
}

#: Linear layers of a block, by their name inside the block.
BLOCK_LINEARS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

#: Layers that must carry task adapters in the last block of each stage for the task branch.
TASK_MODULES: tuple[str, ...] = ("proj", "fc1", "fc2")

PATCH_SIZE = 4


def resolve_arch(arch: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return ``embed_dim``, ``depths`` and ``num_heads`` of a named or explicit architecture.

    Raises:
        KeyError: For an unknown name or missing/unknown keys in a mapping.
    """
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise KeyError(f"Unknown Swin arch {arch!r}; choose from {sorted(ARCHS)} or a dict.")
        return dict(ARCHS[arch])
    keys = {"embed_dim", "depths", "num_heads"}
    if set(arch) != keys:
        raise KeyError(f"A Swin arch dict needs exactly {sorted(keys)}, got {sorted(arch)}.")
    depths, heads = tuple(arch["depths"]), tuple(arch["num_heads"])
    if len(depths) != len(heads) or min(depths) < 1:
        raise ValueError(f"Bad Swin arch: depths={list(depths)}, num_heads={list(heads)}.")
    return {"embed_dim": int(arch["embed_dim"]), "depths": depths, "num_heads": heads}


def _init_linear(module: nn.Module) -> None:
    # timm's Swin initialisation for linear layers (pretrained weights usually replace it).
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SwinBackbone(ActivationMemory, TaskConditionedForward, nn.Module):
    """Swin v1 with optional MTLoRA / LoRA adapters, returning per-task features of every stage.

    Args:
        arch: ``"tiny"``, ``"small"``, ``"base"`` or a dict with ``embed_dim``, ``depths``,
            ``num_heads``.
        img_size: Construction input size (int or ``(H, W)``), kept for tools; the model takes any
            multiple of 32.
        window_size: Attention window per stage (int or one per stage).
        drop_path_rate: Stochastic depth, linear from 0 over all blocks.
        pretrained: Local path of an ImageNet Swin checkpoint (Microsoft or timm layout).
        tasks: Task names; with task adapters each stage branches per task.
        adapter: ``MTLoRAConfig``, ``LoRAConfig``, ``MTLLoRAConfig``, ``TALoRAPromptConfig`` or
            None (frozen/decoder-only baseline). The last two are task-conditioned: stages from
            their ``branch_stage`` on run once per task (:mod:`.task_conditioned`).
        fused_attn: True: ``scaled_dot_product_attention``; False: explicit softmax; None
            (default): fused without autograd, explicit when gradients are recorded, the faster
            choice of each on this CPU (both give the same results and gradients).
        grad_checkpointing: Activation checkpointing, one switch or one per stage: while
            gradients are recorded, each block of a switched-on stage keeps only its input and
            recomputes its forward in the backward pass (:meth:`set_grad_checkpointing`).
        recompute_elementwise: Recompute LayerNorm, GELU and dropout outputs in the backward
            pass (True, the default; with ``grad_checkpointing`` in any stage, the heads'
            BatchNorm + ReLU too), only the listed :data:`~mtlora_vision.recompute.LEAN_PARTS`,
            or store them all (False).
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "tiny",
        img_size: int | Sequence[int] = 448,
        window_size: int | Sequence[int] = 7,
        drop_path_rate: float = 0.2,
        pretrained: str | Path | None = None,
        tasks: Sequence[str] = (),
        adapter: AdapterConfig | None = None,
        fused_attn: bool | None = None,
        grad_checkpointing: bool | Sequence[bool] = False,
        recompute_elementwise: bool | Sequence[str] = True,
    ) -> None:
        super().__init__()
        spec = resolve_arch(arch)
        depths, num_heads = spec["depths"], spec["num_heads"]
        self.num_stages = len(depths)
        self.img_size = img_size
        self.size_divisor = PATCH_SIZE * 2 ** (self.num_stages - 1)
        self.tasks = tuple(tasks)
        self.fused_attn = fused_attn
        windows = per_stage(window_size, self.num_stages, "window_size")
        dims = [spec["embed_dim"] * 2**i for i in range(self.num_stages)]
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=PATCH_SIZE,
            in_chans=3,
            embed_dim=dims[0],
            norm_layer=nn.LayerNorm,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        grid = self.patch_embed.grid_size
        rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        for i in range(self.num_stages):
            stages.append(
                SwinTransformerStage(
                    dim=dims[max(i - 1, 0)],
                    out_dim=dims[i],
                    input_resolution=(grid[0] // 2 ** max(i - 1, 0), grid[1] // 2 ** max(i - 1, 0)),
                    depth=depths[i],
                    downsample=i > 0,
                    num_heads=num_heads[i],
                    window_size=windows[i],
                    # Fixed windows keep the bias tables the size of the checkpoint's; our forward
                    # shrinks windows for small grids itself.
                    always_partition=True,
                    dynamic_mask=True,
                    drop_path=rates[i],
                )
            )
        self.layers = nn.Sequential(*stages)
        self.apply(_init_linear)
        out_dims = [*dims[1:], dims[-1]]
        self.out_channels = tuple(out_dims)
        self.feature_info = [
            {"num_chs": c, "reduction": PATCH_SIZE * 2 ** min(i + 1, self.num_stages - 1)}
            for i, c in enumerate(out_dims)
        ]
        self.set_grad_checkpointing(grad_checkpointing)
        self.recompute_elementwise = recompute_elementwise
        self.adapter_config = adapter
        self.task_branching = False
        #: In eval mode, keep the task streams low-rank and merge them once (:mod:`.task_branch`);
        #: False runs the direct per-task path in eval mode too (same outputs, for checks).
        self.factored_task_branch = True
        self.task_conditioned = isinstance(adapter, (MTLLoRAConfig, TALoRAPromptConfig))
        #: First task-specific stage of a task-conditioned adapter (``num_stages`` otherwise).
        self.branch_stage = adapter.branch_stage if self.task_conditioned else self.num_stages
        if self.task_conditioned:
            inject_task_conditioned(self, adapter, self.tasks)
        elif adapter is not None:
            self._inject(adapter)
        #: Where the frozen weights come from (None: random initialisation, nothing to reload).
        self.pretrained = str(pretrained) if pretrained else None
        if pretrained:
            self.load_pretrained(pretrained)

    # -- adapters --------------------------------------------------------------------------------

    def adapter_specs(self, cfg: AdapterConfig) -> dict[str, AdapterSpec]:
        """Layer name -> adapter settings for ``cfg`` (task adapters only in last blocks)."""
        if cfg.num_stages != self.num_stages:
            raise ValueError(
                f"Adapter config has num_stages={cfg.num_stages}; the backbone has "
                f"{self.num_stages}."
            )
        specs: dict[str, AdapterSpec] = {}
        for i, stage in enumerate(self.layers):
            for j in range(len(stage.blocks)):
                names = [f"layers.{i}.blocks.{j}.{n}" for n in BLOCK_LINEARS]
                last = j == len(stage.blocks) - 1
                for name in match_targets(names, cfg.target_modules):
                    leaf = name.rpartition(".")[2]
                    branch = last and leaf in cfg.task_modules
                    specs[name] = cfg.stage_spec(i, self.tasks if branch else ())
            if cfg.adapt_downsample and i > 0:
                # This merging ends official stage i - 1 and uses that stage's settings.
                specs[f"layers.{i}.downsample.reduction"] = cfg.stage_spec(i - 1)
        return specs

    def _inject(self, cfg: AdapterConfig) -> None:
        if cfg.has_tasks and not self.tasks:
            raise ValueError("The adapter config has task adapters but the backbone has no tasks.")
        if cfg.has_tasks and set(cfg.task_modules) != set(TASK_MODULES):
            raise ValueError(
                f"task_modules={list(cfg.task_modules)}: the Swin task branch needs exactly "
                f"{list(TASK_MODULES)}."
            )
        inject_adapters(self, self.adapter_specs(cfg))
        self.task_branching = cfg.has_tasks
        if self.task_branching:
            for i, stage in enumerate(self.layers):
                block = stage.blocks[-1]
                linears = (block.attn.proj, block.mlp.fc1, block.mlp.fc2)
                if not all(getattr(m, "num_tasks", 0) for m in linears):
                    raise ValueError(
                        f"Stage {i}: target_modules={cfg.target_modules!r} leave proj/fc1/fc2 of "
                        "the last block without task adapters; the task branch needs all three."
                    )

    def parameter_groups(self) -> dict[str, str]:
        """Parameter name -> trainable-policy group (see :data:`PARAM_GROUPS`)."""
        return module_parameter_groups(self, PARAM_GROUPS)

    def apply_trainable(self, policy: TrainablePolicy) -> dict[str, str]:
        """Set ``requires_grad`` from ``policy``; return parameter name -> group."""
        return apply_trainable_policy(self, policy, PARAM_GROUPS)

    # -- weights ---------------------------------------------------------------------------------

    def load_pretrained(self, path: str | Path) -> None:
        """Load an ImageNet Swin checkpoint strictly after the key filter.

        Adapter parameters are expected to be missing; ``head.*``, ``norm.*``, attention masks and
        relative-position indices are expected to be dropped. Anything else is an error.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            KeyError: For other missing or unexpected keys (all listed).
            ValueError: For shape mismatches (e.g. another arch or window size).
        """
        checkpoint = load_checkpoint_file(path)
        wrapped = [n for n, m in self.named_modules() if isinstance(m, WRAPPER_TYPES)]
        state, dropped = filter_swin_checkpoint(checkpoint, wrapped)
        own = self.state_dict()
        missing, unexpected, mismatched = compare_state_dicts(own, state)
        expected_missing = set(adapter_parameter_names(self))
        bad_missing = [k for k in missing if k not in expected_missing]
        if bad_missing or unexpected:
            raise KeyError(
                f"Checkpoint {str(path)!r} does not fit this Swin: missing {bad_missing}, "
                f"unexpected {unexpected}. Is it a Swin v1 checkpoint of the same arch?"
            )
        if mismatched:
            raise ValueError(f"Checkpoint {str(path)!r} has other shapes: {mismatched}.")
        self.load_state_dict(state, strict=False)
        kinds = sorted(
            {k if k.startswith(("head.", "norm.")) else k.rpartition(".")[2] for k in dropped}
        )
        logger.info(
            "Loaded %d tensors from %s; dropped %d on purpose (%s); %d adapter tensors keep "
            "their initialisation.",
            len(state),
            path,
            len(dropped),
            ", ".join(kinds[:8]) + (", ..." if len(kinds) > 8 else ""),
            len(missing),
        )

    # -- forward ---------------------------------------------------------------------------------

    def check_input_size(self, images: Tensor) -> None:
        """Raise a ValueError unless ``images`` is ``(B, 3, H, W)``, ``H, W`` multiples of 32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images (B, 3, H, W), got shape {tuple(images.shape)}.")
        height, width = images.shape[-2:]
        d = self.size_divisor
        if height % d or width % d:
            raise ValueError(
                f"Input size {height}x{width} is not a multiple of {d}; resize or pad the images "
                f"to e.g. {-(-height // d) * d}x{-(-width // d) * d}."
            )

    def _check_tasks(self, tasks: Sequence[str] | None) -> tuple[str, ...]:
        """Tasks of a task-conditioned forward: ``self.tasks`` or a checked subset."""
        if tasks is None:
            return self.tasks
        names = tuple(tasks)
        unknown = [t for t in names if t not in self.tasks]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(
                f"tasks={list(names)} must be distinct tasks of the backbone {list(self.tasks)}."
            )
        return names

    @property
    def num_streams(self) -> int:
        """Number of feature streams returned per stage (tasks, or 1 without tasks)."""
        return max(len(self.tasks), 1)

    def forward(self, images: Tensor, tasks: Sequence[str] | None = None) -> list[Tensor]:
        """Per-task features of every stage.

        Args:
            images: ``(B, 3, H, W)`` with ``H, W`` multiples of 32.
            tasks: Task-conditioned adapters only: compute just these tasks, in this order
                (default: all of ``self.tasks``).

        Returns:
            One tensor per stage, ``(T, B, C_s, H_s, W_s)`` (NCHW per task, tasks in
            ``self.tasks`` order; ``T = 1`` without tasks), with ``C_s = out_channels[s]`` and
            ``H_s = H / feature_info[s]["reduction"]``. Without task branches every task gets the
            same shared features (an expanded view, computed once).
        """
        self.check_input_size(images)
        fused = not torch.is_grad_enabled() if self.fused_attn is None else self.fused_attn
        if tasks is not None and not self.task_conditioned:
            raise ValueError(
                f"tasks={tasks!r}: choosing tasks needs a task-conditioned adapter (MTL-LoRA, "
                "TA-LoRA prompts); this backbone computes all its tasks in one pass."
            )
        with lean_activations(self.recompute_elementwise):
            if self.task_conditioned:
                return self.forward_task_conditioned(images, self._check_tasks(tasks), fused)
            return self._forward_stages(images, fused)

    def _forward_stages(self, images: Tensor, fused: bool) -> list[Tensor]:
        """Stages with MTLoRA task branches (or none): see :meth:`forward`."""
        x = self.patch_embed(images)  # B, H/4, W/4, C
        feats = []
        for i, stage in enumerate(self.layers):
            for block in stage.blocks[:-1]:
                x = self.maybe_checkpoint(i, block_forward, block, x, fused)
            merge = self.layers[i + 1].downsample if i + 1 < self.num_stages else None
            x, task_x = self._stage_end(i, stage.blocks[-1], merge, x, fused)
            feat = x.unsqueeze(0).expand(self.num_streams, *x.shape) if task_x is None else task_x
            feats.append(feat.permute(0, 1, 4, 2, 3))  # T, B, C, H, W
        return feats

    def _stage_end(
        self, stage: int, block: nn.Module, merge: nn.Module | None, x: Tensor, fused: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Last block of a stage, then the next stage's patch merging (None after the last stage).

        A checkpointed task branch is two checkpoints, the shared window attention and the rest
        (with the merging): the backward pass then never holds the saved tensors of both parts
        at once, and only the attention output ``(B * nW, N, C)`` is stored between them.

        Returns:
            Shared tokens ``(B, h, w, c)`` for the next stage and task features
            ``(T, B, h, w, c)``, or None without task branches.
        """
        if not self.task_branching:
            return self.maybe_checkpoint(stage, _block_then_merge, block, merge, x, fused), None
        B, H, W = x.shape[:3]
        if self.factored_task_branch and not self.training and supports_factored_branch(block):
            x, streams = block_forward_task_streams(block, x, fused)
            if merge is None:
                tasks = streams.expand()
            elif H % 2 == 0 and W % 2 == 0:
                tasks = patch_merge_task_streams(merge, streams)
            else:
                tasks = patch_merge(merge, streams.expand().flatten(0, 1))
            x = _merged(merge, x)
        else:
            attended = self.maybe_checkpoint(stage, windowed_attention, block, x, fused)
            x, tasks = self.maybe_checkpoint(
                stage, _task_branch_then_merge, block, merge, x, attended
            )
        return x, tasks.view(-1, B, *tasks.shape[-3:])


def _merged(merge: nn.Module | None, x: Tensor) -> Tensor:
    """The next stage's patch merging of ``x (B, H, W, C)``; ``x`` itself after the last stage."""
    return x if merge is None else patch_merge(merge, x)


def _block_then_merge(block: nn.Module, merge: nn.Module | None, x: Tensor, fused: bool) -> Tensor:
    """A block on the shared stream ``(B, H, W, C)``, then the patch merging if any."""
    return _merged(merge, block_forward(block, x, fused))


def _task_branch_then_merge(
    block: nn.Module, merge: nn.Module | None, x: Tensor, attended: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`task_branch_after_attention`, then the patch merging of both outputs if any.

    Returns:
        Shared ``(B, h, w, c)`` and task outputs ``(T * B, h, w, c)``.
    """
    shared, tasks = task_branch_after_attention(block, x, attended)
    tasks = _merged(merge, tasks)
    return _merged(merge, shared), tasks
