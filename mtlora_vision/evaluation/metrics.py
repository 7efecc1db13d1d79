"""mmengine metric for multi-task dense prediction, following MTLoRA (Agiza et al., CVPR 2024).

:class:`MultiTaskMetric` reads ``data_samples[i]["pred"]`` and ``data_samples[i]["targets"]``
(``docs/design.md`` sections 3 and 4). ``process`` keeps only small per-sample sufficient
statistics (confusion matrices, per-threshold counts, angle sums and histograms), so mmengine's
gathering across DDP ranks stays cheap; ``compute_metrics`` reduces them with the pure functions
of :mod:`mtlora_vision.evaluation.functional`.

Keys are flat and prefixed by task: ``semseg/mIoU``, ``human_parts/mIoU``, ``sal/mIoU``,
``sal/maxF``, ``normals/mean``, ``normals/median``, ``normals/rmse``, ``normals/11.25``,
``normals/22.5``, ``normals/30``, ``edge/bce``, ``edge/odsF``, ``edge/oisF``, ``edge/AP``,
``depth/rmse``, ``depth/log_rmse`` and ``multitask/delta_m``. Opt-in: ``<task>/IoU/<class>`` and
``sal/maxFbeta`` (pooled F-beta with beta^2 = 0.3). Percentages for IoU, F, AP, within-angle
shares and Delta-m; degrees for normals; metres for depth. No key contains ``loss``: mmengine's
log processor reports every such key as the mean over the run's history instead of the current
value (the official edge "loss" proxy is therefore ``edge/bce``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from torch import Tensor

from mtlora_vision.evaluation.edge_pool import EdgeCounter
from mtlora_vision.evaluation.functional.boundary import boundary_thresholds
from mtlora_vision.evaluation.functional.delta_m import delta_m
from mtlora_vision.evaluation.functional.depth import depth_metrics, depth_stats
from mtlora_vision.evaluation.functional.edge_loss import edge_loss, edge_loss_stats
from mtlora_vision.evaluation.functional.edge_scores import edge_scores
from mtlora_vision.evaluation.functional.normals import (
    angular_error,
    normals_metrics,
    normals_stats,
)
from mtlora_vision.evaluation.functional.saliency import (
    saliency_level_histograms,
    saliency_max_f,
    saliency_max_fbeta,
    saliency_max_iou,
    saliency_stats,
)
from mtlora_vision.evaluation.functional.segmentation import (
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
)
from mtlora_vision.evaluation.metric_settings import (
    PAPER_SWIN_T_BASELINES,
    resolve_baselines,
    resolve_class_names,
    resolve_delta_m_keys,
    resolve_edge_max_dist,
    resolve_num_classes,
)
from mtlora_vision.evaluation.samples import (
    label_map,
    pred_and_targets,
    prob_map,
    squeeze_channel,
)
from mtlora_vision.tasks import (
    DEFAULT_DELTA_M_KEYS,
    EDGE_POS_WEIGHT,
    LOWER_IS_BETTER_KEYS,
    NUM_OUTPUTS,
    Kind,
    Task,
    check_tasks,
    task_kind,
)

__all__ = [
    "DEFAULT_DELTA_M_KEYS",
    "LOWER_IS_BETTER_KEYS",
    "PAPER_SWIN_T_BASELINES",
    "MultiTaskMetric",
]

logger = logging.getLogger(__name__)

_PERCENT = 100.0


class MultiTaskMetric(BaseMetric):
    """All task metrics of a multi-task model plus Delta-m, in one mmengine metric.

    Args:
        tasks: Tasks to evaluate (values of :class:`~mtlora_vision.tasks.Task`). ``None`` (what
            the configs use) takes the tasks, the dataset, the class counts and the class names
            from ``dataset_meta``, which mmengine's loops set from the evaluated dataset's
            ``metainfo`` before any sample is seen.
        dataset: ``"pascal_context"``, ``"nyud"`` or ``None``; sets default class counts, the
            edge tolerance and (for PASCAL-Context) the default Delta-m baselines. Ignored when
            ``tasks`` is ``None`` (the dataset's own name is used).
        num_classes: Classes per segmentation task; overrides the dataset defaults.
        baselines: Single-task value per metric key for Delta-m. ``None`` uses
            :data:`PAPER_SWIN_T_BASELINES` for PASCAL-Context and none otherwise (with one
            warning); ``{}`` turns Delta-m off silently.
        delta_m_keys: Task -> metric key that represents it in Delta-m, merged over
            :data:`DEFAULT_DELTA_M_KEYS`.
        lower_is_better: Metric keys whose Delta-m term is negated; defaults to
            :data:`LOWER_IS_BETTER_KEYS`.
        class_names: Task -> class names used in per-class keys (indices otherwise).
        per_class_iou: Also report ``<task>/IoU/<class>`` for the segmentation tasks.
        sal_fbeta: Also report ``sal/maxFbeta``: F-beta (beta^2 = 0.3) of counts pooled over the
            dataset, maximised over the 255 thresholds of the 8-bit prediction.
        edge_ods: Compute ``edge/odsF``, ``edge/oisF`` and ``edge/AP`` (the slow part of
            evaluation; off skips it).
        edge_protocol: ``"seism"`` (the published PASCAL-Context / NYUD-v2 protocol: the 8-bit
            PNG of the prediction at thresholds ``k / (T + 1)``, ODS without interpolation) or
            ``"bsds"`` (probabilities on the BSDS grid, ODS interpolated as BSDS does); see
            ``docs/edge_evaluation.md``.
        edge_max_dist: Boundary tolerance as a fraction of the image diagonal; defaults to 0.0075
            (PASCAL-Context) or 0.011 (NYUD-v2).
        edge_num_thresholds: Number of thresholds (both protocols use 99: 0.01 ... 0.99).
        edge_thin: Thin thresholded edge maps before matching (``edgesEvalImg``'s ``thin``).
        edge_workers: Processes that count edge matches (0: in this process). Results do not
            depend on it; in DDP each rank counts its own samples.
        edge_pos_weight: Positive weight of the ``edge/bce`` proxy (the official edge "loss").
        collect_device: Device for gathering results across ranks (``"cpu"`` or ``"gpu"``).
        prefix: Extra prefix put before every key by mmengine (none by default).
        collect_dir: Directory for CPU gathering across ranks.
    """

    default_prefix: str | None = ""  # keys already carry their task prefix

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        dataset: str | None = "pascal_context",
        num_classes: Mapping[str, int] | None = None,
        baselines: Mapping[str, float] | None = None,
        delta_m_keys: Mapping[str, str] | None = None,
        lower_is_better: Collection[str] | None = None,
        class_names: Mapping[str, Sequence[str]] | None = None,
        per_class_iou: bool = False,
        sal_fbeta: bool = False,
        edge_ods: bool = True,
        edge_max_dist: float | None = None,
        edge_protocol: str = "seism",
        edge_num_thresholds: int = 99,
        edge_thin: bool = True,
        edge_workers: int = 0,
        edge_pos_weight: float = EDGE_POS_WEIGHT,
        collect_device: str = "cpu",
        prefix: str | None = None,
        collect_dir: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self._task_options = {
            "num_classes": num_classes,
            "baselines": baselines,
            "delta_m_keys": delta_m_keys,
            "class_names": class_names,
        }
        self.tasks: tuple[str, ...] = ()
        self.dataset = dataset
        if tasks is not None:
            self._set_tasks(tasks, dataset, **self._task_options)
        self._left_out_warned: list[str] = []
        self.lower_is_better = frozenset(
            LOWER_IS_BETTER_KEYS if lower_is_better is None else lower_is_better
        )
        self.per_class_iou = per_class_iou
        self.sal_fbeta = sal_fbeta
        self.edge_ods = edge_ods
        self._edge_max_dist = edge_max_dist
        self.edge_max_dist = resolve_edge_max_dist(edge_max_dist, dataset)
        self.edge_protocol = edge_protocol
        if edge_protocol == "seism":
            count = boundary_thresholds(edge_num_thresholds).numel()  # checks the number
            self.edge_thresholds = tuple((np.arange(1, count + 1) / (count + 1)).tolist())
        else:
            self.edge_thresholds = tuple(boundary_thresholds(edge_num_thresholds).tolist())
        self.edge_thin = edge_thin
        self.edge_workers = edge_workers
        self._edge_counter()  # checks protocol and workers now, not at the first batch
        self.edge_pos_weight = edge_pos_weight

    def _set_tasks(
        self,
        tasks: Sequence[str],
        dataset: str | None,
        num_classes: Mapping[str, int] | None,
        baselines: Mapping[str, float] | None,
        delta_m_keys: Mapping[str, str] | None,
        class_names: Mapping[str, Sequence[str]] | None,
    ) -> None:
        if dataset is not None and dataset not in NUM_OUTPUTS:
            raise ValueError(
                f"Unknown dataset {dataset!r}; use one of {list(NUM_OUTPUTS)} or None."
            )
        available = NUM_OUTPUTS[dataset] if dataset else [t.value for t in Task]
        self.tasks = check_tasks(tasks, available, what=f"MultiTaskMetric(dataset={dataset!r})")
        self.num_classes = resolve_num_classes(self.tasks, dataset, num_classes)
        self.class_names = resolve_class_names(self.num_classes, class_names)
        self.dataset = dataset
        self.baselines = resolve_baselines(baselines, dataset)
        self._warn_no_baselines = baselines is None and not self.baselines
        self.delta_m_keys = resolve_delta_m_keys(self.tasks, delta_m_keys)

    @property
    def dataset_meta(self) -> dict | None:
        """The evaluated dataset's ``metainfo`` (set by mmengine's loops)."""
        return self._dataset_meta

    @dataset_meta.setter
    def dataset_meta(self, dataset_meta: dict | None) -> None:
        """Store ``dataset_meta``; without ``tasks`` at construction, configure from it.

        Raises:
            KeyError: If the metric has no tasks and the metadata lacks ``tasks`` or ``dataset``.
        """
        self._dataset_meta = dataset_meta
        if self.tasks or dataset_meta is None:
            return
        missing = [key for key in ("tasks", "dataset") if key not in dataset_meta]
        if missing:
            raise KeyError(
                f"MultiTaskMetric(tasks=None) reads tasks and dataset from the dataset's metainfo, "
                f"which lacks {missing} (keys: {list(dataset_meta)}); give tasks= explicitly."
            )
        options = dict(self._task_options)
        meta_classes = {t: n for t, n in dataset_meta.get("classes", {}).items() if n}
        options["class_names"] = options["class_names"] or meta_classes or None
        options["num_classes"] = options["num_classes"] or dataset_meta.get("num_outputs")
        dataset = dataset_meta["dataset"]
        self._set_tasks(dataset_meta["tasks"], dataset, **options)
        self.edge_max_dist = resolve_edge_max_dist(self._edge_max_dist, dataset)

    def process(self, data_batch: Any, data_samples: Sequence[Mapping[str, Any]]) -> None:
        """Store the sufficient statistics of each sample in ``self.results``.

        Args:
            data_batch: The loader batch (unused; targets travel with the predictions).
            data_samples: One dict per sample with ``"pred"`` and ``"targets"``, each task ->
                tensor in the formats of ``docs/design.md`` (on any device).

        Raises:
            KeyError: If a sample lacks ``pred``/``targets`` or an evaluated task.
            FloatingPointError: If a prediction holds NaN or inf (a diverged model).
            RuntimeError: If the metric has no tasks yet (neither given nor set by
                ``dataset_meta``).
        """
        if not self.tasks:
            raise RuntimeError(
                "MultiTaskMetric has no tasks: give tasks=... or set dataset_meta to the "
                "evaluated dataset's metainfo (mmengine's val and test loops do)."
            )
        samples = [pred_and_targets(sample, self.tasks) for sample in data_samples]
        edge_counts = self._edge_counts(samples)
        for index, (pred, targets) in enumerate(samples):
            stats = {}
            for task in self.tasks:
                stats[task] = self._sample_stats(task, pred[task], targets[task])
                if task == "edge" and edge_counts:
                    stats[task]["pr"] = torch.from_numpy(edge_counts[index])
            self.results.append(stats)

    def _edge_counter(self) -> EdgeCounter:
        return EdgeCounter(
            self.edge_protocol,
            self.edge_max_dist,
            self.edge_thresholds,
            self.edge_thin,
            self.edge_workers,
        )

    def _edge_counts(
        self, samples: Sequence[tuple[Mapping[str, Tensor], Mapping[str, Tensor]]]
    ) -> list[np.ndarray]:
        """Edge match counts of the batch's samples (spread over ``edge_workers`` processes)."""
        if "edge" not in self.tasks or not self.edge_ods:
            return []
        pairs = []
        for pred, targets in samples:
            prob = prob_map(pred["edge"], "edge").to("cpu", torch.float32).numpy()
            pairs.append((prob, squeeze_channel(targets["edge"]).cpu().numpy()))
        return self._edge_counter().count(pairs)

    def compute_metrics(self, results: list) -> dict[str, float]:
        """Reduce the gathered per-sample statistics to the metric dict.

        Args:
            results: Per-sample dicts stored by :meth:`process`, from all ranks.

        Returns:
            Flat metric dict (see the module docstring for keys and units).

        Raises:
            ValueError: If ``results`` is empty.
        """
        if not results:
            raise ValueError("MultiTaskMetric got no results; did validation see any sample?")
        metrics: dict[str, float] = {}
        for task in self.tasks:
            metrics.update(self._reduce(task, [r[task] for r in results]))
        score = self._delta_m(metrics)
        if score is not None:
            metrics["multitask/delta_m"] = score
        return metrics

    def _sample_stats(self, task: str, pred: Tensor, target: Tensor) -> Any:
        if task_kind(task) is Kind.CLASSES:
            return confusion_matrix(label_map(pred, task), target, self.num_classes[task])
        if task == "sal":
            prob, target = prob_map(pred, task), squeeze_channel(target)
            stats = {"pr": saliency_stats(prob, target)}
            if self.sal_fbeta:
                stats["levels"] = saliency_level_histograms(prob, target)
            return stats
        if task == "normals":
            return normals_stats(angular_error(pred, target))
        if task == "edge":
            return self._edge_stats(prob_map(pred, task), squeeze_channel(target))
        if task == "depth":
            return depth_stats(pred.reshape(target.shape), target)
        raise ValueError(f"No metric for task {task!r}.")

    def _edge_stats(self, prob: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"loss": edge_loss_stats(prob, target, self.edge_pos_weight)}

    def _reduce(self, task: str, stats: list) -> dict[str, float]:
        if task_kind(task) is Kind.CLASSES:
            return self._reduce_segmentation(task, torch.stack(stats).sum(dim=0))
        if task == "sal":
            return self._reduce_saliency(stats)
        if task == "normals":
            values = normals_metrics(stats)
            degrees = {"mean", "median", "rmse"}
            return {f"normals/{k}": v if k in degrees else v * _PERCENT for k, v in values.items()}
        if task == "edge":
            return self._reduce_edge(stats)
        return {f"depth/{k}": v for k, v in depth_metrics(torch.stack(stats)).items()}

    def _reduce_saliency(self, stats: list[dict[str, Tensor]]) -> dict[str, float]:
        per_image = torch.stack([s["pr"] for s in stats])
        out = {
            "sal/mIoU": saliency_max_iou(per_image) * _PERCENT,
            "sal/maxF": saliency_max_f(per_image) * _PERCENT,
        }
        if self.sal_fbeta:
            levels = torch.stack([s["levels"] for s in stats]).sum(dim=0)
            out["sal/maxFbeta"] = saliency_max_fbeta(levels) * _PERCENT
        return out

    def _reduce_edge(self, stats: list[dict[str, Tensor]]) -> dict[str, float]:
        out = {"edge/bce": edge_loss(torch.stack([s["loss"] for s in stats]))}
        if self.edge_ods:
            per_image = torch.stack([s["pr"] for s in stats]).numpy()
            out.update(edge_scores(per_image, self.edge_protocol))
        return out

    def _reduce_segmentation(self, task: str, confusion: Tensor) -> dict[str, float]:
        out = {f"{task}/mIoU": mean_iou(confusion) * _PERCENT}
        if self.per_class_iou:
            ious = iou_from_confusion(confusion).tolist()
            for name, iou in zip(self.class_names[task], ious, strict=True):
                out[f"{task}/IoU/{name}"] = iou * _PERCENT
        return out

    def _delta_m(self, metrics: Mapping[str, float]) -> float | None:
        if not self.baselines:
            if self._warn_no_baselines:  # warned once; baselines={} turns Delta-m off silently
                logger.warning(
                    "No Delta-m baselines for dataset %r; multitask/delta_m omitted. Pass "
                    "baselines={metric key: single-task value} to report it.",
                    self.dataset,
                )
                self._warn_no_baselines = False
            return None
        entered: dict[str, float] = {}
        left_out: list[str] = []
        for task in self.tasks:
            key = self.delta_m_keys[task]
            if key in self.baselines and math.isfinite(metrics.get(key, math.nan)):
                entered[key] = self.baselines[key]
            else:
                left_out.append(f"{task} ({key})")
        if left_out and left_out != self._left_out_warned:  # once, not at every validation
            logger.warning(
                "Delta-m leaves out %s: no baseline or no finite value. Give baselines for these "
                "keys to include them.",
                ", ".join(left_out),
            )
            self._left_out_warned = left_out
        if not entered:
            logger.warning("No evaluated task has a Delta-m baseline; multitask/delta_m omitted.")
            return None
        logger.info("Delta-m over %s.", ", ".join(f"{k}={v}" for k, v in entered.items()))
        return delta_m(metrics, entered, self.lower_is_better)
