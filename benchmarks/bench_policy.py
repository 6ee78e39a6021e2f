"""WLA policy measurements: parameters, action latency, World-Expert open-loop error, real-sim success.

    python benchmarks/bench_policy.py params
    python benchmarks/bench_policy.py latency --checkpoint runs/sft_wla/final
    python benchmarks/bench_policy.py open_loop --checkpoint runs/sft_wla/final --dataset_path runs/heldout
    python benchmarks/bench_policy.py real --checkpoint runs/sft_wla/final --episodes_per_task 50 --tts 8

Each command prints a JSON object (and writes it to `--output` when given). Without `--checkpoint`, `params` and
`latency` use a freshly initialised policy of the recipe's default config (latency does not depend on training).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from wlarl.models.wla import WLAPolicy, WLAProcessor
from wlarl.types import Observation

ROOT = Path(__file__).resolve().parents[1]


def default_policy(image_size: int = 64) -> WLAPolicy:
    """A policy of the sft_wla recipe's default config (vocabulary from the simulator's instructions if present)."""
    spec = importlib.util.spec_from_file_location("sft_wla_recipe", ROOT / "recipes" / "sft_wla.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    cfg = recipe.parse_config(recipe.SFTWLAConfig, "sft_wla", ["--config", "default", "--dataset_path", "-"])
    corpus = ["reach the goal", "press the button"]
    if importlib.util.find_spec("rollout") is not None:
        from rollout.sims.instructions import INSTRUCTIONS

        corpus += [s for v in INSTRUCTIONS.values() for s in v]
    processor = WLAProcessor.build(corpus, image_size=image_size, max_subtask_tokens=cfg.max_subtask_tokens)

    class _Shapes:  # what build_policy reads from the windows
        states = np.zeros((2, 4), np.float32) + [[0], [1]]
        actions = np.zeros((2, 4), np.float32) + [[0], [1]]
        rows = np.arange(2)

    return recipe.build_policy(cfg, processor, _Shapes, image_size)


def load_policy(checkpoint: str | None) -> WLAPolicy:
    policy = default_policy() if checkpoint is None else WLAPolicy.from_pretrained(checkpoint)
    return policy.eval()


def fake_obs(policy: WLAPolicy, n: int = 1, seed: int = 0) -> Observation:
    g = torch.Generator().manual_seed(seed)
    s = policy.config.image_size
    return Observation(
        images=torch.randint(0, 256, (n, s, s, 3), dtype=torch.uint8, generator=g),
        states=torch.randn(n, policy.config.state_dim, generator=g),
        instructions=["Push the puck to the goal."] * n,
        task_names=["push-v3"] * n,
    )


def bench_params(args) -> dict:
    policy = load_policy(args.checkpoint)
    return {"params": policy.num_parameters_by_part, "config": {"action_head": policy.config.action_head}}


def _time(fn, repeats: int) -> dict:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min())}


@torch.no_grad()
def bench_latency(args) -> dict:
    torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    obs = fake_obs(policy, 1)
    out = {"threads": args.threads, "batch": 1}
    out["act_world_off"] = _time(lambda: policy.act(obs, sample=True), args.repeats)
    out["act_greedy_world_off"] = _time(lambda: policy.act(obs, sample=False), args.repeats)
    out["act_world_on"] = _time(lambda: policy.act(obs, sample=True, world=True), args.repeats)
    out[f"act_tts_k{args.tts}"] = _time(lambda: policy.act(obs, num_candidates=args.tts), args.repeats)
    out["imagine_decode_batch64"] = _time(
        lambda: policy.imagine(
            fake_obs(policy, 64), torch.zeros(64, policy.config.chunk_size, policy.config.action_dim)
        ),
        max(5, args.repeats // 5),
    )
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """PSNR in dB of uint8 images a, b [N, H, W, 3], over pixels where mask [N, H, W] (all when None)."""
    d = (a.float() - b.float()) ** 2  # [N, H, W, 3]
    if mask is not None:
        if mask.sum() == 0:
            return float("nan")
        mse = d[mask].mean()
    else:
        mse = d.mean()
    return float(10 * torch.log10(255.0**2 / mse.clamp_min(1e-10)))


@torch.no_grad()
def bench_open_loop(args) -> dict:
    """Feed the World Expert its own predictions for up to max(horizons) chunks of recorded actions.

    Starts every `stride` steps of every held-out episode that has max(horizons) * H steps left. Reports per horizon
    the latent MSE and PSNR (full frame, and on pixels that changed by > 10/255 since the start frame), for the
    World Expert and for copying the start frame (raw, and through the tokenizer), plus the tokenizer's own
    reconstruction PSNR of the target frame (the ceiling of any decoded prediction).
    """
    from wlarl.data import load_episodes

    torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    ep_ds = load_episodes(args.dataset_path)
    h = policy.config.chunk_size
    horizons = sorted(args.horizons)
    k_max = horizons[-1]
    starts = []  # (episode arrays, t0)
    for e in range(ep_ds.num_episodes):
        ep = ep_ds.episode(e)
        n_act = len(ep["action"]) - 1  # final observation row has no action
        for t0 in range(0, n_act - k_max * h + 1, args.stride):
            starts.append((e, t0))
    if not starts:
        raise ValueError(f"{args.dataset_path}: no episode has {k_max * h} steps; lower --horizons")
    starts = starts[: args.max_starts]
    acc: dict[str, list] = {}
    cache: dict[int, dict] = {}
    for b in range(0, len(starts), args.batch_size):
        chunk = starts[b : b + args.batch_size]
        eps = []
        for e, _ in chunk:
            if e not in cache:
                cache = {e: ep_ds.episode(e)}
            eps.append(cache[e])
        t0 = [t for _, t in chunk]
        images = torch.from_numpy(np.stack([ep["image"][t] for ep, t in zip(eps, t0)]).copy())
        obs = Observation(
            images=images,
            states=torch.from_numpy(np.stack([ep["state"][t] for ep, t in zip(eps, t0)]).astype(np.float32)),
            instructions=[str(ep["instruction"][t]) for ep, t in zip(eps, t0)],
            task_names=[str(ep["task_name"][t]) for ep, t in zip(eps, t0)],
        )
        z0 = policy.encode_images(images)
        images_dec = policy.decode_latents(z0)  # copy baseline through the tokenizer (same decoder ceiling)
        for k in range(1, k_max + 1):
            acts = torch.from_numpy(
                np.stack([ep["action"][t + (k - 1) * h : t + k * h] for ep, t in zip(eps, t0)]).astype(np.float32)
            )
            pred = policy.imagine(obs, acts, decode=True)
            obs = policy.next_observation(obs, pred)
            if k not in horizons:
                continue
            real = torch.from_numpy(np.stack([ep["image"][t + k * h] for ep, t in zip(eps, t0)]).copy())
            real_state = np.stack([ep["state"][t + k * h] for ep, t in zip(eps, t0)])
            z_real = policy.encode_images(real)
            changed = (real.int() - images.int()).abs().amax(-1) > 10  # [N, H, W]
            real_dec = policy.decode_latents(z_real)  # tokenizer reconstruction: the ceiling of any prediction
            rows = {
                "tokenizer/psnr": _psnr(real_dec, real),
                "tokenizer/psnr_changed": _psnr(real_dec, real, changed),
                "copy_decoded/psnr": _psnr(images_dec, real),
                "copy_decoded/psnr_changed": _psnr(images_dec, real, changed),
                "world/latent_mse": float(((pred.latents - z_real) ** 2).mean()),
                "copy/latent_mse": float(((z0 - z_real) ** 2).mean()),
                "world/psnr": _psnr(pred.images, real),
                "copy/psnr": _psnr(images, real),
                "world/psnr_changed": _psnr(pred.images, real, changed),
                "copy/psnr_changed": _psnr(images, real, changed),
                "world/state_err": float(
                    np.linalg.norm(pred.states.numpy()[:, :3] - real_state[:, :3], axis=1).mean()
                ),
                "copy/state_err": float(np.linalg.norm(obs_state0(eps, t0)[:, :3] - real_state[:, :3], axis=1).mean()),
            }
            for key, v in rows.items():
                acc.setdefault(f"{k}/{key}", []).append((v, len(chunk)))
    out = {"starts": len(starts), "chunk_size": h, "horizons": horizons}
    for key, vals in acc.items():
        v = np.asarray([x for x, _ in vals])
        w = np.asarray([n for _, n in vals], dtype=float)
        ok = np.isfinite(v)
        out[key] = float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
    return out


def obs_state0(eps, t0) -> np.ndarray:
    return np.stack([ep["state"][t] for ep, t in zip(eps, t0)])


def bench_real(args) -> dict:
    """Real-sim success per task (world off, greedy) and with test-time scaling (K sampled chunks, best imagined)."""
    from rollout.real import rollout_policy

    torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    tasks = args.tasks or list(policy.config.task_names)
    if not tasks:
        raise ValueError("real: pass --tasks")
    common = dict(
        seeds=args.seed, num_workers=args.num_workers, max_episode_steps=args.max_episode_steps,
        timeout_s=args.timeout_s, env_kwargs={"image_size": policy.config.image_size}, keep_episodes=False,
    )  # fmt: skip
    out = {}
    if not args.skip_world_off:
        out["world_off"] = rollout_policy(policy, tasks, args.episodes_per_task, **common).summary()
    if args.tts > 1:

        def tts_policy(obs):
            return policy.act(obs, sample=True, temperature=args.tts_temperature, num_candidates=args.tts).actions

        out[f"tts_k{args.tts}_t{args.tts_temperature}"] = rollout_policy(
            tts_policy, tasks, args.episodes_per_task, **common
        ).summary()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["params", "latency", "open_loop", "real"])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--dataset_path", default=None, help="held-out episodes (open_loop)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--tts", type=int, default=8)
    p.add_argument("--skip_world_off", action="store_true", help="real: only the test-time-scaling run")
    p.add_argument("--tts_temperature", type=float, default=1.0)
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--max_starts", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--episodes_per_task", type=int, default=50)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--max_episode_steps", type=int, default=150)
    p.add_argument("--timeout_s", type=float, default=3600.0)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    fn = {"params": bench_params, "latency": bench_latency, "open_loop": bench_open_loop, "real": bench_real}
    result = fn[args.what](args)
    text = json.dumps(result, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
