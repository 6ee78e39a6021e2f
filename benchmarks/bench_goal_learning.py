"""How many distinct goals does a model need to locate reach's goal from the frame? (BENCHMARKS.md, "What the camera
lets any policy reach").

    MUJOCO_GL=egl python benchmarks/bench_goal_learning.py --policy_path <bootstrap>/policy/final \
        --train_sizes 20 60 200 1000 4000 --out runs/bench_goal_learning

`bench_observability.py` shows that the marker's pixel locates reach-v3's goal within the 5 cm success radius in
most resets. A policy must learn that from its demonstrations, one goal per episode (20 per task in the default
preset). This benchmark fits goal regressors on N reset frames (N distinct goals) and scores them on 1,000 others:

- `frame`: a small CNN trained from scratch on the 64 px frames (what an end-to-end policy has to learn);
- `latents`: an MLP on the frozen image latents of the WLA policy's tokenizer (what the backbone reads);
- `backbone`: the policy's own backbone path (latent projection, tiny Llama, meta-queries; its SFT weights as the
  start, fine-tuned) with a fresh head on the meta-query states, fitted on the frames' latents and robot states with
  the task's first subtask teacher-forced: whether this architecture can learn to read the goal when trained on it;
- `probe` (no fitting here): the policy's own backbone state probe (`meta_state_weight` > 0 in SFT), which read the
  full state from the meta-query states on the demonstrations (and, with `meta_state_frames`, on frames of fresh
  layouts); scored on the same held-out resets, it says whether the backbone learnt to read the goal.

Score: the share of held-out goals predicted within the success radius (5 cm), and R² per axis. Reset frames of
seeds 20000+ (away from every seed the project trains or evaluates on). Training: Adam, `--steps` minibatch steps,
the same for every N (small N overfit; that is the point).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

GOAL = slice(36, 39)
FIRST_SEED = 20000


def reset_frames(task: str, n: int, image_size: int, camera: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Reset frames uint8 [n, H, W, 3], goals float [n, 3], robot states float [n, S] and instructions of seeds
    FIRST_SEED … FIRST_SEED + n - 1 (`rollout.collect.state_frames`)."""
    from rollout.collect import state_frames

    f = state_frames(task, range(FIRST_SEED, FIRST_SEED + n), image_size, camera)
    return f["image"], f["full_state"][:, GOAL].copy(), f["state"], f["instruction"]


def frame_net(image_size: int) -> nn.Module:
    layers, c = [], 3
    for width in (32, 64, 64, 128):
        layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.GELU()]
        c = width
    side = image_size // 16
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * side * side, 256), nn.GELU(), nn.Linear(256, 3))


def latent_net(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 512), nn.GELU(), nn.Linear(512, 256), nn.GELU(), nn.Linear(256, 3))


class BackboneNet(nn.Module):
    """The policy's backbone path from latents and robot state to the meta-query states, plus a fresh 3-d head.

    Input rows are [flattened latents C·h·w | robot state S]; the instruction and subtask are fixed strings (one task).
    """

    def __init__(self, policy, instruction: str, subtask: str) -> None:
        super().__init__()
        import copy

        self.policy = copy.deepcopy(policy).train()
        c = self.policy.config
        self.shape = (c.latent_channels, c.latent_size, c.latent_size)
        self.instruction, self.subtask = instruction, subtask
        d = self.policy.backbone.config.hidden_size
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c.num_meta_queries * d, 256), nn.GELU(), nn.Linear(256, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, n = self.policy, x.shape[0]
        k = int(np.prod(self.shape))
        emb, mask = p._prefix_of([self.instruction] * n, x[:, k:], x[:, :k].view(n, *self.shape))
        ids, sub_mask = p._require_processor().encode_subtasks([self.subtask] * n, p.device)
        meta, _, _ = p._teacher_forced(emb, mask, ids, sub_mask)
        return self.head(meta)


def fit_and_score(
    make: callable, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
    steps: int, radius: float, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Train `make()` to regress normalised goals, return held-out success within `radius` and R² per axis."""
    torch.manual_seed(seed)
    net = make()
    mu, sd = y_train.mean(0), y_train.std(0).clamp(min=1e-3) if len(y_train) > 1 else torch.ones(3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x_train), (min(64, len(x_train)),), generator=gen)
        loss = (net(x_train[idx]) - (y_train[idx] - mu) / sd).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.cat([net(x_test[i : i + 256]) for i in range(0, len(x_test), 256)]) * sd + mu
    return score(pred, y_test, radius)


@torch.no_grad()
def probe_goals(policy, frames: np.ndarray, states: np.ndarray, instructions: list[str], task: str) -> torch.Tensor:
    """float [N, 3]: the goal that the policy's backbone state probe reads from each observation (greedy subtask)."""
    from wlarl.types import Observation

    if policy.meta_probe is None:
        raise SystemExit("--inputs probe: this policy has no backbone state probe (trained with meta_state_weight 0)")
    out = []
    for i in range(0, len(frames), 128):
        obs = Observation(
            images=torch.from_numpy(frames[i : i + 128]), states=torch.from_numpy(states[i : i + 128]),
            instructions=instructions[i : i + 128], task_names=[task] * len(frames[i : i + 128]),
        ).to(policy.device)  # fmt: skip
        latents = policy._latents_of(obs)
        emb, mask = policy._prefix(obs, latents)
        ids, sub_mask = policy._generate_subtask(emb, mask, False, 1.0, None)
        meta, _, _ = policy._teacher_forced(emb, mask, ids, sub_mask, 1.0)
        full = policy.meta_probe(meta) * policy.full_state_std + policy.full_state_mean
        out.append(full[:, GOAL].float().cpu())
    return torch.cat(out)


def score(pred: torch.Tensor, y: torch.Tensor, radius: float) -> dict[str, float]:
    err = (pred - y).norm(dim=1)
    r2 = 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    return {"success": float((err <= radius).float().mean()), "median_error_cm": 100 * float(err.median()),
            **{f"r2_{a}": float(v) for a, v in zip("xyz", r2)}}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy_path", required=True, help="a WLA policy whose image tokenizer gives the latents")
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--camera", default="corner")
    ap.add_argument("--train_sizes", nargs="+", type=int, default=[20, 60, 200, 1000, 4000])
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--radius", type=float, default=0.05, help="success radius (reach-v3: 5 cm)")
    ap.add_argument(
        "--inputs", nargs="+", default=["latents", "frame"], choices=["latents", "frame", "probe", "backbone"]
    )
    ap.add_argument(
        "--latent_noise", type=float, default=0.0,
        help="Gaussian noise std added to the latents in fitting and scoring, clamped to (-1, 1): the noise joint SFT "
        "adds to the latents the backbone reads (the policy's latent_noise_std)",
    )  # fmt: skip
    ap.add_argument("--out", default="runs/bench_goal_learning")
    args = ap.parse_args(argv)
    from wlarl.models.wla import WLAPolicy
    from wlarl.types import Observation

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    policy = WLAPolicy.from_pretrained(args.policy_path).eval()
    size = int(policy.config.image_size)
    n_train = max(args.train_sizes)
    frames, goals, states, instructions = reset_frames(args.task, n_train + args.test, size, args.camera)
    images = torch.from_numpy(frames)
    with torch.no_grad():
        latents = torch.cat([policy.encode_images(images[i : i + 256]).flatten(1) for i in range(0, len(images), 256)])
    if args.latent_noise > 0:
        gen = torch.Generator().manual_seed(1)
        latents = (latents + args.latent_noise * torch.randn(latents.shape, generator=gen)).clamp(-1, 1)
    x = {"frame": images.permute(0, 3, 1, 2).float() / 255.0, "latents": latents.float()}
    x["backbone"] = torch.cat([x["latents"], torch.from_numpy(states)], 1)
    makers = {"frame": lambda: frame_net(size), "latents": lambda: latent_net(latents.shape[1])}
    if "backbone" in args.inputs:
        with torch.no_grad():  # the subtask the policy itself starts with on this task's first frame
            obs = Observation(images=images[:1], states=torch.from_numpy(states[:1]), instructions=instructions[:1],
                              task_names=[args.task])  # fmt: skip
            emb, mask = policy._prefix(obs, policy._latents_of(obs))
            ids, _ = policy._generate_subtask(emb, mask, False, 1.0, None)
        subtask = policy._require_processor().decode_subtasks(ids)[0]
        makers["backbone"] = lambda: BackboneNet(policy, instructions[0], subtask)
    y = torch.from_numpy(goals)
    test = slice(n_train, n_train + args.test)
    results: dict[str, dict[str, dict]] = {}
    if "probe" in args.inputs:
        pred = probe_goals(policy, frames[test], states[test], instructions[test], args.task)
        results["probe"] = {"0": score(pred, y[test], args.radius)}  # nothing fitted here: 0 new goals
        print("probe", {k: round(v, 3) for k, v in results["probe"]["0"].items()}, flush=True)
    for name in [i for i in args.inputs if i != "probe"]:
        results[name] = {}
        for n in sorted(args.train_sizes):
            t0 = time.perf_counter()
            r = fit_and_score(makers[name], x[name][:n], y[:n], x[name][test], y[test], args.steps, args.radius)
            r["fit_s"] = time.perf_counter() - t0
            results[name][str(n)] = r
            print(name, n, {k: round(v, 3) for k, v in r.items()}, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"task": args.task, "camera": args.camera, "image_size": size, "test": args.test, "steps": args.steps,
            "latent_noise": args.latent_noise,
            "policy_path": args.policy_path, "latent_dim": int(latents.shape[1])}  # fmt: skip
    (out / "goal_learning.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"{args.task}, {args.camera} {size} px, {args.test} held-out resets, {args.steps} steps per fit.", "",
             "| input | distinct goals in training | held-out success (≤ 5 cm) | median error (cm) | R² x / y / z |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, per_n in results.items():
        for n, r in per_n.items():
            n = "its SFT's (demonstrations, and state-probe frames if any)" if name == "probe" else n
            lines.append(f"| {name} | {n} | {r['success']:.2f} | {r['median_error_cm']:.1f} | "
                         f"{r['r2_x']:.2f} / {r['r2_y']:.2f} / {r['r2_z']:.2f} |")  # fmt: skip
    (out / "goal_learning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
