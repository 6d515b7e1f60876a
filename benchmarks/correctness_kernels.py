"""Largest deviations measured by the kernel conformance checks, over a few seeds, shapes and schedules.

Run: ``PYTHONPATH=src python benchmarks/correctness_kernels.py``; prints a markdown table.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from vgrl import kernels, registry

SEEDS = (0, 1, 2)
SHAPES = ((2, 4, 8, 8), (4, 3, 16, 16), (1, 16, 32, 32))
STEPS = 10
NOISE_OPT = {"ddim": "eta", "flow_sde": "noise_level", "dance_sde": "eta", "cps": "noise_level"}
PRED_TYPE = {"epsilon": "epsilon", "v": "v_prediction"}


def ddim_scheduler(prediction, clip=False):
    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=clip,
                        set_alpha_to_one=False, steps_offset=1, prediction_type=PRED_TYPE[prediction])
    sch.set_timesteps(STEPS)
    return sch


def grid(prediction):
    """(t, s) pairs of a schedule: DDIM timesteps, or shifted flow sigmas (the step into s = 0 left out)."""
    if prediction == "flow":
        sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sch.set_timesteps(STEPS)
        sig = sch.sigmas.tolist()
        return [(sig[i], sig[i + 1]) for i in range(STEPS - 1)]
    sch = ddim_scheduler(prediction)
    ratio = sch.config.num_train_timesteps // STEPS
    return [(t, t - ratio) for t in sch.timesteps.tolist()]


def build(name, prediction, **options):
    if "scheduler" in registry.resolve("kernels", name).runtime_args and prediction != "flow":
        options["scheduler"] = ddim_scheduler(prediction)
    return kernels.get(name, **options)


def dev(a, b):
    return (a.to(torch.float32) - b.to(torch.float32)).abs().max().item()


def main():
    worst = defaultdict(float)
    tol = {}

    def record(check, value, tolerance):
        worst[check] = max(worst[check], value)
        tol[check] = tolerance

    for name in kernels.available():
        cls = registry.resolve("kernels", name)
        if not cls.stochastic:
            continue
        for prediction in cls.predictions:
            kern = {r: build(name, prediction, reduction=r) for r in ("mean", "sum")}
            limit = build(name, prediction, **{NOISE_OPT[name]: 1e-6})
            for seed in SEEDS:
                for shape in SHAPES:
                    g = torch.Generator().manual_seed(seed)
                    for t, s in grid(prediction):
                        x, pred, noise = (torch.randn(shape, generator=g) for _ in range(3))
                        tt, ss = torch.full((shape[0],), t), torch.full((shape[0],), s)
                        for red, k in kern.items():
                            tr = k.step(pred, x, tt, ss, prediction=prediction, noise=noise)
                            elem = torch.distributions.Normal(tr.mean, tr.std).log_prob(tr.x_next)
                            ref = elem.mean(tuple(range(1, elem.ndim))) if red == "mean" else \
                                elem.sum(tuple(range(1, elem.ndim)))
                            record(f"{name}/{prediction}: log_prob vs Normal ({red})", dev(tr.log_prob, ref), 1e-6)
                            again = k.step(pred, x, tt, ss, prediction=prediction, x_next=tr.x_next)
                            record(f"{name}/{prediction}: re-scored log_prob ({red})", dev(again.log_prob, tr.log_prob),
                                   1e-6)
                        lim = limit.step(pred, x, tt, ss, prediction=prediction, noise=noise)
                        ode = limit.ode().step(pred, x, tt, ss, prediction=prediction)
                        record(f"{name}/{prediction}: mean at noise 1e-6 vs ode", dev(lim.mean, ode.x_next), 1e-5)

    for prediction in ("epsilon", "v"):
        for clip in (False, True):
            sch = ddim_scheduler(prediction, clip)
            ddim, ode = kernels.get("ddim", scheduler=sch, eta=1.0), kernels.get("ode", scheduler=sch)
            for seed in SEEDS:
                for shape in SHAPES:
                    g = torch.Generator().manual_seed(seed)
                    for t, s in grid(prediction):
                        x, pred, noise = (torch.randn(shape, generator=g) for _ in range(3))
                        tt, ss = torch.full((shape[0],), t), torch.full((shape[0],), s)
                        ref = sch.step(pred, t, x, eta=1.0, variance_noise=noise).prev_sample
                        record(f"ddim/{prediction} clip={clip}: x_next vs DDIMScheduler.step",
                               dev(ddim.step(pred, x, tt, ss, prediction=prediction, noise=noise).x_next, ref), 1e-5)
                        ref = sch.step(pred, t, x, eta=0.0).prev_sample
                        record(f"ode/{prediction} clip={clip}: x_next vs DDIMScheduler.step(eta=0)",
                               dev(ode.step(pred, x, tt, ss, prediction=prediction).x_next, ref), 1e-5)

    ode = kernels.get("ode")
    for seed in SEEDS:
        for shape in SHAPES:
            g = torch.Generator().manual_seed(seed)
            sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
            sch.set_timesteps(STEPS)
            x = torch.randn(shape, generator=g)
            for i, timestep in enumerate(sch.timesteps):
                v = torch.randn(shape, generator=g)
                ref = sch.step(v, timestep, x).prev_sample
                ours = ode.step(v, x, sch.sigmas[i], sch.sigmas[i + 1], prediction="flow").x_next
                record("ode/flow: x_next vs FlowMatchEulerDiscreteScheduler.step", dev(ours, ref), 1e-6)
                x = ref

    print(f"{len(SEEDS)} seeds x shapes {[list(s) for s in SHAPES]} x every step of a {STEPS}-step schedule\n")
    print("| check | max abs deviation | tolerance | ok |")
    print("|---|---|---|---|")
    for check in worst:
        print(f"| {check} | {worst[check]:.2e} | {tol[check]:.0e} | {'yes' if worst[check] <= tol[check] else 'NO'} |")


if __name__ == "__main__":
    main()
