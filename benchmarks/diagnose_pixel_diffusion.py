"""Where a pixel-diffusion fit loses to interpolation: the denoiser at each noise level, or sampling.

    python benchmarks/diagnose_pixel_diffusion.py --method cgdm --task sr4 --max-test 16 --samples 4

Loads the method's fit exactly as ``ckmbench run`` does (fit cache, else the fit shipped
with the plugin; with neither it trains one) and prints, on the first ``--max-test`` test
maps (evenly spaced), whole-map PSNR of:

- the conditioning alone (the upsampled measurements: bicubic for the sr tasks);
- single samples with the profile's sampler, and the mean of the first k samples (k = 1 … K):
  the mean approaches the posterior mean, whose error a perfect model's single sample
  doubles, so the gap between the two says how much is lost to sampling variance;
- x̂0 predicted in one call from the noised target at several t: the denoiser's quality at
  each noise level (with ε-prediction the error at t near T is amplified by 1/√ᾱ_t).
"""

from __future__ import annotations

import argparse

import torch

from ckmbench.runner import RunConfig, TaskData

from fitted import load_fitted, mean_psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="cgdm")
    ap.add_argument("--task", default="sr4")
    ap.add_argument("--dataset", default="city")
    ap.add_argument("--profile", default="small")
    ap.add_argument("--max-test", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--t", default="20,100,300,600,999", help="noise levels for the one-call x0 estimate")
    args = ap.parse_args()

    fitted = load_fitted(RunConfig(method=args.method, task=args.task, dataset=args.dataset, profile=args.profile,
                                   max_test=args.max_test, progress=False))
    method, prep = fitted.method, fitted.prep

    obs, target, _ = TaskData(prep.test, prep.task, 0).batch_at(list(range(len(prep.test))))
    net = method.net.eval()
    up = method.upsampled(obs)
    cond, clip = method.condition(up), method.clip_range(up)
    rows = [("conditioning (upsampled measurements)", mean_psnr(up.clamp(0, 1), target))]
    samples = []
    with torch.no_grad():
        for k in range(args.samples):
            x = method.sample(net, cond, torch.Generator().manual_seed(100 + k), None, clip)
            samples.append(method.decode(x, up))
            rows.append((f"sample {k + 1}", mean_psnr(samples[-1], target)))
            rows.append((f"mean of samples 1-{k + 1}", mean_psnr(torch.stack(samples).mean(0), target)))
        x0 = method.encode(target, up)
        fn = method.model_fn(net, cond)
        lo, hi = clip
        for t in (int(v) for v in args.t.split(",")):
            tt = torch.full((x0.shape[0],), t, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
            xt = method.diffusion.q_sample(x0, tt, noise)
            x0_hat, _ = method.diffusion.split(xt, tt, fn(xt, tt))
            rows.append((f"one-call x0 estimate at t = {t}", mean_psnr(method.decode(torch.clamp(x0_hat, lo, hi), up), target)))
    print(f"\n{args.method} {args.task} on {args.dataset}, {len(prep.test)} test maps\n")
    print("| estimate | PSNR (dB) |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
