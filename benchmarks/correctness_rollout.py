"""Measure the rollout invariants on the tiny backbones and print a markdown table.

    python benchmarks/correctness_rollout.py [--seeds 3]

For each check, the largest absolute deviation over every backbone, compatible stochastic kernel,
step plan and seed. These are the numbers recorded in docs/correctness.md.
"""

from __future__ import annotations

import argparse

import torch

from vgrl import kernels, registry
from vgrl.backbones.flow import FlowBackbone
from vgrl.backbones.sd import SDBackbone
from vgrl.rollout import StepPlan, kernel_for, recompute_log_prob, rollout

PROMPTS = ["a red circle", "two blue squares", "three yellow crosses", "a cyan square",
           "a green triangle", "four magenta circles", "a red square left of a blue circle", "a yellow cross"]


def backbones():
    return {"sd-eps": SDBackbone.tiny(prediction="epsilon"), "sd-v": SDBackbone.tiny(prediction="v"),
            "flow": FlowBackbone.tiny(), "flow-pixel": FlowBackbone.tiny(vae=False)}


def pipeline_gap(bb, steps: int, guidance: float, seeds: torch.Tensor) -> tuple[float, float]:
    cond = bb.encode(PROMPTS[:3], guidance=guidance > 1)
    traj = rollout(bb, kernel_for(bb, "ode"), cond, steps, StepPlan.ode(steps), seeds=seeds, guidance_scale=guidance)
    extra = {"max_sequence_length": bb.max_sequence_length} if bb.name == "flow" else {}
    call = dict(prompt=PROMPTS[:3], num_inference_steps=steps, guidance_scale=guidance, height=32, width=32, **extra)
    lat = bb.pipe(latents=bb.init_noise(seeds), output_type="latent", **call).images
    img = bb.pipe(latents=bb.init_noise(seeds), output_type="pt", **call).images
    with torch.no_grad():
        return (traj.x0 - lat).abs().max().item(), (bb.decode(traj.x0) - img).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    worst = {"ODE rollout latents vs diffusers pipeline": 0.0, "decoded images vs diffusers pipeline": 0.0,
             "recompute_log_prob vs recorded": 0.0, "log-prob alone vs in batch of 8": 0.0,
             "x0 alone vs in batch of 8": 0.0, "same seed, two runs (x0 and log-prob)": 0.0}
    count = {k: 0 for k in worst}

    def note(key: str, value: float) -> None:
        worst[key] = max(worst[key], value)
        count[key] += 1

    steps = 6
    for key, bb in backbones().items():
        for seed in range(args.seeds):
            seeds = torch.tensor([3 * seed, 3 * seed + 1, 3 * seed + 2])
            if key != "flow-pixel":
                for guidance in (1.0, 3.0):
                    lat, img = pipeline_gap(bb, steps, guidance, seeds)
                    note("ODE rollout latents vs diffusers pipeline", lat)
                    note("decoded images vs diffusers pipeline", img)
            for name in kernels.available():
                cls = registry.resolve("kernels", name)
                if not (cls.stochastic and bb.prediction in cls.predictions):
                    continue
                kernel = kernel_for(bb, name)
                last = name != "cps"  # cps has no noise on the step into s = 0: it ends with an ODE step
                plans = (StepPlan((True,) * (steps - 1) + (last,), tuple(range(steps if last else steps - 1))),
                         StepPlan.window(steps, 2, 2), StepPlan.all(steps, record=[0, 5]) if last else
                         StepPlan((True,) * (steps - 1) + (False,), (0, 4)))
                for plan in plans:
                    cond = bb.encode(PROMPTS, guidance=True)
                    gen = torch.Generator().manual_seed(seed)
                    traj = rollout(bb, kernel, cond, steps, plan, gen, guidance_scale=2.0)
                    with torch.no_grad():
                        for k, i in enumerate(plan.record):
                            lp = recompute_log_prob(bb, kernel, traj, i).log_prob
                            note("recompute_log_prob vs recorded", (lp - traj.log_prob[:, k]).abs().max().item())
                    again = rollout(bb, kernel, cond, steps, plan, torch.Generator().manual_seed(seed),
                                    guidance_scale=2.0)
                    note("same seed, two runs (x0 and log-prob)", max((again.x0 - traj.x0).abs().max().item(),
                                                                      (again.log_prob - traj.log_prob).abs().max().item()))
                    for i in (0, 7):
                        alone = rollout(bb, kernel, cond.index([i]), steps, plan, seeds=traj.seeds[i:i + 1],
                                        guidance_scale=2.0)
                        note("log-prob alone vs in batch of 8", (alone.log_prob[0] - traj.log_prob[i]).abs().max().item())
                        note("x0 alone vs in batch of 8", (alone.x0[0] - traj.x0[i]).abs().max().item())
    print("| check | cases | max abs deviation |")
    print("|---|---:|---:|")
    for key, value in worst.items():
        print(f"| {key} | {count[key]} | {value:.3g} |")


if __name__ == "__main__":
    main()
