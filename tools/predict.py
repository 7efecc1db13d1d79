"""Run a trained multi-task model on your own images (any size).

    python tools/predict.py CONFIG CHECKPOINT img1.jpg img2.png --out-dir predictions/

Writes ``OUT_DIR/<task>/<image name>.png`` per task (``.mat`` for depth) at each image's size, and
``OUT_DIR/show/<image name>.png`` with the input and every task's prediction side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from mmengine.config import DictAction

from mtlora_vision.allocator import tune_cpu_allocator
from mtlora_vision.apis.inference import init_model
from mtlora_vision.apis.predict import predict_images
from mtlora_vision.engine.visualization_hook import write_prediction
from mtlora_vision.visualization.colorize import make_panel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Predict every task on your own images.")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("images", nargs="+", help="image files (JPEG or PNG)")
    parser.add_argument("--out-dir", required=True, help="where predictions go")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--img-size", type=int, nargs=2, help="model input H W (default: config)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tune_cpu_allocator()  # large CPU tensors without page faults on every step
    model = init_model(
        args.config, args.checkpoint, device=args.device, cfg_options=args.cfg_options
    )
    img_size = model.backbone.img_size
    size = tuple(args.img_size) if args.img_size else (img_size, img_size)
    if isinstance(img_size, (tuple, list)) and not args.img_size:
        size = tuple(img_size)
    out_dir = Path(args.out_dir)
    for result in predict_images(model, args.images, size):
        for task, pred in result["pred"].items():
            write_prediction(out_dir / task / result["id"], task, pred)
        panel = make_panel(result["inputs"], result["pred"])
        (out_dir / "show").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(out_dir / "show" / f"{result['id']}.png"), np.ascontiguousarray(panel[..., ::-1])
        )
        print(f"{result['id']}: {', '.join(result['pred'])} -> {out_dir}")


if __name__ == "__main__":
    main()
