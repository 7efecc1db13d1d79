from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from scipy.io import loadmat

from mtlora_vision.engine.runtime import (
    resolve_cpu_threads,
    resolve_launcher,
    resolve_work_dir,
)
from mtlora_vision.engine.visualization_hook import _resize_prediction, write_prediction
from mtlora_vision.models.postprocess import decode_output, postprocess_outputs
from mtlora_vision.visualization.colorize import (
    IGNORE_DARK,
    IGNORE_LIGHT,
    colorize,
    denormalize_image,
    label_palette,
)


def test_decode_rules():
    logits = torch.tensor([[[0.0, 2.0]], [[1.0, -1.0]]])  # (K=2, 1, 2)
    assert decode_output("semseg", logits).tolist() == [[1, 0]]
    sal = decode_output("sal", torch.tensor([[[0.0, 100.0]]]))
    assert sal.shape == (1, 2)
    assert sal[0, 0].item() == pytest.approx(0.5)
    normals = decode_output("normals", torch.tensor([[[3.0]], [[0.0]], [[4.0]]]))
    assert normals[:, 0, 0].tolist() == pytest.approx([0.6, 0.0, 0.8])
    with pytest.raises(ValueError, match="unknown_task"):
        decode_output("unknown_task", logits)


def test_postprocess_resizes_logits_before_argmax():
    # Two classes on a 2x2 grid; upsampling the logits (not the labels) decides the middle pixels.
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, :, 1] = 4.0
    preds = postprocess_outputs({"semseg": logits}, [(2, 4)])
    expected = torch.nn.functional.interpolate(logits, size=(2, 4), mode="bilinear").argmax(1)[0]
    assert torch.equal(preds[0]["semseg"], expected)
    assert preds[0]["semseg"].shape == (2, 4)


def test_palette_is_the_voc_colour_map():
    palette = label_palette()
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]  # person


def test_colorize_hatches_ignored_pixels_and_maps_normals():
    labels = torch.full((6, 6), 255)
    labels[0, :] = 0
    rgb = colorize("semseg", labels)
    assert rgb[0].tolist() == [[0, 0, 0]] * 6  # background keeps its palette colour
    ignored = {tuple(c) for c in rgb[1:].reshape(-1, 3).tolist()}
    assert ignored == {IGNORE_LIGHT, IGNORE_DARK}  # grey hatching, both shades
    sal = colorize("sal", torch.tensor([[255, 0]]))
    assert tuple(sal[0, 0]) in {IGNORE_LIGHT, IGNORE_DARK}
    assert sal[0, 1].tolist() == [0, 0, 0]
    normals = torch.tensor([[[1.0]], [[-1.0]], [[0.0]]])
    assert colorize("normals", normals)[0, 0].tolist() == [255, 0, 128]


def test_denormalize_inverts_imagenet_normalisation():
    rgb = torch.tensor([0.2, 0.5, 0.9])[:, None, None].expand(3, 2, 2)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out = denormalize_image((rgb - mean) / std)
    assert out[0, 0].tolist() == [51, 128, 230]


def test_written_files_round_trip(tmp_path):
    labels = torch.tensor([[3, 4], [5, 6]])
    path = write_prediction(tmp_path / "semseg" / "a", "semseg", labels)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).tolist() == labels.tolist()
    normals = torch.nn.functional.normalize(torch.tensor([[[1.0]], [[0.0]], [[1.0]]]), dim=0)
    path = write_prediction(tmp_path / "normals" / "a", "normals", normals)
    rgb = cv2.imread(str(path))[..., ::-1]
    decoded = rgb.astype(np.float64) * 2 / 255 - 1
    assert decoded[0, 0] == pytest.approx(normals[:, 0, 0].numpy(), abs=0.01)
    depth = torch.tensor([[[1.5, 2.0], [0.5, 9.25]]])
    path = write_prediction(tmp_path / "depth" / "a", "depth", depth)
    assert path.name == "a.mat"  # what ASTMT / MTI-Net eval_depth reads: loadmat(...)["depth"]
    assert loadmat(path)["depth"].tolist() == depth[0].tolist()


def test_resize_prediction_keeps_labels_and_unit_normals():
    labels = torch.tensor([[1, 2], [3, 4]])
    assert _resize_prediction("semseg", labels, (4, 4)).unique().tolist() == [1, 2, 3, 4]
    normals = torch.nn.functional.normalize(torch.randn(3, 2, 2), dim=0)
    resized = _resize_prediction("normals", normals, (5, 3))
    assert resized.shape == (3, 5, 3)
    assert torch.allclose(resized.norm(dim=0), torch.ones(5, 3), atol=1e-5)


def test_cpu_threads_from_config_unless_cuda_or_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert resolve_cpu_threads(Config(dict(cpu_threads=1)), cuda=False) == 1
    assert calls == [1]
    assert resolve_cpu_threads(Config(dict(cpu_threads=1)), cuda=True) is None
    assert resolve_cpu_threads(Config(dict()), cuda=False) is None
    with pytest.raises(ValueError, match="cpu_threads must be a positive integer"):
        resolve_cpu_threads(Config(dict(cpu_threads=0)), cuda=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's explicit choice wins
    assert resolve_cpu_threads(Config(dict(cpu_threads=1)), cuda=False) is None
    assert calls == [1]
    demo = Path(__file__).resolve().parents[1] / "configs" / "mtlora_swin_demo.py"
    assert Config.fromfile(str(demo)).cpu_threads == 1


def test_launcher_uses_gloo_without_cuda_and_work_dir_priority():
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend="nccl"))))
    resolve_launcher(cfg, "pytorch", cuda=False)
    assert cfg.env_cfg.dist_cfg.backend == "gloo"
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model_wrapper_cfg.find_unused_parameters is True
    assert resolve_work_dir(Config(dict()), "configs/x/exp.py", None).endswith("work_dirs/exp")
    assert resolve_work_dir(Config(dict(work_dir="w")), "configs/x/exp.py", None) == "w"
    assert resolve_work_dir(Config(dict(work_dir="w")), "configs/x/exp.py", "cli") == "cli"
