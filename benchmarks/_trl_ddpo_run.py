"""TRL's DDPOTrainer on vgrl's shapes SD model; run by ``benchmarks/vs_trl.py`` inside the TRL virtualenv.

Not for direct use (see ``benchmarks/vs_trl.py``). Trains with ``trl.DDPOTrainer`` (TRL 0.23.1, the
last release with DDPO; Black et al., arXiv 2305.13301) and ``trl.DefaultDDPOStableDiffusionPipeline``
on the local pipeline directory (no hub), with:

* prompts: the shapes world's training split drawn exactly as ``vgrl train`` draws them
  (:class:`vgrl.training.policy.PromptSampler`: a category uniformly, then a prompt of it), one per
  ``prompt_fn`` call, each with its checker metadata;
* reward: :class:`vgrl.rewards.shapes_checker.ShapesCheckerReward` (partial credit) on TRL's decoded
  images in [0, 1].

Every epoch is timed (wall-clock: rollout = sampling + decode, reward, update; and the process's CPU
time, which a busy machine disturbs less) and the LoRA weights are saved
every ``--save-every`` epochs as ``lora/epoch-N/pytorch_lora_weights.safetensors`` (TRL's own
format, loadable with ``StableDiffusionPipeline.load_lora_weights``). ``results.json`` holds the
settings, per-epoch rows and the checkpoints. Saving is outside the timed region.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TRL DDPOTrainer on the shapes SD model (run by vs_trl.py)")
    p.add_argument("--model", required=True, help="local diffusers StableDiffusionPipeline directory")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True, help="images per epoch (one sampling batch)")
    p.add_argument("--minibatch-size", type=int, required=True, help="TRL train_batch_size")
    p.add_argument("--grad-accum", type=int, required=True, help="TRL train_gradient_accumulation_steps")
    p.add_argument("--inner-epochs", type=int, default=1)
    p.add_argument("--num-steps", type=int, required=True)
    p.add_argument("--guidance", type=float, required=True)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--clip-range", type=float, default=1e-4)
    p.add_argument("--adv-clip", type=float, default=5.0)
    p.add_argument("--buffer-size", type=int, default=32)
    p.add_argument("--min-count", type=int, default=16)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=1, help="epochs between LoRA checkpoints")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


class Clock:
    """Accumulates wall-clock seconds of wrapped methods by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj, name: str, label: str) -> None:
        original = getattr(obj, name)

        def timed(*a, **k):
            started = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started

        setattr(obj, name, timed)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def main() -> None:
    a = _args()
    import torch

    torch.set_num_threads(a.threads)
    from accelerate import PartialState

    PartialState()  # accelerate's state must exist before TRL's pipeline is built
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from vgrl.training.policy import PromptSampler
    from vgrl.rewards.shapes_checker import ShapesCheckerReward
    from vgrl.worlds.shapes import ShapesWorld

    a.out.mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(a.resolution)
    prompts = world.prompts("train")
    sampler = PromptSampler([p.text for p in prompts], [p.meta for p in prompts],
                            [p.meta.category for p in prompts], a.seed)
    reward = ShapesCheckerReward(score="partial", resolution=a.resolution)
    last_scores: list[torch.Tensor] = []

    def prompt_fn():
        draw = sampler.draw(1)
        return draw.texts[0], draw.metas[0]

    def reward_fn(images, prompts, metadata):
        scores = reward(images.float(), list(prompts), list(metadata)).scores
        last_scores.append(scores)
        return scores, {}

    config = DDPOConfig(
        num_epochs=a.epochs, seed=a.seed, mixed_precision="no", log_with=None, logdir=str(a.out / "logs"),
        save_freq=10**9, sample_num_steps=a.num_steps, sample_eta=a.eta, sample_guidance_scale=a.guidance,
        sample_batch_size=a.batch_size, sample_num_batches_per_epoch=1, train_batch_size=a.minibatch_size,
        train_gradient_accumulation_steps=a.grad_accum, train_learning_rate=a.lr,
        train_adam_weight_decay=a.weight_decay, train_max_grad_norm=a.max_grad_norm,
        train_num_inner_epochs=a.inner_epochs, train_cfg=True, train_adv_clip_max=a.adv_clip,
        train_clip_range=a.clip_range, train_timestep_fraction=1.0, per_prompt_stat_tracking=True,
        per_prompt_stat_tracking_buffer_size=a.buffer_size, per_prompt_stat_tracking_min_count=a.min_count,
    )
    pipeline = DefaultDDPOStableDiffusionPipeline(a.model, use_lora=True)
    trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
    pipeline.set_progress_bar_config(disable=True)
    clock = Clock()
    clock.wrap(trainer, "_generate_samples", "rollout")
    clock.wrap(trainer, "compute_rewards", "reward")
    clock.wrap(trainer, "_train_batched_samples", "update")

    def save(epoch: int) -> str:
        where = a.out / "lora" / f"epoch-{epoch}"
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet))
        pipeline.sd_pipeline.save_lora_weights(save_directory=str(where), unet_lora_layers=state)
        return str(where)

    rows, checkpoints, global_step, images, seconds, cpu_seconds = [], [], 0, 0, 0.0, 0.0
    for epoch in range(a.epochs):
        last_scores.clear()
        started, cpu_started = time.perf_counter(), time.process_time()
        global_step = trainer.step(epoch, global_step)
        took, cpu_took = time.perf_counter() - started, time.process_time() - cpu_started
        images += a.batch_size
        seconds += took
        cpu_seconds += cpu_took
        scores = torch.cat(last_scores)
        row = {"epoch": epoch + 1, "images": images, "seconds": took, "wall_seconds": seconds, "cpu_seconds": cpu_took,
               "reward_mean": scores.mean().item(), "reward_std": scores.std(unbiased=False).item(),
               **{f"seconds_{k}": v for k, v in clock.take().items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if (epoch + 1) % a.save_every == 0 or epoch + 1 == a.epochs:
            checkpoints.append({"epoch": epoch + 1, "images": images, "path": save(epoch + 1)})

    import diffusers
    import peft
    import trl

    result = {"settings": vars(a) | {"out": str(a.out)}, "trl_config": config.to_dict(), "rows": rows,
              "checkpoints": checkpoints, "images": images, "wall_seconds": seconds,
              "images_per_second": images / seconds, "cpu_seconds": cpu_seconds,
              "images_per_cpu_second": images / cpu_seconds, "optimizer_steps": global_step,
              "versions": {"trl": trl.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                           "peft": peft.__version__},
              "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    (a.out / "results.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
