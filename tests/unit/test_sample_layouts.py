"""Samples of every layout (image, video, multiview) through the edges: reward inputs and dense maps, dense credit
on the working space, grids / GIFs / report.html, saved rollouts and preference datasets, ``check_images``.
(The remote reward protocol's layouts are tested in test_remote_reward.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vgrl import algorithms, rewards
from vgrl.algorithms._credit import to_working_space
from vgrl.algorithms._forward import noise
from vgrl.algorithms.nft import dense_optimality, nft_terms
from vgrl.backbones.base import check_images
from vgrl.data.preferences import PreferenceDataError, PreferenceDataset, pairs_from_run, save_rollouts, write_index
from vgrl.evaluation.report import write_report
from vgrl.media import image_grid, save_animation, save_samples
from vgrl.rewards.base import Reward, RewardInputError
from vgrl.rewards.compose import Compose
from vgrl.training.tracking import Tracker
from vgrl.types import Cond, RewardOutput, Trajectory

COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0],
                        [1.0, 0.0, 1.0]])


def flat_clips(b: int = 2, n: int = 3, h: int = 4, w: int = 6) -> torch.Tensor:
    """``(b, n, 3, h, w)``: frame k of sample i is the flat colour ``COLOURS[i * n + k]``."""
    return COLOURS[: b * n].view(b, n, 3, 1, 1).expand(b, n, 3, h, w).clone()


class FrameMeans(Reward):
    """Test reward over videos and view sets: dense = per-frame, per-pixel channel mean ``(B, N, H, W)``."""

    name, differentiable, granularity, layouts = "frame_means", False, "dense", ("video", "multiview")

    def __init__(self, per_frame: bool = False) -> None:
        super().__init__()
        self.per_frame = per_frame

    def compute(self, images, prompts, metadata):
        dense = images.mean(dim=2)
        if self.per_frame:  # one credit per frame: (B, N, 1, 1)
            dense = dense.mean(dim=(-2, -1), keepdim=True)
        return RewardOutput(dense.flatten(1).mean(dim=1), dense=dense)


# ---------------------------------------------------------------------------------------------- rewards
def test_reward_takes_the_layouts_it_declares_and_refuses_others_in_one_line():
    x = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    jpeg = rewards.get("jpeg")
    per_frame = torch.stack([jpeg(x[:, k], ["", ""]).scores for k in range(3)], dim=1)
    for layout in (None, "video", "multiview"):  # a clip scores the mean size of its frames
        assert torch.allclose(jpeg(x, ["", ""], layout=layout).scores, per_frame.mean(dim=1), rtol=0, atol=1e-6)
    image_only = rewards.get("shapes_checker")
    with pytest.raises(RewardInputError) as e:
        image_only(x, ["", ""])
    assert "\n" not in str(e.value)
    assert str(e.value) == ("reward 'shapes_checker' accepts image (B, C, H, W) samples only, got a 5-D (video or "
                            "multiview) batch of shape (2, 3, 3, 16, 16)")
    with pytest.raises(RewardInputError, match=r"accepts video \(B, F, C, H, W\) or multiview \(B, V, C, H, W\) samples only, got an image batch"):
        FrameMeans()(x[:, 0], ["", ""], layout="image")
    with pytest.raises(RewardInputError, match=r"a video \(B, F, C, H, W\) batch has 5 dimensions"):
        jpeg(x[:, 0], ["", ""], layout="video")
    with pytest.raises(RewardInputError, match="layout must be one of image, video, multiview, got 'clip'"):
        jpeg(x, ["", ""], layout="clip")
    with pytest.raises(RewardInputError, match=r"images must have shape \(B, F, 3, H, W\)"):
        FrameMeans()(x[:, :, :1], ["", ""])


def test_dense_maps_keep_the_layouts_leading_axes():
    x = flat_clips()
    out = FrameMeans()(x, ["", ""], layout="multiview")
    assert out.dense.shape == (2, 3, 4, 6) and FrameMeans(per_frame=True)(x, ["", ""]).dense.shape == (2, 3, 1, 1)

    class Flat(FrameMeans):
        def compute(self, images, prompts, metadata):
            return RewardOutput(images.flatten(1).mean(1), dense=images.mean(dim=(1, 2)))  # (B, H, W): frames lost

    with pytest.raises(TypeError, match=r"dense must have shape \(2, 3, h, w\), got \(2, 4, 6\)"):
        Flat()(x, ["", ""])


def test_compose_and_win_rate_accept_what_their_terms_accept():
    both = Compose([(rewards.get("jpeg"), 1.0, "a"), (rewards.get("jpeg", quality=50), 1.0, "b")])
    assert both.layouts == ("image", "video", "multiview")
    mixed = Compose([(rewards.get("jpeg"), 1.0, "a"), (rewards.get("shapes_checker"), 1.0, "b")])
    assert mixed.layouts == ("image",)
    with pytest.raises(ValueError, match="no common sample layout"):
        Compose([(FrameMeans(), 1.0, "a"), (rewards.get("shapes_checker"), 1.0, "b")])
    x = torch.rand(4, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = rewards.get("win_rate", reward=rewards.get("jpeg"))(x, ["p", "p", "q", "q"])
    assert sorted(out.scores.tolist()) == [0.0, 0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------- dense credit
def test_credit_maps_onto_the_working_space_of_any_layout():
    g = torch.Generator().manual_seed(0)
    image_map = torch.rand(2, 32, 32, generator=g)
    got = to_working_space(image_map, torch.zeros(2, 4, 8, 8))
    assert torch.equal(got, F.interpolate(image_map[:, None], size=(8, 8), mode="area"))  # the 2-D resize, bit-equal
    per_frame = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]]).view(2, 4, 1, 1)
    w = to_working_space(per_frame, torch.zeros(2, 4, 5, 8, 8))  # (B, F, C, h, w) latents
    assert w.shape == (2, 4, 1, 8, 8) and torch.equal(w.expand(2, 4, 5, 8, 8)[:, :, 3, 2, 7], per_frame[..., 0, 0])
    w = to_working_space(per_frame, torch.zeros(2, 2, 5, 8, 8))  # 4 frames -> 2 latent frames: pairwise means
    assert torch.allclose(w[:, :, 0, 0, 0], torch.tensor([[0.15, 0.35], [1.5, 3.5]]))
    video_map = torch.rand(2, 3, 16, 16, generator=g)
    w = to_working_space(video_map, torch.zeros(2, 3, 4, 4, 4))
    for k in range(3):  # equal frame counts: each frame's map takes the image resize
        assert torch.allclose(w[:, k], F.interpolate(video_map[:, k:k + 1], size=(4, 4), mode="area"), atol=1e-6)
    with pytest.raises(ValueError, match="needs a working space"):
        to_working_space(video_map, torch.zeros(2, 4, 4, 4))


def test_nft_dense_credit_per_frame(tiny_backbones):
    flow = tiny_backbones["flow"]  # its forward process works on any sample shape
    adv, scores = torch.tensor([1.0, -1.0]), torch.tensor([0.75, 0.25])
    video_map = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    p = dense_optimality(adv, scores, video_map, 1.0, 5.0, 1e-6)
    assert p.shape == (2, 3, 4, 4)
    for k in range(3):  # no centring: each frame's map is optimality of that frame as an image map
        assert torch.equal(p[:, k], dense_optimality(adv, scores, video_map[:, k], 1.0, 5.0, 1e-6))
    # the loss with a per-frame optimality: the mean over frames of each frame's loss under its own scalar p
    g = torch.Generator().manual_seed(3)
    x0, eps, pred, old = (torch.randn(2, 3, 2, 4, 4, generator=g) for _ in range(4))
    t = torch.tensor([0.5, 0.25])
    pf = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.6, 1.0]])
    nz = noise(flow, x0, t, eps)
    per, _, _ = nft_terms(pred, old, nz, x0, pf.view(2, 3, 1, 1), 0.5, "none")
    frames = [nft_terms(pred[:, k], old[:, k], noise(flow, x0[:, k], t, eps[:, k]),
                        x0[:, k], pf[:, k], 0.5, "none")[0] for k in range(3)]
    assert torch.allclose(per, torch.stack(frames, dim=1).mean(dim=1), atol=1e-6)


def _traj(x0: torch.Tensor) -> Trajectory:
    b, shape, empty = len(x0), tuple(x0.shape[1:]), torch.empty((len(x0), 0))
    return Trajectory(x_t=torch.empty((b, 0, *shape)), x_next=torch.empty((b, 0, *shape)), t=empty, s=empty,
                      log_prob=empty, step_idx=torch.empty(0, dtype=torch.long), x0=x0, seeds=torch.arange(b),
                      cond=Cond(embeds=torch.zeros(b, 2, 3)), guidance_scale=1.0, num_steps=2,
                      sde_steps=torch.zeros(2, dtype=torch.bool))


def test_prepare_carries_per_frame_credit_for_nft_and_dpo():
    clips = torch.rand(4, 3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    out = FrameMeans()(clips, [""] * 4)
    traj, groups = _traj(torch.randn(4, 3, 2, 4, 4)), torch.tensor([0, 0, 1, 1])
    nft = algorithms.get("nft", dense_credit=1.0, dense_center="group").prepare(traj, out, groups)
    assert nft.weights.shape == (4, 3, 8, 8) and bool(((nft.weights >= 0) & (nft.weights <= 1)).all())
    dpo = algorithms.get("diffusion_dpo", dense_credit=2.0).prepare(traj, out, groups)
    assert dpo.weights.shape == (2, 3, 8, 8) and torch.allclose(dpo.weights.flatten(1).mean(1), torch.ones(2))
    assert dpo.traj.x0.shape == (2, 2, 3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, F\|V, H, W\) per frame or view, with B = 4, got \(4, 3\)"):
        algorithms.get("nft", dense_credit=1.0).prepare(traj, RewardOutput(out.scores, dense=out.dense[..., 0, 0]),
                                                        groups)


# ---------------------------------------------------------------------------------------------- grids, GIFs, report
@pytest.mark.parametrize("layout", ["video", "multiview"])
def test_a_clip_or_view_set_is_one_row_per_sample(layout):
    grid = np.asarray(image_grid(flat_clips(), pad=1, layout=layout))
    assert grid.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    for i in range(2):
        for k in range(3):
            cell = grid[1 + i * 5: 1 + i * 5 + 4, 1 + k * 7: 1 + k * 7 + 6]
            assert (cell == (COLOURS[i * 3 + k] * 255).numpy()).all()
    with pytest.raises(ValueError, match=r"must be a video batch|must be a multiview batch"):
        image_grid(flat_clips()[:, 0], layout=layout)


def test_video_gif_has_every_frame(tmp_path):
    clips = flat_clips(b=2, n=3)
    path = save_animation(clips, tmp_path / "v.gif", "video", nrow=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.info["loop"] == 0
        for k in range(3):
            gif.seek(k)
            frame = np.asarray(gif.convert("RGB"))
            assert frame.shape == (4 + 4, 2 * 6 + 6, 3)
            for i in range(2):  # flat colours survive the GIF palette exactly
                assert (frame[2:6, 2 + i * 8: 2 + i * 8 + 6] == (COLOURS[i * 3 + k] * 255).numpy()).all()
    assert [p.name for p in save_samples(clips, tmp_path / "g.png", "video")] == ["g.png", "g.gif"]
    assert [p.name for p in save_samples(clips, tmp_path / "m.png", "multiview")] == ["m.png"]


def test_tracker_and_report_show_video_grids(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log({"kind": "train", "iteration": 1, "images": 2, "wall_seconds": 1.0, "reward_mean": 0.5})
        png = tracker.image("eval_before", flat_clips(), 0, layout="video")
        tracker.image("eval_after", flat_clips(), 1, layout="multiview")
    assert png == tmp_path / "grids" / "eval_before.png" and (tmp_path / "grids" / "eval_before.gif").is_file()
    assert not (tmp_path / "grids" / "eval_after.gif").exists()
    html = write_report(tmp_path).read_text()
    assert html.count("data:image/gif;base64,") == 1 and "alt='eval_before.gif'" in html
    assert "alt='eval_after.png'" in html


# ---------------------------------------------------------------------------------------------- datasets
def test_saved_video_rollouts_become_a_clip_preference_dataset(tmp_path):
    clips = torch.rand(4, 3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    u8 = (clips * 255).round() / 255
    index = save_rollouts(tmp_path / "run" / "rollouts" / "iter_00001", clips, ["p", "p", "q", "q"], [None] * 4,
                          [0.9, 0.1, 0.2, 0.8], [0, 0, 1, 1], [7, 7, 8, 8], [1, 2, 3, 4], layout="video")
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    assert rows[1]["layout"] == "video" and rows[1]["frames"] == [f"images/0001/{k:03d}.png" for k in range(3)]
    assert "image" not in rows[1]
    data = pairs_from_run(tmp_path / "run", tmp_path / "pairs")
    assert data.layout == "video" and len(data) == 2 and data.records[0].chosen[0] == "images/iter_00001_0000/000.png"
    chosen, rejected = data.images([0, 1])
    assert chosen.shape == (2, 3, 3, 8, 8)  # (n, F, 3, H, W), pixels exact through 8-bit PNG
    assert torch.allclose(chosen, u8[[0, 3]], atol=1e-6) and torch.allclose(rejected, u8[[1, 2]], atol=1e-6)
    copy = PreferenceDataset.load(data.save(tmp_path / "copy"))
    assert copy.layout == "video" and [r.raw for r in copy.records] == [r.raw for r in data.records]
    assert torch.equal(copy.images([1])[0], data.images([1])[0])


def test_view_set_records_are_validated(tmp_path):
    frames = [f"v/{k}.png" for k in range(4)]
    for k, rel in enumerate(frames):
        (tmp_path / "v").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8) if k < 3 else (6, 6), (k * 40, 0, 0)).save(tmp_path / rel)
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    rows = [{"id": "ok", "layout": "multiview", "prompt": "a", "chosen": frames[:2], "rejected": frames[1:3]},
            {"id": "short", "layout": "multiview", "prompt": "b", "chosen": frames[:2], "rejected": frames[:1]},
            {"id": "size", "layout": "multiview", "prompt": "c", "chosen": frames[:2], "rejected": frames[2:4]},
            {"id": "str", "layout": "multiview", "prompt": "d", "chosen": "img.png", "rejected": frames[:2]},
            {"id": "mixed", "prompt": "e", "chosen": "img.png", "rejected": frames[0]},
            {"id": "bad", "layout": "clip", "prompt": "f", "chosen": "img.png", "rejected": frames[0]}]
    with pytest.raises(PreferenceDataError) as e:
        PreferenceDataset.load(write_index(tmp_path / "pairs.jsonl", rows))
    problems = e.value.problems
    assert len(problems) == 5 and problems[0].startswith("line 2 (id 'short'): chosen has 2 frames (views) but")
    assert "unequal image sizes: rejected[1] is 6x6, rejected[0] is 8x8" in problems[1]
    assert "chosen: a multiview sample is a non-empty list of image paths" in problems[2]
    assert problems[3] == ("line 5 (id 'mixed'): layout 'image' but line 1 has layout 'multiview' with 2 frames "
                           "(views): a dataset holds one layout and one frame (view) count")
    assert "layout must be one of image, video, multiview, got 'clip'" in problems[4]
    data = PreferenceDataset.load(write_index(tmp_path / "pairs.jsonl", rows[:1]))
    assert data.layout == "multiview" and data.images([0])[0].shape == (1, 2, 3, 8, 8)


# ---------------------------------------------------------------------------------------------- backbones
def test_check_images_knows_the_layout():
    check_images(torch.zeros(2, 3, 8, 8), 8)
    check_images(torch.zeros(2, 5, 3, 8, 8), 8, "video")
    with pytest.raises(ValueError, match=r"takes RGB images \(B, 3, 8, 8\) .* got \(2, 5, 3, 8, 8\)"):
        check_images(torch.zeros(2, 5, 3, 8, 8), 8)
    with pytest.raises(ValueError, match=r"takes RGB multiview samples \(B, V, 3, 8, 8\)"):
        check_images(torch.zeros(2, 3, 8, 8), 8, "multiview")
