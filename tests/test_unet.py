"""ckmbench.diffusion.unet.SR3UNet: the CGDM paper parameter count, shapes, block skipping/pruning,
features, determinism and bf16 autocast. Small configs only, except the paper count (meta device)."""

from __future__ import annotations

import pytest
import torch

from ckmbench.diffusion import CGDM_PAPER_CONFIG, SR3UNet, cgdm_paper_unet
from test_diffusion import _one_thread  # noqa: F401  (autouse: one intra-op thread in this module too)

SMALL = dict(in_channels=2, out_channels=1, base=16, mults=(1, 2, 2), num_res_blocks=2, dropout=0.1,
             norm_groups=8, image_size=32)
PAPER_COUNT = 221.21e6  # S2 Sec. V-B


def _nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _small(seed=0, **kw) -> SR3UNet:
    torch.manual_seed(seed)
    return SR3UNet(**{**SMALL, **kw}).eval()


def _inputs(B=2, size=32, C=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, C, size, size, generator=g), torch.tensor([0, 737])[:B]


def test_paper_parameter_count():
    with torch.device("meta"):
        m = cgdm_paper_unet()
        m_attn = cgdm_paper_unet(attn_resolutions=(0, 1, 2, 3, 4))
    n = _nparams(m)
    assert n == 221_271_683  # the structure in the module docstring
    assert abs(n - PAPER_COUNT) / PAPER_COUNT < 0.005  # paper: 221.21 M
    assert abs(_nparams(m_attn) - 249e6) / 249e6 < 0.005  # attention at every level: 249 M
    assert m.config == {**CGDM_PAPER_CONFIG, "mults": (1, 2, 4, 8, 16), "attn_resolutions": ()}
    blocks = m.res_blocks()
    assert len(blocks) == 5 * 2 + 2 + 5 * 3


def test_output_shape_and_timestep_forms():
    m = _small()
    x, t = _inputs()
    out = m(x, t)
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(m(x, t.float()), out)  # float timesteps embed the same
    torch.testing.assert_close(m(x, torch.tensor(737)), m(x, torch.tensor([737, 737])))  # scalar t broadcasts
    assert not torch.allclose(m(x, torch.tensor([5, 5])), m(x, torch.tensor([500, 500])))  # t matters
    assert m(torch.randn(1, 2, 16, 24), torch.tensor([3])).shape == (1, 1, 16, 24)  # any size divisible by 4
    with pytest.raises(ValueError):
        m(torch.randn(1, 2, 18, 18), torch.tensor([3]))
    m_attn = _small(attn_resolutions=(1,))
    assert _nparams(m_attn) > _nparams(m) and m_attn(x, t).shape == (2, 1, 32, 32)


def test_return_features_one_per_stage():
    m = _small()
    x, t = _inputs()
    out, feats = m(x, t, return_features=True)
    torch.testing.assert_close(out, m(x, t))
    assert len(feats) == 2 * 3 + 1
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (32, 16, 16), (32, 8, 8), (32, 8, 8),
                                                   (32, 8, 8), (32, 16, 16), (16, 32, 32)]
    assert all(f.requires_grad for f in feats)  # usable for a distillation loss


def test_set_skipped_every_block_keeps_shapes_and_changes_output():
    m = _small()
    x, t = _inputs()
    ref = m(x, t)
    names = list(m.res_blocks())
    assert len(names) == 3 * 2 + 2 + 3 * 3
    assert names[0] == "down.0.res.0" and "mid.res.1" in names and names[-1] == "up.0.res.2"
    for name in names:
        m.set_skipped({name})
        assert m.skipped() == {name}
        out = m(x, t)
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, ref), name
    m.set_skipped(set(names))  # everything skipped is still a valid network
    assert m(x, t).shape == ref.shape
    m.set_skipped(set())
    torch.testing.assert_close(m(x, t), ref)
    with pytest.raises(KeyError):
        m.set_skipped({"down.0.res.9"})


def test_prune_frees_removable_params_and_matches_skipped():
    m = _small()
    x, t = _inputs()
    full_keys = set(m.state_dict())
    # identity shortcut, 1x1-conv shortcuts (channel change in the encoder and on every decoder block), middle
    names = {"down.0.res.1", "down.1.res.0", "mid.res.0", "up.2.res.1", "up.0.res.0"}
    freed = {n: m.block_removable_params(n) for n in names}
    blk = m.res_blocks()["down.1.res.0"]
    assert freed["down.1.res.0"] == _nparams(blk) - _nparams(blk.shortcut) and _nparams(blk.shortcut) == 16 * 32 + 32
    assert freed["down.0.res.1"] == _nparams(m.res_blocks()["down.0.res.1"])
    m.set_skipped(names)
    skipped_out = m(x, t)
    before = _nparams(m)
    m.prune(names)
    assert before - _nparams(m) == sum(freed.values())
    assert set(m.pruned()) == names and not names & set(m.res_blocks())
    torch.testing.assert_close(m(x, t), skipped_out)
    assert set(m.state_dict()) <= full_keys  # the shortcut convs keep their keys
    with pytest.raises(KeyError):
        m.prune({"mid.res.0"})  # already pruned
    # pruning more later, and skipping what is left, still works
    m.set_skipped({"up.1.res.2"})
    m.prune({"down.2.res.1"})
    assert m(x, t).shape == (2, 1, 32, 32)


def test_determinism_under_manual_seed():
    a, b = _small(seed=3), _small(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    x, t = _inputs()
    assert torch.equal(a(x, t), b(x, t))
    c = _small(seed=4)
    assert not torch.equal(a(x, t), c(x, t))
    a.train(), b.train()  # dropout draws from the global RNG
    torch.manual_seed(9)
    ya = a(x, t)
    torch.manual_seed(9)
    assert torch.equal(ya, b(x, t))


def test_bf16_autocast_forward_backward():
    m = _small().train()
    x, t = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, feats = m(x, t, return_features=True)
        loss = (out.float() ** 2).mean() + sum(f.float().pow(2).mean() for f in feats)
    loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    m.eval()
    m.set_skipped({"down.1.res.0", "mid.res.1"})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x, t).shape == (2, 1, 32, 32)
    m.prune({"down.1.res.0"})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(x, t)).all()
