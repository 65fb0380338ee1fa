"""LiCGDM (S2 §IV, Alg. 3): CGDM made lighter by layer pruning and knowledge distillation.

1. Start from the CGDM fit of the same train task, dataset, profile and seed (fit cache).
2. Value of each prunable layer (a Res⁺ block; removing it leaves its shortcut, so every
   shape stays valid): v_i = E‖ε_teacher − ε_{without block i}‖² over training batches and
   random t (eqs. 44–47). Weight w_i = the parameters its removal frees.
3. Choose the set of blocks to remove with the least total value among the sets that free at
   least ``prune_fraction`` (35 %) of the parameters: a 0/1 knapsack solved exactly by
   dynamic programming over the Pareto frontier of (freed parameters, value) (eqs. 48–49).
4. Prune, then fine-tune with L_task + λ_O·L_OKD + λ_F·L_FKD (eqs. 50–52, λ = 1): the task
   loss, the teacher's ε as output target, and each stage's output features as feature
   targets.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ckmbench.errors import CkmError
from ckmbench.fitting import report_fit
from ckmbench.metrics.cost import count_parameters
from ckmbench.training import Trainer, TrainConfig, move_batch, step_seed

from .srdiff import SRDiffusion, check_sr


def knapsack_min_value(values: list[float], weights: list[int], need: int) -> tuple[set[int], float, int]:
    """Items with the least total value whose total weight is at least ``need`` (exact DP).

    States are (capped weight, value, items); after each item only the Pareto-optimal states
    are kept (no other state frees as much or more for less value), which is exact because
    weights are capped at ``need``. Raises when even every item together is too light.
    """
    if sum(weights) < need:
        raise CkmError(f"the prunable layers hold {sum(weights)} parameters, fewer than the {need} to remove: "
                       "lower prune_fraction")
    states = {0: (0.0, frozenset())}  # capped weight -> (least value, items)
    for i, (v, w) in enumerate(zip(values, weights)):
        new = dict(states)
        for cw, (cv, items) in states.items():
            nw = min(need, cw + int(w))
            nv = cv + float(v)
            if nw not in new or nv < new[nw][0]:
                new[nw] = (nv, items | {i})
        frontier, best = {}, float("inf")
        for cw in sorted(new, reverse=True):  # keep a state only if it is cheaper than every heavier one
            if new[cw][0] < best:
                frontier[cw] = new[cw]
                best = new[cw][0]
        states = frontier
    value, items = states[need]
    return set(items), value, sum(weights[i] for i in items)


class LiCGDM(SRDiffusion):
    """CGDM pruned by the knapsack over layer values, then distilled from CGDM."""

    name = "licgdm"

    def __init__(self, profile: str = "small", hparams: dict | None = None):
        super().__init__(profile, hparams)
        self.pruned: list[str] = []
        self.params_before: int | None = None

    # ---------------------------------------------------------------- steps 1-3
    @torch.no_grad()
    def layer_values(self, teacher, train, ctx) -> dict[str, float]:
        """v_i = mean over batches and random t of ‖ε_teacher − ε_without-i‖² (per element)."""
        hp = self.hparams
        net = copy.deepcopy(teacher).eval()
        names = list(net.res_blocks())
        sums = dict.fromkeys(names, 0.0)
        n = int(hp.get("value_batches", 2))
        bs = int(hp.get("value_batch_size", hp.get("batch_size", 8)))
        for b in range(n):
            gen = torch.Generator(device=ctx.device).manual_seed(step_seed(ctx.seed, 0, b, "licgdm-value"))
            idx = [(b * bs + k) % len(train) for k in range(bs)]
            x0, cond = self.training_pair(move_batch(train.batch_at(idx), ctx.device), gen)
            t = torch.randint(0, self.diffusion.T, (x0.shape[0],), generator=gen, device=ctx.device)
            noise = torch.randn(x0.shape, generator=gen, device=ctx.device)
            xt = self.diffusion.q_sample(x0, t, noise)
            inp = torch.cat([xt, cond], dim=1)
            net.set_skipped(set())
            ref = net(inp, t)
            for name in names:
                net.set_skipped({name})
                sums[name] += float(F.mse_loss(net(inp, t), ref))
        net.set_skipped(set())
        return {k: v / n for k, v in sums.items()}

    def choose(self, values: dict[str, float]) -> tuple[list[str], int]:
        names = list(values)
        weights = [self.net.block_removable_params(k) for k in names]
        need = int(round(float(self.hparams.get("prune_fraction", 0.35)) * count_parameters(self.net)))
        items, _, freed = knapsack_min_value([values[k] for k in names], weights, need)
        return sorted(names[i] for i in items), freed

    # ---------------------------------------------------------------- step 4
    def distill_loss(self, teacher):
        hp = self.hparams
        lam_o, lam_f = float(hp.get("lambda_okd", 1.0)), float(hp.get("lambda_fkd", 1.0))

        def loss(net, batch, generator):
            x0, cond = self.training_pair(batch, generator)
            B = x0.shape[0]
            t = torch.randint(0, self.diffusion.T, (B,), generator=generator, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            inp = torch.cat([self.diffusion.q_sample(x0, t, noise), cond], dim=1)
            out, feats = net(inp, t, return_features=True)
            with torch.no_grad():
                t_out, t_feats = teacher(inp, t, return_features=True)
            task = F.mse_loss(out.float(), self.diffusion.target(x0, noise, t).float())
            okd = F.mse_loss(out.float(), t_out.float())
            fkd = sum(F.mse_loss(a.float(), b.float()) for a, b in zip(feats, t_feats)) / len(feats)
            return task + lam_o * okd + lam_f * fkd

        return loss

    def fit(self, train, val, task, ctx) -> None:
        check_sr(self.name, task)
        if ctx.fit_dependency is None:
            raise CkmError("licgdm starts from a cgdm fit: run it through ckmbench run (the fit cache provides cgdm)")
        cgdm = ctx.fit_dependency("cgdm")
        teacher = cgdm.net.to(ctx.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        mine = {k: self.hparams.get(k) for k in ("base", "mults", "num_res_blocks", "attn_resolutions", "image_channels")}
        theirs = {k: cgdm.hparams.get(k) for k in mine}
        if {k: list(v) if isinstance(v, tuple) else v for k, v in mine.items()} != \
                {k: list(v) if isinstance(v, tuple) else v for k, v in theirs.items()}:
            raise CkmError(f"licgdm's architecture {mine} differs from the cgdm fit's {theirs}: keep them equal")
        self.net.load_state_dict(teacher.state_dict())
        self.net.to(ctx.device)
        self.params_before = count_parameters(self.net)
        values = self.layer_values(teacher, train, ctx)
        self.pruned, freed = self.choose(values)
        self.net.prune(self.pruned)
        cfg = TrainConfig.from_hparams(self.hparams, prefix="finetune_")
        trainer = Trainer(self.net, cfg, ctx, name="student")
        result = trainer.fit(train, self.distill_loss(teacher), self.validation_fn(val, cfg.batch_size))
        report_fit(ctx, result, variant=self.variant(), params_before=self.params_before,
                   params_after=count_parameters(self.net), pruned=self.pruned, freed_params=freed,
                   layer_values=values)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "pruned": list(self.pruned), "params_before": self.params_before}

    def load_state_dict(self, state: dict) -> None:
        if "pruned" not in state or "net" not in state:
            raise CkmError("checkpoint is not a licgdm checkpoint (no 'pruned' layer list): pass one written by "
                           "ckmbench run -m licgdm")
        self.net = self.build_net()
        self.pruned = list(state["pruned"])
        self.params_before = state.get("params_before")
        self.net.prune(self.pruned)
        self.net.load_state_dict(state["net"])
