"""Forward passes over timm's Swin blocks, with MTLoRA's per-task branch in a stage's last block.

Swin Transformer (Liu et al., ICCV 2021) with MTLoRA (Agiza et al., CVPR 2024). The modules are
timm's (``SwinTransformerBlock``, ``WindowAttention``, ``Mlp``); these functions walk them so that
one code path serves the shared stream and the stacked task streams (``docs/model.md#task-branch``).

Window geometry for a token grid ``H x W`` and a configured window ``w`` (per dimension):

* if ``H <= w`` the window shrinks to ``H`` and that dimension is not shifted (as in the
  official Swin for small stages); the relative-position bias is then read from the centre of the
  full ``(2w-1)^2`` table, so the parameters do not depend on the input size;
* otherwise the grid is zero-padded at the bottom/right to a multiple of ``w`` (after the first
  norm), then cyclically shifted by ``w // 2`` in shifted blocks; padded tokens are masked out as
  keys with the same :data:`MASK_VALUE` used by the shift mask, and cropped away after attention.

At the construction size of the paper (448, window 7) no padding occurs and the masks forbid the
same pairs as the official ones. Masks and index tables are cached per grid size, device and dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition
from torch import Tensor

from mtlora_vision.adapters.mtlora import MTLoRAFactors, MTLoRALinear, TaskCoefficients
from mtlora_vision.recompute import lean_enabled, recomputable

#: Additive attention-mask value for forbidden pairs: the official Swin's -100, which its pretrained
#: weights were trained with. A masked pair's softmax weight is ``exp(s - 100 - max)``: a float32
#: subnormal (about 3.7e-44) when the masked logit ``s`` is near its row's maximum, which this
#: project's CPU multiplies slowly (fp32 training steps about 7% slower than with -1e4,
#: docs/speed.md), and not negligible when ``s`` exceeds the maximum by more than about 80, as it
#: does in trained models: a larger magnitude would change their outputs (docs/model.md).
MASK_VALUE = -100.0


class WindowGeometry(NamedTuple):
    """How a ``(H, W)`` token grid is split into attention windows.

    Attributes:
        window: Effective window ``(wh, ww)``.
        shift: Cyclic shift ``(sh, sw)``; zero in non-shifted blocks.
        padded: Grid size after padding ``(Hp, Wp)``.
        mask: Additive mask ``(nW, N, N)`` with ``N = wh * ww``, or None if nothing is masked.
        to_windows: For each token in window order, its position in the padded grid ``(Hp * Wp,)``.
        from_windows: For each padded-grid position, its index in window order ``(Hp * Wp,)``
            (the inverse permutation of ``to_windows``).
    """

    window: tuple[int, int]
    shift: tuple[int, int]
    padded: tuple[int, int]
    mask: Tensor | None
    to_windows: Tensor
    from_windows: Tensor


class _PermuteTokens(torch.autograd.Function):
    """``x.index_select(1, index)`` whose backward gathers with the inverse permutation.

    The default backward of ``index_select`` scatter-adds into zeros, several times slower than
    the gather it undoes; for a permutation the gradient is just the inverse gather.
    """

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def permute_tokens(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    """Reorder the tokens of ``x (B, L, C)`` by ``index``; ``inverse`` is its inverse."""
    return _PermuteTokens.apply(x, index, inverse)


def effective_window(
    grid: tuple[int, int], window: tuple[int, int], shifted: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return the window and shift used on ``grid`` (pure; see the module docstring)."""
    win = tuple(min(w, g) for w, g in zip(window, grid, strict=True))
    shift = tuple(w // 2 if shifted and g > w else 0 for w, g in zip(window, grid, strict=True))
    return win, shift  # type: ignore[return-value]


def region_labels(
    padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> Tensor:
    """Label each position of the shifted grid by the region it came from, ``(Hp, Wp)`` int64."""
    labels = torch.zeros(padded, dtype=torch.long)
    count = 0
    rows = (
        ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)) if shift[0] else ((0, None),)
    )
    cols = (
        ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)) if shift[1] else ((0, None),)
    )
    for r0, r1 in rows:
        for c0, c1 in cols:
            labels[r0:r1, c0:c1] = count
            count += 1
    return labels


def window_order(padded: tuple[int, int], window: tuple[int, int]) -> Tensor:
    """Grid positions in window-partition order, ``(Hp * Wp,)`` (row-major inside each window)."""
    positions = torch.arange(padded[0] * padded[1]).view(1, padded[0], padded[1], 1)
    return window_partition(positions, window).flatten()


@functools.lru_cache(maxsize=64)
def window_geometry(
    grid: tuple[int, int],
    window: tuple[int, int],
    shifted: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> WindowGeometry:
    """Window, shift, padding, mask and token permutations for one block on a ``grid`` (cached).

    Shift and partition become one gather: the token at window-order index ``k`` reads padded-grid
    position ``to_windows[k]`` (``torch.roll`` plus ``window_partition`` would copy twice).

    Args:
        grid: Token grid ``(H, W)``.
        window: Configured window of the block.
        shifted: Whether the block uses shifted windows.
        device: Device of the mask and indices.
        dtype: Dtype of the mask.

    Returns:
        The geometry; ``mask`` is ``(nW, N, N)`` or None.
    """
    win, shift = effective_window(grid, window, shifted)
    padded = tuple(-(-g // w) * w for g, w in zip(grid, win, strict=True))
    order = window_order(padded, win)  # shifted-frame position of each window-order token
    rows, cols = order // padded[1], order % padded[1]
    source = (rows + shift[0]) % padded[0] * padded[1] + (cols + shift[1]) % padded[1]
    inverse = torch.argsort(source)
    mask = None
    if any(shift) or padded != tuple(grid):
        num_tokens = win[0] * win[1]
        labels = region_labels(padded, win, shift).flatten()[order].view(-1, num_tokens)
        valid = ((source // padded[1] < grid[0]) & (source % padded[1] < grid[1])).view_as(labels)
        forbidden = (labels[:, :, None] != labels[:, None, :]) | ~valid[:, None, :]
        mask = torch.zeros(forbidden.shape, dtype=dtype).masked_fill_(forbidden, MASK_VALUE)
        mask = mask.to(device)
    return WindowGeometry(win, shift, padded, mask, source.to(device), inverse.to(device))


@functools.lru_cache(maxsize=64)
def relative_position_index(
    window: tuple[int, int], table_window: tuple[int, int], device: torch.device
) -> Tensor:
    """Index into a ``(2*Th-1)*(2*Tw-1)`` bias table for every token pair of a window, ``(N*N,)``.

    Args:
        window: Effective window ``(wh, ww)``, at most ``table_window``.
        table_window: Window the table was built for ``(Th, Tw)``.
        device: Device of the index.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")
    ).flatten(1)  # 2, N
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N: offsets in [-(w-1), w-1]
    rows = rel[0] + table_window[0] - 1
    cols = rel[1] + table_window[1] - 1
    return (rows * (2 * table_window[1] - 1) + cols).flatten().to(device)


@torch.compiler.assume_constant_result
def constant_window_geometry(*key: object) -> WindowGeometry:
    """:func:`window_geometry`, held constant by ``torch.compile`` instead of traced per call."""
    return window_geometry(*key)


@torch.compiler.assume_constant_result
def constant_relative_position_index(*key: object) -> Tensor:
    """:func:`relative_position_index`, held constant by ``torch.compile``."""
    return relative_position_index(*key)


def to_windows(x: Tensor, geom: WindowGeometry) -> Tensor:
    """Pad, shift and partition ``(B, H, W, C)`` into windows ``(B * nW, N, C)``."""
    B, H, W, C = x.shape
    if geom.padded != (H, W):
        x = F.pad(x, (0, 0, 0, geom.padded[1] - W, 0, geom.padded[0] - H))
    tokens = permute_tokens(x.reshape(B, -1, C), geom.to_windows, geom.from_windows)
    return tokens.view(-1, geom.window[0] * geom.window[1], C)  # B*nW, N, C


def normed_windows(block: torch.nn.Module, x: Tensor, geom: WindowGeometry) -> Tensor:
    """``to_windows(block.norm1(x))``, both steps recomputable (:mod:`mtlora_vision.recompute`)."""
    return recomputable(to_windows, recomputable(block.norm1, x, part="norm"), geom, part="norm")


def from_windows(windows: Tensor, geom: WindowGeometry, grid: tuple[int, int]) -> Tensor:
    """Undo :func:`to_windows` (unshift, crop): ``(B * nW, N, C)`` -> ``(B, H, W, C)``."""
    C = windows.shape[-1]
    num_windows = (geom.padded[0] // geom.window[0]) * (geom.padded[1] // geom.window[1])
    tokens = windows.reshape(-1, num_windows * windows.shape[1], C)  # B, nW*N, C
    tokens = permute_tokens(tokens, geom.from_windows, geom.to_windows)
    x = tokens.view(-1, geom.padded[0], geom.padded[1], C)
    if geom.padded != grid:
        x = x[:, : grid[0], : grid[1]].contiguous()
    return x


def window_attention(
    attn: torch.nn.Module, windows: Tensor, geom: WindowGeometry, fused: bool
) -> Tensor:
    """Multi-head self-attention with relative-position bias inside each window, before ``proj``.

    Args:
        attn: A timm ``WindowAttention`` (its ``qkv`` may be an adapter layer; an ``attn.prompt``
            adds its gated prompt branches and, in ``"joint"`` mode, its shared prompt's keys and
            values to every window's, see :mod:`.task_conditioned`).
        windows: Tokens ``(B * nW, N, C)``.
        geom: Window geometry of the block.
        fused: Use ``F.scaled_dot_product_attention``; else the explicit softmax path.

    Returns:
        ``(B * nW, N, C)``.
    """
    B_, N, _ = windows.shape
    heads = attn.num_heads
    qkv = attn.qkv(windows).reshape(B_, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # B_, nH, N, hd each
    index = constant_relative_position_index(geom.window, attn.window_size, windows.device)
    bias = attn.relative_position_bias_table[index].view(N, N, heads).permute(2, 0, 1)  # nH, N, N
    if geom.mask is None:
        attn_mask = bias.unsqueeze(0)
    else:
        num_win = geom.mask.shape[0]
        attn_mask = bias.unsqueeze(0) + geom.mask.unsqueeze(1)  # nW, nH, N, N
        attn_mask = attn_mask.unsqueeze(0).expand(B_ // num_win, -1, -1, -1, -1).flatten(0, 1)
    prompt = getattr(attn, "prompt", None)
    if prompt is not None and prompt.shared_mode == "joint":
        k, v, attn_mask = join_prompt_tokens(*prompt.joint_kv(attn.qkv), k, v, attn_mask)
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1) + attn_mask
        out = scores.softmax(dim=-1) @ v
    if prompt is not None:  # TA-LoRA-style prompts: gated branches beside the image softmax
        out = out + prompt.attention_residual(q, attn.qkv, attn.scale)
    return out.transpose(1, 2).reshape(B_, N, -1)


def join_prompt_tokens(
    prompt_k: Tensor, prompt_v: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Append prompt keys and values to every window's; prompt columns get no bias and no mask.

    Args:
        prompt_k: Prompt keys ``(nH, L, hd)``, the same for every window.
        prompt_v: Prompt values ``(nH, L, hd)``.
        k: Image keys ``(B_, nH, N, hd)``.
        v: Image values ``(B_, nH, N, hd)``.
        attn_mask: Additive bias and mask ``(1 or B_, nH, N, N)``.

    Returns:
        Keys and values ``(B_, nH, N + L, hd)`` and the mask ``(1 or B_, nH, N, N + L)``.
    """
    windows = k.shape[0]
    k = torch.cat([k, prompt_k.to(k.dtype).expand(windows, -1, -1, -1)], dim=2)
    v = torch.cat([v, prompt_v.to(v.dtype).expand(windows, -1, -1, -1)], dim=2)
    pad = attn_mask.new_zeros(*attn_mask.shape[:-1], prompt_k.shape[1])
    return k, v, torch.cat([attn_mask, pad], dim=-1)


def window_geometry_of(block: torch.nn.Module, x: Tensor) -> WindowGeometry:
    """Geometry of ``block`` (a timm ``SwinTransformerBlock``) on the grid of ``x (B, H, W, C)``."""
    return constant_window_geometry(
        (x.shape[1], x.shape[2]),
        tuple(block.window_size),
        any(block.shift_size),
        x.device,
        x.dtype,
    )


def block_forward(block: torch.nn.Module, x: Tensor, fused: bool = True) -> Tensor:
    """Run a timm ``SwinTransformerBlock`` on the shared stream.

    Why not timm's own ``block(x)`` for blocks that never branch: timm fixes the window per block
    at construction (``always_partition=True``, needed here so the bias tables keep the
    checkpoint's size, never shrinks it), whereas the official Swin shrinks the window and drops
    the shift on grids no larger than the window; this module decides that per input size (module
    docstring), so inputs other than the construction size give the official results. The same
    attention also carries TA-LoRA prompts (``attn.prompt``) and the per-call fused/explicit choice.

    Args:
        block: The block; adapter layers in it return their shared output.
        x: Tokens ``(B, H, W, C)``.
        fused: Use fused attention.

    Returns:
        ``(B, H, W, C)``.
    """
    grid = (x.shape[1], x.shape[2])
    geom = window_geometry_of(block, x)
    attended = window_attention(block.attn, normed_windows(block, x, geom), geom, fused)
    x = x + block.drop_path1(from_windows(block.attn.proj(attended), geom, grid))
    return x + block.drop_path2(mlp_forward(block.mlp, recomputable(block.norm2, x, part="norm")))


def mlp_forward(mlp: torch.nn.Module, x: Tensor) -> Tensor:
    """Run a timm ``Mlp`` (fc1, act, dropout, norm, fc2, dropout), its activation recomputable."""
    hidden = mlp.norm(mlp.drop1(recomputable(mlp.act, mlp.fc1(x), part="gelu")))
    return mlp.drop2(mlp.fc2(hidden))


def block_forward_tasks(
    block: torch.nn.Module, x: Tensor, fused: bool = True
) -> tuple[Tensor, Tensor]:
    """Run the last block of a stage with MTLoRA task branches (``docs/model.md#task-branch``).

    Attention is shared; ``proj``, ``fc1`` and ``fc2`` give per-task outputs. The T task streams are
    stacked along the batch dimension, so every op after the low-rank terms runs once for all tasks.
    Residuals of the task streams start from the shared input ``x``; DropPath draws per sample, so
    each task gets its own mask. The two parts, :func:`windowed_attention` and
    :func:`task_branch_after_attention`, can be checkpointed separately.

    Args:
        block: Block whose ``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` are ``MTLoRALinear`` with tasks.
        x: Shared tokens ``(B, H, W, C)``.
        fused: Use fused attention.

    Returns:
        Shared output ``(B, H, W, C)`` and task outputs ``(T * B, H, W, C)`` (task-major).
    """
    return task_branch_after_attention(block, x, windowed_attention(block, x, fused))


def windowed_attention(block: torch.nn.Module, x: Tensor, fused: bool = True) -> Tensor:
    """A block's window attention of its normalised input, before the output projection.

    Args:
        block: The block.
        x: Tokens ``(B, H, W, C)``.
        fused: Use fused attention.

    Returns:
        Per-window attention outputs ``(B * nW, N, C)``.
    """
    geom = window_geometry_of(block, x)
    return window_attention(block.attn, normed_windows(block, x, geom), geom, fused)


def task_branch_after_attention(
    block: torch.nn.Module, x: Tensor, attended: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`block_forward_tasks` from the attention output on: per-task ``proj``, MLP, residuals.

    Args:
        block: As for :func:`block_forward_tasks`.
        x: The block's shared input ``(B, H, W, C)``.
        attended: :func:`windowed_attention` of ``x``, ``(B * nW, N, C)``.

    Returns:
        Shared output ``(B, H, W, C)`` and task outputs ``(T * B, H, W, C)`` (task-major).
    """
    proj, fc1, fc2 = block.attn.proj, block.mlp.fc1, block.mlp.fc2
    if not all(isinstance(m, MTLoRALinear) and m.num_tasks for m in (proj, fc1, fc2)):
        raise TypeError("block_forward_tasks needs task adapters on attn.proj, mlp.fc1, mlp.fc2.")
    B, H, W, C = x.shape
    T = proj.num_tasks
    geom = window_geometry_of(block, x)
    # Intermediates that nothing saves are released (del) as soon as they are used: lean mode
    # stores recipes, not them, and a checkpointed stage's backward pass peaks in this function.
    out = proj.forward_tasks(attended)  # B*nW, N, C and T, B*nW, N, C
    shared = x + block.drop_path1(from_windows(out.shared, geom, (H, W)))
    task_p = block.drop_path1(from_windows(out.tasks.flatten(0, 1), geom, (H, W)))  # T*B,H,W,C
    del out
    tasks = x.unsqueeze(0) + task_p.view(T, B, H, W, C)
    del task_p
    norm2, act = block.norm2, block.mlp.act
    normed = recomputable(norm2, shared, part="norm"), recomputable(norm2, tasks, part="norm")
    shared_in, task_in, task_gelu = task_mlp_hidden(
        block.mlp,
        *normed,
        fuse=lean_enabled("gelu"),  # the T hidden tensors are then never stored
        shared_act=lambda h: recomputable(act, h, part="gelu"),
    )
    del normed
    out = fc2.forward_tasks(shared_in, task_in, task_gelu=task_gelu)
    shared = shared + block.drop_path2(out.shared)
    tasks = tasks.flatten(0, 1) + block.drop_path2(out.tasks.flatten(0, 1))
    return shared, tasks


def task_mlp_hidden(
    mlp: torch.nn.Module,
    shared: Tensor,
    tasks: Tensor | TaskCoefficients,
    fuse: bool,
    shared_act: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor | MTLoRAFactors, str | None]:
    """fc1 of a task branch's MLP, as fc2's inputs ``(shared_in, task_in, task_gelu)``.

    With ``fuse`` and a GELU, fc1's task outputs go to fc2 as they are, in low-rank form
    (:class:`MTLoRAFactors`; expanded in ``addition`` mode, whose shared output needs them), and
    the GELU is left to fc2's task down-projections (``task_gelu``), which form one task's
    ``(M, 4C)`` hidden tensor at a time. Otherwise the activation is applied here.

    Args:
        mlp: A timm ``Mlp`` whose ``fc1`` is an ``MTLoRALinear`` with tasks.
        shared: Normalised shared stream ``(..., C)``.
        tasks: Normalised task streams ``(T, ..., C)``, or fc1's task down-projections of them
            (:class:`TaskCoefficients`).
        fuse: Hand fc1's task outputs to fc2 unexpanded when the activation is a GELU.
        shared_act: The activation of the shared output (e.g. a recomputable GELU).
    """
    fc1, act = mlp.fc1, mlp.act
    if fuse and isinstance(act, torch.nn.GELU):
        if fc1.shared_from_factors:
            hidden = task_in = fc1.forward_task_factors(shared, tasks)
        else:
            hidden = fc1.forward_tasks(shared, tasks)
            task_in = hidden.tasks
        return shared_act(hidden.shared), task_in, act.approximate
    hidden = fc1.forward_tasks(shared, tasks)
    return shared_act(hidden.shared), act(hidden.tasks), None


def patch_merge(merge: torch.nn.Module, x: Tensor) -> Tensor:
    """Run timm's ``PatchMerging``, ``(B, H, W, C)`` -> ``(B, H/2, W/2, C')``, minus its pad copy.

    Concatenation order per 2x2 cell: (0,0), (1,0), (0,1), (1,1) in (row, column), as in the
    official Swin. Odd grids (never reached from inputs that are multiples of 32) use the module.
    """
    if x.shape[1] % 2 or x.shape[2] % 2:
        return merge(x)
    x = merge_cells(x).flatten(3)
    return merge.reduction(recomputable(merge.norm, x, part="norm"))


def merge_cells(x: Tensor) -> Tensor:
    """Group each 2x2 cell of ``(B, H, W, C)`` (even ``H, W``): ``(B, H/2, W/2, 4, C)``.

    Cell order (0,0), (1,0), (0,1), (1,1) in (row, column), the official concatenation order.
    """
    B, H, W, C = x.shape
    return x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3, 4)
