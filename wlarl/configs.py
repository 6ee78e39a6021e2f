"""`GRPOWorldConfig`: TRL's `GRPOConfig` plus the world, evaluation and verification options of wlarl.

TRL's names keep TRL's meanings (``num_generations``, ``beta``, ``epsilon``/``epsilon_high``, ``loss_type``,
``scale_rewards``, ``reward_weights``, ``multi_objective_aggregation``, ``num_iterations``, ``temperature``,
``mask_truncated_completions``, ``importance_sampling_level``, ``eval_steps`` …). What differs is the batch:

**Batch sizes.** Each process, at each micro-step, draws ``B = num_starts`` start states and imagines
``G = num_generations`` episodes from each: ``N = B·G`` rows (TRL's "completions"). TRL's batch fields are derived
from that and should be left unset:

- ``per_device_train_batch_size = num_starts · num_generations`` (rows per process per micro-step, TRL's meaning);
- ``steps_per_generation = gradient_accumulation_steps`` (one rollout per micro-step, TRL's default);
- ``generation_batch_size = num_starts · num_generations · world_size · gradient_accumulation_steps``.

Groups are therefore never split across processes, and TRL's divisibility checks hold for any number of processes.
One optimizer step sees ``num_starts · world_size · gradient_accumulation_steps`` groups; ``num_iterations`` > 1
reuses each rollout for that many updates (μ in the GRPO paper).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import MISSING, dataclass, field, fields

from transformers.trainer_utils import SaveStrategy
from trl import GRPOConfig

from wlarl.algorithms.grpo import AGGREGATIONS, IMPORTANCE_SAMPLING_LEVELS, LOSS_TYPES, SCALE_REWARDS

START_STATE_SOURCES = ("auto", "dataset", "reset", "keyframes")
BRANCH_POSITIONS = ("early", "middle", "late")  # rollout.ranking.POSITIONS (wlarl does not import rollout)
START_SAMPLING_MODES = ("uniform", "signal", "round_signal")
ENGINES = ("imagined", "real")
SUCCESS_SIGNALS = ("classifier", "head", "both", "state")
STATE_DYNAMICS = ("world_expert", "ensemble")  # what predicts the full state in imagination

# Fields of trl.GRPOConfig that drive TRL's own generation (vLLM, sampling filters, text-model options, other losses).
# wlarl samples action chunks and subtasks itself and never reads them: setting one to anything but TRL's default is
# an error, so that nobody believes it took effect.
IGNORED_TRL_FIELDS = (
    "model_init_kwargs", "router_aux_loss_coef", "disable_dropout", "cast_lm_head_to_fp32", "num_generations_eval",
    "top_p", "top_k", "min_p", "generation_kwargs", "chat_template_kwargs", "repetition_penalty",
    "cache_implementation", "use_vllm", "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode",
    "vllm_structured_outputs_regex", "vllm_server_base_url", "vllm_server_host", "vllm_server_port",
    "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization", "vllm_max_model_length",
    "vllm_tensor_parallel_size", "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min", "vllm_importance_sampling_cap",
    "sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg",
    "vespo_lambda_neg", "sync_ref_model", "top_entropy_quantile", "entropy_coef", "use_adaptive_entropy",
    "off_policy_mask_threshold", "max_tool_calling_iterations", "log_completions", "num_completions_to_print",
    "use_transformers_continuous_batching", "transformers_continuous_batching_config", "use_transformers_paged",
)  # fmt: skip


@dataclass
class GRPOWorldConfig(GRPOConfig):
    """Configuration of `GRPOWorldTrainer` and the `grpo_world` recipe (see the module docstring for batch sizes).

    Defaults are the quick real thing on a CPU: fp32, no reporting back-end, a log line per step.
    """

    # ------------------------------------------------------------------ TRL / Trainer fields with wlarl defaults
    output_dir: str | None = field(
        default="runs/grpo_world",
        metadata={"help": "Where checkpoints, metrics.jsonl, videos and the config are written."},
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "AdamW learning rate (TRL's 1e-6 is tuned for LLMs; small robot policies need more)."},
    )
    max_steps: int = field(default=100, metadata={"help": "Number of optimizer steps (GRPO updates)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every X optimizer steps."})
    save_strategy: SaveStrategy | str = field(
        default="steps", metadata={"help": "Checkpoint strategy: 'no', 'steps' or 'epoch'."}
    )
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every X optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    bf16: bool | None = field(
        default=False,
        metadata={"help": "bf16 mixed precision (GPU only in practice; False keeps CPU runs in fp32)."},
    )
    activation_checkpointing: bool | None = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass (saves memory, costs time)."},
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing (transformers ≥ 5); leave unset."},
    )
    report_to: None | str | list[str] = field(
        default="none",
        metadata={
            "help": "Logging back-ends ('none', 'wandb', 'tensorboard', 'all'); metrics.jsonl is always written."
        },
    )
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={"help": "Keep every start-state column (image, state, instruction, task_name, seed)."},
    )
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pin host memory (useful on GPUs only)."})
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Derived: num_starts × num_generations rows per process and micro-step. Leave unset."},
    )
    max_completion_length: int | None = field(
        default=None,
        metadata={
            "help": "Constant of the 'dr_grpo' loss (tokens per row). None: the number of loss tokens of a row "
            "(horizon, or 2·horizon with subtask tokens)."
        },
    )
    epsilon_high: float | None = field(
        default=0.28,
        metadata={"help": "Upper clip of the ratio (DAPO clip-higher; VLA-GRPO recipes use 0.28). None: = epsilon."},
    )
    eval_steps: float | None = field(
        default=50,
        metadata={
            "help": "Real-simulator evaluation every X optimizer steps (a float in [0, 1) is a ratio of max_steps, "
            "as in TrainingArguments); 0 or None disables it. It runs from a callback, so eval_strategy stays 'no'."
        },
    )

    # ------------------------------------------------------------------ rewards
    reward_funcs: list[str] = field(
        default_factory=lambda: ["subgoal_success"],
        metadata={
            "help": "Reward functions: built-in names (see rewards.BUILTIN_REWARDS) or dotted paths "
            "'pkg.module:callable'. Weighted by reward_weights."
        },
    )
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "Trained subgoal reward model (success classifier). None: the recipe bootstraps one."},
    )
    state_reward_path: str | None = field(
        default=None,
        metadata={
            "help": "Trained state reward model (recipes/train_state_reward.py) of the state_success / state_progress "
            "rewards. None: the bootstrap's."
        },
    )
    reward_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Options of reward factories by function name, a dict or a JSON string, e.g. "
            '\'{"get_repetition_penalty_reward": {"ngram_size": 3}}\'. A named callable that is not a reward factory '
            "is called with its options to build the reward function (TRL's factories)."
        },
    )

    # ------------------------------------------------------------------ policy, start states, imagination
    policy_path: str | None = field(
        default=None,
        metadata={"help": "SFT'd WLA policy to post-train. None: the recipe bootstraps one (collect → SFT → reward)."},
    )
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Episode dataset (start states, world_aux windows). None: the bootstrap's dataset."},
    )
    engine: str = field(
        default="imagined",
        metadata={
            "help": "Where GRPO rolls out: 'imagined' (the frozen World Expert) or 'real' (the real simulator, the "
            "control: same trainer, rewards, filters, evaluation and checkpoints; episodes of up to "
            "real_max_episode_steps env steps; the default reward is the simulator's own success)."
        },
    )
    real_max_episode_steps: int = field(
        default=150,
        metadata={
            "help": "engine='real': env steps per training episode; an episode is the chunks that fit "
            "(real_max_episode_steps // chunk_size)."
        },
    )
    start_states: str = field(
        default="auto",
        metadata={
            "help": "Where episodes start: 'dataset' (first frames of dataset episodes), 'reset' (seeded resets of "
            "the real simulator for `tasks`, seeds 100000 + i, never those of evaluation), 'keyframes' (frames every "
            "keyframe_stride steps inside dataset episodes, rebuildable from task, seed and step) or 'auto' (dataset "
            "in imagination, reset with engine='real', which can only rebuild seeded resets)."
        },
    )
    num_reset_starts: int = field(
        default=16, metadata={"help": "start_states='reset': seeded resets per task, drawn once at start-up."}
    )
    keyframe_stride: int = field(
        default=8, metadata={"help": "start_states='keyframes': steps between keyframes inside an episode."}
    )
    tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Simulator task names (e.g. reach-v3) for resets and evaluation; empty: all in the dataset."
        },
    )
    eval_tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Tasks the real evaluation covers, when they differ from `tasks` (empty: `tasks`): train on the "
            "tasks a policy fails and still measure what that does to the ones it solves. Every task's episodes use "
            "the same seeds whatever the list, so evaluations with other lists compare per task."
        },
    )
    start_sampling: str = field(
        default="uniform",
        metadata={
            "help": "How starts are drawn from the start states: 'uniform', or 'signal' (in proportion to the estimated "
            "rate at which a start's groups carry learning signal, shrunk to its task's rate; see "
            "wlarl.trainer.start_sampling). 'signal' spends fewer rollouts on starts whose groups are all successes "
            "or all failures. 'round_signal' (co-evolution rounds only): each task's share ∝ the posterior probability "
            "that a group of num_generations real episodes of the current policy on it has mixed success, from the "
            "latest round's collected episodes; uniform among a task's starts."
        },
    )
    start_sampling_prior: float = field(
        default=2.0,
        metadata={"help": "start_sampling='signal': groups of a start that weigh as much as its task's rate (> 0)."},
    )
    num_starts: int = field(
        default=8,
        metadata={"help": "B: start states per process and micro-step; each is imagined num_generations times."},
    )
    horizon: int = field(default=8, metadata={"help": "T: action chunks per imagined episode."})
    success_threshold: float = field(
        default=0.5,
        metadata={"help": "The World Expert's success head calls success once its probability ≥ this."},
    )
    success_signal: str = field(
        default="both",
        metadata={
            "help": "What ends an imagined episode and counts as its success: 'both' (the World Expert's success head "
            "and the success reward model on the predicted frame must agree; the smallest imagination gap in "
            "BENCHMARKS), 'classifier' (the reward model alone, at its calibrated threshold), 'head' (the head alone) "
            "or 'state' (the state reward model of state_reward_path on the World Expert's predicted full state, at its "
            "calibrated threshold: needs a World Expert that models full states)."
        },
    )
    imagined_state_dynamics: str = field(
        default="world_expert",
        metadata={
            "help": "What predicts the full state (the state rewards' input) and the policy's state in imagination: "
            "'world_expert' (its full-state head) or 'ensemble' (a dynamics ensemble on full state and action chunk, "
            "dynamics_ensemble_path or one trained on dataset_path at start, retrained every co-evolution round; the "
            "World Expert still predicts the image). BENCHMARKS, 'Does the World Expert's prediction depend on the "
            "action?'"
        },
    )
    dynamics_ensemble_path: str | None = field(
        default=None,
        metadata={"help": "A trained dynamics ensemble (recipes/train_dynamics_ensemble.py) for "
                  "imagined_state_dynamics 'ensemble'; None: train one on dataset_path at start."},
    )  # fmt: skip
    dynamics_ensemble_steps: int = field(
        default=2000, metadata={"help": "Training steps of a dynamics ensemble trained by the recipe (start, rounds)."}
    )
    clip_imagined_actions: bool = field(
        default=True,
        metadata={
            "help": "The World Expert executes sampled chunks clipped to [-1, 1], as the real simulator does. False "
            "is an ablation only (the raw Gaussian draw is imagined)."
        },
    )
    imagine_with_policy_subtask: bool = field(
        default=False,
        metadata={
            "help": "Ablation only: condition the simulator on the subtask the policy sampled, the text channel a "
            "policy can steer its simulator through. Default False: the simulator uses its own greedy subtask."
        },
    )
    reencode_predictions: bool = field(
        default=True,
        metadata={
            "help": "In imagination the policy reads encode(decode(predicted latent)), the same kind of input as a "
            "real frame; False feeds the World Expert's raw latents (cheaper, not what the policy sees in reality)."
        },
    )

    # ------------------------------------------------------------------ dynamic sampling
    dynamic_sampling: bool = field(
        default=True,
        metadata={
            "help": "Drop groups without learning signal and refill with new starts (DAPO). The filter acts on the "
            "reward the advantages come from: when every reward is 0 or 1 a group is kept if its mean reward lies "
            "in dynamic_sampling_range; otherwise if its reward std is > 0."
        },
    )
    dynamic_sampling_range: list[float] = field(
        default_factory=lambda: [0.1, 0.9],
        metadata={"help": "Inclusive [lo, hi] mean of a binary group reward (success rate) kept by dynamic sampling."},
    )
    max_resample_rounds: int = field(
        default=3,
        metadata={"help": "Rollout rounds at most per step when refilling dropped groups (1 = no refill)."},
    )

    # ------------------------------------------------------------------ extra loss terms
    nll_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of the NLL of successful trajectories' tokens (LightningRL uses 0.1); 0 disables."},
    )
    world_aux_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the World Expert's SFT loss on real episodes during GRPO, so the trained policy's own "
            "World Expert stays consistent with its backbone (test-time scaling, next run's simulator); 0 off."
        },
    )
    world_aux_batch_size: int = field(
        default=16, metadata={"help": "Real SFT windows per step for the world_aux_coef and bc_coef losses."}
    )
    bc_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the Action Expert's SFT loss (behaviour cloning) on the same real windows as "
            "world_aux_coef: an anchor for tasks whose groups carry no signal (all succeed), which GRPO on other "
            "tasks can otherwise erode through the shared weights; 0 off."
        },
    )
    solved_anchor_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the solved-state anchor: the KL of the action chunk from the reference policy's "
            "Gaussian to the current one, at the states visited by one row of every solved group: a group whose rows "
            "all succeeded (with a success reward, one dynamic sampling drops), or any group of a task whose latest "
            "co-evolution round succeeded in reality at ≥ dynamic_sampling_range's upper bound. It holds what the "
            "policy already solves, which gets no policy gradient and erodes through the shared weights; 0 off. "
            "Gaussian action head only."
        },
    )
    subtask_coef: float = field(
        default=0.5,
        metadata={
            "help": "Weight of each chunk's subtask log-prob in the policy loss: the subtask shares the trajectory's "
            "advantage (the simulator conditions on its own greedy subtask, so text cannot steer it); 0 disables."
        },
    )
    subtask_beta: float = field(
        default=0.1,
        metadata={
            "help": "k3 KL of the subtask tokens to the frozen reference, the anchor that keeps the text the policy "
            "emits in reality from drifting (applies also when beta = 0); 0 disables."
        },
    )

    # ------------------------------------------------------------------ real-simulator evaluation
    eval_episodes_per_task: int = field(default=10, metadata={"help": "Real episodes per task at each evaluation."})
    eval_at_start: bool = field(
        default=True,
        metadata={
            "help": "Evaluate in the real simulator before the first step too (False: when the starting policy was "
            "already evaluated on the same seeds, e.g. by an earlier run of a comparison)."
        },
    )
    eval_sampled: bool = field(
        default=True,
        metadata={
            "help": "Each evaluation also runs the sampled policy (at `temperature`, what GRPO optimises) besides the "
            "greedy one: eval/real_success_sampled next to eval/real_success."
        },
    )
    num_env_workers: int = field(
        default=1,
        metadata={
            "help": "Parallel real-simulator worker processes; 0 runs the simulator in the training process (no "
            "start-up cost of about 8 s per evaluation, but no isolation from a simulator crash or hang)."
        },
    )
    env_slots_per_worker: int = field(
        default=16,
        metadata={
            "help": "Episodes each real-simulator worker runs at once (one env each, about 40 MB); the policy acts on "
            "all running episodes in one batched call, so more slots mean fewer, larger calls (the real engine's "
            "num_starts × num_generations rows advance together)."
        },
    )
    image_size: int = field(default=64, metadata={"help": "Camera image size (pixels, square) of the real simulator."})
    keep_best_real: bool = field(
        default=True,
        metadata={"help": "Keep the checkpoint with the best real success as `best/` (needs eval_steps > 0)."},
    )
    keep_best_margin: float = field(
        default=0.1,
        metadata={
            "help": "keep_best_real restores the best checkpoint when real success falls more than this below the best. "
            "The default, 0.1, is about two standard errors of an 80-episode success rate near 0.5: a smaller margin "
            "restores on evaluation noise and undoes every GRPO step."
        },
    )

    # ------------------------------------------------------------------ verification (imagined vs real)
    verify_steps: int = field(
        default=50,
        metadata={"help": "Paired imagined-vs-real verification every X optimizer steps; 0 disables."},
    )
    verify_episodes: int = field(
        default=16, metadata={"help": "Paired episodes (same seeds imagined and real) per verification."}
    )
    refresh_world_steps: int = field(
        default=0,
        metadata={"help": "Refresh World Expert / reward model from new real episodes every X steps; 0 disables."},
    )
    refresh_grad_steps: int = field(
        default=50, metadata={"help": "Gradient steps of each World-Expert refresh on the gathered real episodes."}
    )
    refresh_lr: float = field(default=1e-4, metadata={"help": "Learning rate of the World-Expert refresh."})
    eval_max_episode_steps: int | None = field(
        default=None, metadata={"help": "Episode length of real evaluations; None: the simulator's limit."}
    )
    eval_timeout_s: float = field(
        default=1800.0, metadata={"help": "Real evaluation wall-clock limit in seconds; past it, eval/timed_out = 1."}
    )
    mask_unverified: bool = field(
        default=False,
        metadata={"help": "Stop counting imagined successes as successes while the imagination gap is too large."},
    )
    mask_gap_threshold: float = field(
        default=0.2,
        metadata={"help": "Imagination gap (imagined − real success rate) above which mask_unverified acts."},
    )

    # ------------------------------------------------------------------ co-evolution rounds
    rounds: int = field(
        default=1,
        metadata={
            "help": "R co-evolution rounds, each max_steps / R GRPO steps long (with round_episodes_per_task > 0). "
            "A round, at train begin and then every max_steps / R steps: the current policy runs "
            "round_episodes_per_task sampled real episodes per task (training budget), the World Expert of the "
            "simulator is refreshed on the demonstrations and all policy episodes so far, the state reward model is "
            "retrained on them, and keyframes of the new episodes join the start states (see rollout.coevolution)."
        },
    )
    round_episodes_per_task: int = field(
        default=0, metadata={"help": "Real episodes per task each co-evolution round collects; 0: no rounds."}
    )
    round_refresh_steps: int = field(
        default=100, metadata={"help": "World-Expert gradient steps of each round's refresh (0: no refresh)."}
    )
    round_refresh_lr: float = field(default=1e-4, metadata={"help": "Learning rate of each round's refresh."})
    round_open_loop_chunks: int = field(
        default=3,
        metadata={
            "help": "Each round's refresh trains the World Expert open-loop over this many chunks: its own predictions "
            "fed back, as in imagination (1: one chunk ahead, as SFT)."
        },
    )
    round_newest_weight: int = field(
        default=2, metadata={"help": "How many times the newest round's episodes count in the refresh (≥ 1)."}
    )
    round_refresh_reward: bool = field(
        default=True,
        metadata={"help": "Retrain the state reward model (state_reward_path) on each round's data and use it."},
    )

    # ------------------------------------------------------------------ advantage agreement (imagined vs real)
    agreement_steps: int = field(
        default=0,
        metadata={
            "help": "Advantage agreement every X optimizer steps (and at train begin and end); 0 disables. Branch "
            "points inside the dataset's successful episodes are rebuilt in the real simulator, the policy imagines "
            "num_generations chunk sequences of `horizon` chunks from each, the training rewards give advantages, and "
            "the same actions are replayed in reality: verify/advantage_agreement is the share of rows whose "
            "imagined advantage has the sign of the real outcome's (see rollout.agreement). Its real episodes count "
            "as evaluation."
        },
    )
    agreement_points_per_task: int = field(
        default=1, metadata={"help": "Advantage agreement: successful dataset episodes per task to branch from."}
    )
    agreement_positions: list[str] = field(
        default_factory=lambda: ["middle", "late"],
        metadata={"help": "Advantage agreement: where in those episodes to branch ('early', 'middle', 'late')."},
    )
    agreement_late_chunks: int | None = field(
        default=None,
        metadata={
            "help": "Advantage agreement: a 'late' branch point lies this many chunks before the demonstration's "
            "success; None: `horizon` chunks, so that a continuation as good as the demonstration succeeds inside it."
        },
    )

    # ------------------------------------------------------------------ logging
    log_image_steps: int = field(
        default=0, metadata={"help": "Save a strip of imagined subgoal images every X steps; 0 disables."}
    )

    def __post_init__(self) -> None:
        self._reject_ignored_trl_fields()
        self._validate_world()
        self._derive_batch_sizes()
        super().__post_init__()
        if self.epsilon_high is None:  # TRL resolves this in its trainer; resolve it once here for ours
            self.epsilon_high = self.epsilon

    # ------------------------------------------------------------------ checks
    def _reject_ignored_trl_fields(self) -> None:
        defaults = {f.name: f for f in fields(GRPOConfig)}
        for name in IGNORED_TRL_FIELDS:
            f = defaults.get(name)
            if f is None:
                continue
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            if getattr(self, name) != default:
                raise ValueError(
                    f"GRPOWorldConfig.{name}: wlarl does not use TRL's {name!r} (it samples action chunks and subtasks "
                    f"itself, without vLLM or text-generation options); got {getattr(self, name)!r}, leave it at "
                    f"{default!r}"
                )

    def _validate_world(self) -> None:
        def bad(name: str, msg: str) -> ValueError:
            return ValueError(f"GRPOWorldConfig.{name}: {msg}")

        if self.num_generations is None or self.num_generations < 2:
            raise bad(
                "num_generations",
                f"GRPO needs at least 2 samples per group, set num_generations ≥ 2 (got {self.num_generations})",
            )
        if self.num_starts < 1:
            raise bad(
                "num_starts", f"need at least one start state per step, set num_starts ≥ 1 (got {self.num_starts})"
            )
        if self.horizon < 1:
            raise bad("horizon", f"an imagined episode needs at least one chunk, set horizon ≥ 1 (got {self.horizon})")
        if not 0.0 < self.success_threshold < 1.0:
            raise bad("success_threshold", f"is a probability strictly inside (0, 1), got {self.success_threshold}")
        if self.temperature <= 0:
            raise bad("temperature", f"must be > 0, got {self.temperature}")
        if self.num_iterations < 1:
            raise bad("num_iterations", f"must be ≥ 1 (updates per rollout), got {self.num_iterations}")
        saves_every = (
            self.save_steps if str(getattr(self.save_strategy, "value", self.save_strategy)) == "steps" else 0
        )
        if self.num_iterations > 1 and saves_every >= 1 and int(saves_every) % self.num_iterations != 0:
            raise bad(
                "save_steps",
                f"({self.save_steps}) must be a multiple of num_iterations ({self.num_iterations}): a checkpoint taken "
                "between the updates of one rollout cannot be resumed as the run would have gone on (the rollout "
                "buffer is not saved); set save_steps to a multiple of num_iterations",
            )
        if self.epsilon < 0:
            raise bad("epsilon", f"the clip range must be ≥ 0, got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise bad(
                "epsilon_high",
                f"({self.epsilon_high}) must be ≥ epsilon ({self.epsilon}); raise epsilon_high or lower epsilon",
            )
        if self.delta is not None and self.delta <= 1.0:
            raise bad(
                "delta", f"caps the ratio from above and must be > 1 (TRL recommends > 1 + epsilon), got {self.delta}"
            )
        if self.loss_type not in LOSS_TYPES:
            raise bad("loss_type", f"unknown or unsupported value {self.loss_type!r}; use one of {list(LOSS_TYPES)}")
        # TRL accepts booleans for scale_rewards (True → group, False → none); the CLI passes them as strings.
        sr = self.scale_rewards
        if isinstance(sr, str) and sr.lower() in ("true", "false"):
            sr = sr.lower() == "true"
        self.scale_rewards = {True: "group", False: "none"}.get(sr, sr)
        if self.scale_rewards not in SCALE_REWARDS:
            raise bad("scale_rewards", f"unknown value {self.scale_rewards!r}; use one of {list(SCALE_REWARDS)}")
        if self.multi_objective_aggregation not in AGGREGATIONS:
            raise bad(
                "multi_objective_aggregation",
                f"unknown value {self.multi_objective_aggregation!r}; use one of {list(AGGREGATIONS)}",
            )
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            raise bad(
                "importance_sampling_level",
                f"unknown value {self.importance_sampling_level!r}; use one of {list(IMPORTANCE_SAMPLING_LEVELS)}",
            )
        if self.beta < 0:
            raise bad("beta", f"the KL coefficient must be ≥ 0, got {self.beta}")
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if not self.reward_funcs:
            raise bad("reward_funcs", "needs at least one reward function, e.g. ['subgoal_success']")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise bad(
                "reward_weights",
                f"has {len(self.reward_weights)} weight(s) for {len(self.reward_funcs)} reward_funcs "
                f"{list(self.reward_funcs)}; give one weight per function (or none for all 1.0)",
            )
        if isinstance(self.reward_kwargs, str):
            try:
                self.reward_kwargs = json.loads(self.reward_kwargs) if self.reward_kwargs.strip() else None
            except json.JSONDecodeError as err:
                raise bad("reward_kwargs", f"is not valid JSON ({err}): {self.reward_kwargs!r}") from None
        if self.reward_kwargs is not None:
            if not isinstance(self.reward_kwargs, dict) or not all(
                isinstance(v, dict) for v in self.reward_kwargs.values()
            ):
                raise bad(
                    "reward_kwargs",
                    f"expected {{function name: {{option: value}}}}, got {self.reward_kwargs!r}",
                )
        if self.success_signal not in SUCCESS_SIGNALS:
            raise bad("success_signal", f"unknown value {self.success_signal!r}; use one of {list(SUCCESS_SIGNALS)}")
        for name in ("tasks", "eval_tasks"):
            names = getattr(self, name)
            if len(set(names)) != len(names):
                raise bad(name, f"lists a task twice ({names}); give each task once")
        if self.start_states not in START_STATE_SOURCES:
            raise bad("start_states", f"unknown value {self.start_states!r}; use one of {list(START_STATE_SOURCES)}")
        if self.start_states == "reset" and not self.tasks:
            raise bad("tasks", "start_states='reset' needs the simulator task names, e.g. --tasks reach-v3")
        if self.engine not in ENGINES:
            raise bad("engine", f"unknown value {self.engine!r}; use one of {list(ENGINES)}")
        if self.start_states == "auto":  # the real engine rebuilds starts by seeded resets (tasks: the dataset's)
            self.start_states = "reset" if self.engine == "real" else "dataset"
        elif self.engine == "real" and self.start_states != "reset":
            raise bad(
                "start_states",
                f"engine='real' rebuilds every start by a seeded reset of the real simulator; {self.start_states!r} "
                "starts (perturbed or mid-episode frames) cannot be rebuilt that way: use 'reset' (or 'auto')",
            )
        if self.engine == "real" and self.refresh_world_steps > 0:
            raise bad(
                "refresh_world_steps",
                "refreshes the imagined simulator, which engine='real' does not use: set it to 0",
            )
        if self.engine == "real" and self.mask_unverified:
            raise bad("mask_unverified", "masks imagined successes; engine='real' has none to mask: set it False")
        if self.real_max_episode_steps < 1:
            raise bad("real_max_episode_steps", f"must be ≥ 1 env step, got {self.real_max_episode_steps}")
        rng = list(self.dynamic_sampling_range)
        if len(rng) != 2:
            raise bad("dynamic_sampling_range", f"expected two numbers [lo, hi], got {rng}")
        lo, hi = float(rng[0]), float(rng[1])
        if not (0.0 <= lo <= hi <= 1.0):
            raise bad("dynamic_sampling_range", f"need 0 ≤ lo ≤ hi ≤ 1 (success rates), got [{lo}, {hi}]")
        self.dynamic_sampling_range = [lo, hi]
        if self.start_sampling not in START_SAMPLING_MODES:
            raise bad(
                "start_sampling", f"unknown value {self.start_sampling!r}; use one of {list(START_SAMPLING_MODES)}"
            )
        if not self.start_sampling_prior > 0:
            raise bad("start_sampling_prior", f"must be > 0, got {self.start_sampling_prior}")
        if self.max_resample_rounds < 1:
            raise bad("max_resample_rounds", f"must be ≥ 1 (1 = no refill), got {self.max_resample_rounds}")
        for name in (
            "nll_coef",
            "world_aux_coef",
            "bc_coef",
            "solved_anchor_coef",
            "subtask_coef",
            "subtask_beta",
            "keep_best_margin",
        ):
            if getattr(self, name) < 0:
                raise bad(name, f"must be ≥ 0 (0 disables), got {getattr(self, name)}")
        for name in (
            "verify_steps",
            "refresh_world_steps",
            "log_image_steps",
            "agreement_steps",
            "round_episodes_per_task",
            "round_refresh_steps",
        ):
            if getattr(self, name) < 0:
                raise bad(name, f"must be ≥ 0 (0 disables), got {getattr(self, name)}")
        if self.eval_steps is not None and self.eval_steps < 0:
            raise bad("eval_steps", f"must be ≥ 0 (0 disables), got {self.eval_steps}")
        if self.eval_timeout_s <= 0:
            raise bad("eval_timeout_s", f"must be > 0 seconds, got {self.eval_timeout_s}")
        if self.num_env_workers < 0:
            raise bad("num_env_workers", f"must be ≥ 0 (0: in the training process), got {self.num_env_workers}")
        for name in (
            "eval_episodes_per_task",
            "verify_episodes",
            "world_aux_batch_size",
            "refresh_grad_steps",
            "num_reset_starts",
            "keyframe_stride",
            "env_slots_per_worker",
            "agreement_points_per_task",
            "round_open_loop_chunks",
            "rounds",
            "round_newest_weight",
        ):
            if getattr(self, name) < 1:
                raise bad(name, f"must be ≥ 1, got {getattr(self, name)}")
        if self.image_size < 8:
            raise bad("image_size", f"must be ≥ 8 pixels, got {self.image_size}")
        if not 0.0 <= self.mask_gap_threshold <= 1.0:
            raise bad(
                "mask_gap_threshold", f"is a difference of success rates in [0, 1], got {self.mask_gap_threshold}"
            )
        if self.refresh_world_steps > 0 and not self.verify_steps:
            raise bad(
                "refresh_world_steps",
                "refreshes the World Expert on the real episodes verification gathers: set verify_steps > 0",
            )
        bad_positions = [p for p in self.agreement_positions if p not in BRANCH_POSITIONS]
        if bad_positions or not self.agreement_positions:
            raise bad(
                "agreement_positions",
                f"expected one or more of {list(BRANCH_POSITIONS)}, got {self.agreement_positions}",
            )
        if self.agreement_late_chunks is not None and self.agreement_late_chunks < 0:
            raise bad("agreement_late_chunks", f"must be ≥ 0, got {self.agreement_late_chunks}")
        if self.rounds > 1 and self.round_episodes_per_task == 0:
            raise bad("round_episodes_per_task", f"rounds={self.rounds} needs episodes to collect: set it ≥ 1")
        if self.round_episodes_per_task > 0:
            if self.engine != "imagined":
                raise bad("rounds", "co-evolution rounds refresh the imagination: they need engine='imagined'")
            if self.max_steps < self.rounds or self.max_steps % self.rounds:
                raise bad("max_steps", f"{self.max_steps} steps do not split into {self.rounds} equal rounds")
            if self.start_sampling == "signal":
                raise bad(
                    "start_sampling",
                    "co-evolution rounds add starts every round, so per-start counts do not apply: use 'uniform' or "
                    "'round_signal'",
                )
        elif self.start_sampling == "round_signal":
            raise bad(
                "start_sampling",
                "'round_signal' weighs tasks by the rounds' real episodes: set rounds and "
                "round_episodes_per_task ≥ 1, or use 'uniform' / 'signal'",
            )
        if self.imagined_state_dynamics not in STATE_DYNAMICS:
            raise bad(
                "imagined_state_dynamics",
                f"expected one of {list(STATE_DYNAMICS)}, got {self.imagined_state_dynamics!r}",
            )
        if self.dynamics_ensemble_steps < 1:
            raise bad("dynamics_ensemble_steps", f"must be ≥ 1, got {self.dynamics_ensemble_steps}")
        if self.mask_unverified and self.verify_steps == 0:
            raise bad("mask_unverified", "needs verification: set verify_steps > 0 (or mask_unverified False)")

    def _derive_batch_sizes(self) -> None:
        rows = self.num_starts * self.num_generations
        if self.per_device_train_batch_size is not None and self.per_device_train_batch_size != rows:
            raise ValueError(
                f"GRPOWorldConfig.per_device_train_batch_size: is derived as num_starts × num_generations = {rows} "
                f"rows, got {self.per_device_train_batch_size}; leave it unset and set num_starts instead"
            )
        self.per_device_train_batch_size = rows
        if self.steps_per_generation is not None and self.steps_per_generation != self.gradient_accumulation_steps:
            raise ValueError(
                f"GRPOWorldConfig.steps_per_generation: wlarl imagines once per micro-step, so it equals "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}); got {self.steps_per_generation}. "
                "Leave it unset"
            )
        # generation_batch_size depends on the world size: a value saved by a run with another number of processes
        # is replaced (TRL derives it below from per_device_train_batch_size × world size × steps_per_generation).
        if self.generation_batch_size is not None and self.generation_batch_size % rows != 0:
            warnings.warn(
                f"GRPOWorldConfig.generation_batch_size={self.generation_batch_size} is derived from num_starts × "
                f"num_generations × processes × gradient_accumulation_steps; the given value is replaced",
                stacklevel=3,
            )
        self.generation_batch_size = None
        self.steps_per_generation = None

    @property
    def group_rows(self) -> int:
        """N = B·G: rows imagined per process and micro-step."""
        return self.num_starts * self.num_generations
