"""Schemes that combine per-task losses into the terms mmengine sums.

* :class:`FixedWeighting`: constant weights, by default the official MTLoRA ones
  (semseg 1, human_parts 2, sal 5, normals 10, edge 50, depth 1).
* :class:`UncertaintyWeighting`: homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018).
* :class:`DynamicWeightAverage`: DWA (Liu, Johns and Davison, CVPR 2019, "End-to-End Multi-Task
  Learning with Attention").

Every scheme maps ``{task: raw loss}`` to a dict for mmengine's ``BaseModel.parse_losses``:
``loss_<task>`` holds the weighted term (mmengine sums every key containing ``"loss"``),
``raw_<task>`` the un-weighted value and, for the adaptive schemes, ``weight_<task>`` the current
weight; these two are logged but not summed, since their names do not contain ``"loss"``.

A raw loss of exactly 0 marks a task without any valid pixel in the batch (the functions in
:mod:`mtlora_vision.models.losses` return exact 0 only then, in practice). Such a task contributes
exactly 0 in every scheme and does not enter the adaptive schemes' statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from mmengine.dist import all_reduce
from torch import Tensor, nn

from mtlora_vision.models.losses import NonFiniteLossError, nonfinite_names
from mtlora_vision.tasks import OFFICIAL_LOSS_WEIGHTS, Task, check_tasks

logger = logging.getLogger(__name__)

_ALL_TASKS = tuple(t.value for t in Task)


def dwa_weights(last: Tensor, before_last: Tensor, temperature: float = 2.0) -> Tensor:
    """DWA weights ``K * softmax(r / T)`` with ``r = last / before_last``.

    Args:
        last: Mean loss per task over the last window, ``(K,)``.
        before_last: Mean loss per task over the window before, ``(K,)``.
        temperature: Softmax temperature ``T``.

    Returns:
        Weights ``(K,)`` summing to ``K``; a task with a zero mean in either window has ``r = 1``.
    """
    known = (last > 0) & (before_last > 0)
    ratio = torch.where(known, last / before_last.clamp(min=torch.finfo(last.dtype).tiny), 1.0)
    return last.numel() * torch.softmax(ratio / temperature, dim=0)


def _raise_if_nonfinite(raw: Mapping[str, Tensor]) -> None:
    """Raise ``NonFiniteLossError`` naming the tasks whose loss is NaN or infinite."""
    stacked = torch.stack([value.detach().float().reshape(()) for value in raw.values()])
    if bool(torch.isfinite(stacked).all()):  # one device sync per iteration
        return
    bad = nonfinite_names(raw)
    values = ", ".join(f"{t}={float(raw[t].detach()):g}" for t in bad)
    raise NonFiniteLossError(
        f"Non-finite loss for task(s) {bad} ({values}); stopping before the optimizer step. "
        "Lower the learning rate or check that task's targets and head."
    )


class LossWeighting(nn.Module):
    """Base class: validates the per-task losses and names the output terms.

    Subclasses implement :meth:`weigh`.

    Args:
        tasks: Task names, in the order the terms are reported.
        check_finite: Raise :class:`~mtlora_vision.models.losses.NonFiniteLossError` naming the
            task when a raw loss is NaN or infinite, i.e. before backward and the optimizer step
            can write non-finite values into the weights.
    """

    def __init__(self, tasks: Sequence[str], check_finite: bool = True) -> None:
        super().__init__()
        self.tasks = check_tasks(tasks, _ALL_TASKS, what=type(self).__name__)
        self.check_finite = check_finite

    def weigh(self, raw: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Return the weighted terms and the weights to log (may be empty), keyed by task."""
        raise NotImplementedError

    def forward(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Weigh the per-task losses.

        Args:
            losses: Un-weighted scalar loss per task, ``{task: Tensor ()}``.

        Returns:
            ``loss_<task>`` (weighted, summed by mmengine), ``raw_<task>`` (detached) and, for
            adaptive schemes, ``weight_<task>`` (detached).

        Raises:
            KeyError: If a configured task has no loss.
            NonFiniteLossError: If ``check_finite`` and a loss is NaN or infinite.
        """
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise KeyError(f"No loss for task(s) {missing}; got {sorted(losses)}.")
        raw = {task: losses[task] for task in self.tasks}
        if self.check_finite:
            _raise_if_nonfinite(raw)
        terms, weights = self.weigh(raw)
        out = {f"loss_{task}": terms[task] for task in self.tasks}
        out.update({f"raw_{task}": raw[task].detach() for task in self.tasks})
        out.update({f"weight_{task}": weights[task].detach() for task in weights})
        return out


class FixedWeighting(LossWeighting):
    """Constant per-task weights: ``loss_t = w_t * L_t``.

    Args:
        tasks: Task names.
        weights: Weight per task; defaults to :data:`OFFICIAL_LOSS_WEIGHTS`. Extra keys are allowed
            (so one table serves several task sets); a missing task is an error.
        check_finite: See :class:`LossWeighting`.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weights: Mapping[str, float] | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(tasks, check_finite)
        table = OFFICIAL_LOSS_WEIGHTS if weights is None else weights
        missing = [t for t in self.tasks if t not in table]
        if missing:
            raise KeyError(f"FixedWeighting: no weight for task(s) {missing}; got {dict(table)}.")
        self.weights = {t: float(table[t]) for t in self.tasks}

    def weigh(self, raw: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Multiply each loss by its constant weight; no weights are logged."""
        return {t: self.weights[t] * raw[t] for t in self.tasks}, {}


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall et al., 2018).

    With a learnable ``s_t = log(sigma_t^2)`` per task, the term is
    ``loss_t = 0.5 * exp(-s_t) * L_t + 0.5 * s_t`` (the regression form of the paper's Eq. 7, used
    for every task). The ``s_t`` are parameters of this module, so they are trained by
    the same optimizer and backward pass as the network as long as this module is a submodule of
    the model (the optimizer is built from ``model.parameters()``); being 0-d they get no weight
    decay under the official parameter groups, and they are saved in trainable-only checkpoints.
    A task without valid pixels (raw loss exactly 0) gets a term of exactly 0, so its ``s_t`` is
    not pushed down by the regulariser alone.

    Args:
        tasks: Task names.
        init_log_variance: Initial ``s_t`` (0 gives weight 0.5 per task).
        check_finite: See :class:`LossWeighting`.
    """

    def __init__(
        self, tasks: Sequence[str], init_log_variance: float = 0.0, check_finite: bool = True
    ) -> None:
        super().__init__(tasks, check_finite)
        self.log_variances = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(float(init_log_variance))) for t in self.tasks}
        )

    def weigh(self, raw: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Return ``0.5 exp(-s) L + 0.5 s`` per task and the weights ``0.5 exp(-s)``."""
        terms, weights = {}, {}
        for task in self.tasks:
            s = self.log_variances[task]
            weights[task] = 0.5 * torch.exp(-s)
            term = weights[task] * raw[task] + 0.5 * s
            terms[task] = torch.where(raw[task] != 0, term, raw[task])
        return terms, weights


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu et al., 2019).

    ``lambda_k = K * exp(r_k / T) / sum_i exp(r_i / T)`` with ``r_k = L_k(t-1) / L_k(t-2)``, where
    ``L_k(t)`` is task k's mean raw loss over window t and ``K`` the number of tasks; every weight
    is 1 until two windows are complete. The paper's windows are epochs. Since we train per
    iteration, a window is either ``window`` training forward passes, or, with ``window=None``,
    an epoch that :class:`~mtlora_vision.engine.hooks.DWAEpochHook` closes by calling
    :meth:`close_window`.

    The statistics are buffers (saved in checkpoints, so resume continues them); they are
    updated only in training mode. At a window's end the sums are all-reduced over ranks, so
    every rank uses the same weights. A task whose mean is 0 in either window (no valid pixel
    anywhere) gets ``r_k = 1``. The weights are constants: no gradient flows through them.

    Args:
        tasks: Task names.
        temperature: ``T`` (2 in the paper).
        window: Iterations per window, or None for windows closed from outside (per epoch).
        check_finite: See :class:`LossWeighting`.
    """

    window_sum: Tensor
    window_count: Tensor
    window_steps: Tensor
    history: Tensor
    num_windows: Tensor

    def __init__(
        self,
        tasks: Sequence[str],
        temperature: float = 2.0,
        window: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(tasks, check_finite)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}.")
        if window is not None and window < 1:
            raise ValueError(
                f"DWA window must be >= 1 iteration or None (per epoch), got {window}."
            )
        self.temperature = float(temperature)
        self.window = window
        num_tasks = len(self.tasks)
        self.register_buffer("window_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("window_count", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("history", torch.ones(2, num_tasks, dtype=torch.float64))  # t-2, t-1
        self.register_buffer("num_windows", torch.zeros((), dtype=torch.long))

    def current_weights(self) -> Tensor:
        """Weights ``(K,)`` from the last two complete windows (ones before there are two)."""
        num_tasks = len(self.tasks)
        if int(self.num_windows) < 2:
            return torch.ones(num_tasks, dtype=torch.float64, device=self.history.device)
        return dwa_weights(self.history[1], self.history[0], self.temperature)

    @torch.no_grad()
    def accumulate(self, raw: Mapping[str, Tensor]) -> None:
        """Add one iteration's raw losses to the open window (tasks with a loss of 0 skip it)."""
        values = torch.stack([raw[t].detach().double() for t in self.tasks])
        has_data = values != 0
        self.window_sum += torch.where(has_data, values, torch.zeros_like(values))
        self.window_count += has_data.double()
        self.window_steps += 1
        if self.window is not None and int(self.window_steps) >= self.window:
            self.close_window()

    @torch.no_grad()
    def close_window(self) -> None:
        """End the open window: store its mean losses (averaged over ranks) and start a new one."""
        stats = torch.stack([self.window_sum, self.window_count])
        all_reduce(stats, op="sum")
        if float(stats[1].sum()) == 0:
            logger.debug("DWA: empty window ignored.")
            return
        mean = stats[0] / stats[1].clamp(min=1)
        self.history[0] = self.history[1]
        self.history[1] = mean
        self.num_windows += 1
        self.window_sum.zero_()
        self.window_count.zero_()
        self.window_steps.zero_()

    def weigh(self, raw: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Weigh with the current DWA weights, then add this iteration to the window if training."""
        weights = self.current_weights()
        if self.training:
            self.accumulate(raw)
        terms, logged = {}, {}
        for i, task in enumerate(self.tasks):
            logged[task] = weights[i].to(raw[task].dtype)
            terms[task] = logged[task] * raw[task]
        return terms, logged
