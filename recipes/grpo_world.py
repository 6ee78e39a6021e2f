"""GRPO post-training of a WLA policy inside its own frozen World Expert.

Launch (zero-config: the default preset, end to end on a CPU):

    accelerate launch recipes/grpo_world.py

With a preset, two CPU processes and overrides:

    accelerate launch --config_file recipes/configs/accelerate_configs/cpu_2proc.yaml recipes/grpo_world.py \
        --config recipes/configs/debug.yaml --output_dir runs/debug --max_steps 4 \
        --reward_funcs subgoal_success shaping --reward_weights 1.0 0.1

When no `policy_path` is configured, the recipe first builds one with the same preset — collect demonstrations
→ SFT → success reward model — caches it under `$WLARL_CACHE` (default `~/.cache/wlarl`) and reuses it on the
next launch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Multi-process launches on a CPU only join a gloo process group when accelerate is told to use the CPU.
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")

from accelerate import PartialState  # noqa: E402

from rewards import build_reward_scorer  # noqa: E402
from rewards.dynamics_ensemble import load_dynamics_ensemble, train_dynamics_ensemble  # noqa: E402
from rewards.state_reward import StateReward, load_state_reward, train_state_reward  # noqa: E402
from rewards.success_classifier import load_success_classifier  # noqa: E402
from rollout.agreement import AdvantageAgreement, agreement_points  # noqa: E402
from rollout.coevolution import CoevolutionRound  # noqa: E402
from rollout.experts import SUBTASK_RULES  # noqa: E402
from rollout.imagined import ImaginationEngine, freeze_snapshot  # noqa: E402
from rollout.real import EnvWorkerPool, make_real_evaluator, reset_start_states  # noqa: E402
from rollout.real_engine import RealEngine  # noqa: E402
from rollout.refresh import WorldRefresh  # noqa: E402
from rollout.verify import Verifier, make_imagine_fn  # noqa: E402
from wlarl.cli import load_section, parse_config, resolve_preset, save_config  # noqa: E402
from wlarl.configs import GRPOWorldConfig  # noqa: E402
from wlarl.data import (  # noqa: E402
    EpisodeDataset,
    SFTWindows,
    collate_windows,
    keyframe_states,
    load_episodes,
    start_states,
)
from wlarl.models.wla import WLAPolicy, WLAProcessor  # noqa: E402
from wlarl.trainer import GRPOWorldTrainer  # noqa: E402
from wlarl.trainer.callbacks import (  # noqa: E402
    AgreementCallback,
    CoevolutionCallback,
    KeepBestRealCallback,
    RealEvalCallback,
    RefreshWorldCallback,
    VerifyCallback,
    period_steps,
)
from wlarl.utils.cache import cache_root  # noqa: E402
from wlarl.utils.distributed import exit_without_teardown  # noqa: E402

logger = logging.getLogger("wlarl.grpo_world")
RECIPES = Path(__file__).resolve().parent


def _run_stage(args: list[str], log_path: Path, label: str = "bootstrap") -> None:
    """Run one recipe as a subprocess; its output goes to the log and the terminal; failure stops the launch."""
    cmd = [sys.executable, *args]
    logger.info("%s: %s", label, " ".join(cmd))
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # the stages are single-process programs
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Progress bars (carriage returns included) and tables of the stage reach the terminal and the log.
        while chunk := os.read(proc.stdout.fileno(), 4096):
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            log.write(chunk)
        proc.wait()
    if proc.returncode != 0:
        tail = "".join(open(log_path, errors="replace").readlines()[-30:])
        raise RuntimeError(
            f"{label} stage failed ({' '.join(args[:1])}, exit {proc.returncode}); log {log_path}:\n{tail}"
        )


def _find_checkpoint(root: Path) -> Path:
    for candidate in (root / "final", root):
        if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
            return candidate
    raise FileNotFoundError(f"no saved model (config.json + *.safetensors) under {root}")


def success_classifier_for_signal(scorer, reward_model_path: str | None):
    """The success classifier that decides imagined success (`success_signal` classifier / both), as
    ``(predict_proba, threshold)``: the one among the reward functions, else the one at `reward_model_path` (so a
    run rewarded by state rewards alone still ends imagined episodes as the preset says), else None."""
    found = scorer.find_success_classifier()
    if found is None and reward_model_path:
        model = load_success_classifier(reward_model_path)
        logger.info("success signal: the success classifier of %s (no reward function carries one)", reward_model_path)
        found = (model.predict_proba, float(model.config.threshold))
    return found


def bootstrap(preset: str) -> dict[str, str]:
    """Collect demos → SFT → reward model with `preset`, cached by the preset's content. Returns the paths."""
    preset_path = resolve_preset(preset)
    sections = {s: load_section(preset, s) for s in ("collect_demos", "sft_wla", "train_reward", "train_state_reward")}
    key = hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root() / "bootstrap" / f"{preset_path.stem}-{key}"
    done = root / "paths.json"
    if done.is_file():
        paths = json.loads(done.read_text())
        logger.info("bootstrap: reusing the cached policy, reward model and dataset in %s", root)
        return paths
    logger.info("bootstrap: no policy_path configured; building one with preset %s into %s", preset_path, root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log = tmp / "bootstrap.log"
    cfg_arg = ["--config", str(preset_path)]
    _run_stage([str(RECIPES / "collect_demos.py"), *cfg_arg, "--output_dir", str(tmp / "data")], log)
    _run_stage(
        [
            str(RECIPES / "sft_wla.py"),
            *cfg_arg,
            "--dataset_path",
            str(tmp / "data"),
            "--output_dir",
            str(tmp / "policy"),
            # grpo_world evaluates this policy in the real simulator at step 0; a second evaluation here would
            # measure the same thing again.
            "--eval_episodes_per_task",
            "0",
        ],
        log,
    )
    policy_dir = _find_checkpoint(tmp / "policy")
    _run_stage(
        [
            str(RECIPES / "train_reward.py"),
            *cfg_arg,
            "--dataset_path",
            str(tmp / "data"),
            "--policy_path",
            str(policy_dir),
            "--output_dir",
            str(tmp / "reward"),
        ],
        log,
    )
    reward_dir = _find_checkpoint(tmp / "reward")
    # the state reward model (state_success / state_progress) on the same demonstrations' full states: seconds
    _run_stage(
        [
            str(RECIPES / "train_state_reward.py"),
            *cfg_arg,
            "--dataset_path",
            str(tmp / "data"),
            "--output_dir",
            str(tmp / "state_reward"),
            "--progress_bar",
            "false",
        ],
        log,
    )
    rel = {
        "policy_path": str(policy_dir.relative_to(tmp)),
        "reward_model_path": str(reward_dir.relative_to(tmp)),
        "state_reward_path": "state_reward",
        "dataset_path": "data",
    }
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)  # the cache entry appears whole or not at all
    paths = {k: str(root / v) for k, v in rel.items()}
    done.write_text(json.dumps(paths, indent=2))
    logger.info("bootstrap: done; cached in %s", root)
    return paths


REAL_ENGINE_REWARD = "trajectory_success"  # the simulator's own success: the control inherits no learned reward


def load_start_states(
    cfg: GRPOWorldConfig, episodes: EpisodeDataset, env_kwargs: dict, tasks: list[str]
) -> list[dict]:
    """The start states `cfg.start_states` names: dataset first frames, seeded real resets of `tasks` (the configured
    ones, else the dataset's), or keyframes."""
    if cfg.start_states == "reset":
        return reset_start_states(tasks, cfg.num_reset_starts, env_kwargs=env_kwargs)
    starts = (
        keyframe_states(episodes, cfg.keyframe_stride) if cfg.start_states == "keyframes" else start_states(episodes)
    )
    if cfg.tasks:
        starts = [s for s in starts if s["task_name"] in set(cfg.tasks)]
    if not starts:
        raise ValueError(
            f"grpo_world: the dataset {cfg.dataset_path} has no {cfg.start_states} starts of tasks {cfg.tasks}"
        )
    return starts


def state_success_fn(model) -> Callable[[torch.Tensor, list[str]], torch.Tensor]:
    """``fn(full_states [N, F], task_names) -> probs [N]``: a state reward model's calibrated success probability, the
    `success_signal` 'state' of the imagination engine."""
    return lambda full_states, task_names: model.predict(full_states, task_names)[0]


class EnsembleStateDynamics:
    """``fn(full_states, actions, task_names) -> next full states``: the `state_dynamics` of an imagination engine,
    over a dynamics ensemble that co-evolution rounds swap (`model`)."""

    def __init__(self, model) -> None:
        self.model = model.eval()

    def __call__(self, full_states: torch.Tensor, actions: torch.Tensor, task_names: list[str]) -> torch.Tensor:
        return self.model.predict_next(full_states, actions, task_names)


def ensemble_state_dynamics(cfg: GRPOWorldConfig, chunk_size: int) -> EnsembleStateDynamics:
    """The dynamics ensemble of `imagined_state_dynamics` 'ensemble': `dynamics_ensemble_path`, or one trained on
    the demonstrations into ``output_dir/dynamics_ensemble`` (read back there when a resumed run finds it)."""
    out = Path(cfg.output_dir) / "dynamics_ensemble"
    if cfg.dynamics_ensemble_path:
        model = load_dynamics_ensemble(cfg.dynamics_ensemble_path)
    elif (out / "final").is_dir():  # a resumed run: the ensemble it trained at its start
        model = load_dynamics_ensemble(out / "final")
    else:
        model, metrics = train_dynamics_ensemble(
            cfg.dataset_path, out, horizon=chunk_size, steps=cfg.dynamics_ensemble_steps, seed=cfg.seed,
            progress_bar=False,
        )  # fmt: skip
        logger.info("dynamics ensemble trained on %s into %s: train MSE %.3f, held-out MSE %s (no change: %s)",
                    cfg.dataset_path, out, metrics["train/mse"], metrics.get("heldout/ensemble_mse", "–"),
                    metrics.get("heldout/zero_change_mse", "–"))  # fmt: skip
    if model.config.horizon != chunk_size:
        raise ValueError(
            f"grpo_world: the dynamics ensemble predicts {model.config.horizon}-step chunks, the policy acts in "
            f"chunks of {chunk_size}: retrain it with recipes/train_dynamics_ensemble.py --horizon {chunk_size}"
        )
    return EnsembleStateDynamics(model)


def coevolution_callback(
    cfg: GRPOWorldConfig, tasks: list[str], snapshot, scorer, engine, pool, env_kwargs: dict
) -> CoevolutionCallback:
    """Co-evolution rounds (`rollout.coevolution`): collect with the policy, refresh the snapshot's World Expert, the
    state reward model (swapped into every state reward function and into `success_signal` state) and the dynamics
    ensemble of `imagined_state_dynamics` 'ensemble', add starts."""
    refreshers, restorers = [], []
    dynamics = getattr(engine, "state_dynamics", None)
    if isinstance(dynamics, EnsembleStateDynamics):

        def dynamics_refresh(dataset_paths, round_dir):
            model, metrics = train_dynamics_ensemble(
                [str(p) for p in dataset_paths], round_dir / "dynamics_ensemble", horizon=dynamics.model.config.horizon,
                steps=cfg.dynamics_ensemble_steps, seed=cfg.seed, progress_bar=False,
            )  # fmt: skip
            dynamics.model = model.eval()
            out = {"dynamics_train_mse": metrics["train/mse"]}
            if "heldout/ensemble_mse" in metrics:  # none when too few episodes per task to hold any out
                out["dynamics_heldout_mse"] = metrics["heldout/ensemble_mse"]
            return out

        def dynamics_restore(round_dir):
            dynamics.model = load_dynamics_ensemble(round_dir / "dynamics_ensemble" / "final").eval()

        refreshers.append(dynamics_refresh)
        restorers.append(dynamics_restore)
    if cfg.round_refresh_reward and cfg.state_reward_path:

        def swap(model) -> None:
            for f in scorer.funcs:
                if isinstance(f, StateReward):
                    f.model = model.eval()
            if engine is not None and engine.success_signal == "state":
                engine.state_success = state_success_fn(model)
                engine.state_threshold = model.threshold

        def state_refresh(dataset_paths, round_dir):
            model, metrics = train_state_reward(dataset_paths, round_dir / "state_reward", progress_bar=False)
            swap(model)
            keep = ("heldout/success_auroc", "heldout/value_spearman", "heldout/value_auroc")
            return {f"state_reward_{k.split('/', 1)[1]}": metrics[k] for k in keep if k in metrics}

        def state_restore(round_dir):
            swap(load_state_reward(round_dir / "state_reward"))

        refreshers.append(state_refresh)
        restorers.append(state_restore)

    def reward_refresh(dataset_paths, round_dir):
        return {k: v for fn in refreshers for k, v in fn(dataset_paths, round_dir).items()}

    def reward_restore(round_dir):
        for fn in restorers:
            fn(round_dir)

    rounds = CoevolutionRound(
        tasks=tasks, episodes_per_task=cfg.round_episodes_per_task, output_dir=Path(cfg.output_dir) / "rounds",
        demo_dataset_path=cfg.dataset_path, world=snapshot, refresh_steps=cfg.round_refresh_steps,
        refresh_lr=cfg.round_refresh_lr, open_loop_chunks=cfg.round_open_loop_chunks,
        open_loop_reencode=cfg.reencode_predictions, keyframe_stride=cfg.keyframe_stride, temperature=cfg.temperature,
        max_episode_steps=cfg.real_max_episode_steps, pool=pool, num_workers=cfg.num_env_workers,
        env_kwargs=env_kwargs, timeout_s=cfg.eval_timeout_s, reward_refresh=reward_refresh if refreshers else None,
        reward_restore=reward_restore if restorers else None, newest_weight=cfg.round_newest_weight,
        seed=300_000 + 10_000 * cfg.seed,
    )  # fmt: skip
    logger.info("co-evolution: %d rounds of %d steps, %d real episodes per task each", cfg.rounds,
                cfg.max_steps // cfg.rounds, cfg.round_episodes_per_task)  # fmt: skip
    return CoevolutionCallback(rounds, cfg.max_steps // cfg.rounds, cfg.rounds, restore_fn=rounds.restore)


def rewards_chosen(preset: str, argv: list[str]) -> bool:
    """Whether the reward functions were chosen for the real engine: on the command line, or in a preset section
    that also sets ``engine: real`` (a preset's rewards for imagination do not carry over to the real engine)."""
    if "--reward_funcs" in argv:
        return True
    section = load_section(preset, "grpo_world")
    return section.get("engine") == "real" and "reward_funcs" in section


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    preset_given = "--config" in sys.argv
    cfg = parse_config(GRPOWorldConfig, "grpo_world", default_preset="default")
    preset = sys.argv[sys.argv.index("--config") + 1] if preset_given else "default"
    state = PartialState()
    if cfg.engine == "real" and not rewards_chosen(preset, sys.argv):
        cfg.reward_funcs, cfg.reward_weights, cfg.reward_kwargs = [REAL_ENGINE_REWARD], [1.0], None
        logger.info("engine real: the reward is the simulator's own success (%s); --reward_funcs chooses others",
                    REAL_ENGINE_REWARD)  # fmt: skip

    # --- policy, reward model and dataset: given, or bootstrapped once (main process first) ---------------------
    if cfg.policy_path is None:
        with state.main_process_first():
            paths = bootstrap(preset)
        cfg.policy_path = paths["policy_path"]
        cfg.reward_model_path = cfg.reward_model_path or paths["reward_model_path"]
        cfg.state_reward_path = cfg.state_reward_path or paths.get("state_reward_path")
        cfg.dataset_path = cfg.dataset_path or paths["dataset_path"]
    if cfg.dataset_path is None:
        raise ValueError("grpo_world: set --dataset_path (episodes whose frames are the start states)")
    if state.is_main_process:
        save_config(cfg, cfg.output_dir)

    policy = WLAPolicy.from_pretrained(cfg.policy_path)
    processor = WLAProcessor.from_pretrained(cfg.policy_path)
    episodes = load_episodes(cfg.dataset_path)
    tasks = cfg.tasks or sorted(set(episodes.dataset["task_name"]))
    # The real simulator renders with the camera the policy was trained on.
    env_kwargs = {
        "image_size": cfg.image_size,
        **({"camera": episodes.meta["camera"]} if "camera" in episodes.meta else {}),
    }
    starts = load_start_states(cfg, episodes, env_kwargs, tasks)
    logger.info("start states: %d (%s)", len(starts), cfg.start_states)

    # --- the real simulator (one worker pool): real-engine rollouts, evaluation, verification, refresh ----------
    pool = (
        EnvWorkerPool(cfg.num_env_workers, env_kwargs=env_kwargs, slots_per_worker=cfg.env_slots_per_worker)
        if cfg.num_env_workers > 0
        else None
    )

    # --- rewards, and the engine: imagination in a frozen World Expert (success by cfg.success_signal) or reality -
    snapshot = freeze_snapshot(policy)
    scorer = build_reward_scorer(
        cfg.reward_funcs, cfg.reward_weights, reward_model_path=cfg.reward_model_path, dataset_path=cfg.dataset_path,
        policy=snapshot, reward_kwargs=cfg.reward_kwargs, subtask_rules=SUBTASK_RULES,
        state_reward_path=cfg.state_reward_path,
    )  # fmt: skip
    # verification and advantage agreement imagine even with the real engine
    imagines = cfg.engine == "imagined" or cfg.verify_steps > 0 or cfg.agreement_steps > 0
    needs_classifier = imagines and cfg.success_signal in ("classifier", "both")
    classifier, classifier_threshold = (
        success_classifier_for_signal(scorer, cfg.reward_model_path if needs_classifier else None)
    ) or (None, 0.5)
    success_signal = cfg.success_signal
    state_success, state_threshold = None, 0.5
    if success_signal == "state" and imagines:
        if not cfg.state_reward_path:
            raise ValueError(
                "grpo_world: success_signal='state' decides imagined success with the state reward model: pass "
                "--state_reward_path (recipes/train_state_reward.py's output), or choose another success_signal"
            )
        state_model = load_state_reward(cfg.state_reward_path)
        state_success, state_threshold = state_success_fn(state_model), state_model.threshold
    if classifier is None and success_signal in ("classifier", "both") and imagines:
        if cfg.engine == "imagined":
            raise ValueError(
                f"grpo_world: success_signal={success_signal!r} decides imagined success with the success "
                f"classifier, but reward_funcs {cfg.reward_funcs} hold none and no --reward_model_path is set: pass "
                "one (recipes/train_reward.py's output), add subgoal_success, or pass --success_signal head"
            )
        logger.info("engine real: verification's imagination decides success with the World Expert's head (no "
                    "success classifier among reward_funcs %s)", cfg.reward_funcs)  # fmt: skip
        success_signal = "head"
    state_dynamics = None
    if imagines and cfg.imagined_state_dynamics == "ensemble":
        state_dynamics = ensemble_state_dynamics(cfg, policy.config.chunk_size)
    imagination = None
    if imagines:
        imagination = ImaginationEngine(
            snapshot, horizon=cfg.horizon, success_threshold=cfg.success_threshold, success_signal=success_signal,
            success_classifier=classifier, classifier_threshold=classifier_threshold, state_success=state_success,
            state_threshold=state_threshold, reencode=cfg.reencode_predictions, clip_actions=cfg.clip_imagined_actions,
            simulator_subtask="policy" if cfg.imagine_with_policy_subtask else "own", state_dynamics=state_dynamics,
        )  # fmt: skip
    if cfg.engine == "real":
        engine = RealEngine(
            snapshot, chunk_size=policy.config.chunk_size, max_episode_steps=cfg.real_max_episode_steps, pool=pool,
            num_workers=cfg.num_env_workers, env_kwargs=env_kwargs, timeout_s=cfg.eval_timeout_s,
            slots_per_worker=cfg.env_slots_per_worker,
        )  # fmt: skip
        logger.info("engine real: %d chunks × %d steps per episode, %d real episodes per process and step",
                    engine.horizon, engine.chunk_size, cfg.num_starts * cfg.num_generations)  # fmt: skip
    else:
        engine = imagination
    world_aux = (
        SFTWindows(episodes, horizon=policy.config.chunk_size) if cfg.world_aux_coef > 0 or cfg.bc_coef > 0 else None
    )
    # A refresh fine-tunes the simulator on real episodes; the KL / anchor reference must stay the starting policy.
    refreshes = cfg.refresh_world_steps > 0 or (cfg.round_episodes_per_task > 0 and cfg.round_refresh_steps > 0)
    ref_model = freeze_snapshot(policy) if refreshes else None

    # --- evaluation, paired verification, refresh, keep-best ----------------------------------------------------
    real = {
        "num_workers": cfg.num_env_workers,
        "env_kwargs": env_kwargs,
        "pool": pool,
        "timeout_s": cfg.eval_timeout_s,
    }
    eval_steps = period_steps(cfg.eval_steps, cfg.max_steps)
    callbacks = []
    if eval_steps:
        evaluator = make_real_evaluator(
            cfg.eval_tasks or tasks, cfg.eval_episodes_per_task, seed=cfg.seed,
            max_episode_steps=cfg.eval_max_episode_steps,
            sampled_temperature=cfg.temperature if cfg.eval_sampled else None, **real,
        )  # fmt: skip
        callbacks.append(RealEvalCallback(evaluator, eval_steps, at_start=cfg.eval_at_start))
    if cfg.verify_steps:
        verifier = Verifier(
            make_imagine_fn(imagination, horizon=cfg.horizon), tasks, cfg.verify_episodes, seed=10_000 + cfg.seed,
            seed_stride=1000 if cfg.refresh_world_steps else 0,  # fresh starts to refresh on, else comparable ones
            world=snapshot, success_scorer=classifier, scorer_threshold=classifier_threshold,
            max_episode_steps=cfg.horizon * policy.config.chunk_size, **real,  # an imagined episode's step budget
        )  # fmt: skip
        callbacks.append(
            VerifyCallback(
                verifier,
                cfg.verify_steps,
                mask_unverified=cfg.mask_unverified,
                mask_gap_threshold=cfg.mask_gap_threshold,
                success_signal=success_signal,
                success_classifier=classifier,
                episodes_train=cfg.refresh_world_steps > 0,  # the refresh fine-tunes on them
            )
        )
    if cfg.agreement_steps:
        points = agreement_points(
            episodes, tasks, cfg.agreement_points_per_task, cfg.agreement_positions,
            late_steps=(cfg.agreement_late_chunks if cfg.agreement_late_chunks is not None else cfg.horizon)
            * policy.config.chunk_size,
        )  # fmt: skip
        agreement = AdvantageAgreement(
            imagination, scorer, points, group_size=cfg.num_generations, horizon=cfg.horizon,
            chunk_size=policy.config.chunk_size, temperature=cfg.temperature,
            aggregation=cfg.multi_objective_aggregation, scale_rewards=cfg.scale_rewards, env_kwargs=env_kwargs,
            seed=20_000 + cfg.seed,
            strip_dir=Path(cfg.output_dir) / "agreement" if state.is_main_process else None,
        )  # fmt: skip
        logger.info("advantage agreement: %d branch points × %d rows every %d steps", len(points),
                    cfg.num_generations, cfg.agreement_steps)  # fmt: skip
        # before the refresh of the same step: the agreement of the simulator GRPO trained in
        callbacks.append(AgreementCallback(agreement, cfg.agreement_steps))
    if cfg.round_episodes_per_task:
        callbacks.append(coevolution_callback(cfg, tasks, snapshot, scorer, imagination, pool, env_kwargs))
    if cfg.refresh_world_steps:
        refresh = WorldRefresh(snapshot, verifier, steps=cfg.refresh_grad_steps, lr=cfg.refresh_lr)
        callbacks.append(RefreshWorldCallback(refresh, cfg.refresh_world_steps))
    if cfg.keep_best_real and eval_steps:
        callbacks.append(KeepBestRealCallback(margin=cfg.keep_best_margin, save_best=True))

    trainer = GRPOWorldTrainer(
        model=policy,
        args=cfg,
        train_dataset=starts,
        imagination=engine,
        reward_scorer=scorer,
        world_aux_dataset=world_aux,
        world_aux_collate=collate_windows,
        processing_class=processor,
        ref_model=ref_model,
        callbacks=callbacks,
    )
    try:
        trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    finally:
        if pool is not None:
            pool.close()
    trainer.save_model(os.path.join(cfg.output_dir, "final"))
    if state.is_main_process:
        logger.info(
            "done: final policy in %s, metrics in %s",
            os.path.join(cfg.output_dir, "final"),
            os.path.join(cfg.output_dir, "metrics.jsonl"),
        )
    trainer.accelerator.end_training()
    if state.num_processes > 1:
        exit_without_teardown()


if __name__ == "__main__":
    main()
