"""Per-task losses of MTLoRA (Agiza et al., CVPR 2024) for multi-task dense prediction.

The formulas follow the official recipe (MTLoRA, inherited from Vandenhende et al.'s multi-task
baselines; see ``docs/recipe.md#losses``):

* ``semseg``, ``human_parts``: cross-entropy, ignoring ``IGNORE_INDEX``, averaged over valid pixels;
* ``sal``: HED-style balanced binary cross-entropy, ``w = #neg / #valid`` over the whole batch;
* ``edge``: the same loss with the fixed positive weight 0.95;
* ``normals``: L1 between the L2-normalised prediction and the target, summed over valid elements
  and divided by their number (all three channels counted);
* ``depth``: L1 averaged over valid pixels.

Every loss returns an exact ``0`` that is still attached to the graph (zero gradient) when the
batch has no valid pixel for its task, e.g. ``human_parts`` on images without persons; the official
code returns NaN there. Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlora_vision.tasks import EDGE_POS_WEIGHT, IGNORE_INDEX, Task, check_tasks

logger = logging.getLogger(__name__)

#: Added to the prediction's norm before dividing, as in the official ``Normalize`` layer.
NORMALS_EPS = 1e-12

LossFn = Callable[[Tensor, Tensor], Tensor]


class NonFiniteLossError(FloatingPointError):
    """Raised when a task's loss is NaN or infinite; the message names the task."""


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` elements; exactly 0 (with a graph) when none is valid."""
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / valid.sum().clamp(min=1)


def _check_same_size(pred: Tensor, target: Tensor, task: str) -> None:
    if pred.shape[0] != target.shape[0] or pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"{task}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in "
            "batch or spatial size; resize the head output to the target size first."
        )


def cross_entropy_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy averaged over the pixels whose label is not ``ignore_index``.

    Args:
        logits: Class scores ``(B, K, H, W)``.
        target: Class ids ``(B, H, W)``, int64, ``ignore_index`` where unlabelled.
        ignore_index: Label value that carries no loss.

    Returns:
        Scalar loss; exactly 0 when every pixel is ignored.
    """
    _check_same_size(logits, target, "cross_entropy_loss")
    target = target.long()
    valid = target != ignore_index
    per_pixel = F.cross_entropy(
        logits.float(), target, ignore_index=ignore_index, reduction="none"
    )  # B, H, W; 0 at ignored pixels
    return _masked_mean(per_pixel, valid)


def balanced_bce_loss(
    logits: Tensor,
    target: Tensor,
    pos_weight: float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Class-balanced binary cross-entropy on logits (HED style), as the official saliency loss.

    Labels are ``target >= 0.5``. With ``pos_weight=None`` the positive weight is
    ``w = #neg / #valid`` counted over the whole batch; the loss is
    ``(w * sum(pos) + (1 - w) * sum(neg)) / numel``, where ``numel = B * H * W`` counts every pixel
    (the official code divides by the label's size also when void pixels are masked). Ignored
    pixels are always masked; the official code masks them only in the balanced case, which makes
    no difference on official data (its ``sal`` and ``edge`` labels have no ignored pixels).

    Args:
        logits: Scores ``(B, 1, H, W)`` or ``(B, H, W)``.
        target: Labels ``(B, H, W)`` or ``(B, 1, H, W)`` in {0, 1}, ``ignore_index`` where invalid.
        pos_weight: Fixed positive weight (0.95 for edges), or None for the balanced weight.
        ignore_index: Label value that carries no loss.

    Returns:
        Scalar loss; exactly 0 when every pixel is ignored.
    """
    _check_same_size(logits, target, "balanced_bce_loss")
    logits = logits.float().reshape(target.shape[0], -1)  # B, H*W
    target = target.reshape(target.shape[0], -1)
    if logits.shape != target.shape:
        raise ValueError(
            f"balanced_bce_loss expects one channel; got {logits.shape[1]} scores for "
            f"{target.shape[1]} labels per image."
        )
    valid = target != ignore_index
    positive = (target >= 0.5) & valid
    negative = (target < 0.5) & valid
    # Stable logit form: max(x, 0) - x * y + log(1 + exp(-|x|)).
    per_pixel = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
    zeros = torch.zeros_like(per_pixel)
    loss_pos = torch.where(positive, per_pixel, zeros).sum()
    loss_neg = torch.where(negative, per_pixel, zeros).sum()
    if pos_weight is None:
        w = negative.sum() / valid.sum().clamp(min=1)
    else:
        w = torch.tensor(float(pos_weight), device=logits.device)
    return (w * loss_pos + (1 - w) * loss_neg) / target.numel()


def normalize_normals(pred: Tensor, eps: float = NORMALS_EPS) -> Tensor:
    """Divide by the channel L2 norm plus ``eps`` (the official ``Normalize``), ``(B, 3, H, W)``."""
    return pred / (torch.linalg.vector_norm(pred, dim=1, keepdim=True) + eps)


def normals_l1_loss(pred: Tensor, target: Tensor, ignore_value: float = IGNORE_INDEX) -> Tensor:
    """L1 between the L2-normalised prediction and unit target normals over valid elements.

    Args:
        pred: Unnormalised normals ``(B, 3, H, W)``.
        target: Unit normals ``(B, 3, H, W)``, ``ignore_value`` on every channel where invalid.
        ignore_value: Target value marking invalid elements.

    Returns:
        Sum of absolute differences over valid elements divided by the number of valid elements
        (each of the three channels counts); exactly 0 when nothing is valid.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"normals_l1_loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
            "differ; both must be (B, 3, H, W) at the same size."
        )
    target = target.float()
    valid = target != ignore_value
    per_element = (normalize_normals(pred.float()) - target).abs()
    return _masked_mean(per_element, valid)


def depth_l1_loss(pred: Tensor, target: Tensor, ignore_value: float = IGNORE_INDEX) -> Tensor:
    """L1 depth error averaged over valid pixels.

    Args:
        pred: Depth ``(B, 1, H, W)`` in metres.
        target: Depth ``(B, 1, H, W)`` (or ``(B, H, W)``), ``ignore_value`` where invalid.
        ignore_value: Target value marking invalid pixels.

    Returns:
        Scalar loss; exactly 0 when nothing is valid.
    """
    _check_same_size(pred, target, "depth_l1_loss")
    target = target.float().reshape(pred.shape)
    valid = target != ignore_value
    return _masked_mean((pred.float() - target).abs(), valid)


def task_loss_functions(edge_pos_weight: float = EDGE_POS_WEIGHT) -> dict[str, LossFn]:
    """Return the official loss function of every task, keyed by task name."""
    return {
        Task.SEMSEG.value: cross_entropy_loss,
        Task.HUMAN_PARTS.value: cross_entropy_loss,
        Task.SAL.value: balanced_bce_loss,
        Task.EDGE.value: partial(balanced_bce_loss, pos_weight=edge_pos_weight),
        Task.NORMALS.value: normals_l1_loss,
        Task.DEPTH.value: depth_l1_loss,
    }


def stack_targets(
    data_samples: Sequence[Mapping], tasks: Sequence[str], device: torch.device | None = None
) -> dict[str, Tensor]:
    """Stack ``data_samples[i]["targets"][task]`` into one batch tensor per task.

    Args:
        data_samples: Per-sample dicts following ``docs/design.md`` (``"targets"`` inside).
        tasks: Tasks to stack.
        device: Where to put the result; unchanged when None.

    Returns:
        ``{task: Tensor (B, ...)}``.

    Raises:
        KeyError: If a sample has no target for a requested task.
        ValueError: If the samples' target shapes differ.
    """
    stacked = {}
    for task in tasks:
        try:
            items = [sample["targets"][task] for sample in data_samples]
        except KeyError as err:
            raise KeyError(f"A data sample has no targets[{task!r}]; the loss needs it.") from err
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) != 1:
            raise ValueError(f"{task} targets differ in shape within the batch: {sorted(shapes)}.")
        batch = torch.stack(items)
        stacked[task] = batch if device is None else batch.to(device)
    return stacked


class MultiTaskLoss(nn.Module):
    """Un-weighted per-task losses of the official recipe (weighting is a separate module).

    Args:
        tasks: Tasks to compute, values of :class:`~mtlora_vision.tasks.Task`.
        edge_pos_weight: Fixed positive weight of the edge loss.
        functions: Per-task replacements of the official loss, ``{task: fn(pred, target)}``.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        edge_pos_weight: float = EDGE_POS_WEIGHT,
        functions: Mapping[str, LossFn] | None = None,
    ) -> None:
        super().__init__()
        defaults = task_loss_functions(edge_pos_weight)
        self.tasks = check_tasks(tasks, defaults, what="MultiTaskLoss")
        overrides = dict(functions or {})
        unknown = sorted(set(overrides) - set(self.tasks))
        if unknown:
            raise KeyError(f"Loss functions given for {unknown}, not tasks of {list(self.tasks)}.")
        self._functions = {task: overrides.get(task, defaults[task]) for task in self.tasks}

    def forward(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Compute each task's loss.

        Args:
            outputs: Raw head outputs ``{task: (B, K_t, H, W)}`` at the target resolution.
            targets: Stacked targets ``{task: (B, ...)}`` in the formats of ``docs/design.md``.

        Returns:
            ``{task: scalar Tensor}`` for every configured task.

        Raises:
            KeyError: If an output or a target of a configured task is missing.
        """
        losses = {}
        for task in self.tasks:
            for where, values in (("outputs", outputs), ("targets", targets)):
                if task not in values:
                    raise KeyError(
                        f"MultiTaskLoss: no {task!r} in the {where}; they hold {sorted(values)}."
                    )
            losses[task] = self._functions[task](outputs[task], targets[task])
        return losses


def nonfinite_names(values: Mapping[str, Tensor | float]) -> list[str]:
    """Return the keys whose value is NaN or infinite (any element, for tensors)."""
    bad = []
    for name, value in values.items():
        tensor = torch.as_tensor(value).detach()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad
