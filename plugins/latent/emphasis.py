"""CKMDiff's feature emphasis (S1 §IV-E): the condition image of the observation.

Three channels: [observed CKM, building image, Canny edges of the building image]. S1 gets
the buildings by binarising the zero pixels of the observed map (building pixels are 0 in
u). Our observations carry noise N(0, (30/255)^2) on every pixel (as S1's), so "zero" is
read after a 3x3 box filter (noise std / 3) as ``<= building_threshold`` (0.08: 2 noise
std above 0; 99 % of outdoor pixels of the city data lie above 0.05 before noise);
the inpainting hole (mask 0) is not a building. Edges: ``skimage.feature.canny`` of the
building image (sigma ``canny_sigma``). The observed map is at the target size: the noisy
low-resolution samples of ``sr*-noisy`` are upsampled by the bicubic baseline's aligned
interpolation first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import canny

from ckmbench.errors import CkmError
from ckmbench_plugins.baselines.problem import lr_mode_of
from ckmbench_plugins.diffusion.srdiff import upsample_on_device

CONDITIONED_KINDS = ("inpaint", "denoise", "sr")


def observed_map(obs) -> torch.Tensor:
    """The observation as a (B, 1, H, W) map at the target size."""
    if obs.y is None:
        raise CkmError(f"feature emphasis needs an observed map; task {obs.task} gives none")
    if obs.factor:
        return upsample_on_device(obs.y, tuple(obs.out_shape), int(obs.factor), lr_mode_of(obs))
    return obs.y.float()


def building_image(y: torch.Tensor, mask: torch.Tensor | None, threshold: float) -> torch.Tensor:
    """1 where the (3x3 box-filtered) observed map is at most ``threshold`` and the pixel was observed."""
    smooth = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    b = (smooth <= threshold).float()
    return b * (mask > 0.5).float() if mask is not None else b


def canny_edges(b: torch.Tensor, sigma: float) -> torch.Tensor:
    """Canny edges (scikit-image) of each building image, same shape, {0, 1}."""
    arr = b.detach().cpu().numpy()
    out = np.stack([canny(img[0].astype(np.float64), sigma=sigma)[None] for img in arr]).astype(np.float32)
    return torch.from_numpy(out).to(b.device)


def feature_emphasis(obs, threshold: float, sigma: float) -> torch.Tensor:
    """(B, 3, H, W): [observed map, buildings, Canny edges of the buildings]."""
    y = observed_map(obs)
    b = building_image(y, obs.mask, threshold)
    return torch.cat([y, b, canny_edges(b, sigma)], dim=1)
