"""Score a folder of saved predictions with the metrics and JSON keys of tools/test.py.

    python tools/eval_predictions.py PRED_DIR --dataset pascal_context --data-root data/PASCAL_MT \
        [--tasks semseg edge] [--out metrics.json] [--edge-protocol seism] [--edge-workers 2]

PRED_DIR holds ``<task>/<id>.png`` (class ids; 255 p for sal and edge; RGB 255 (n + 1) / 2 for
normals) and ``depth/<id>.mat`` (key ``depth``) at the original image sizes, the layout of
``tools/test.py --out-dir`` and of the ASTMT / MTI-Net offline evaluation, so predictions of other
codebases can be scored without MATLAB. Ground truth: the validation split at its original size
(PASCAL-Context edges as SEISM derives them, ``seg2bmap`` of the context labels). Missing files
are all named before any scoring; a file of the wrong size is named with both sizes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mtlora_vision.cli import DefaultsHelpFormatter, run_tool
from mtlora_vision.tasks import DATASETS, EDGE_PROTOCOLS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Score saved predictions (tools/test.py --out-dir layout) against a dataset.",
    )
    parser.add_argument("pred_dir", type=Path, help="folder with <task>/<id>.png, depth/<id>.mat")
    parser.add_argument(
        "--dataset", required=True, choices=DATASETS, help="which dataset's layout and metrics"
    )
    parser.add_argument("--data-root", required=True, type=Path, help="the dataset's folder")
    parser.add_argument("--split", default="val", help="split whose images are scored")
    parser.add_argument("--tasks", nargs="+", help="tasks to score (default: all of the dataset)")
    parser.add_argument("--out", type=Path, help="write the metrics as one JSON object here")
    parser.add_argument(
        "--edge-protocol",
        default="seism",
        choices=EDGE_PROTOCOLS,
        help="see docs/edge_evaluation.md",
    )
    parser.add_argument("--edge-workers", type=int, default=0, help="processes for edge counts")
    parser.add_argument("--sal-fbeta", action="store_true", help="also report sal/maxFbeta")
    parser.add_argument(
        "--no-delta-m", action="store_true", help="no multitask/delta_m (no baselines)"
    )
    parser.add_argument("--cache-dir", type=Path, help="cache of derived labels (edges, parts)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    # Heavy imports after parsing, so that --help answers at once.
    from mtlora_vision.datasets.nyud import NYUD_TASKS, NYUDMT
    from mtlora_vision.datasets.pascal_context import PASCAL_TASKS, PascalContextMT
    from mtlora_vision.evaluation.metrics import MultiTaskMetric
    from mtlora_vision.evaluation.offline import evaluate_predictions

    logging.basicConfig(level=logging.INFO)
    readers = {"pascal_context": (PascalContextMT, PASCAL_TASKS), "nyud": (NYUDMT, NYUD_TASKS)}
    dataset_type, all_tasks = readers[args.dataset]
    tasks = tuple(args.tasks or all_tasks)
    extra = {"edge_labels": "seg2bmap"} if args.dataset == "pascal_context" else {}
    dataset = dataset_type(
        args.data_root,
        split=args.split,
        tasks=tasks,
        augment=False,
        keep_original_size=True,
        cache_dir=args.cache_dir,
        **extra,
    )
    metric = MultiTaskMetric(
        tasks,
        dataset=args.dataset,
        baselines={} if args.no_delta_m else None,
        sal_fbeta=args.sal_fbeta,
        edge_protocol=args.edge_protocol,
        edge_workers=args.edge_workers,
    )
    metrics = evaluate_predictions(args.pred_dir, dataset, metric)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:9.4f}")
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


if __name__ == "__main__":
    run_tool(main)
