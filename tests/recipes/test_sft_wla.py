"""sft_wla recipe: in-memory windows match wlarl.data.SFTWindows; presets parse; a debug run writes what it should."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wlarl.cli import parse_config
from wlarl.data import SFTWindows, collate_windows, load_episodes, write_episodes
from wlarl.types import Observation

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sft_wla.py"
IMG = 32


def load_recipe():
    spec = importlib.util.spec_from_file_location("sft_wla_recipe", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def fake_episodes(num: int = 4, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(num):
        t = int(rng.integers(6, 14))
        pos = np.cumsum(rng.normal(0, 0.05, (t + 1, 4)), 0).astype(np.float32)
        img = np.zeros((t + 1, IMG, IMG, 3), np.uint8)
        for i in range(t + 1):  # a moving square
            x = int(np.clip(16 + 40 * pos[i, 0], 2, IMG - 6))
            img[i, 8:14, x : x + 4] = 255
            img[i, ..., 2] = 40
        eps.append(
            {
                "image": img,
                "state": pos,
                "action": np.clip(rng.normal(0, 0.5, (t, 4)), -1, 1).astype(np.float32),
                "reward": np.zeros(t, np.float32),
                "success": np.arange(t) >= t - 2,
                "subtask": ["reach the puck"] * (t // 2) + ["push the puck"] * (t - t // 2),
                "instruction": ["Push the puck to the goal.", "Reach for the goal."][e % 2],
                "task_name": ["push-v3", "reach-v3"][e % 2],
                "seed": e,
                "noise_mode": ["clean", "random_segments"][e % 2],
            }
        )
    return eps


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demos") / "data"
    write_episodes(fake_episodes(), path, {"image_size": IMG, "camera": "corner", "tasks": ["push-v3", "reach-v3"]})
    return path


@pytest.mark.parametrize("horizon", [1, 4, 9])
def test_window_batches_match_sftwindows(dataset, horizon):
    mod = load_recipe()
    ep = load_episodes(dataset)
    ref = SFTWindows(ep, horizon=horizon)
    ours = mod.WindowBatches(ep, horizon, ["clean"], bc_successful_only=True)
    assert len(ours) == len(ref)
    idx = np.arange(len(ref))
    got, want = ours.batch(idx), collate_windows([ref[i] for i in idx])
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key
    # actions imitated only from clean, successful episodes
    clean = np.asarray([ep.dataset[int(r)]["noise_mode"] == "clean" for r in ours.rows])
    assert np.array_equal(got["action_weight"].numpy() > 0, clean)


@pytest.mark.parametrize("preset", ["debug", "default", "frame_probe"])
def test_presets_parse(preset):
    mod = load_recipe()
    cfg = parse_config(mod.SFTWLAConfig, "sft_wla", ["--config", preset, "--dataset_path", "x"])
    assert cfg.max_steps >= 1 and cfg.action_head in ("gaussian", "flow")
    # the frame-probe preset is the default one plus the probe on fresh layouts
    assert (cfg.meta_state_frames > 0) == (preset == "frame_probe")


def test_bad_config_says_what_to_change():
    mod = load_recipe()
    with pytest.raises(ValueError, match="action_head"):
        mod.SFTWLAConfig(action_head="diffusion")


@pytest.mark.parametrize("head", ["gaussian", "flow"])
def test_debug_run(dataset, tmp_path, head):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [
        sys.executable, str(RECIPE), "--config", "debug", "--dataset_path", str(dataset), "--output_dir", str(out),
        "--latent_size", "4", "--max_steps", "4", "--tokenizer_steps", "2", "--logging_steps", "2",
        "--batch_size", "8", "--action_head", head, "--eval_episodes_per_task", "0", "--torch_threads", "1",
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    joint = [r for r in rows if r["stage"] == "joint"]
    assert [r["step"] for r in joint] == [2, 4]
    for key in ("loss", "loss/action", "loss/world_latent", "loss/world_state", "loss/world_success", "loss/subtask"):
        assert np.isfinite(joint[-1][key]), key
    assert any(r["stage"] == "tokenizer" for r in rows)
    assert json.loads((out / "config.json").read_text())["action_head"] == head
    final = out / "final"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert (final / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary checkpoint dirs left behind"

    from wlarl.models.wla import WLAPolicy

    policy = WLAPolicy.from_pretrained(final).eval()
    ep = load_episodes(dataset).episode(0)
    obs = Observation(
        images=torch.from_numpy(np.asarray(ep["image"][:2])),
        states=torch.from_numpy(np.asarray(ep["state"][:2], dtype=np.float32)),
        instructions=[str(s) for s in ep["instruction"][:2]],
        task_names=[str(s) for s in ep["task_name"][:2]],
    )
    sample = policy.act(obs)
    assert sample.actions.shape == (2, 8, 4) and torch.isfinite(sample.actions).all()
    # normalisation stats come from the dataset
    assert not np.allclose(policy.config.action_std, 1.0)


def _task_frames(sizes: list[tuple[str, int]]) -> dict[str, dict]:
    """`state_frames`-like frames per task: the k-th task's image, state and full state are filled with k, its
    instructions are "<task> <i>"."""
    return {
        task: {
            "image": np.full((n, IMG, IMG, 3), k, np.uint8),
            "state": np.full((n, 4), k, np.float32),
            "full_state": np.full((n, 39), k, np.float32),
            "instruction": [f"{task} {i}" for i in range(n)],
        }
        for k, (task, n) in enumerate(sizes)
    }


def test_state_frames_batches_carry_each_tasks_first_subtask():
    mod = load_recipe()
    frames = _task_frames([("push-v3", 3), ("reach-v3", 2)])
    sf = mod.StateFrames(frames, {"push-v3": "reach the puck", "reach-v3": "reach the goal"})
    assert len(sf) == 5
    batch = sf.batch(np.array([4, 0]))
    assert batch["subtask"] == ["reach the goal", "reach the puck"]
    assert batch["instruction"] == ["reach-v3 1", "push-v3 0"]
    assert batch["image"][:, 0, 0, 0].tolist() == [1, 0] and batch["full_state"].shape == (2, 39)
    with pytest.raises(ValueError, match=r"no subtask for tasks \['reach-v3'\]"):
        mod.StateFrames(frames, {"push-v3": "reach the puck"})


def test_labelled_state_frames_carry_their_own_subtasks_and_expert_chunks():
    mod = load_recipe()
    frames = _task_frames([("push-v3", 3), ("reach-v3", 2)])
    for k, (task, f) in enumerate(frames.items()):
        n = len(f["image"])
        f["subtask"] = [f"{task} phase {i}" for i in range(n)]
        f["action"] = np.full((n, 8, 4), 10 * k + np.arange(n)[:, None, None], np.float32)
    sf = mod.StateFrames(frames)
    batch = sf.batch(np.array([4, 1]))
    assert batch["subtask"] == ["reach-v3 phase 1", "push-v3 phase 1"]
    assert batch["actions"].shape == (2, 8, 4) and batch["actions"][:, 0, 0].tolist() == [11.0, 1.0]
    # the demonstrations' first subtask still wins where it is given
    assert mod.StateFrames(frames, {"push-v3": "a", "reach-v3": "b"}).batch(np.array([4]))["subtask"] == ["b"]
    del frames["reach-v3"]["action"]
    with pytest.raises(ValueError, match=r"only tasks \['push-v3'\] .* carry expert chunks"):
        mod.StateFrames(frames)
    del frames["push-v3"]["subtask"]
    with pytest.raises(ValueError, match=r"tasks \['push-v3'\] have no per-frame subtask"):
        mod.StateFrames(frames)


def test_state_frame_draws_follow_the_task_weights():
    mod = load_recipe()
    frames = _task_frames([("push-v3", 100), ("reach-v3", 10), ("door-open-v3", 50)])
    sf = mod.StateFrames(frames, {"push-v3": "a", "reach-v3": "b", "door-open-v3": "c"})
    uniform = sf.draw(np.random.default_rng(0), 8)
    np.testing.assert_array_equal(uniform, np.random.default_rng(0).integers(0, 160, 8))  # as before weights existed
    shares = sf.weigh_draws(mod.parse_task_weights(["reach-v3=6", "push-v3=2"], list(frames)))
    assert shares == pytest.approx({"push-v3": 2 / 9, "reach-v3": 6 / 9, "door-open-v3": 1 / 9})
    rows = sf.draw(np.random.default_rng(0), 9000)
    task_of = np.repeat([0, 1, 2], [100, 10, 50])[rows]
    np.testing.assert_allclose(np.bincount(task_of) / 9000, [2 / 9, 6 / 9, 1 / 9], atol=0.02)
    assert len(np.unique(rows[task_of == 1])) == 10  # uniform within a task: all of reach's frames come up
    with pytest.raises(ValueError, match="sum to 0"):
        sf.weigh_draws({"push-v3": 0, "reach-v3": 0, "door-open-v3": 0})


@pytest.mark.parametrize(
    "items, match",
    [
        (["reach-v3"], "expected TASK=W"),
        (["reach-v3=-1"], "expected TASK=W with W ≥ 0"),
        (["reach-v3=x"], "expected TASK=W"),
        (["reach-v3=2", "reach-v3=3"], "given twice"),
        (["pick-place-v3=2"], "not among the frames' tasks"),
    ],
)
def test_task_weight_errors_name_the_entry(items, match):
    mod = load_recipe()
    with pytest.raises(ValueError, match=match):
        mod.parse_task_weights(items, ["reach-v3", "push-v3"])


def test_malformed_task_weights_fail_at_config_time():
    mod = load_recipe()
    with pytest.raises(ValueError, match="'reach-v3:6'"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_frames=5, meta_state_frame_task_weights=["reach-v3:6"])


def test_state_frames_weigh_each_dimension_by_its_variance_within_the_task():
    mod = load_recipe()
    rng = np.random.default_rng(0)
    full = {"push-v3": np.zeros((400, 39), np.float32), "reach-v3": np.zeros((400, 39), np.float32)}
    full["push-v3"][:, 0] = rng.normal(0, 0.1, 400)  # varies a little within push
    full["reach-v3"][:, 0] = rng.normal(0, 2.0, 400)  # a lot within reach
    full["reach-v3"][:, 1] = 5.0  # constant within reach: nothing to read from its frames
    frames = {
        t: {"image": np.zeros((400, IMG, IMG, 3), np.uint8), "state": np.zeros((400, 4), np.float32),
            "full_state": f, "instruction": ["x"] * 400}
        for t, f in full.items()
    }  # fmt: skip
    sf = mod.StateFrames(frames, {"push-v3": "a", "reach-v3": "b"})
    assert "full_state_weight" not in sf.batch(np.array([0]))
    sf.keep_dims([1])  # without task weights: a 0/1 mask
    assert sf.batch(np.array([0]))["full_state_weight"][0].tolist() == [0.0, 1.0] + [0.0] * 37
    sf.weights = None
    sf.weigh_by_task(np.zeros(39), np.ones(39))
    w = sf.batch(np.array([0, 400]))["full_state_weight"].numpy()  # a push row, a reach row
    np.testing.assert_allclose(w[:, 0], [1 / 0.1**2, 1 / 2.0**2], rtol=0.15)
    assert w[1, 1] == 0 and (w[:, 2:] == 0).all()  # constant within the task: weight 0
    # only the kept dimensions count, on top of the task weights
    before = sf.weights.copy()
    sf.keep_dims([0, 2])
    np.testing.assert_array_equal(sf.weights[:, 0], before[:, 0])
    assert (sf.weights[:, 1] == 0).all() and (sf.weights[:, 3:] == 0).all()
    with pytest.raises(ValueError, match=r"meta_state_frame_dims \[39\]: expected indices in 0 … 38"):
        sf.keep_dims([39])
    # in the probe's normalisation: a dimension scaled by 10 there weighs 100 times more
    std = np.ones(39)
    std[0] = 0.1
    sf.weigh_by_task(np.zeros(39), std)
    np.testing.assert_allclose(sf.weights[0, 0], 1 / 1.0**2, rtol=0.15)


def test_state_frame_settings_are_checked():
    mod = load_recipe()
    with pytest.raises(ValueError, match="needs meta_state_weight > 0"):
        mod.SFTWLAConfig(meta_state_frames=10)
    with pytest.raises(ValueError, match="expected ≥ 0"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_frames=-1)
    with pytest.raises(ValueError, match="expected ≥ 0"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_frames=5, meta_state_frame_steps=-2)
    with pytest.raises(ValueError, match="meta_state_frame_norm='global'"):
        mod.SFTWLAConfig(meta_state_frame_norm="global")
    with pytest.raises(ValueError, match="meta_state_frame_workers=0"):
        mod.SFTWLAConfig(meta_state_frame_workers=0)
    with pytest.raises(ValueError, match="meta_state_pre_steps=5 .* needs meta_state_frames > 0"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_pre_steps=5)
    with pytest.raises(ValueError, match="meta_state_frame_batch=-4"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_frames=5, meta_state_frame_batch=-4)
    with pytest.raises(ValueError, match="meta_state_pre_steps=-1"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_frames=5, meta_state_pre_steps=-1)
    with pytest.raises(ValueError, match="meta_state_frame_action_weight=-0.5"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_frames=5, meta_state_frame_action_weight=-0.5)
    with pytest.raises(ValueError, match="it needs meta_state_frames > 0"):
        mod.SFTWLAConfig(meta_state_weight=1.0, meta_state_frame_action_weight=1.0)


@pytest.mark.metaworld
def test_state_frames_must_match_the_dataset(dataset):
    pytest.importorskip("metaworld")
    mod = load_recipe()
    ep = load_episodes(dataset)  # its full state is the 4-d robot state, not the simulator's 39-d one
    windows = mod.WindowBatches(ep, 4, ["clean"], bc_successful_only=True)
    cfg = mod.SFTWLAConfig(
        dataset_path=str(dataset),
        meta_state_weight=1.0,
        meta_state_frames=1,
        meta_state_frame_workers=1,
        progress=False,
    )
    with pytest.raises(ValueError, match=r"full_state has shape \[39\], the dataset's .* \[4\]"):
        mod.StateFrames.collect(ep, windows, cfg, IMG)


@pytest.mark.metaworld
@pytest.mark.parametrize("labelled", [False, True], ids=["probe", "expert_chunks"])
def test_debug_run_with_state_frames(tmp_path, labelled):
    """SFT trains the backbone state probe on simulator frames of fresh layouts beside the demonstrations, and with
    expert chunks on them the Action Expert too."""
    pytest.importorskip("metaworld")
    eps = fake_episodes()
    rng = np.random.default_rng(1)
    for ep in eps:
        ep["full_state"] = rng.normal(0, 0.1, (len(ep["state"]), 39)).astype(np.float32)
    data = tmp_path / "data"
    write_episodes(eps, data, {"image_size": IMG, "camera": "corner", "tasks": ["push-v3", "reach-v3"]})
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "MUJOCO_GL": "egl",
        "WLARL_CACHE": str(cache),
    }
    args = [
        sys.executable, str(RECIPE), "--config", "debug", "--dataset_path", str(data), "--output_dir", str(out),
        "--latent_size", "4", "--max_steps", "4", "--tokenizer_steps", "2", "--logging_steps", "2",
        "--batch_size", "8", "--eval_episodes_per_task", "0", "--torch_threads", "1", "--progress", "false",
        "--meta_state_weight", "1.0", "--meta_state_frames", "3", "--meta_state_frame_steps", "5",
        "--meta_state_pre_steps", "4", "--meta_state_frame_noise", "false", "--meta_state_frame_batch", "5",
    ]  # fmt: skip
    if labelled:
        args += ["--meta_state_frame_action_weight", "0.5", "--meta_state_frame_expert_steps", "5",
                 "--meta_state_frame_task_weights", "reach-v3=3"]  # fmt: skip
    else:
        args += ["--meta_state_frame_cache", "false"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the rendered frames are kept in the cache, one file per task, unless the cache is off
    kept = sorted(p.name.split("-")[0] for p in (cache / "state_frames").glob("*.safetensors"))
    assert kept == (["push", "reach"] if labelled else []), kept
    assert f"(cache: {cache / 'state_frames' if labelled else 'off'})" in proc.stderr
    assert "state-probe frames: 6 (3 per task" in proc.stderr
    assert ("with expert chunks" in proc.stderr) == labelled
    assert ("state-probe frame draws by task: {'push-v3': 0.25, 'reach-v3': 0.75}" in proc.stderr) == labelled
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    joint = [r for r in rows if r["stage"] == "joint"]
    assert all(np.isfinite(r["loss/meta_state_frames"]) and r["loss/meta_state_frames"] > 0 for r in joint)
    assert all(("loss/action_frames" in r) == labelled for r in rows if r["stage"] in ("probe", "joint"))
    if labelled:  # the probe stage optimises the probe and the weighted action loss of the frames
        probe = [r for r in rows if r["stage"] == "probe"]
        assert all(
            r["loss"] == pytest.approx(r["loss/meta_state_frames"] + 0.5 * r["loss/action_frames"]) for r in probe
        )
        return
    assert not any("loss/meta_state_frames" in r for r in rows if r["stage"] == "tokenizer")
    # the probe stage, between the two, trains on the frames alone
    assert [r["stage"] for r in rows if r["stage"] != "setup"] == ["tokenizer"] + ["probe"] * 2 + ["joint"] * 2 + [
        "final"
    ]
    probe = [r for r in rows if r["stage"] == "probe"]
    assert all(r["loss"] == r["loss/meta_state_frames"] > 0 and "loss/action" not in r for r in probe)


class _ProbeOnly(torch.nn.Module):
    """Records what the probe stage asks of `frame_losses`: batch sizes and the noise flag; its action loss (on
    labelled frames) is twice its probe loss."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.calls: list[tuple[int, bool]] = []

    def frame_losses(self, batch, noise=True):
        self.calls.append((len(batch["image"]), noise))
        out = {"loss/meta_state_frames": (self.w**2).sum()}
        if "actions" in batch:
            out["loss/action_frames"] = 2 * (self.w**2).sum()
        return out


class _Frames:
    def __init__(self, actions: bool = False) -> None:
        self.actions = actions

    def __len__(self) -> int:
        return 20

    def draw(self, rng, n):
        return rng.integers(0, len(self), n)

    def batch(self, idx):
        return {"image": idx} | ({"actions": idx} if self.actions else {})


def test_probe_stage_draws_the_frame_batch_with_the_noise_setting():
    mod = load_recipe()
    cfg = mod.SFTWLAConfig(
        meta_state_weight=1.0, meta_state_frames=5, meta_state_frame_batch=7, meta_state_frame_noise=False,
        batch_size=3, logging_steps=2, progress=False,
    )  # fmt: skip
    policy, rows = _ProbeOnly(), []
    mod.train_stage(policy, None, cfg, "probe", 4, lambda *r: rows.append(r), np.random.default_rng(0), _Frames())
    assert policy.calls == [(7, False)] * 4
    assert [(stage, step) for stage, step, _ in rows] == [("probe", 2), ("probe", 4)]
    assert float(policy.w[0]) < 1.0  # the probe's loss was optimised
    with pytest.raises(ValueError, match="probe stage trains on state-probe frames"):
        mod.train_stage(policy, None, cfg, "probe", 1, print, np.random.default_rng(0))


def test_probe_stage_adds_the_weighted_action_loss_of_labelled_frames():
    mod = load_recipe()
    cfg = mod.SFTWLAConfig(
        meta_state_weight=1.0, meta_state_frames=5, meta_state_frame_action_weight=0.25, logging_steps=1,
        progress=False, learning_rate=0.0,
    )  # fmt: skip
    rows = []
    mod.train_stage(_ProbeOnly(), None, cfg, "probe", 1, lambda *r: rows.append(r), np.random.default_rng(0),
                    _Frames(actions=True))  # fmt: skip
    row = rows[0][2]
    assert row["loss/meta_state_frames"] == pytest.approx(2.0) and row["loss/action_frames"] == pytest.approx(4.0)
    assert row["loss"] == pytest.approx(2.0 + 0.25 * 4.0)
