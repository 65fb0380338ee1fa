"""How far physdiff's physics losses are from the floor its frozen autoencoder sets.

    python benchmarks/diagnose_physics_losses.py --max-test 240 [--set edge_loss=false ...]

The edge, regional and pyramid losses compare a *decoded* map with the true one, so even a
perfect latent cannot bring them below the terms of the autoencoder's own reconstruction
decode(encode(u)). Loads the physdiff fit exactly as ``ckmbench run`` does (fit cache, else it
trains one) and the RegionUNet of its task, and prints, on the first ``--max-test`` test maps
(evenly spaced), PSNR and the three unweighted terms of:

- the autoencoder's reconstruction (the floor);
- the two-call DDIM x̂0 the losses see in training (one z_T per map, seeded);
- the prediction as scored (the profile's DDIM steps).

A term at its floor gives the loss nothing to improve; docs/methods/physdiff.md reads the table.
"""

from __future__ import annotations

import argparse

import torch

from ckmbench.cli import _parse_sets  # the same key=value parsing as `ckmbench run --set`
from ckmbench.latent.physics_losses import edge_loss, pyramid_loss, region_loss
from ckmbench.runner import RunConfig, TaskData
from ckmbench_plugins.latent.regionunet import fitted_regionunet, region_hparams

from fitted import load_fitted, mean_psnr


def terms(method, regions, u_hat, target, env) -> dict:
    """PSNR and the three physics terms (unweighted, batch means) of ``u_hat`` against ``target``."""
    hp = method.hparams
    with torch.no_grad():
        return {
            "PSNR (dB)": mean_psnr(u_hat.clamp(0, 1), target),
            "edge": float(edge_loss(u_hat, target, float(hp["edge_alpha"]), float(hp["edge_tau"]))),
            "regional": float(region_loss(regions.probabilities(u_hat, env), regions.probabilities(target, env))),
            "pyramid": float(pyramid_loss(u_hat, target, int(hp["pyramid_levels"]))),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="envgen-static")
    ap.add_argument("--dataset", default="city")
    ap.add_argument("--profile", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-test", type=int, default=64)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    fitted = load_fitted(RunConfig(method="physdiff", task=args.task, dataset=args.dataset, profile=args.profile,
                                   max_test=args.max_test, progress=False, seed=args.seed,
                                   hparams=_parse_sets(tuple(args.overrides))))
    method, prep, ctx = fitted.method, fitted.prep, fitted.ctx
    regions, _ = fitted_regionunet(fitted.train, fitted.val, prep.train_task, ctx, region_hparams(method.hparams))

    obs, target, _ = TaskData(prep.test, prep.task, args.seed).batch_at(list(range(len(prep.test))))
    env = method.condition(obs)
    net = method.net.eval()
    with torch.no_grad():
        z0 = method.latent(target)
        two_call = method.ddm.sample(lambda z, t: net(z, t, env), tuple(z0.shape),
                                     int(method.hparams["physics_ddim_steps"]),
                                     generator=torch.Generator().manual_seed(7), device=z0.device)
        rows = {
            "autoencoder reconstruction (the floor)": method.decode_for_loss(z0),
            f"two-call DDIM x̂0 (what the losses see, I = {int(method.hparams['physics_ddim_steps']) - 1})":
                method.decode_for_loss(two_call),
        }
    rows["prediction as scored"] = method.predict(obs, ctx)
    print(f"\nphysdiff {args.task} on {args.dataset}, {len(prep.test)} test maps, seed {args.seed}"
          f"{' with ' + ', '.join(args.overrides) if args.overrides else ''}\n")
    header = None
    for name, u_hat in rows.items():
        values = terms(method, regions, u_hat, target, env)
        if header is None:
            header = list(values)
            print("| map | " + " | ".join(header) + " |\n| --- |" + " --- |" * len(header))
        print(f"| {name} | " + " | ".join(f"{values[k]:.4f}" if k != "PSNR (dB)" else f"{values[k]:.2f}"
                                          for k in header) + " |")


if __name__ == "__main__":
    main()
