"""Hardening, round 2 (issue 20): each test fails on the code before its fix."""

from __future__ import annotations

import pytest
import torch

from ckmbench.errors import CkmError


# --- 1. FID: an unknown TorchScript file is refused before torch.jit.load runs its code ---


class _Scripted(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :2048]


def test_unknown_torchscript_fid_weights_are_refused_before_loading(monkeypatch, tmp_path):
    from ckmbench.metrics import fid as fid_module

    evil = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(_Scripted()), str(evil))
    assert fid_module.is_torchscript(evil)
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or _Scripted())
    monkeypatch.setenv(fid_module.ENV_VAR, str(evil))
    sha = fid_module.file_hashes(evil)[0]
    for attempt in (fid_module.find_weights, fid_module.FidScorer, lambda: fid_module._load_torchscript(str(evil))):
        with pytest.raises(CkmError) as info:
            attempt()
        msg = str(info.value)
        assert "\n" not in msg and sha in msg and fid_module.FID_HELPER_SHA256 in msg and "state dict" in msg
    assert loads == []
