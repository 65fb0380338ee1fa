"""Per-sample pixel and gain metrics on normalized maps (docs/metrics.md).

Every function takes batches ``pred``, ``target`` (N,1,H,W) of normalized maps u in [0, 1]
(the evaluator clips predictions first), an optional (N,1,H,W) bool ``mask`` restricting
the pixels scored (a region such as ``outdoor`` or ``hole``), and returns one float64 value
per sample (N,). A sample that cannot be scored (empty region, nmse with an all-zero
target) gets NaN; the evaluator skips NaNs and notes how many.

Each metric also has ``.all_regions(pred, target, gain_range, masks)``: one value tensor per
entry of ``masks`` (``None`` = the whole map). The evaluator calls it once per chunk, and the
per-pixel sums every pixel metric needs (count, Σe², Σu² per region) are computed once for
all regions, in one pass, and shared by mse, nmse, mse_gain and psnr.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from ..errors import CkmError
from ..threads import idle_cores  # noqa: F401  (the scorers judge free cores as a run does)

PSNR_CAP_DB = 100.0


def _check_pair(pred, target, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as tensors (the same objects when they already are), shapes checked."""
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
        raise CkmError(
            f"{who}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} must both be (N,1,H,W): "
            "pass single-channel map batches of one size"
        )
    return pred, target


_THREAD_STATE = threading.local()  # per thread: the stack of outer thread counts


@contextmanager
def serial_torch_ops():
    """torch ops single-threaded inside the block; yields the thread count outside it (the
    outermost one when nested), for code that runs whole pieces of work in parallel instead.

    Scoring is many small tensor ops; split over threads each costs a synchronisation, and
    on a machine whose cores are shared (training jobs) that made scoring up to 10x slower.
    The stack is per thread: inside a scoring worker thread (where torch already runs one
    thread) the block yields 1, so work nested there never fans out a second time.
    """
    outer = _THREAD_STATE.__dict__.setdefault("outer", [])
    outer.append(outer[-1] if outer else torch.get_num_threads())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield outer[-1]
    finally:
        torch.set_num_threads(before)
        outer.pop()


_POOLS: dict[int, ThreadPoolExecutor] = {}


def worker_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` scoring workers (torch ops release the GIL)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, "ckmbench-score")
    return _POOLS[threads]


class LastResult:
    """Memo of the last call of ``fn``, keyed by the identity (and version) of its tensor
    arguments: the evaluator passes the same chunk tensors to every metric, so whatever
    several metrics share is computed once per chunk. One memo per thread, since the
    evaluator scores slices of a chunk on several threads at once."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._local = threading.local()

    @staticmethod
    def _flat(args) -> tuple:
        out = []
        for a in args:
            out.extend(a if isinstance(a, (tuple, list)) else (a,))
        return tuple(out)

    def __call__(self, *args):
        memo = self._local
        flat = self._flat(args)
        versions = tuple(a._version if isinstance(a, torch.Tensor) else None for a in flat)
        last = getattr(memo, "args", ())
        same = len(flat) == len(last) and all(a is b for a, b in zip(flat, last))
        if not (same and versions == getattr(memo, "versions", ())):
            memo.value = None  # drop the old result before computing the new one
            memo.value = self.fn(*args)
            memo.args, memo.versions = flat, versions
        return memo.value


def _check_masks(pred, masks, who: str) -> list:
    out = []
    for m in masks:
        if m is not None:
            m = torch.as_tensor(m)
            if tuple(m.shape) != tuple(pred.shape):
                raise CkmError(f"{who}: mask {tuple(m.shape)} must have the maps' shape {tuple(pred.shape)}: pass a (N,1,H,W) bool mask")
            m = m.to(device=pred.device, dtype=torch.bool)
        out.append(m)
    return out


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple, dtype=torch.float64, device=None) -> torch.Tensor:
    """This thread's reusable buffer ``name`` (contents undefined): scoring works block by
    block, and a fresh multi-megabyte tensor per block costs a page fault per 4 KiB, which
    made scoring about twice as slow as its arithmetic."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    device = torch.device(device or "cpu")
    if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype or buf.device != device:
        buffers[name] = buf = torch.empty(shape, dtype=dtype, device=device)
    return buf


BLOCK = 4  # maps per block: their float64 values and region weights stay in cache


def region_sums(masks: Sequence[torch.Tensor | None], n: int, channels: int, crop: int,
                produce: Callable[[int, int], torch.Tensor], block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and pixel counts of per-pixel values over every region, block by block.

    ``masks``: (N,1,H,W) bool or None (every pixel); ``produce(start, stop)`` returns the
    values of maps ``start:stop`` (at most ``block``) as (b,K,H-2crop,W-2crop) float64, the
    pixels ``crop`` away from the border (the only ones counted). Each block's values are
    reduced over all regions in one matrix product while still in cache. Returns sums
    (N,V,K) and counts (N,V), V = len(masks), float64.
    """
    parts = [i for i, m in enumerate(masks) if m is not None]
    whole = [i for i, m in enumerate(masks) if m is None]
    f64 = dict(dtype=torch.float64, device=masks[parts[0]].device if parts else None)
    part_sums = part_counts = whole_sums = None
    for start in range(0, n, block):
        stop = min(n, start + block)
        values = produce(start, stop)
        b, k, hc, wc = values.shape
        if part_sums is None:
            f64["device"] = values.device
            part_sums, part_counts = torch.empty(n, len(parts), k, **f64), torch.empty(n, len(parts), **f64)
            whole_sums = torch.empty(n, k, **f64)
        flat = values.reshape(b, k, hc * wc)
        if parts:
            weights = scratch(f"region_weights/{block}", (block, len(parts), hc, wc), **f64)[:b]
            for j, i in enumerate(parts):
                weights[:, j].copy_(masks[i][start:stop, 0, crop:crop + hc, crop:crop + wc].view(torch.uint8))  # 0/1
            weights = weights.view(b, len(parts), hc * wc)
            torch.matmul(weights, flat.transpose(1, 2), out=part_sums[start:stop])  # (b,R,K)
            torch.sum(weights, dim=2, out=part_counts[start:stop])
        if whole:
            torch.sum(flat, dim=2, out=whole_sums[start:stop])
        area = float(hc * wc)
    if part_sums is None:  # no maps
        part_sums, part_counts, whole_sums, area = (torch.empty(0, len(parts), channels, **f64),
                                                    torch.empty(0, len(parts), **f64), torch.empty(0, channels, **f64), 0.0)
    sums = torch.empty(n, len(masks), part_sums.shape[2], **f64)
    counts = torch.empty(n, len(masks), **f64)
    sums[:, parts], counts[:, parts] = part_sums, part_counts
    sums[:, whole], counts[:, whole] = whole_sums[:, None], area
    return sums, counts


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den is 0."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


PIXEL_BLOCK = 16  # no window to keep in cache here: bigger blocks, fewer ops


def _pixel_sums(pred, target, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums (N,V,2) of [e², u²], counts (N,V)) per region, float64."""
    _, _, h, w = pred.shape

    def squares(start: int, stop: int) -> torch.Tensor:
        b = stop - start
        p = scratch("pixel_pred", (PIXEL_BLOCK, h, w), device=pred.device)[:b].copy_(pred[start:stop, 0])
        t = scratch("pixel_target", (PIXEL_BLOCK, h, w), device=pred.device)[:b].copy_(target[start:stop, 0])
        values = scratch("pixel_values", (PIXEL_BLOCK, 2, h, w), device=pred.device)[:b]  # e², u²
        torch.sub(t, p, out=values[:, 0]).square_()
        torch.mul(t, t, out=values[:, 1])
        return values

    return region_sums(masks, int(pred.shape[0]), 2, 0, squares, block=PIXEL_BLOCK)


_pixel_sums_memo = LastResult(_pixel_sums)


def _sums(pred, target, masks, who: str):
    pred, target = _check_pair(pred, target, who)
    return _pixel_sums_memo(pred, target, _check_masks(pred, masks, who))


def _single(all_regions: Callable) -> Callable:
    """The one-region form ``f(pred, target, gain_range=None, mask=None)`` of an all-regions metric."""

    def one(pred, target, gain_range=None, mask=None, **kwargs) -> torch.Tensor:
        return all_regions(pred, target, gain_range, [mask], **kwargs)[0]

    one.all_regions = all_regions
    one.__name__ = all_regions.__name__.removesuffix("_all_regions")
    one.__doc__ = all_regions.__doc__
    return one


def _mse_values(pred, target, masks, who: str) -> list[torch.Tensor]:
    sums, counts = _sums(pred, target, masks, who)
    return list(_divide(sums[..., 0], counts).unbind(1))


def _mse_all_regions(pred, target, gain_range=None, masks=(None,)) -> list[torch.Tensor]:
    """mean(e^2) with e = u - û, per sample."""
    return _mse_values(pred, target, masks, "mse")


def _nmse_all_regions(pred, target, gain_range=None, masks=(None,)) -> list[torch.Tensor]:
    """sum(e^2) / sum(u^2) per sample (CKMDiff eq. 25); NaN where sum(u^2) = 0 or the mask is empty."""
    sums, _ = _sums(pred, target, masks, "nmse")
    return list(_divide(sums[..., 0], sums[..., 1]).unbind(1))


def _psnr_all_regions(pred, target, gain_range=None, masks=(None,), cap: float = PSNR_CAP_DB) -> list[torch.Tensor]:
    """10 log10(1 / mse) per sample (peak 1 on normalized maps), capped at ``cap`` dB."""
    out = []
    for err in _mse_values(pred, target, masks, "psnr"):
        value = 10.0 * torch.log10(1.0 / err)  # mse 0 -> +inf -> capped
        out.append(torch.where(torch.isnan(err), err, value.clamp(max=cap)))
    return out


def _gain_range(gain_range, n: int, device) -> torch.Tensor:
    if gain_range is None:
        raise CkmError("mse_gain: no gain_range given: pass the (N,2) per-sample (g_min, g_max) in dB")
    gr = torch.as_tensor(gain_range, dtype=torch.float64, device=device)
    if gr.shape != (n, 2):
        raise CkmError(f"mse_gain: gain_range has shape {tuple(gr.shape)}, expected ({n}, 2): pass one (g_min, g_max) per map")
    return gr


def _mse_gain_all_regions(pred, target, gain_range=None, masks=(None,)) -> list[torch.Tensor]:
    """mean((g - ĝ)^2) in dB^2 with g = g_min + u (g_max - g_min) using each sample's range.

    g - ĝ = (u - û)(g_max - g_min), so it is the sample's span² times its mse.
    """
    pred = torch.as_tensor(pred)
    gr = _gain_range(gain_range, pred.shape[0], pred.device)
    span2 = (gr[:, 1] - gr[:, 0]).square()
    return [span2 * err for err in _mse_values(pred, target, masks, "mse_gain")]


mse = _single(_mse_all_regions)
nmse = _single(_nmse_all_regions)
psnr = _single(_psnr_all_regions)
mse_gain = _single(_mse_gain_all_regions)
