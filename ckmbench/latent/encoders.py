"""Condition encoders of the latent methods: multi-level feature maps of a condition image.

Why: CKMDiff and RadioDiff encode their condition with Swin-B, the physics-inspired LDM
with Swin-T (timm); at the ``tiny``/``small`` profiles a small conv encoder stands in.
Both return one feature map per U-Net level, level 0 at the latent's resolution (the image
size over the autoencoder's ``downsample``), each next level half as large, so the maps can
be concatenated at the decoder levels or attended to.

ImageNet weights cannot be downloaded here: timm models are always built with
``pretrained=False``; when the profile names a local weights file (``swin_weights``) it is
loaded into the model, otherwise the encoder trains from scratch. ``describe()`` says which.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import load_checkpoint_file
from ..errors import CkmError

SWIN_MODELS = {"swin-b": "swin_base_patch4_window7_224", "swin-t": "swin_tiny_patch4_window7_224"}


class ConvEncoder(nn.Module):
    """A stem of stride ``downsample`` (stride-2 convs), then one stride-2 conv block per further level.

    Each block: 3x3 conv (stride 2 between levels) -> GroupNorm -> SiLU -> 3x3 conv -> GroupNorm -> SiLU.
    """

    def __init__(self, in_channels: int, channels: list[int], downsample: int, norm_groups: int = 8):
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1):
            raise CkmError(f"conv encoder: the autoencoder's downsampling {downsample} is not a power of two")
        self.channels = [int(c) for c in channels]
        stem: list[nn.Module] = []
        ch = in_channels
        for _ in range(downsample.bit_length() - 1):
            stem += [nn.Conv2d(ch, self.channels[0], 3, stride=2, padding=1), nn.SiLU()]
            ch = self.channels[0]
        self.stem = nn.Sequential(*stem) if stem else nn.Identity()
        self.levels = nn.ModuleList()
        for lvl, c in enumerate(self.channels):
            stride = 1 if lvl == 0 else 2
            self.levels.append(nn.Sequential(
                nn.Conv2d(ch, c, 3, stride=stride, padding=1), nn.GroupNorm(min(norm_groups, c), c), nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(min(norm_groups, c), c), nn.SiLU()))
            ch = c
        self.weights = "scratch"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x)
        out = []
        for level in self.levels:
            h = level(h)
            out.append(h)
        return out

    def describe(self) -> str:
        return f"conv {self.channels}, from scratch"


class SwinEncoder(nn.Module):
    """timm Swin (patch 4, window 7): its stages' outputs at /4, /8, /16, /32 of the image, NCHW."""

    def __init__(self, variant: str, image_size: int, levels: int, weights: str | None = None,
                 in_channels: int = 3):
        super().__init__()
        import timm

        if variant not in SWIN_MODELS:
            raise CkmError(f"condition encoder {variant!r} is not one of {', '.join(SWIN_MODELS)}")
        if not 1 <= levels <= 4:
            raise CkmError(f"condition encoder {variant}: {levels} levels asked, Swin has 4 stages")
        self.variant, self.levels = variant, int(levels)
        self.model = timm.create_model(SWIN_MODELS[variant], pretrained=False, num_classes=0,
                                       img_size=int(image_size), in_chans=in_channels)
        self.channels = [int(f["num_chs"]) for f in self.model.feature_info][:levels]
        # the final norm and the stages past `levels` get no gradient: frozen, so that DDP
        # (which refuses parameters that receive none) works; still counted, as S3 counts Swin
        for module in [self.model.norm, *list(self.model.layers)[self.levels:]]:
            module.requires_grad_(False)
        self.weights = "scratch"
        if weights:
            self.weights = self._load(Path(weights))

    def _load(self, path: Path) -> str:
        if not path.is_file():
            raise CkmError(f"swin_weights: {path} is not a file: give a local ImageNet {self.variant} checkpoint "
                           f"(nothing is downloaded) or leave swin_weights unset to train from scratch")
        kind, fix = f"an ImageNet {self.variant} checkpoint", f"give timm's {SWIN_MODELS[self.variant]} weights as a state dict"
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except Exception as exc:
                raise CkmError(f"swin_weights: {path} is not {kind} (not a safetensors file: {type(exc).__name__}): {fix}") from None
        else:  # the project's loader: weights_only, one line when the file holds other objects
            state = load_checkpoint_file(path, "cpu", what="swin_weights:", kind=kind, fix=fix)
            state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise CkmError(f"swin_weights: {path} is not {kind} (a {type(state).__name__}, not a state dict): {fix}")
        state = {k: v for k, v in state.items() if not k.startswith("head")}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "relative_position_index" not in k and "attn_mask" not in k]
        if missing:
            raise CkmError(f"swin_weights: {path} lacks {len(missing)} weights of {self.variant} (e.g. {missing[0]}): "
                           f"give an ImageNet {self.variant} checkpoint of timm's {SWIN_MODELS[self.variant]}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return f"imagenet ({path.name}, sha256 {digest})"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(range(self.levels)), intermediates_only=True)

    def describe(self) -> str:
        return f"{self.variant}, {'ImageNet-initialised: ' + self.weights if self.weights != 'scratch' else 'from scratch'}"


def build_condition_encoder(kind: str, *, image_size: int, downsample: int, levels: int, channels=None,
                            weights: str | None = None, in_channels: int = 3, norm_groups: int = 8) -> nn.Module:
    """``kind`` "conv" (``channels`` per level) or "swin-b"/"swin-t" (needs ``downsample`` = 4)."""
    if kind == "conv":
        if not channels or len(channels) < levels:
            raise CkmError(f"conv condition encoder: cond_channels needs one width per U-Net level ({levels})")
        return ConvEncoder(in_channels, list(channels)[:levels], downsample, norm_groups)
    if kind in SWIN_MODELS:
        if downsample != 4:
            raise CkmError(f"condition encoder {kind}: Swin's first stage is at 1/4 of the image, the latent at "
                           f"1/{downsample}: use an autoencoder with vae_mults of 3 levels or encoder=conv")
        return SwinEncoder(kind, image_size, levels, weights, in_channels)
    raise CkmError(f"condition encoder {kind!r} is not one of conv, {', '.join(SWIN_MODELS)}: pass encoder=conv")
