"""Imagination: a frozen World Expert as a simulator.

Two views of the same thing:

* `ImaginationEngine` — the batched engine the GRPO trainer uses: B starts × G samples imagined as one batch
  of N = B·G rows per chunk, without gradients, returning `Trajectories` with the on-policy log-probs of every
  chunk.
* `ImaginedVectorEnv` / `ImaginedEnv` — the standard `gymnasium` interfaces over the same World Expert, so any
  RL code that speaks gymnasium can train in imagination. An action is a whole chunk [H, A].
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from wlarl.configs import SUCCESS_SIGNALS
from wlarl.types import ActionSample, LazyImages, Observation, RewardOutput, Trajectories, WorldPrediction

__all__ = [
    "ImaginationEngine",
    "ImaginedEnv",
    "ImaginedVectorEnv",
    "advance",
    "bound_actions",
    "freeze_snapshot",
]

# Characters an instruction may contain (gymnasium's Text space checks every character against a charset).
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " .,;:!?'\"-_()/&+"
MAX_INSTRUCTION_LENGTH = 256


def freeze_snapshot(policy: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of `policy`: eval mode, no gradients. Serves as simulator and KL reference."""
    import copy

    snapshot = copy.deepcopy(policy)
    snapshot.eval()
    for p in snapshot.parameters():
        p.requires_grad_(False)
    return snapshot


SuccessClassifierFn = Callable[[torch.Tensor, list[str]], torch.Tensor]
StateSuccessFn = Callable[[torch.Tensor, list[str]], torch.Tensor]  # full states [N, F], task names -> probs [N]
# full states [N, F], executed actions [N, H, A], task names -> full states after the chunk [N, F]
StateDynamicsFn = Callable[[torch.Tensor, torch.Tensor, list[str]], torch.Tensor]


def bound_actions(actions: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """The chunk the simulator executes: `actions` clipped to [low, high], as the real Meta-World env clips them.

    The policy's log-prob stays that of the unclipped draw (clipping is part of the environment, not of the policy),
    so sampling and the update score the same Gaussian sample and the ratio is exact.
    """
    return actions.clamp(low, high)


def advance(world: torch.nn.Module, obs: Observation, pred: WorldPrediction, reencode: bool) -> Observation:
    """The observation the policy acts on after an imagined chunk.

    With `reencode`, the predicted latent is decoded to a frame and that frame encoded again, so the policy reads
    the same kind of input as in reality (encoder latents of a camera frame), never a raw World-Expert latent.
    `pred.images` must be decoded then.
    """
    if not reencode:
        return world.next_observation(obs, pred)
    if pred.images is None:
        raise ValueError("advance: reencode needs decoded predictions (pred.images)")
    return Observation(
        images=pred.images,
        states=pred.states.float(),
        instructions=list(obs.instructions),
        task_names=list(obs.task_names),
        latents=world.encode_images(pred.images).detach(),
        full_states=pred.full_states,
    )


class ImaginationEngine:
    """Batched on-policy imagination over a frozen World Expert.

    Three rules keep imagination to what reality allows:

    * **bounded actions**: the World Expert executes the sampled chunk clipped to [action_low, action_high], as the
      real simulator does (the policy's log-prob is that of the unclipped draw);
    * **no text channel**: the simulator conditions on its *own* greedy subtask, never on the one the policy
      sampled, so a policy cannot steer its simulator by writing the words of a later phase;
    * **the same inputs as reality** (`reencode`): the policy reads encode(decode(prediction)), as it reads
      encoder latents of real frames.

    Args:
        world: the frozen WLA snapshot whose World Expert predicts the next observation (see `freeze_snapshot`).
        horizon: T, the number of chunks of an imagined episode.
        success_threshold: the success head calls success once sigmoid(success logit) ≥ this value.
        decode_images: when to decode predicted latents into subgoal images (reward models score those):
            "lazy" (default) hands `LazyImages` that decode only the frames a reward function or logger reads;
            "eager" decodes every chunk as it is imagined. Frames are decoded every chunk anyway when `reencode`
            or a success classifier needs them.
        success_signal: what ends an episode and counts as its success: "head" (the World Expert's success
            head), "classifier" (`success_classifier` on the predicted frame ≥ `classifier_threshold`), "both", or
            "state" (`state_success` on the predicted full state ≥ `state_threshold`).
        success_classifier: ``fn(images uint8 [N, H, W, 3], task_names) -> probs [N]`` (e.g. the success reward
            model's `predict_proba`); needed by "classifier" and "both".
        classifier_threshold: the classifier's decision threshold (its calibrated one).
        state_success: ``fn(full_states float [N, F], task_names) -> probs [N]`` (e.g. a state reward model's
            calibrated success probability); needed by "state", with a World Expert that models full states.
        state_threshold: its decision threshold.
        reencode: feed the policy encode(decode(prediction)) instead of the raw predicted latent.
        action_low, action_high: the bounds actions are clipped to before the World Expert executes them.
        state_dynamics: ``fn(full_states [N, F], executed actions [N, H, A], task_names) -> full states [N, F]`` after
            the chunk (e.g. a `rewards.dynamics_ensemble.DynamicsEnsemble`'s `predict_next`, refreshed on the policy's
            real episodes). When given, it predicts the full state in place of the World Expert's full-state head,
            and the policy's state input becomes that full state's first S entries (Meta-World's layout: hand xyz and
            gripper); the World Expert still predicts the image. Needs starts that carry full states.
        clip_actions, simulator_subtask: ablations only, to measure what the rules above are worth:
            `clip_actions=False` hands the raw draws to the World Expert; `simulator_subtask="policy"` conditions it
            on the subtask the policy sampled (the text channel the default "own" closes).
    """

    def __init__(
        self,
        world: torch.nn.Module,
        horizon: int = 8,
        success_threshold: float = 0.5,
        decode_images: str = "lazy",
        success_signal: str = "head",
        success_classifier: SuccessClassifierFn | None = None,
        classifier_threshold: float = 0.5,
        state_success: StateSuccessFn | None = None,
        state_threshold: float = 0.5,
        reencode: bool = False,
        action_low: float = -1.0,
        action_high: float = 1.0,
        clip_actions: bool = True,
        simulator_subtask: str = "own",
        state_dynamics: StateDynamicsFn | None = None,
    ):
        if decode_images not in ("lazy", "eager"):
            raise ValueError(f"ImaginationEngine: decode_images must be 'lazy' or 'eager', got {decode_images!r}")
        if horizon < 1:
            raise ValueError(f"ImaginationEngine: horizon must be ≥ 1 chunk, got {horizon}")
        if not 0.0 < success_threshold < 1.0:
            raise ValueError(f"ImaginationEngine: success_threshold must lie in (0, 1), got {success_threshold}")
        if success_signal not in SUCCESS_SIGNALS:
            raise ValueError(
                f"ImaginationEngine: success_signal must be one of {list(SUCCESS_SIGNALS)}, got {success_signal!r}"
            )
        if success_signal == "state" and state_success is None:
            raise ValueError(
                "ImaginationEngine: success_signal='state' needs state_success (a state reward model's success "
                "probability of full states); pass one or use another success_signal"
            )
        if success_signal in ("classifier", "both") and success_classifier is None:
            raise ValueError(
                f"ImaginationEngine: success_signal={success_signal!r} needs a success_classifier (the success reward "
                "model's predict_proba); pass one or use success_signal='head'"
            )
        if simulator_subtask not in ("own", "policy"):
            raise ValueError(
                f"ImaginationEngine: simulator_subtask must be 'own' or 'policy', got {simulator_subtask!r}"
            )
        if not action_low < action_high:
            raise ValueError(f"ImaginationEngine: need action_low < action_high, got {action_low}, {action_high}")
        self.world = world
        self.horizon = horizon
        self.success_threshold = success_threshold
        self.decode_images = decode_images
        self.success_signal = success_signal
        self.success_classifier = success_classifier
        self.classifier_threshold = float(classifier_threshold)
        self.state_success = state_success
        self.state_threshold = float(state_threshold)
        self.reencode = bool(reencode)
        self.action_bounds = (float(action_low), float(action_high))
        self.clip_actions = bool(clip_actions)
        self.simulator_subtask = simulator_subtask
        self.state_dynamics = state_dynamics

    def _decode_each_chunk(self) -> bool:
        return self.decode_images == "eager" or self.reencode or self.success_signal in ("classifier", "both")

    def _succeeded(self, pred: WorldPrediction, task_names: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """bool [N] success after this chunk by `success_signal`, and the classifier's probs [N] (None: not run)."""
        head = torch.sigmoid(pred.success_logits.float().cpu()) >= self.success_threshold  # [N]
        if self.success_signal == "head":
            return head, None
        if self.success_signal == "state":
            if pred.full_states is None:
                raise ValueError(
                    "ImaginationEngine: success_signal='state' reads the predicted full state, but the World Expert "
                    "predicted none: use a policy trained with sft_wla --world_full_state true and starts that carry "
                    "full_state, or another success_signal"
                )
            probs = torch.as_tensor(self.state_success(pred.full_states.float().cpu(), task_names)).float().cpu()
            return probs >= self.state_threshold, None
        probs = torch.as_tensor(self.success_classifier(pred.images, task_names), dtype=torch.float32).cpu()
        by_classifier = probs >= self.classifier_threshold
        return (by_classifier if self.success_signal == "classifier" else by_classifier & head), probs

    def _dynamics_state(self, obs: Observation, executed: torch.Tensor, pred: WorldPrediction) -> WorldPrediction:
        """`pred` with the full state (and the policy's state, its first S entries) from `state_dynamics`."""
        if obs.full_states is None:
            raise ValueError(
                "ImaginationEngine: state_dynamics predicts the next full state from the current one, but the starts "
                "carry no full_states: start from dataset frames or real-engine observations (which record them)"
            )
        full = obs.full_states.float().cpu()
        nxt = torch.as_tensor(self.state_dynamics(full, executed.float().cpu(), list(obs.task_names))).float()
        if nxt.shape != full.shape:
            raise ValueError(
                f"ImaginationEngine: state_dynamics returned shape {tuple(nxt.shape)}, expected the full states' "
                f"{tuple(full.shape)}"
            )
        S = pred.states.shape[1]
        dev = pred.states.device
        return replace(pred, full_states=nxt.to(dev), states=nxt[:, :S].to(dev))

    @torch.no_grad()
    def rollout(
        self,
        policy: torch.nn.Module,
        starts: Observation,
        group_size: int = 1,
        temperature: float = 1.0,
        horizon: int | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
        seeds: torch.Tensor | None = None,
    ) -> Trajectories:
        """Imagine G episodes from each of B starts.

        Args:
            policy: the acting WLA policy (`act(obs, sample, temperature, generator=...)`).
            starts: Observation [B].
            group_size: G samples per start; rows are ordered b*G + g.
            temperature: sampling temperature of the policy.
            horizon: T (defaults to the engine's).
            seeds: the starts' reset seeds; unused here (imagination starts from the observations themselves), taken
                so that the trainer calls this engine and `rollout.real_engine.RealEngine` alike.

        Returns:
            Trajectories with N = B·G rows and T chunks. Rows keep being imagined after they terminate (so that
            every tensor is dense), but `alive` [N, T] marks the chunks that count. The samples hold the policy's
            unclipped draws; `Trajectories.actions` are the executed (clipped) ones.
        """
        T = horizon or self.horizon
        if starts.latents is None:
            # Encode the start frames once, so that every observation of the episode carries the latents the policy
            # acted on: recomputing log-probs over all chunks at once (the trainer's update) then sees exactly the
            # inputs of sampling, instead of re-encoding decoded predictions.
            starts = replace(starts, latents=policy.encode_images(starts.images).detach())
        obs = starts.repeat_interleave(group_size)  # [N]
        N = len(obs)
        decode = self._decode_each_chunk()
        alive = torch.ones(N, dtype=torch.bool)
        success = torch.zeros(N, dtype=torch.bool)
        observations: list[Observation] = []
        samples: list[ActionSample] = []
        preds: list[WorldPrediction] = []
        alive_t: list[torch.Tensor] = []
        probs_t: list[torch.Tensor] = []
        for _t in range(T):
            act_kwargs = {"sample": sample, "temperature": temperature}
            if generator is not None:
                act_kwargs["generator"] = generator
            action = policy.act(obs, **act_kwargs).detach()
            executed = bound_actions(action.actions, *self.action_bounds) if self.clip_actions else action.actions
            # sample=None: the simulator generates its own greedy subtask (the policy's text cannot steer it).
            conditioning = action if self.simulator_subtask == "policy" else None
            pred = self.world.imagine(obs, executed, decode=decode, sample=conditioning)  # [N] predictions
            if self.state_dynamics is not None:
                pred = self._dynamics_state(obs, executed, pred)
            observations.append(obs)
            samples.append(action)
            preds.append(pred)
            alive_t.append(alive.clone())
            succeeded_now, probs = self._succeeded(pred, list(obs.task_names))
            if probs is not None:
                probs_t.append(probs)
            success |= alive & succeeded_now
            alive = alive & ~succeeded_now
            obs = advance(self.world, obs, pred, self.reencode)
        if decode:
            subgoal_images = torch.stack([p.images.cpu() for p in preds], dim=1)  # [N, T, H, W, 3]
        else:
            latents = torch.stack([p.latents.cpu() for p in preds], dim=1)  # [N, T, C, h, w]
            subgoal_images = LazyImages(latents, self.world.decode_latents, tuple(starts.images.shape[1:]))
        return Trajectories(
            observations=observations,
            samples=samples,
            subgoal_images=subgoal_images,
            subgoal_latents=torch.stack([p.latents.cpu() for p in preds], dim=1),  # [N, T, C, h, w]
            states=torch.stack([p.states.cpu() for p in preds], dim=1),  # [N, T, S]
            success_logits=torch.stack([p.success_logits.cpu() for p in preds], dim=1),  # [N, T]
            alive=torch.stack(alive_t, dim=1),  # [N, T]
            success=success,
            instructions=list(obs.instructions),
            task_names=list(obs.task_names),
            group_size=group_size,
            classifier_probs=torch.stack(probs_t, dim=1) if probs_t else None,  # [N, T]
            action_bounds=self.action_bounds if self.clip_actions else None,
            # the World Expert's full states when it models them and the starts carried one (reset, dataset starts)
            full_states=torch.stack([p.full_states.cpu() for p in preds], dim=1)
            if all(p.full_states is not None for p in preds)
            else None,  # [N, T, F]
        )


def _single_step_trajectories(obs: Observation, actions: torch.Tensor, pred: WorldPrediction) -> Trajectories:
    """Wrap one imagined chunk as Trajectories with T = 1 (for per-step rewards in the gymnasium view)."""
    N = len(obs)
    empty = torch.zeros((N, 0))
    sample = ActionSample(
        actions=actions,
        log_prob=torch.zeros(N),
        log_prob_terms=torch.zeros_like(actions),
        subtask_ids=empty.long(),
        subtask_mask=empty.bool(),
        subtask_log_probs=empty,
        subtask_text=[""] * N,
    )
    return Trajectories(
        observations=[obs],
        samples=[sample],
        subgoal_images=pred.images[:, None]
        if pred.images is not None
        else torch.zeros((N, 1, *obs.images.shape[1:]), dtype=torch.uint8),
        subgoal_latents=pred.latents[:, None],
        states=pred.states[:, None],
        success_logits=pred.success_logits[:, None],
        alive=torch.ones((N, 1), dtype=torch.bool),
        success=torch.sigmoid(pred.success_logits) >= 0.5,
        instructions=list(obs.instructions),
        task_names=list(obs.task_names),
        group_size=1,
    )


class ImaginedVectorEnv(VectorEnv):
    """`gymnasium.vector.VectorEnv` whose dynamics are a frozen WLA World Expert.

    Observations are dicts with ``image`` uint8 [N, H, W, 3], ``state`` float32 [N, S] and ``instruction`` (a tuple
    of N strings), like the real simulators. An action is an action chunk [N, H, A]. Rewards come from
    `reward_scorer` (a `rewards.RewardScorer` or any callable Trajectories → RewardOutput | [N] tensor) applied to
    the single predicted chunk; without one, the reward is the predicted success probability. Episodes terminate
    on predicted success and are truncated after `horizon` chunks. Autoreset follows gymnasium's NEXT_STEP mode.

    Args:
        world: frozen WLA snapshot.
        start_states: list of start dicts (image, state, instruction, task_name[, seed]), e.g. from
            `wlarl.data.start_states`; `reset(options={"observations": Observation})` hands starts in instead.
        num_envs: N.
        horizon: T chunks before truncation.
        success_threshold: success probability that ends an episode.
        reward_scorer: optional reward functions.
        reencode: the next observation carries encode(decoded frame) latents, as a real frame would.
    Actions are clipped to the action space before the World Expert executes them, as the real simulator does.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["rgb_array"]}

    def __init__(
        self,
        world: torch.nn.Module,
        start_states: Sequence[dict[str, Any]],
        num_envs: int = 1,
        horizon: int = 8,
        success_threshold: float = 0.5,
        reward_scorer: Callable[..., Any] | None = None,
        render_mode: str | None = None,
        reencode: bool = True,
    ):
        if len(start_states) == 0:
            raise ValueError("ImaginedVectorEnv: start_states is empty; give at least one start dict")
        if horizon < 1:
            raise ValueError(f"ImaginedVectorEnv: horizon must be ≥ 1, got {horizon}")
        self.world = world
        self.start_states = list(start_states)
        self.num_envs = num_envs
        self.horizon = horizon
        self.success_threshold = success_threshold
        self.reward_scorer = reward_scorer
        self.render_mode = render_mode
        self.reencode = bool(reencode)
        cfg = getattr(world, "config", None)
        chunk = int(getattr(cfg, "chunk_size", 8))
        action_dim = int(getattr(cfg, "action_dim", 4))
        first = self.start_states[0]
        image_shape = tuple(np.asarray(first["image"]).shape)
        state_dim = int(np.asarray(first["state"]).shape[0])
        self.single_observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, image_shape, dtype=np.uint8),
                "state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), dtype=np.float32),
                "instruction": gym.spaces.Text(MAX_INSTRUCTION_LENGTH, min_length=0, charset=INSTRUCTION_CHARSET),
            }
        )
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (chunk, action_dim), dtype=np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._obs: Observation | None = None
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._last_images: np.ndarray | None = None

    # -- helpers ---------------------------------------------------------------------------------------------
    def _draw_starts(self, n: int) -> Observation:
        idx = self.np_random.integers(0, len(self.start_states), size=n)
        return Observation.from_dicts([self.start_states[i] for i in idx])

    def _to_numpy_obs(self, obs: Observation) -> dict[str, Any]:
        return {
            "image": obs.images.cpu().numpy().astype(np.uint8),
            "state": obs.states.cpu().numpy().astype(np.float32),
            "instruction": tuple(s[:MAX_INSTRUCTION_LENGTH] for s in obs.instructions),
        }

    def _rewards(self, obs: Observation, actions: torch.Tensor, pred: WorldPrediction) -> np.ndarray:
        if self.reward_scorer is None:
            return torch.sigmoid(pred.success_logits.float()).cpu().numpy()
        out = self.reward_scorer(_single_step_trajectories(obs, actions, pred))
        if isinstance(out, RewardOutput):
            out = out.weighted_sum()
        return np.asarray(torch.as_tensor(out, dtype=torch.float32).cpu().numpy(), dtype=np.float64)

    # -- gymnasium API ---------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        handed_in = (options or {}).get("observations")
        if handed_in is not None:
            if not isinstance(handed_in, Observation) or len(handed_in) != self.num_envs:
                raise ValueError(
                    f"ImaginedVectorEnv.reset: options['observations'] must be an Observation with {self.num_envs} rows"
                )
            self._obs = handed_in
        else:
            self._obs = self._draw_starts(self.num_envs)
        self._t[:] = 0
        self._needs_reset[:] = False
        self._last_images = self._obs.images.cpu().numpy()
        return self._to_numpy_obs(self._obs), {}

    @torch.no_grad()
    def step(self, actions):
        if self._obs is None:
            raise RuntimeError("ImaginedVectorEnv.step called before reset()")
        actions = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        expected = (self.num_envs, *self.single_action_space.shape)
        if tuple(actions.shape) != expected:
            raise ValueError(
                f"ImaginedVectorEnv.step: actions must have shape {expected} [N, H, A], got {tuple(actions.shape)}"
            )
        actions = bound_actions(
            actions, float(self.single_action_space.low.min()), float(self.single_action_space.high.max())
        )
        pred = self.world.imagine(self._obs, actions, decode=True)
        rewards = self._rewards(self._obs, actions, pred)
        success_prob = torch.sigmoid(pred.success_logits.float()).cpu().numpy()
        next_obs = advance(self.world, self._obs, pred, self.reencode)
        self._t += 1
        terminated = success_prob >= self.success_threshold
        truncated = (self._t >= self.horizon) & ~terminated
        # NEXT_STEP autoreset: rows that finished at the previous step restart now; their action is ignored.
        resetting = self._needs_reset.copy()
        if resetting.any():
            fresh = self._draw_starts(int(resetting.sum()))
            rows = np.flatnonzero(resetting)
            keep = [i for i in range(self.num_envs) if not resetting[i]]
            merged = Observation.cat([next_obs.index(keep), fresh]) if keep else fresh
            order = np.argsort(np.concatenate([np.asarray(keep, dtype=np.int64), rows]))
            next_obs = merged.index(torch.as_tensor(order))  # fresh rows carry no latents: all are re-encoded
            rewards[rows] = 0.0
            terminated[rows] = False
            truncated[rows] = False
            self._t[rows] = 0
        self._needs_reset = terminated | truncated
        self._obs = next_obs
        info = {"success_prob": success_prob, "success": terminated.copy(), "latents": pred.latents.cpu().numpy()}
        return self._to_numpy_obs(next_obs), rewards.astype(np.float64), terminated, truncated, info

    def render(self):
        if self._obs is None:
            return None
        return self._obs.images.cpu().numpy()


class ImaginedEnv(gym.Env):
    """Single-env view of `ImaginedVectorEnv` (N = 1); passes `gymnasium.utils.env_checker.check_env`."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, world: torch.nn.Module, start_states: Sequence[dict[str, Any]], horizon: int = 8, **kwargs):
        self._vec = ImaginedVectorEnv(world, start_states, num_envs=1, horizon=horizon, **kwargs)
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space
        self.render_mode = kwargs.get("render_mode")

    @staticmethod
    def _unbatch(obs: dict[str, Any]) -> dict[str, Any]:
        return {"image": obs["image"][0], "state": obs["state"][0], "instruction": obs["instruction"][0]}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, info = self._vec.reset(seed=seed, options=options)
        return self._unbatch(obs), info

    def step(self, action):
        # A terminated single env must be reset by its user; do not let the vector autoreset leak through.
        self._vec._needs_reset[:] = False
        obs, r, term, trunc, info = self._vec.step(np.asarray(action, dtype=np.float32)[None])
        single_info = {"success_prob": float(info["success_prob"][0]), "success": bool(info["success"][0])}
        return self._unbatch(obs), float(r[0]), bool(term[0]), bool(trunc[0]), single_info

    def render(self):
        frames = self._vec.render()
        return None if frames is None else frames[0]
