"""Pure metric maths on tensors: one module per task family, no mmengine, no models."""

from mtlora_vision.evaluation.functional.boundary import (
    MAX_DIST,
    average_precision,
    boundary_pr_counts,
    boundary_thresholds,
    bsds_precision_recall,
    count_matches,
    ods_f,
    ois_f,
)
from mtlora_vision.evaluation.functional.delta_m import delta_m
from mtlora_vision.evaluation.functional.depth import depth_metrics, depth_stats
from mtlora_vision.evaluation.functional.edge_loss import (
    EDGE_POS_WEIGHT,
    edge_loss,
    edge_loss_stats,
)
from mtlora_vision.evaluation.functional.normals import (
    WITHIN_DEGREES,
    angular_error,
    histogram_median,
    normals_metrics,
    normals_stats,
)
from mtlora_vision.evaluation.functional.saliency import (
    SAL_THRESHOLDS,
    f_measure,
    saliency_level_histograms,
    saliency_max_f,
    saliency_max_fbeta,
    saliency_max_iou,
    saliency_stats,
)
from mtlora_vision.evaluation.functional.segmentation import (
    class_present,
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
)
from mtlora_vision.evaluation.functional.seism import (
    SEISM_THRESHOLDS,
    seg2bmap,
    seism_gt_boundaries,
    seism_ods,
    seism_pr_counts,
    seism_precision_recall,
)
from mtlora_vision.evaluation.functional.thinning import thin_binary

__all__ = [
    "EDGE_POS_WEIGHT",
    "MAX_DIST",
    "SAL_THRESHOLDS",
    "SEISM_THRESHOLDS",
    "WITHIN_DEGREES",
    "angular_error",
    "average_precision",
    "boundary_pr_counts",
    "boundary_thresholds",
    "bsds_precision_recall",
    "class_present",
    "confusion_matrix",
    "count_matches",
    "delta_m",
    "depth_metrics",
    "depth_stats",
    "edge_loss",
    "edge_loss_stats",
    "f_measure",
    "histogram_median",
    "iou_from_confusion",
    "mean_iou",
    "normals_metrics",
    "normals_stats",
    "ods_f",
    "ois_f",
    "saliency_level_histograms",
    "saliency_max_f",
    "saliency_max_fbeta",
    "saliency_max_iou",
    "saliency_stats",
    "seg2bmap",
    "seism_gt_boundaries",
    "seism_ods",
    "seism_pr_counts",
    "seism_precision_recall",
    "thin_binary",
]
