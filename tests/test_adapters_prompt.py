"""TA-LoRA-inspired prompts: zero-init identity, naive equivalence, warm-up, roles, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import WindowAttention
from torch import nn

from mtlora_vision.adapters.prompt import (
    PROMPT_FAST_KEY,
    PROMPT_GATE_KEY,
    PROMPT_SLOW_KEY,
    TaskAdaptiveLowRankPrompt,
)
from mtlora_vision.adapters.prompt_attention import (
    gated_prompt_attention,
    project_prompt_kv,
    prompt_window_attention,
)

TASKS = ("semseg", "normals")
DIM, HEADS, TOKENS, RANK = 8, 2, 5, 2
WINDOW = (2, 2)
N = WINDOW[0] * WINDOW[1]  # tokens per window
NUM_WIN, BATCH = 4, 2


def attend(
    prompt: TaskAdaptiveLowRankPrompt,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None = None,
    tasks: str | tuple[str, ...] | None = None,
    **kwargs: object,
) -> torch.Tensor:
    """Window attention with ``prompt``'s tokens, through the functional core (full softmax)."""
    kv = prompt.prompt_kv(qkv_weight, qkv_bias, tasks)._asdict()
    gates = {"task_gate": prompt._task_gate(), "shared_gate": prompt.prompt_gate_shared}
    return prompt_window_attention(q, k, v, **kv, **gates, **kwargs)


def make_prompt(**kwargs: object) -> TaskAdaptiveLowRankPrompt:
    options = {"num_tokens": TOKENS, "rank": RANK}
    options.update(kwargs)
    return TaskAdaptiveLowRankPrompt(DIM, HEADS, TASKS, **options)


def shift_mask() -> torch.Tensor:
    """A Swin-style (nW, N, N) mask of 0 and -100."""
    return torch.where(torch.rand(NUM_WIN, N, N) < 0.3, -100.0, 0.0)


def split_qkv(qkv: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v (B_, h, N, hd) exactly as timm's WindowAttention splits them."""
    windows = x.shape[0]
    return qkv(x).reshape(windows, N, 3, HEADS, -1).permute(2, 0, 3, 1, 4).unbind(0)


def naive_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor,
    task_kvg: tuple[torch.Tensor, ...] | None = None,
    shared_kvg: tuple[torch.Tensor, ...] | None = None,
    joint: bool = False,
) -> torch.Tensor:
    """Window by window, head by head: P0 concatenated (joint) or gated; task tokens gated.

    ``task_kvg`` = (keys (T, h, L, hd), values, gate (h,)); ``shared_kvg`` = (keys (h, L0, hd),
    values, gate or None).
    """
    windows, heads, _, head_dim = q.shape
    num_tasks = 1 if task_kvg is None else task_kvg[0].shape[0]
    per_task = windows // num_tasks
    out = torch.empty_like(q)
    for window, head in itertools.product(range(windows), range(heads)):
        query = q[window, head] * head_dim**-0.5
        logits = query @ k[window, head].T + bias[head] + mask[window % mask.shape[0]]
        values = v[window, head]
        if shared_kvg is not None and joint:
            logits = torch.cat([logits, query @ shared_kvg[0][head].T], dim=-1)
            values = torch.cat([values, shared_kvg[1][head]])
        result = torch.softmax(logits, dim=-1) @ values
        if shared_kvg is not None and not joint:
            keys, vals, gate = shared_kvg
            result = result + gate[head] * torch.softmax(query @ keys[head].T, -1) @ vals[head]
        if task_kvg is not None:
            keys, vals = task_kvg[0][window // per_task], task_kvg[1][window // per_task]
            gate = task_kvg[2]
            result = result + gate[head] * torch.softmax(query @ keys[head].T, -1) @ vals[head]
        out[window, head] = result
    return out


def naive_prompt_attention(
    prompt: TaskAdaptiveLowRankPrompt,
    qkv: nn.Linear,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor,
    tasks: tuple[str, ...],
) -> torch.Tensor:
    """Build P0 and P_t by hand, project them with the whole qkv layer, then attend naively."""
    heads, head_dim = q.shape[1], q.shape[3]

    def keys_values(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = qkv(tokens).reshape(tokens.shape[0], 3, heads, head_dim).permute(1, 2, 0, 3)
        return full[1], full[2]  # (h, L, hd) each

    shared = prompt.prompt_slow_shared
    task_keys, task_values = [], []
    for task in tasks:
        fast = prompt.prompt_fast_factor[prompt.tasks.index(task)]
        slow = prompt.prompt_slow_factor
        low_rank = slow @ fast if prompt.shared_factor == "left" else fast @ slow
        task_k, task_v = keys_values(
            shared + low_rank if prompt.compose == "add" else shared * low_rank
        )
        task_keys.append(task_k)
        task_values.append(task_v)
    task_kvg = (torch.stack(task_keys), torch.stack(task_values), prompt.prompt_gate_task)
    shared_kvg = (*keys_values(shared), prompt.prompt_gate_shared)
    joint = prompt.shared_mode == "joint"
    return naive_window_attention(q, k, v, bias, mask, task_kvg, shared_kvg, joint)


@pytest.mark.parametrize("compose", ["add", "hadamard"])
@pytest.mark.parametrize("shared_factor", ["left", "right"])
def test_zero_gates_equal_timm_window_attention_exactly(compose: str, shared_factor: str) -> None:
    attn = WindowAttention(DIM, HEADS, window_size=WINDOW).eval()
    attn.fused_attn = False
    prompt = make_prompt(compose=compose, shared_factor=shared_factor)
    x = torch.randn(len(TASKS) * BATCH * NUM_WIN, N, DIM)
    mask = shift_mask()
    q, k, v = split_qkv(attn.qkv, x)
    with torch.no_grad():
        out = attend(
            prompt,
            q,
            k,
            v,
            attn.qkv.weight,
            attn.qkv.bias,
            rel_pos_bias=attn._get_rel_pos_bias(),
            mask=mask,
        )
        ours = attn.proj(out.transpose(1, 2).reshape(x.shape[0], N, -1))
        assert torch.equal(ours, attn(x, mask))
        assert torch.equal(ours[: BATCH * NUM_WIN], attn(x[: BATCH * NUM_WIN], mask))


def test_nonzero_gates_and_joint_mode_change_outputs() -> None:
    q, k, v = torch.randn(3, len(TASKS) * 3, HEADS, N, 4).unbind(0)
    qkv = nn.Linear(DIM, 3 * DIM)
    plain = prompt_window_attention(q, k, v)
    prompt = make_prompt()
    with torch.no_grad():
        assert torch.equal(attend(prompt, q, k, v, qkv.weight, qkv.bias), plain)
        prompt.prompt_gate_task[1] = 0.5
        gated = attend(prompt, q, k, v, qkv.weight, qkv.bias)
    assert torch.equal(gated[:, 0], plain[:, 0])  # gate of head 0 is still 0
    assert (gated[:, 1] - plain[:, 1]).abs().min() > 0
    joint = make_prompt(shared_mode="joint")
    assert joint.prompt_gate_shared is None
    with torch.no_grad():
        assert (attend(joint, q, k, v, qkv.weight, qkv.bias) - plain).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("compose", "shared_factor", "shared_mode"),
    list(itertools.product(["add", "hadamard"], ["left", "right"], ["gated", "joint"])),
)
def test_matches_naive_concatenated_attention(
    compose: str, shared_factor: str, shared_mode: str
) -> None:
    prompt = make_prompt(compose=compose, shared_factor=shared_factor, shared_mode=shared_mode)
    prompt = prompt.double()
    with torch.no_grad():
        for gate in (prompt.prompt_gate_task, prompt.prompt_gate_shared):
            if gate is not None:
                gate.uniform_(-1.0, 1.0)
    qkv = nn.Linear(DIM, 3 * DIM).double()
    x = torch.randn(len(TASKS) * BATCH * NUM_WIN, N, DIM, dtype=torch.float64)
    q, k, v = split_qkv(qkv, x)
    bias = torch.randn(HEADS, N, N, dtype=torch.float64)
    mask = shift_mask().double()
    with torch.no_grad():
        ours = attend(prompt, q, k, v, qkv.weight, qkv.bias, rel_pos_bias=bias, mask=mask)
        expected = naive_prompt_attention(prompt, qkv, q, k, v, bias, mask, TASKS)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
        reversed_tasks = TASKS[::-1]
        ours = attend(
            prompt, q, k, v, qkv.weight, qkv.bias, reversed_tasks, rel_pos_bias=bias, mask=mask
        )
        expected = naive_prompt_attention(prompt, qkv, q, k, v, bias, mask, reversed_tasks)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("with_task", "with_shared", "shared_tokens"),
    [(True, True, 3), (True, False, 0), (False, True, 5), (False, False, 0)],
)
def test_pure_function_matches_naive_for_partial_and_unfused_sets(
    with_task: bool, with_shared: bool, shared_tokens: int
) -> None:
    double = {"dtype": torch.float64}
    q, k, v = torch.randn(3, 2 * 3, HEADS, N, 4, **double).unbind(0)
    bias = torch.randn(HEADS, N, N, **double)
    mask = torch.where(torch.rand(3, N, N) < 0.3, -100.0, 0.0).double()
    task_kvg = (*torch.randn(2, 2, HEADS, 5, 4, **double).unbind(0), torch.randn(HEADS, **double))
    shared_kvg = (
        *torch.randn(2, HEADS, shared_tokens, 4, **double).unbind(0),
        torch.randn(HEADS, **double),
    )
    kwargs = {}
    if with_task:
        kwargs.update(task_k=task_kvg[0], task_v=task_kvg[1], task_gate=task_kvg[2])
    if with_shared:
        kwargs.update(shared_k=shared_kvg[0], shared_v=shared_kvg[1], shared_gate=shared_kvg[2])
    ours = prompt_window_attention(q, k, v, rel_pos_bias=bias, mask=mask, **kwargs)
    expected = naive_window_attention(
        q, k, v, bias, mask, task_kvg if with_task else None, shared_kvg if with_shared else None
    )
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_residual_added_to_fused_attention() -> None:
    """A backbone keeping its own fused attention adds ``residual``: exact at init, equal later."""
    prompt = make_prompt()
    qkv = nn.Linear(DIM, 3 * DIM)
    q, k, v = torch.randn(3, len(TASKS) * BATCH * NUM_WIN, HEADS, N, DIM // HEADS).unbind(0)
    bias, mask = torch.randn(HEADS, N, N), shift_mask()
    attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1)).repeat(len(TASKS) * BATCH, 1, 1, 1)
    with torch.no_grad():
        fused = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        assert torch.equal(fused + prompt.residual(q, qkv.weight, qkv.bias), fused)
        prompt.prompt_gate_task.uniform_(-1, 1)
        prompt.prompt_gate_shared.uniform_(-1, 1)
        total = fused + prompt.residual(q, qkv.weight, qkv.bias)
        explicit = attend(prompt, q, k, v, qkv.weight, qkv.bias, rel_pos_bias=bias, mask=mask)
        torch.testing.assert_close(total, explicit, rtol=1e-5, atol=1e-5)
        assert (total - fused).abs().max() > 1e-3
        assert torch.equal(gated_prompt_attention(q), torch.zeros_like(q))
    with pytest.raises(ValueError, match="shared_mode='gated'"):
        make_prompt(shared_mode="joint").residual(q, qkv.weight, qkv.bias)
    with pytest.raises(ValueError, match="shared_k needs shared_v and shared_gate"):
        gated_prompt_attention(q, shared_k=k[0], shared_v=v[0])


def test_project_prompt_kv_matches_full_qkv() -> None:
    qkv = nn.Linear(DIM, 3 * HEADS * 3)  # head_dim 3, not DIM // HEADS
    tokens = torch.randn(len(TASKS), TOKENS, DIM)
    keys, values = project_prompt_kv(tokens, qkv.weight, qkv.bias, HEADS)
    full = qkv(tokens).reshape(len(TASKS), TOKENS, 3, HEADS, 3).permute(2, 0, 3, 1, 4)
    assert keys.shape == (len(TASKS), HEADS, TOKENS, 3)
    torch.testing.assert_close(keys, full[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(values, full[2], rtol=1e-6, atol=1e-6)
    no_bias_k, _ = project_prompt_kv(tokens, qkv.weight, None, HEADS)
    torch.testing.assert_close(no_bias_k + qkv.bias[6:12].view(HEADS, 1, 3), keys)


def test_stacked_windows_equal_single_task_calls() -> None:
    prompt = make_prompt()
    with torch.no_grad():
        prompt.prompt_gate_task.fill_(0.7)
        prompt.prompt_gate_shared.fill_(-0.3)
    qkv = nn.Linear(DIM, 3 * DIM)
    q, k, v = torch.randn(3, len(TASKS) * 4, HEADS, N, DIM // HEADS).unbind(0)
    with torch.no_grad():
        stacked = attend(prompt, q, k, v, qkv.weight, qkv.bias)
        for pos, task in enumerate(TASKS):
            rows = slice(4 * pos, 4 * (pos + 1))
            single = attend(prompt, q[rows], k[rows], v[rows], qkv.weight, qkv.bias, task)
            torch.testing.assert_close(stacked[rows], single, rtol=1e-6, atol=1e-6)
        other_task = attend(prompt, q[:4], k[:4], v[:4], qkv.weight, qkv.bias, TASKS[1])
        assert (stacked[:4] - other_task).abs().max() > 0


def backward_once(prompt: TaskAdaptiveLowRankPrompt, qkv: nn.Linear) -> torch.Tensor:
    q, k, v = torch.randn(3, len(TASKS) * 2, HEADS, N, DIM // HEADS, requires_grad=True).unbind(0)
    prompt.zero_grad(set_to_none=True)
    attend(prompt, q, k, v, qkv.weight, qkv.bias).square().sum().backward()
    return q


def test_gradients_at_init_reach_only_the_gates() -> None:
    prompt = make_prompt()
    qkv = nn.Linear(DIM, 3 * DIM).requires_grad_(False)
    backward_once(prompt, qkv)
    assert qkv.weight.grad is None
    assert prompt.prompt_gate_task.grad.abs().min() > 0
    assert prompt.prompt_gate_shared.grad.abs().min() > 0
    for name in ("prompt_slow_shared", "prompt_slow_factor", "prompt_fast_factor"):
        assert torch.count_nonzero(getattr(prompt, name).grad) == 0, name
    with torch.no_grad():
        prompt.prompt_gate_task.fill_(0.5)
        prompt.prompt_gate_shared.fill_(0.5)
    backward_once(prompt, qkv)
    for name, param in prompt.named_parameters():
        assert param.grad.abs().sum() > 0, name


def test_warmup_modes() -> None:
    qkv = nn.Linear(DIM, 3 * DIM).requires_grad_(False)
    frozen = make_prompt(warmup_mode="frozen_gate")
    frozen.set_warmup(True)
    backward_once(frozen, qkv)
    assert frozen.prompt_gate_task.grad is None
    assert frozen.prompt_gate_shared.grad.abs().sum() > 0  # P0 trains from the start
    assert torch.count_nonzero(frozen.prompt_fast_factor.grad) == 0
    q = torch.randn(len(TASKS), HEADS, N, DIM // HEADS)
    frozen.zero_grad(set_to_none=True)
    frozen.residual(q, qkv.weight, qkv.bias).sum().backward()
    assert frozen.prompt_gate_task.grad is None
    assert frozen.prompt_gate_shared.grad.abs().sum() > 0
    frozen.set_warmup(False)
    backward_once(frozen, qkv)
    assert frozen.prompt_gate_task.grad.abs().sum() > 0
    learning = make_prompt(warmup_mode="learn_gate")
    learning.set_warmup(True)
    backward_once(learning, qkv)
    assert learning.prompt_gate_task.grad.abs().sum() > 0


def test_parameter_roles_and_counts() -> None:
    for shared_factor in ("left", "right"):
        prompt = make_prompt(shared_factor=shared_factor)
        counts: dict[str | None, int] = {}
        for name, param in prompt.named_parameters(prefix="layers.0.blocks.1.prompt"):
            roles = (
                (PROMPT_FAST_KEY, "fast"),
                (PROMPT_SLOW_KEY, "slow"),
                (PROMPT_GATE_KEY, "gate"),
            )
            role = next((role for key, role in roles if key in name), None)
            counts[role] = counts.get(role, 0) + param.numel()
        slow = TOKENS * DIM + (TOKENS * RANK if shared_factor == "left" else RANK * DIM)
        fast = len(TASKS) * (RANK * DIM if shared_factor == "left" else TOKENS * RANK)
        assert counts == {"slow": slow, "fast": fast, "gate": 2 * HEADS}
    joint = make_prompt(shared_mode="joint")
    assert sum(p.numel() for n, p in joint.named_parameters() if "gate" in n) == HEADS


def test_svd_init_of_the_slow_factor() -> None:
    left = make_prompt(rank=3)
    factor = left.prompt_slow_factor.detach()  # (L, r)
    torch.testing.assert_close(factor.T @ factor, TOKENS * torch.eye(3), rtol=1e-5, atol=1e-5)
    singular = torch.linalg.svdvals(left.prompt_slow_shared.detach())
    basis = factor / math.sqrt(TOKENS)
    captured = (basis @ basis.T @ left.prompt_slow_shared.detach()).square().sum()
    torch.testing.assert_close(captured, singular[:3].square().sum(), rtol=1e-5, atol=1e-5)
    right = make_prompt(shared_factor="right", rank=3)
    factor = right.prompt_slow_factor.detach()  # (r, d)
    torch.testing.assert_close(factor @ factor.T, DIM * torch.eye(3), rtol=1e-5, atol=1e-5)
    normal = make_prompt(slow_init="normal")
    assert normal.prompt_slow_factor.shape == (TOKENS, RANK)
    assert torch.count_nonzero(normal.prompt_gate_task) == 0


def test_state_dict_round_trip() -> None:
    prompt = make_prompt(compose="hadamard")
    with torch.no_grad():
        prompt.prompt_gate_task.fill_(0.4)
        prompt.prompt_gate_shared.fill_(0.2)
    state = prompt.state_dict()
    assert set(state) == {
        "prompt_slow_shared",
        "prompt_slow_factor",
        "prompt_fast_factor",
        "prompt_gate_task",
        "prompt_gate_shared",
    }
    torch.manual_seed(7)
    fresh = make_prompt(compose="hadamard")
    fresh.load_state_dict(state, strict=True)
    qkv = nn.Linear(DIM, 3 * DIM)
    q, k, v = torch.randn(3, len(TASKS), HEADS, N, DIM // HEADS).unbind(0)
    with torch.no_grad():
        expected = attend(prompt, q, k, v, qkv.weight, qkv.bias)
        assert torch.equal(attend(fresh, q, k, v, qkv.weight, qkv.bias), expected)
    with pytest.raises(RuntimeError, match="size mismatch"):
        make_prompt(rank=1).load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": TOKENS + 1}, r"rank must be an integer in \[1, 5\]"),
        ({"num_tokens": 0}, "num_tokens"),
        ({"compose": "mul"}, "compose='mul'"),
        ({"shared_factor": "both"}, "shared_factor"),
        ({"shared_mode": "ungated"}, "shared_mode"),
        ({"warmup_mode": "none"}, "warmup_mode"),
        ({"slow_init": "zeros"}, "slow_init"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_prompt(**kwargs)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        TaskAdaptiveLowRankPrompt(DIM, HEADS, [])
    prompt = make_prompt()
    qkv = nn.Linear(DIM, 3 * DIM)
    q, k, v = torch.randn(3, 3, HEADS, N, DIM // HEADS).unbind(0)
    with pytest.raises(KeyError, match="'edge'"):
        prompt.residual(q, qkv.weight, qkv.bias, "edge")
    with pytest.raises(ValueError, match="3 stacked windows cannot be split into 2"):
        prompt.residual(q, qkv.weight, qkv.bias)
    with pytest.raises(ValueError, match="2 heads"):
        prompt.residual(q[:, :1], qkv.weight, qkv.bias, "semseg")
    with pytest.raises(ValueError, match="task_k needs task_v and task_gate"):
        prompt_window_attention(q, k, v, task_k=torch.zeros(3, HEADS, 2, DIM // HEADS))
    with pytest.raises(ValueError, match="shared_k needs shared_v"):
        prompt_window_attention(q, k, v, shared_k=torch.zeros(HEADS, 2, DIM // HEADS))
    with pytest.raises(ValueError, match="does not fit"):
        project_prompt_kv(torch.randn(TOKENS, DIM), torch.randn(25, DIM), None, HEADS)
