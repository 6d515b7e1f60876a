"""`vgrl pretrain` writes a loadable diffusers pipeline; `vgrl eval` scores it on fixed prompts and seeds."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

from vgrl import backbones
from vgrl.evaluation import world_eval
from vgrl.pretrain import PretrainSettings, run
from vgrl.worlds.shapes import ShapesWorld


@pytest.fixture(scope="module", params=["sd", "flow"])
def pretrained(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"pretrain-{request.param}")
    settings = PretrainSettings(family=request.param, steps=3, vae_steps=2, batch_size=4, log_every=1, threads=2)
    return request.param, run(settings, out, progress=False)


def test_pretrain_writes_curve_and_metadata(pretrained):
    family, path = pretrained
    rows = [json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == family] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["stage"] == family)
    meta = json.loads((path / "vgrl.json").read_text())
    assert meta["family"] == family and meta["settings"]["steps"] == 3


def test_pretrained_pipeline_loads_and_generates_through_diffusers(pretrained):
    family, path = pretrained
    cls = StableDiffusionPipeline if family == "sd" else StableDiffusion3Pipeline
    # the flow models have no T5: diffusers needs that said explicitly, and the T5 padding length (vgrl.json)
    absent = {"text_encoder_3": None, "tokenizer_3": None} if family == "flow" else {}
    pipe = cls.from_pretrained(path, local_files_only=True, **absent)
    extra = {"max_sequence_length": 1} if family == "flow" else {}
    image = pipe("a photo of a red circle", num_inference_steps=2, height=32, width=32, output_type="pt",
                 generator=torch.Generator().manual_seed(0), **extra).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_eval_is_deterministic_and_per_category(pretrained, tmp_path):
    family, path = pretrained
    world = ShapesWorld()
    es = world_eval.eval_set(world, "heldout", per_category=2, seed=0)
    assert es.texts == world_eval.eval_set(world, "heldout", per_category=2, seed=0).texts
    assert "single_object" not in es.categories  # the held-out split has none
    bb = backbones.load(str(path))
    a = world_eval.evaluate(bb, world, es, num_steps=2, guidance_scale=2.0, progress=False)
    b = world_eval.evaluate(bb, world, es, num_steps=2, guidance_scale=2.0, progress=False)
    assert a.as_dict() == b.as_dict()
    assert set(a.accuracy) == set(es.categories) and a.samples == len(es.texts)
    assert set(a.strict_accuracy) == set(a.extra_objects) == set(a.accuracy)
    assert all(a.strict_accuracy[c] <= a.accuracy[c] and 0 <= a.extra_objects[c] <= 1 for c in a.accuracy)
    result = world_eval.run(str(path), "shapes", "train", per_category=1, num_steps=2, out_dir=str(tmp_path))
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["overall_accuracy"] == result.overall_accuracy and (tmp_path / "grid.png").is_file()
    with pytest.raises(ValueError, match="unknown split"):
        world_eval.run(str(path), "shapes", "tset", per_category=1, num_steps=2, out_dir=str(tmp_path))


def test_load_rejects_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        backbones.load(str(tmp_path))


def _denoiser_weights(path, family):
    from safetensors.torch import load_file

    files = sorted((path / ("unet" if family == "sd" else "transformer")).glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def test_pretrain_init_continues_the_given_pipeline(pretrained, tmp_path):
    family, path = pretrained
    same = run(PretrainSettings(family=family, steps=0, threads=2, init=str(path)), tmp_path / "zero", progress=False)
    base, kept = _denoiser_weights(path, family), _denoiser_weights(same, family)
    assert set(base) == set(kept) and all(torch.equal(base[k], kept[k]) for k in base)  # 0 steps: the same model
    meta = json.loads((same / "vgrl.json").read_text())
    assert meta["init_meta"]["settings"]["steps"] == 3 and meta["settings"]["init"] == str(path)
    assert "eval_guidance" not in meta
    # the evaluation's sampling settings of the continued model carry over (the trainer evaluates with them)
    import shutil

    tuned = shutil.copytree(path, tmp_path / "tuned")
    info = json.loads((tuned / "vgrl.json").read_text())
    (tuned / "vgrl.json").write_text(json.dumps({**info, "eval_steps": 7, "eval_guidance": 2.5}))
    carried = json.loads((run(PretrainSettings(family=family, steps=0, threads=2, init=str(tuned)), tmp_path / "c",
                              progress=False) / "vgrl.json").read_text())
    assert (carried["eval_steps"], carried["eval_guidance"]) == (7, 2.5)
    assert carried["eval_settings_chosen_by"].startswith(f"carried over from --init {tuned}")
    more = run(PretrainSettings(family=family, steps=2, batch_size=4, threads=2, init=str(path)), tmp_path / "two",
               progress=False)
    moved = _denoiser_weights(more, family)
    assert any(not torch.equal(base[k], moved[k]) for k in base)


def test_pretrain_init_refuses_another_family_or_a_second_vae(pretrained, tmp_path):
    family, path = pretrained
    other = "flow" if family == "sd" else "sd"
    with pytest.raises(ValueError, match=f"its family is '{family}'"):
        run(PretrainSettings(family=other, steps=1, init=str(path)), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="keeps the autoencoder"):
        run(PretrainSettings(family=family, steps=1, init=str(path), vae=str(path / "vae")), tmp_path / "b",
            progress=False)
    with pytest.raises(ValueError, match="not a vgrl pretrained pipeline"):
        run(PretrainSettings(family=family, steps=1, init=str(tmp_path)), tmp_path / "c", progress=False)
