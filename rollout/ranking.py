"""Does a reward order a group's samples the way reality does?

GRPO learns only from how a reward ranks the G samples of one start. This module measures that ranking against the
real simulator:

1. **Branch points** inside recorded episodes (`branch_points`): (task, seed, step) with the recorded actions up to
   the step, early, middle or late in the episode (late = a few chunks before the first success).
2. **Rebuild** (`rebuild`): a seeded reset followed by the recorded actions; the full state must equal the recorded
   one bitwise, or the branch point is refused (`RebuildError`) — a ranking on a different state would mean nothing.
3. **Continuations**: G sampled chunk sequences of h chunks from the branch point's frame (imagined by the World
   Expert, so that the predicted frames can be scored too), and **open-loop replay** of the same executed actions in
   the real simulator from the rebuilt state (`replay_group`): real frames, states, full states, success after each
   chunk, the simulator's shaped reward.
4. **Agreement** (`within_group_agreement`): for every group whose real outcome varies, the share of rows whose
   advantage under the reward (score − group mean) has the sign of the real outcome's advantage, and the Spearman
   correlation of the two within the group; `auroc` over rows against real success.

A reward scored on the real replay (`real_replay_trajectories`) gives its ceiling; scored on the imagined rows, the
product reward × World Expert that GRPO in imagination actually receives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wlarl.types import Trajectories
from wlarl.utils.stats import auroc as stats_auroc
from wlarl.utils.stats import spearman

POSITIONS = ("early", "middle", "late")


class RebuildError(RuntimeError):
    """A branch point whose replayed state is not the recorded one."""


@dataclass(frozen=True)
class BranchPoint:
    """A state inside a recorded episode that the real simulator can rebuild.

    Attributes:
        task_name, seed: the episode's task and reset seed.
        step: env steps taken before the branch point (0 = the reset state).
        actions: float32 [step, A] the recorded actions up to the branch point.
        full_state: float32 [F] the recorded full state at the branch point (checked bitwise by `rebuild`); None for
            a reset state (step 0) whose full state was not recorded: the seeded reset defines it.
        row: the dataset row of the branch point's observation (−1 for episodes not in a dataset).
        position: "early", "middle" or "late".
        source: where the episode came from ("demo", "policy", ...).
        episode_index: the episode's index in its dataset (or run).
        observation: the policy's observation at the branch point (`image` uint8 [S, S, 3], `state`,
            `instruction`, `task_name`): where imagination starts.
    """

    task_name: str
    seed: int
    step: int
    actions: np.ndarray
    full_state: np.ndarray | None
    row: int
    position: str
    source: str = "demo"
    episode_index: int = -1
    observation: dict[str, Any] | None = None


def branch_step(length: int, position: str, late_steps: int) -> int:
    """The branch step of an episode of `length` steps (up to its first success): early ≈ 15 %, middle 50 %, late
    `late_steps` before the end (0 when the episode is shorter)."""
    if position not in POSITIONS:
        raise ValueError(f"branch_step: position must be one of {POSITIONS}, got {position!r}")
    if length < 1:
        raise ValueError(f"branch_step: an episode needs at least one step, got length {length}")
    step = {"early": int(0.15 * length), "middle": length // 2, "late": length - late_steps}[position]
    return int(min(max(step, 0), length - 1))


def branch_points(
    ep_ds: Any,
    positions: Sequence[str] = POSITIONS,
    late_steps: int = 24,
    per_task: int | None = None,
    successful_only: bool = True,
    source: str = "demo",
    tasks: Sequence[str] | None = None,
) -> list[BranchPoint]:
    """Branch points of the episodes of an `EpisodeDataset`, at each of `positions`.

    The length of an episode is its steps up to its first success (all its steps when it never succeeds); a late
    branch point is `late_steps` before that (e.g. 3 chunks of 8), so that a group from it can still succeed or fail.

    Args:
        ep_ds: an `EpisodeDataset` (`wlarl.data.episodes.load_episodes`).
        positions: any of "early", "middle", "late".
        late_steps: env steps between a late branch point and the first success.
        per_task: at most this many episodes per task (in dataset order); None: all.
        successful_only: only episodes that succeed (their late point is near a real success).
        source: recorded in each branch point.
        tasks: only these tasks; None: all.

    Returns:
        branch points ordered by episode, then by position.
    """
    from wlarl.data.episodes import _read, frame_states

    arrow = ep_ds.dataset.with_format("arrow")
    columns = ("task_name", "seed", "success", "action", "full_state", "episode_index")
    out: list[BranchPoint] = []
    taken: dict[str, int] = {}
    for s, e in ep_ds.episode_ranges:
        s, e = int(s), int(e)
        part = _read(arrow, slice(s, e), columns)
        task = str(part["task_name"][0])
        if tasks is not None and task not in tasks:
            continue
        success = np.asarray(part["success"][:-1], dtype=bool)  # per action row (the last row has no action)
        if successful_only and not success.any():
            continue
        if per_task is not None and taken.get(task, 0) >= per_task:
            continue
        taken[task] = taken.get(task, 0) + 1
        length = int(np.argmax(success)) + 1 if success.any() else len(success)
        actions = np.asarray(part["action"][:-1], dtype=np.float32)
        full = np.asarray(part["full_state"], dtype=np.float32)
        for position in positions:
            step = branch_step(length, position, late_steps)
            out.append(
                BranchPoint(
                    task_name=task, seed=int(part["seed"][0]), step=step, actions=actions[:step].copy(),
                    full_state=full[step].copy(), row=s + step, position=position, source=source,
                    episode_index=int(part["episode_index"][0]),
                )
            )  # fmt: skip
    frames = frame_states(ep_ds, [b.row for b in out])
    return [dataclasses.replace(b, observation=f) for b, f in zip(out, frames)]


def policy_branch_points(
    traj: Trajectories, seeds: Sequence[int], positions: Sequence[str] = POSITIONS, late_chunks: int = 3
) -> list[BranchPoint]:
    """Branch points inside real-engine rollouts of the current policy (`rollout.real_engine.RealEngine`), at chunk
    boundaries: step c·H after c chunks. `seeds[b]` is the reset seed of group b (rows b·G + g).

    The length of a row is its chunks up to the first success (all its chunks if it failed); early / middle / late
    are chunk 0.15·L, L/2 and L − `late_chunks` (never before chunk 0). A row's observation at the point is the real
    frame and state after chunk c − 1 (its start observation for c = 0).
    """
    if traj.full_states is None:
        raise ValueError("policy_branch_points: the trajectories carry no full_states (roll out with RealEngine)")
    G, H = traj.group_size, traj.samples[0].actions.shape[1]
    if len(seeds) * G != traj.num_rows:
        raise ValueError(f"policy_branch_points: {len(seeds)} seeds of G={G} for {traj.num_rows} rows")
    actions = traj.actions.numpy().astype(np.float32)  # [N, T, H, A] executed
    out: list[BranchPoint] = []
    for n in range(traj.num_rows):
        length = int(traj.alive[n].sum())
        for position in positions:
            c = branch_step(length, position, late_chunks)
            if c == 0:
                obs = traj.observations[0]
                image, state = obs.images[n].numpy(), obs.states[n].numpy()
                full = None  # a reset point: nothing to check after the seeded reset
                start_full = None if obs.full_states is None else obs.full_states[n].numpy().astype(np.float32)
            else:
                image = np.asarray(traj.subgoal_images[n, c - 1], dtype=np.uint8)
                state = traj.states[n, c - 1].numpy()
                full = traj.full_states[n, c - 1].numpy().astype(np.float32)
                start_full = full
            observation = {"image": image, "state": state, "instruction": traj.instructions[n],
                           "task_name": traj.task_names[n]}  # fmt: skip
            if start_full is not None:
                observation["full_state"] = start_full  # what a World Expert that models full states starts from
            out.append(
                BranchPoint(
                    task_name=traj.task_names[n], seed=int(seeds[n // G]), step=c * H,
                    actions=actions[n, :c].reshape(-1, actions.shape[-1]).copy(),
                    full_state=full, row=-1,
                    position=position, source="policy", episode_index=n,
                    observation=observation,
                )
            )  # fmt: skip
    return out


def rebuild(env: Any, bp: BranchPoint) -> dict[str, Any]:
    """Reset `env` (a `MetaWorldEnv` of the branch point's task) with its seed and replay its recorded actions.

    Returns the observation at the branch point. Raises `RebuildError` when the full state differs from the recorded
    one in any bit (the actions were not the executed ones, or the simulator is not deterministic).
    """
    if getattr(env, "task_name", bp.task_name) != bp.task_name:
        raise ValueError(f"rebuild: env is {env.task_name}, the branch point is {bp.task_name}")
    obs, _ = env.reset(seed=bp.seed)
    for a in bp.actions:
        obs, *_ = env.step(a)
    got = np.asarray(env.full_state, dtype=np.float32)
    if bp.full_state is None:
        if bp.step != 0:
            raise ValueError(f"rebuild: {bp.task_name} seed {bp.seed} step {bp.step} has no recorded full state")
        return obs
    if not np.array_equal(got, bp.full_state):
        diff = float(np.abs(got - bp.full_state).max())
        raise RebuildError(
            f"{bp.task_name} seed {bp.seed} step {bp.step}: the rebuilt full state differs from the recorded one "
            f"(max |Δ| = {diff:.3g}); expected a bitwise equal state from a seeded reset and the recorded actions"
        )
    return obs


def replay_group(env: Any, bp: BranchPoint, actions: np.ndarray) -> dict[str, np.ndarray]:
    """Open-loop replay of G chunk sequences from a branch point, each from a fresh rebuild.

    Args:
        env: a `MetaWorldEnv` of the task whose `max_episode_steps` ≥ bp.step + h·H.
        actions: float [G, h, H, A] the executed (clipped) actions of every row.

    Returns:
        ``frames`` uint8 [G, h, S, S, 3] after each chunk, ``states`` float32 [G, h, s], ``full_states`` float32
        [G, h, F], ``success_chunk`` bool [G, h] (success at any step up to the chunk's end), ``success`` bool [G]
        (within the h chunks), ``shaped_return`` float32 [G] (the sum of the simulator's shaped reward over the steps
        run), ``steps_to_success`` int [G] (env steps from the branch point to the first success, −1 if none).
    """
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 4:
        raise ValueError(f"replay_group: actions must be [G, h, H, A], got shape {actions.shape}")
    G, h, H, _ = actions.shape
    frames, states, fulls, succ = [], [], [], []
    ret = np.zeros(G, np.float32)
    to_success = np.full(G, -1, np.int64)
    for g in range(G):
        rebuild(env, bp)
        done, row_f, row_s, row_full, row_ok = False, [], [], [], []
        for c in range(h):
            for k in range(H):
                obs, reward, _, _, info = env.step(actions[g, c, k])
                ret[g] += reward
                if info["success"] and not done:
                    done, to_success[g] = True, c * H + k + 1
            row_f.append(env.refresh_frame())
            row_s.append(np.asarray(obs["state"], np.float32))
            row_full.append(np.asarray(env.full_state, np.float32))
            row_ok.append(done)
        frames.append(row_f), states.append(row_s), fulls.append(row_full), succ.append(row_ok)
    success_chunk = np.asarray(succ, dtype=bool)
    return {
        "frames": np.asarray(frames, dtype=np.uint8),
        "states": np.asarray(states, dtype=np.float32),
        "full_states": np.asarray(fulls, dtype=np.float32),
        "success_chunk": success_chunk,
        "success": success_chunk[:, -1].copy(),
        "shaped_return": ret,
        "steps_to_success": to_success,
    }


def alive_through_first_success(reached: torch.Tensor) -> torch.Tensor:
    """`alive` bool [N, T] of rows that stop at their first success: a chunk counts up to and including the first
    one where `reached` bool [N, T] (success at any step so far, so True from then on) is True."""
    reached = torch.as_tensor(reached, dtype=torch.bool)
    return ~torch.cat([torch.zeros(reached.shape[0], 1, dtype=torch.bool), reached[:, :-1]], dim=1)


def real_replay_trajectories(imagined: Trajectories, replays: Sequence[dict[str, np.ndarray]]) -> Trajectories:
    """The imagined rows with what reality made of their actions: real frames, states, full states and success
    (`alive` ends after the chunk of the first real success), engine "real". `replays[b]` is group b's replay."""
    G, T = imagined.group_size, imagined.horizon
    if len(replays) * G != imagined.num_rows:
        raise ValueError(f"real_replay_trajectories: {len(replays)} replays of G={G} for {imagined.num_rows} rows")
    cat = {k: np.concatenate([r[k] for r in replays]) for k in ("frames", "states", "full_states", "success_chunk")}
    if cat["frames"].shape[1] != T:
        raise ValueError(f"real_replay_trajectories: replays have {cat['frames'].shape[1]} chunks, rows have {T}")
    ok = torch.as_tensor(cat["success_chunk"])  # [N, T]
    return dataclasses.replace(
        imagined,
        subgoal_images=torch.as_tensor(cat["frames"]),
        states=torch.as_tensor(cat["states"]),
        full_states=torch.as_tensor(cat["full_states"]),
        success_logits=torch.where(ok, 20.0, -20.0),
        alive=alive_through_first_success(ok),
        success=ok[:, -1].clone(),
        classifier_probs=None,
        engine="real",
    )


# ------------------------------------------------------------------------------------------------- agreement
def within_group_agreement(scores: Any, outcome: Any) -> dict[str, float]:
    """How a reward orders the rows of each group, against the real outcome.

    Args:
        scores: float [B, G] the reward of every row (NaN: unscored, counts as the group's mean).
        outcome: float [B, G] the real outcome (success 0/1, or a shaped return).

    Returns:
        ``sign_agreement``: over the rows of groups whose outcome varies and whose outcome advantage is not 0, the
        share where the reward's advantage (score − group mean) has the same sign (a tie is a disagreement: it
        teaches nothing); ``spearman``: the mean within-group Spearman over those groups; ``groups`` and ``rows``
        counted. NaN when no group's outcome varies.
    """
    s = np.asarray(scores, np.float64)
    o = np.asarray(outcome, np.float64)
    if s.shape != o.shape or s.ndim != 2:
        raise ValueError(f"within_group_agreement: scores {s.shape} and outcome {o.shape} must both be [B, G]")
    agree, rows, rhos = 0, 0, []
    for sb, ob in zip(s, o):
        if np.ptp(ob) == 0:
            continue
        sb = np.where(np.isnan(sb), np.nanmean(sb) if np.isfinite(sb).any() else 0.0, sb)
        adv_s, adv_o = sb - sb.mean(), ob - ob.mean()
        counted = adv_o != 0
        agree += int((np.sign(adv_s[counted]) == np.sign(adv_o[counted])).sum())
        rows += int(counted.sum())
        rhos.append(spearman(sb, ob))
    return {
        "sign_agreement": agree / rows if rows else float("nan"),
        "spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "groups": float(len(rhos)),
        "rows": float(rows),
    }


def auroc(scores: Any, labels: Any) -> float:
    """Row AUROC of `scores` against `labels` (any shape), unscored (NaN) rows left out; NaN if a class is missing."""
    s = np.asarray(scores, np.float64).reshape(-1)
    keep = np.isfinite(s)
    return stats_auroc(s[keep], np.asarray(labels, bool).reshape(-1)[keep])


def ranking_report(
    scores: dict[str, np.ndarray], outcomes: dict[str, np.ndarray], success: np.ndarray
) -> dict[str, dict[str, float]]:
    """Every reward's agreement with every outcome: ``{reward: {"<outcome>/sign_agreement": …, "<outcome>/spearman":
    …, "auroc": …}}``. `scores[name]` and `outcomes[name]` are [B, G]; `success` bool [B, G] (for the AUROC)."""
    out: dict[str, dict[str, float]] = {}
    for name, sc in scores.items():
        row: dict[str, float] = {"auroc": auroc(sc, success)}
        for oname, oc in outcomes.items():
            agr = within_group_agreement(sc, oc)
            row.update({f"{oname}/{k}": v for k, v in agr.items()})
        out[name] = row
    return out
