"""Run a trained multi-task model on your own images (any size).

    python tools/predict.py CONFIG CHECKPOINT img1.jpg photos/ 'more/*.png' --out-dir predictions/

Images are files, folders (every image in them) or glob patterns. Writes
``OUT_DIR/<task>/<image name>.png`` per task (``.mat`` for depth) at each image's size, and
``OUT_DIR/show/<image name>.png``: the input beside one labelled panel per task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mtlora_vision.cli import DefaultsHelpFormatter, add_cfg_options, parse_cfg_options, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter, description="Predict every task on your own images."
    )
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument(
        "images",
        nargs="+",
        help="image files, folders of images, or glob patterns (quote them: 'photos/*.jpg')",
    )
    parser.add_argument("--out-dir", required=True, help="where predictions and figures go")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--img-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="model input size, multiples of 32 (default: the config's test size)",
    )
    parser.add_argument(
        "--no-show", action="store_true", help="do not draw the figures in OUT_DIR/show/"
    )
    add_cfg_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from mtlora_vision.allocator import tune_cpu_allocator
    from mtlora_vision.apis.inference import init_model
    from mtlora_vision.apis.predict import check_input_size, collect_images, predict_images
    from mtlora_vision.engine.visualization_hook import write_prediction

    images = collect_images(args.images)  # before the model: a wrong path costs nothing
    tune_cpu_allocator()  # large CPU tensors without page faults on every step
    model = init_model(
        args.config,
        args.checkpoint,
        device=args.device,
        cfg_options=parse_cfg_options(args.cfg_options),
    )
    if args.img_size:
        check_input_size(model, args.img_size, flag="--img-size")
    out_dir = Path(args.out_dir)
    for result in predict_images(model, images, args.img_size):
        for task, pred in result["pred"].items():
            write_prediction(out_dir / task / result["id"], task, pred)
        if not args.no_show:
            write_figure(model, result, out_dir / "show" / f"{result['id']}.png")
        print(f"{result['path']}: {', '.join(result['pred'])} -> {out_dir}")


def write_figure(model, result: dict, path: Path) -> None:
    from mtlora_vision.apis.predict import model_class_names
    from mtlora_vision.visualization.figure import prediction_figure, save_figure

    fig = prediction_figure(
        result["image"],
        result["pred"],
        num_classes=getattr(model, "num_outputs", None),
        title=result["path"].name,
        names=model_class_names(model),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


if __name__ == "__main__":
    run_tool(main, preload_allocator=True)
