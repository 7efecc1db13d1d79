"""TA-LoRA fast-slow: Lookahead and two-phase hooks against hand computations, and resume."""

from __future__ import annotations

import itertools

import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt
from mtlora_vision.adapters.task_conditioned_config import TALoRAPromptConfig
from mtlora_vision.engine.checkpoint import register_checkpoint_io
from mtlora_vision.engine.fast_slow import (
    Lookahead,
    LookaheadHook,
    TwoPhaseHook,
    lookahead_sync,
    set_fast_slow_driver,
    slow_param_groups,
)
from mtlora_vision.models.backbones.swin import SwinBackbone

TASKS = ("semseg", "sal")
DIM, HEADS, WINDOW_TOKENS = 8, 2, 4
FAST = "prompt.prompt_fast_factor"
RUN_IDS = itertools.count()  # one logger and visualizer per Runner (mmengine keeps them by name)
SLOW = ("prompt.prompt_slow_shared", "prompt.prompt_slow_factor")
GATES = ("prompt.prompt_gate_task", "prompt.prompt_gate_shared")


# --- Lookahead maths -------------------------------------------------------------------------


def test_lookahead_sync_is_the_lookahead_update() -> None:
    slow, fast = torch.tensor([4.0, -2.0]), torch.tensor([1.0, 2.0])
    lookahead_sync(slow, fast, alpha=0.25)
    # slow + alpha (fast - slow) = (4 - 0.75, -2 + 1)
    assert slow.tolist() == [3.25, -1.0]
    assert fast.tolist() == [3.25, -1.0]


def test_lookahead_over_five_sgd_steps_by_hand() -> None:
    # Loss 0.5 (w^2 + v^2): SGD with lr 0.5 halves each weight per step. Lookahead (k=2,
    # alpha=0.5) follows w only; v is trained plainly.
    w = nn.Parameter(torch.tensor([4.0]))
    v = nn.Parameter(torch.tensor([4.0]))
    optimizer = torch.optim.SGD([w, v], lr=0.5)
    lookahead = Lookahead({"w": w}, k=2, alpha=0.5)
    optimizer.register_step_post_hook(lambda *_: lookahead.step())
    seen = []
    for _ in range(5):
        optimizer.zero_grad()
        (0.5 * (w.square() + v.square())).sum().backward()
        optimizer.step()
        seen.append((w.item(), lookahead.slow["w"].item()))
    # step 1: w 2; step 2: w 1 -> slow 4 + 0.5 (1 - 4) = 2.5, w = 2.5; step 3: 1.25;
    # step 4: 0.625 -> slow 2.5 + 0.5 (0.625 - 2.5) = 1.5625, w = 1.5625; step 5: 0.78125.
    assert seen == [(2.0, 4.0), (2.5, 2.5), (1.25, 2.5), (1.5625, 1.5625), (0.78125, 1.5625)]
    assert v.item() == 4.0 * 0.5**5
    assert lookahead.num_steps == 5


def test_lookahead_state_round_trip_and_refusals() -> None:
    w = nn.Parameter(torch.ones(3))
    lookahead = Lookahead({"w": w}, k=3, alpha=0.5)
    lookahead.step()
    lookahead.slow["w"].fill_(7.0)
    other = Lookahead({"w": nn.Parameter(torch.zeros(3))}, k=3, alpha=0.5)
    other.load_state_dict(lookahead.state_dict())
    assert other.num_steps == 1
    assert other.slow["w"].tolist() == [7.0] * 3
    with pytest.raises(ValueError, match=r"k=3, alpha=0\.5, but the config asks for k=2"):
        Lookahead({"w": w}, k=2, alpha=0.5).load_state_dict(lookahead.state_dict())
    with pytest.raises(ValueError, match="missing \\['x'\\]"):
        Lookahead({"x": w}, k=3, alpha=0.5).load_state_dict(lookahead.state_dict())
    for k, alpha in ((0, 0.5), (2, 0.0), (2, 1.5), (True, 0.5)):
        with pytest.raises(ValueError, match="Lookahead"):
            Lookahead({"w": w}, k=k, alpha=alpha)


# --- A prompt layer in a Runner --------------------------------------------------------------


class _Queries(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"q": torch.randn(HEADS, WINDOW_TOKENS, DIM // HEADS, generator=g)}


class _PromptModel(BaseModel):
    """The prompt residual of both tasks plus a plain head weight, pushed towards a target."""

    def __init__(self, fast_slow: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.prompt = TaskAdaptiveLowRankPrompt(
            DIM, HEADS, TASKS, num_tokens=4, rank=2, fast_slow=fast_slow
        )
        self.qkv = nn.Linear(DIM, 3 * DIM).requires_grad_(False)
        self.head = nn.Parameter(torch.ones(DIM // HEADS))

    def forward(self, q: torch.Tensor, mode: str = "loss") -> dict:
        stacked = q.repeat(len(TASKS), 1, 1, 1)  # task-major (T * B, h, N, hd)
        out = self.prompt.residual(stacked, self.qkv.weight, self.qkv.bias) * self.head
        return {"loss": (out - 1.0).square().mean() + (stacked * self.head).mean()}


class _Snapshots(Hook):
    """Parameters after every epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []

    def before_train(self, runner) -> None:
        self.initial = _params(runner.model)

    def after_train_epoch(self, runner) -> None:
        self.epochs.append(_params(runner.model))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _runner(tmp_path, fast_slow, hooks, epochs=3, resume_from=None, optimizer=None, **kwargs):
    optimizer = optimizer or dict(type=torch.optim.AdamW, lr=0.05, weight_decay=0.5)
    register_checkpoint_io()  # the project's safe loader reads the hooks' state back
    return Runner(
        model=_PromptModel(fast_slow),
        work_dir=str(tmp_path),
        experiment_name=f"fast_slow_{next(RUN_IDS)}",
        train_dataloader=dict(
            dataset=_Queries(),
            batch_size=2,
            sampler=dict(type=DefaultSampler, shuffle=False),
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        optim_wrapper=dict(optimizer=optimizer, **kwargs),
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=1),
            logger=dict(type="LoggerHook", interval=100),
        ),
        custom_hooks=hooks,
        load_from=resume_from,
        resume=resume_from is not None,
        randomness=dict(seed=0),
        default_scope=None,
    )


def test_lookahead_hook_follows_the_named_parameters(tmp_path) -> None:
    snaps = _Snapshots()
    hook = LookaheadHook(k=3, alpha=0.5)
    _runner(tmp_path, "lookahead", [hook, snaps], epochs=2).train()
    state = torch.load(tmp_path / "epoch_2.pth", weights_only=False)["lookahead"]
    assert state["num_steps"] == 4
    assert (state["k"], state["alpha"]) == (3, 0.5)
    assert set(state["slow"]) == set(SLOW)
    # The last sync was at step 3; one plain step followed, so the slow weights are not their
    # slow copies, which stay put since.
    for name in SLOW:
        assert not torch.equal(snaps.epochs[-1][name], state["slow"][name])
    assert hook._handle is None, "detached from the optimizer after training"


def test_lookahead_hook_matches_a_hand_written_loop(tmp_path) -> None:
    """The hook in a Runner equals plain SGD + Lookahead on the slow weights, written out here."""
    sgd = dict(type=torch.optim.SGD, lr=0.1)
    snaps = _Snapshots()
    _runner(tmp_path, "lookahead", [LookaheadHook(k=3, alpha=0.5), snaps], 2, optimizer=sgd).train()
    model = _PromptModel("lookahead")
    model.prompt.fast_slow_driver = "test"
    slow = {n: p.detach().clone() for n, p in model.named_parameters() if "prompt_slow" in n}
    trained = [p for p in model.parameters() if p.requires_grad]
    loader = torch.utils.data.DataLoader(_Queries(), batch_size=2, shuffle=False)
    step = 0
    for _ in range(2):
        for batch in loader:
            for p in trained:
                p.grad = None
            model(**batch)["loss"].backward()
            with torch.no_grad():
                for p in trained:
                    p.sub_(0.1 * p.grad)
            step += 1
            if step % 3 == 0:
                with torch.no_grad():
                    for name, copy in slow.items():
                        param = model.get_parameter(name)
                        copy += 0.5 * (param - copy)
                        param.copy_(copy)
    for name, param in model.named_parameters():
        torch.testing.assert_close(snaps.epochs[-1][name], param.detach(), rtol=1e-6, atol=1e-7)


def test_lookahead_resume_is_exact(tmp_path) -> None:
    whole = _Snapshots()
    _runner(tmp_path / "whole", "lookahead", [LookaheadHook(k=3), whole], epochs=3).train()
    _runner(tmp_path / "cut", "lookahead", [LookaheadHook(k=3)], epochs=1).train()
    resumed = _Snapshots()
    ckpt = str(tmp_path / "cut" / "epoch_1.pth")
    runner = _runner(tmp_path / "cut", "lookahead", [LookaheadHook(k=3), resumed], 3, ckpt)
    runner.train()
    # 2 steps per epoch, k=3: the sync at step 3 falls in the resumed part, after the checkpoint.
    for name, value in whole.epochs[-1].items():
        assert torch.equal(resumed.epochs[-1][name], value), name


def test_lookahead_hook_refuses_wrong_setups(tmp_path) -> None:
    with pytest.raises(ValueError, match="fast_slow=\\['two_phase'\\]"):
        _runner(tmp_path / "a", "two_phase", [LookaheadHook()], epochs=1).train()
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        _runner(tmp_path / "b", "lookahead", [LookaheadHook(keys=("nothing",))], epochs=1).train()
    # A run without the hook leaves no Lookahead state: resuming it with the hook is refused.
    _runner(tmp_path / "c", "lr_ratio", [], epochs=1).train()
    ckpt = str(tmp_path / "c" / "epoch_1.pth")
    with pytest.raises(ValueError, match="without Lookahead state"):
        _runner(tmp_path / "c", "lookahead", [LookaheadHook()], 2, ckpt).train()
    with pytest.raises(ValueError, match="keys"):
        LookaheadHook(keys=())


def test_training_without_the_driver_hook_is_an_error(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="add dict\\(type=TwoPhaseHook"):
        _runner(tmp_path, "two_phase", [], epochs=1).train()
    model = _PromptModel("lookahead").eval()  # inference needs no hook
    q = torch.zeros(1, HEADS, WINDOW_TOKENS, DIM // HEADS)
    model(q)
    with pytest.raises(RuntimeError, match="add dict\\(type=LookaheadHook"):
        model.train()(q)
    assert set_fast_slow_driver(model, "a benchmark") == 1  # timing a step needs no schedule
    model(q)["loss"].backward()


# --- Two-phase -------------------------------------------------------------------------------


def _moved(before: dict, after: dict) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def test_two_phase_trains_slow_then_fast_and_held_weights_do_not_move(tmp_path) -> None:
    snaps = _Snapshots()
    # AdamW with a large weight decay: a held weight that the optimizer saw would shrink.
    _runner(tmp_path, "two_phase", [TwoPhaseHook(switch_epoch=2), snaps], epochs=3).train()
    start, one, two, three = snaps.initial, *snaps.epochs
    everything = {FAST, *SLOW, *GATES, "head"}
    assert _moved(start, one) == everything - {FAST}, "phase one: the fast factors are held"
    assert _moved(one, two) == everything - {FAST}
    assert _moved(two, three) == everything - set(SLOW), "phase two: the slow weights are held"
    (log,) = tmp_path.glob("*/*.log")
    text = log.read_text()
    assert "Two-phase: phase one from epoch 1" in text
    assert "held: fast (1 tensors, 32 parameters)" in text  # F_t: (T=2, r=2, d=8)
    # P0 (L=4, d=8) and the shared factor (L=4, r=2)
    assert "phase two from epoch 3: fast factors train; held: slow (2 tensors, 40 param" in text


def test_held_roles_get_no_gradient() -> None:
    model = _PromptModel("two_phase")
    model.prompt.fast_slow_driver = "test"
    with torch.no_grad():
        model.prompt.prompt_gate_task.fill_(0.5)  # open gates: every role would get a gradient
        model.prompt.prompt_gate_shared.fill_(0.5)
    q = torch.randn(2, HEADS, WINDOW_TOKENS, DIM // HEADS)
    for roles, none in (((), set()), (("fast",), {FAST}), (("slow",), set(SLOW))):
        model.zero_grad(set_to_none=True)
        model.prompt.set_frozen_roles(roles)
        model(q)["loss"].backward()
        without = {n for n, p in model.named_parameters() if p.grad is None and p.requires_grad}
        assert without == none, roles
        assert all(p.requires_grad for p in model.prompt.parameters()), "requires_grad kept"
    with pytest.raises(ValueError, match="Unknown prompt role"):
        model.prompt.set_frozen_roles(("gate",))


def test_two_phase_lowers_the_slow_learning_rate_exactly(tmp_path) -> None:
    sgd = dict(type=torch.optim.SGD, lr=0.5)
    keys = dict(paramwise_cfg=dict(custom_keys={"prompt_slow": dict(lr_mult=1.0)}))
    hook = TwoPhaseHook(switch_epoch=1, slow_lr_mult=0.25)
    runner = _runner(tmp_path, "two_phase", [hook], epochs=2, optimizer=sgd, **keys)
    runner.train()  # builds everything; now step by hand in phase two
    model, optimizer = runner.model, runner.optim_wrapper.optimizer
    assert hook.phase == 2
    hook._handles = [
        optimizer.register_step_pre_hook(lambda *_: hook._scale_slow_lr()),
        optimizer.register_step_post_hook(lambda *_: hook._restore_slow_lr()),
    ]
    for layer in (model.prompt,):
        layer.set_frozen_roles(hook.frozen_roles(2))
    lrs = [group["lr"] for group in optimizer.param_groups]
    before = _params(model)
    optimizer.zero_grad()
    model(torch.randn(2, HEADS, WINDOW_TOKENS, DIM // HEADS))["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    after = _params(model)
    slow_lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, grad in grads.items():
        lr = slow_lr[id(model.get_parameter(name))]
        lr = lr * 0.25 if "prompt_slow" in name else lr
        assert torch.equal(after[name], before[name] - lr * grad), name
    assert [group["lr"] for group in optimizer.param_groups] == lrs, "lr restored after the step"


def test_two_phase_refuses_mixed_groups_and_bad_settings(tmp_path) -> None:
    model = _PromptModel("two_phase")
    groups = [{"params": list(model.parameters()), "group_name": "decay"}]
    with pytest.raises(ValueError, match=r"'decay' mixes slow prompt weights.*custom_keys"):
        slow_param_groups(model, groups)
    with pytest.raises(ValueError, match="no epoch for phase two"):
        _runner(tmp_path, "two_phase", [TwoPhaseHook(switch_epoch=2)], epochs=2).train()
    with pytest.raises(ValueError, match="switch_epoch must be an integer >= 1"):
        TwoPhaseHook(switch_epoch=0)
    with pytest.raises(ValueError, match="slow_lr_mult must be None"):
        TwoPhaseHook(switch_epoch=2, slow_lr_mult=0.0)


def test_two_phase_resume_lands_in_phase_two_and_is_exact(tmp_path) -> None:
    whole = _Snapshots()
    _runner(tmp_path / "whole", "two_phase", [TwoPhaseHook(1), whole], epochs=3).train()
    _runner(tmp_path / "cut", "two_phase", [TwoPhaseHook(1)], epochs=2).train()
    resumed = _Snapshots()
    ckpt = str(tmp_path / "cut" / "epoch_2.pth")
    hook = TwoPhaseHook(1)
    _runner(tmp_path / "cut", "two_phase", [hook, resumed], 3, ckpt).train()
    assert hook.phase == 2
    for name, value in whole.epochs[-1].items():
        assert torch.equal(resumed.epochs[-1][name], value), name
    with pytest.raises(ValueError, match="trained with TwoPhaseHook"):
        _runner(tmp_path / "cut", "two_phase", [TwoPhaseHook(2)], 3, ckpt).train()
    _runner(tmp_path / "plain", "lr_ratio", [], epochs=1).train()
    ckpt = str(tmp_path / "plain" / "epoch_1.pth")
    with pytest.raises(ValueError, match="run without TwoPhaseHook"):
        _runner(tmp_path / "plain", "two_phase", [TwoPhaseHook(1)], 2, ckpt).train()


# --- Identity at step 0 in the Swin backbone ---------------------------------------------------


@pytest.mark.parametrize("fast_slow", ["lookahead", "two_phase"])
def test_identity_at_step_zero_with_zero_gates(fast_slow) -> None:
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    arch = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 2))
    adapter = TALoRAPromptConfig(num_tokens=3, rank=2, branch_stage=2, fast_slow=fast_slow)
    torch.manual_seed(0)
    plain = SwinBackbone(arch, img_size=64, window_size=4, tasks=TASKS, adapter=None)
    torch.manual_seed(0)
    model = SwinBackbone(arch, img_size=64, window_size=4, tasks=TASKS, adapter=adapter)
    prompts = [m for m in model.modules() if isinstance(m, TaskAdaptiveLowRankPrompt)]
    assert prompts
    assert all(p.fast_slow == fast_slow for p in prompts)
    for roles in ((), ("fast",), ("slow",)):
        for layer in prompts:
            layer.set_frozen_roles(roles)
        with torch.no_grad():
            for ref, feat in zip(plain.eval()(images), model.eval()(images), strict=True):
                for t in range(len(TASKS)):
                    torch.testing.assert_close(feat[t], ref[0], rtol=0, atol=1e-6)


# --- DDP (2 gloo processes) --------------------------------------------------------------------


def _ddp_worker(rank: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = _PromptModel("two_phase")
    model.prompt.fast_slow_driver = "test"
    with torch.no_grad():
        model.prompt.prompt_gate_task.fill_(0.5)
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    fast = model.prompt.prompt_fast_factor
    log = []
    for step, roles in enumerate((("fast",), ("fast",), ())):
        model.prompt.set_frozen_roles(roles)
        optimizer.zero_grad()
        q = torch.randn(
            2, HEADS, WINDOW_TOKENS, DIM // HEADS, generator=torch.Generator().manual_seed(rank)
        )
        ddp(q)["loss"].backward()
        before = fast.detach().clone()
        optimizer.step()
        log.append((step, fast.grad is None, not torch.equal(before, fast.detach())))
    if rank == 0:
        torch.save(log, result_file)
    dist.destroy_process_group()


def test_held_fast_factors_under_ddp_get_no_gradient_and_do_not_move(tmp_path) -> None:
    result = tmp_path / "log.pt"
    args = (str(tmp_path / "init"), str(result))
    torch.multiprocessing.start_processes(_ddp_worker, args, nprocs=2, start_method="fork")
    # (step, grad is None, moved): held for two steps under weight decay, then trained.
    assert torch.load(result) == [(0, True, False), (1, True, False), (2, False, True)]
