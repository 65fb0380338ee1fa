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

import os
from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from ..errors import CkmError

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


_OUTER_THREADS: list[int] = []


@contextmanager
def serial_torch_ops():
    """torch ops single-threaded inside the block; yields the thread count outside it (the
    outermost one when nested), for code that runs whole pieces of work in parallel instead.

    Scoring is many small tensor ops; split over threads each costs a synchronisation, and
    on a machine whose cores are shared (training jobs) that made scoring up to 10x slower.
    """
    _OUTER_THREADS.append(_OUTER_THREADS[-1] if _OUTER_THREADS else torch.get_num_threads())
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _OUTER_THREADS[-1]
    finally:
        torch.set_num_threads(before)
        _OUTER_THREADS.pop()


def idle_cores() -> int:
    """Cores not taken by other processes (1-minute load average, this process counted as
    one), at least 1; all of them where the load is unknown."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores
    return max(1, min(cores, int(cores - load + 1)))


class LastResult:
    """Memo of the last call of ``fn``, keyed by the identity (and version) of its tensor
    arguments: the evaluator passes the same chunk tensors to every metric, so whatever
    several metrics share is computed once per chunk."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.args: tuple = ()
        self.versions: tuple = ()
        self.value = None

    @staticmethod
    def _flat(args) -> tuple:
        out = []
        for a in args:
            out.extend(a if isinstance(a, (tuple, list)) else (a,))
        return tuple(out)

    def __call__(self, *args):
        flat = self._flat(args)
        versions = tuple(a._version if isinstance(a, torch.Tensor) else None for a in flat)
        same = len(flat) == len(self.args) and all(a is b for a, b in zip(flat, self.args))
        if not (same and versions == self.versions):
            self.value = None  # drop the old result before computing the new one
            self.value = self.fn(*args)
            self.args, self.versions = flat, versions
        return self.value


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


class _MaskWeights:
    """R bool (N,1,H,W) masks as (N,R,H·W) float64 0/1 weights for one matrix product, and
    their pixel counts (per crop), computed once per chunk for every metric."""

    def __init__(self, *masks: torch.Tensor):
        self.shape = masks[0].shape
        self.weights = torch.stack([m.flatten(1) for m in masks], dim=1).to(torch.float64)
        self._counts: dict[int, torch.Tensor] = {}

    def counts(self, crop: int) -> torch.Tensor:
        if crop not in self._counts:
            h, w = self.shape[-2:]
            grid = self.weights.view(*self.weights.shape[:2], h, w)[..., crop:h - crop, crop:w - crop]
            self._counts[crop] = grid.sum(dim=(2, 3))
        return self._counts[crop]


_mask_weights_memo = LastResult(_MaskWeights)  # shared by every metric of a chunk


def region_means(values: torch.Tensor, masks: Sequence[torch.Tensor | None], crop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and pixel counts of per-pixel ``values`` (N,K,H,W) over every region, in one pass.

    ``masks``: (N,1,H,W) bool or None (every pixel). ``crop``: the values exist only
    ``crop`` pixels away from the border (they must be 0 outside), and only the pixels
    inside are counted. Returns sums (N,V,K) and counts (N,V), V = len(masks), float64.
    """
    n, k, h, w = values.shape
    flat = values.reshape(n, k, h * w)
    sums = torch.empty(n, len(masks), k, dtype=torch.float64, device=values.device)
    counts = torch.empty(n, len(masks), dtype=torch.float64, device=values.device)
    parts = [i for i, m in enumerate(masks) if m is not None]
    if parts:
        weights = _mask_weights_memo(*[masks[i] for i in parts])
        sums[:, parts] = weights.weights @ flat.transpose(1, 2)  # every region at once: (N,R,K)
        counts[:, parts] = weights.counts(crop)
    whole = [i for i, m in enumerate(masks) if m is None]
    if whole:
        sums[:, whole] = flat.sum(dim=2)[:, None]
        counts[:, whole] = float((h - 2 * crop) * (w - 2 * crop))
    return sums, counts


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den is 0."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def _pixel_sums(pred, target, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums (N,V,2) of [e², u²], counts (N,V)) per region, float64."""
    p = pred.to(torch.float64)
    t = target.to(device=pred.device, dtype=torch.float64)
    values = torch.empty(p.shape[0], 2, *p.shape[2:], dtype=torch.float64, device=p.device)  # (N,2,H,W): e², u²
    torch.sub(t[:, 0], p[:, 0], out=values[:, 0]).square_()
    torch.mul(t[:, 0], t[:, 0], out=values[:, 1])
    return region_means(values, masks)


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
