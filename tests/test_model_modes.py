"""Loss and predict modes of MultiTaskModel, checked against the loss functions called directly."""

import pytest
import torch
import torch.nn.functional as F

from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.loss_weighting import UncertaintyWeighting
from mtlora_vision.models.losses import balanced_bce_loss, cross_entropy_loss, normals_l1_loss
from mtlora_vision.models.multitask import MultiTaskModel

TASKS = ("semseg", "sal", "normals", "edge")
TINY = dict(
    type=SwinBackbone,
    arch=dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)),
    window_size=4,
    img_size=64,
    drop_path_rate=0.0,
)
ADAPTER = dict(type="mtlora", shared_rank=2, task_rank=1, shared_scale=4.0, task_scale=4.0)


def make_samples(batch, size=(64, 64)):
    h, w = size
    samples = []
    for i in range(batch):
        normals = F.normalize(torch.randn(3, h, w), dim=0)
        normals[:, :4] = 255.0
        samples.append(
            {
                "id": f"img{i}",
                "targets": {
                    "semseg": torch.randint(0, 21, (h, w)),
                    "sal": torch.randint(0, 2, (h, w)),
                    "normals": normals,
                    "edge": torch.randint(0, 2, (h, w)),
                },
            }
        )
    return samples


def build(losses=None):
    return MultiTaskModel(tasks=TASKS, backbone=TINY, adapter=ADAPTER, losses=losses)


def test_loss_mode_weights_the_official_losses():
    model = build().eval()
    inputs = torch.randn(2, 3, 64, 64)
    samples = make_samples(2)
    losses = model(inputs, samples, mode="loss")
    outputs = model(inputs, mode="tensor")
    stack = {t: torch.stack([s["targets"][t] for s in samples]) for t in TASKS}
    expected = {
        "semseg": 1.0 * cross_entropy_loss(outputs["semseg"], stack["semseg"]),
        "sal": 5.0 * balanced_bce_loss(outputs["sal"], stack["sal"]),
        "normals": 10.0 * normals_l1_loss(outputs["normals"], stack["normals"]),
        "edge": 50.0 * balanced_bce_loss(outputs["edge"], stack["edge"], pos_weight=0.95),
    }
    for task, value in expected.items():
        torch.testing.assert_close(losses[f"loss_{task}"], value)
    _, log_vars = model.parse_losses(losses)
    assert float(log_vars["loss"].detach()) == pytest.approx(
        sum(v.item() for v in expected.values()), rel=1e-5
    )


def test_loss_resizes_outputs_to_the_target_size_and_trains():
    model = build(losses=dict(weighting=dict(type="uncertainty"))).eval()  # eval: deterministic
    assert isinstance(model.loss_weighting, UncertaintyWeighting)
    samples = make_samples(2, size=(32, 48))
    inputs = torch.randn(2, 3, 64, 64)
    losses = model(inputs, samples, mode="loss")
    with torch.no_grad():
        outputs = model(inputs, mode="tensor")  # (B, K, 64, 64), resized by hand below
    resized = {
        t: F.interpolate(o, size=(32, 48), mode="bilinear", align_corners=False)
        for t, o in outputs.items()
    }
    stack = {t: torch.stack([s["targets"][t] for s in samples]) for t in TASKS}
    torch.testing.assert_close(
        losses["raw_semseg"], cross_entropy_loss(resized["semseg"], stack["semseg"])
    )
    torch.testing.assert_close(
        losses["raw_normals"], normals_l1_loss(resized["normals"], stack["normals"])
    )
    # Uncertainty weighting at s = 0: 0.5 * L + 0.5 * 0.
    torch.testing.assert_close(losses["loss_sal"], 0.5 * losses["raw_sal"])
    total, _ = model.parse_losses(losses)
    total.backward()
    # The uncertainty log-variances are part of the model and learn with it.
    assert all(p.grad is not None for p in model.loss_weighting.parameters())


def test_predict_mode_gives_decoded_predictions_at_target_size():
    model = build().eval()
    samples = make_samples(2, size=(40, 56))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), samples, mode="predict")
    assert [s["id"] for s in out] == ["img0", "img1"]
    pred = out[0]["pred"]
    assert pred["semseg"].shape == (40, 56)
    assert pred["semseg"].dtype == torch.int64
    assert pred["sal"].min() >= 0
    assert pred["sal"].max() <= 1
    assert torch.allclose(pred["normals"].norm(dim=0), torch.ones(40, 56), atol=1e-5)
    assert "pred" not in samples[0]  # the input dicts are not modified
    with torch.no_grad():
        bare = model(torch.randn(1, 3, 64, 64), None, mode="predict")
    assert bare[0]["pred"]["edge"].shape == (64, 64)


def test_unknown_loss_options_are_refused():
    with pytest.raises(KeyError, match="weights"):
        build(losses=dict(weights=dict(semseg=2.0)))
    with pytest.raises(ValueError, match="'gradnorm'"):
        build(losses=dict(weighting=dict(type="gradnorm")))
