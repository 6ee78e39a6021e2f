"""Where GRPO spends its rollouts: start states drawn by how likely their group is to carry learning signal.

A group teaches something only when its G rewards differ. With the real engine every row is a real episode, and on
the default tasks half of them fall into groups that are all successes (tasks at the ceiling) or all failures (tasks
at the floor): dynamic sampling drops those groups, but the episodes were paid for. `SignalStartSampler` keeps, for
every start and for its task, how often its groups were kept (had signal) and draws starts in proportion to the
posterior mean of that rate:

    rate_task  = (kept_task + 1) / (seen_task + 2)                         (Beta(1, 1) prior)
    rate_start = (kept_start + k · rate_task) / (seen_start + k)           (shrunk to its task, k = prior_strength)

A start never seen weighs as much as its task, and a task never seen weighs 1/2, so nothing drops out of reach: a
task at the floor keeps being tried, less often, and comes back once its groups carry signal again. Every group
rolled out counts, dropped ones included (they are what tells a start apart), on every process alike (the
trainer gathers the observations before `update`).

With co-evolution rounds the starts grow every round, so per-start counts do not apply; `start_sampling=
'round_signal'` weighs whole tasks instead, by what the round's real episodes say about the current policy
(`task_signal_weights`): a task the policy always solves, or never does, gives imagination groups whose only
variation is the World Expert's error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

STATE_VERSION = 1


def group_signal_probability(successes: int, episodes: int, group_size: int) -> float:
    """Posterior mean probability that a group of G episodes of one task has mixed outcomes.

    With per-episode success p ~ Beta(1 + s, 1 + n − s) after s successes in n real episodes (uniform prior), the
    probability that G i.i.d. outcomes are neither all successes nor all failures is 1 − p^G − (1 − p)^G, whose
    posterior mean uses the Beta moments E[p^G] = Π_{i<G} (a + i) / (a + b + i).

    Args:
        successes: s, successful real episodes of the task (0 ≤ s ≤ n).
        episodes: n, real episodes of the task (0: the prior alone, 1 − 2 / (G + 1)).
        group_size: G ≥ 2.
    """
    if group_size < 2:
        raise ValueError(f"group_signal_probability: group_size must be ≥ 2, got {group_size}")
    if not 0 <= successes <= episodes:
        raise ValueError(f"group_signal_probability: need 0 ≤ successes ≤ episodes, got {successes} of {episodes}")
    a, b = 1.0 + successes, 1.0 + episodes - successes
    all_succeed = all_fail = 1.0
    for i in range(group_size):
        all_succeed *= (a + i) / (a + b + i)
        all_fail *= (b + i) / (a + b + i)
    return 1.0 - all_succeed - all_fail


def task_signal_weights(
    start_tasks: Sequence[str], outcomes: dict[str, tuple[int, int]], group_size: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Start-state probabilities that give each task a share ∝ `group_signal_probability` of its real outcomes,
    split evenly among its starts (a task with more keyframes gets no more draws for it).

    Args:
        start_tasks: the task of every start state [S].
        outcomes: ``{task: (successes, episodes)}`` of the current policy's real episodes; a task missing from it
            weighs as the prior does (no episodes).
        group_size: G.

    Returns:
        probabilities [S] (sum 1), and each task's share of them.
    """
    if len(start_tasks) == 0:
        raise ValueError("task_signal_weights: no start states")
    names = sorted(set(start_tasks))
    index = {t: i for i, t in enumerate(names)}
    task_of = torch.as_tensor([index[t] for t in start_tasks], dtype=torch.long)  # [S]
    weight = torch.as_tensor(
        [group_signal_probability(*outcomes.get(t, (0, 0)), group_size) for t in names], dtype=torch.float64
    )  # [num_tasks]
    share = weight / weight.sum()
    count = torch.bincount(task_of, minlength=len(names)).to(torch.float64)
    probs = (share / count)[task_of]  # [S]
    return probs, {t: float(share[i]) for i, t in enumerate(names)}


class SignalStartSampler:
    """Draws start indices with probability ∝ the estimated rate at which their groups carry signal.

    Args:
        task_names: the task of every start state, in dataset order.
        prior_strength: k, how many observed groups of a start weigh as much as its task's rate (> 0).
    """

    def __init__(self, task_names: Sequence[str], prior_strength: float = 2.0):
        if len(task_names) == 0:
            raise ValueError("SignalStartSampler: no start states (task_names is empty)")
        if not prior_strength > 0:
            raise ValueError(f"SignalStartSampler: prior_strength must be > 0, got {prior_strength}")
        self.tasks = sorted(set(task_names))
        index = {t: i for i, t in enumerate(self.tasks)}
        self.task_of = torch.as_tensor([index[t] for t in task_names], dtype=torch.long)  # [S]
        self.prior_strength = float(prior_strength)
        self.seen = torch.zeros(len(task_names), dtype=torch.float64)  # groups rolled out from each start
        self.kept = torch.zeros(len(task_names), dtype=torch.float64)  # of which carried signal

    def __len__(self) -> int:
        return self.task_of.numel()

    def task_rates(self) -> torch.Tensor:
        """[num_tasks] posterior mean rate of kept groups per task (Beta(1, 1) prior)."""
        n = len(self.tasks)
        seen = torch.zeros(n, dtype=torch.float64).index_add_(0, self.task_of, self.seen)
        kept = torch.zeros(n, dtype=torch.float64).index_add_(0, self.task_of, self.kept)
        return (kept + 1.0) / (seen + 2.0)

    def weights(self) -> torch.Tensor:
        """[S] sampling probabilities of the start states (sum 1)."""
        prior = self.task_rates()[self.task_of]
        k = self.prior_strength
        rate = (self.kept + k * prior) / (self.seen + k)
        return rate / rate.sum()

    def task_shares(self) -> dict[str, float]:
        """Probability mass per task of the next draw."""
        w = self.weights()
        share = torch.zeros(len(self.tasks), dtype=torch.float64).index_add_(0, self.task_of, w)
        return {t: float(share[i]) for i, t in enumerate(self.tasks)}

    def sample(self, n: int, generator: torch.Generator) -> list[int]:
        """n start indices drawn with replacement."""
        return torch.multinomial(self.weights(), n, replacement=True, generator=generator).tolist()

    def update(self, indices: torch.Tensor, kept: torch.Tensor) -> None:
        """Record groups rolled out from `indices` [B] (start indices) and whether each was kept (bool [B])."""
        indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        kept = torch.as_tensor(kept).reshape(-1)
        if indices.numel() != kept.numel():
            raise ValueError(f"SignalStartSampler.update: {indices.numel()} indices but {kept.numel()} kept flags")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise ValueError(f"SignalStartSampler.update: start indices must lie in [0, {len(self)}), got {indices}")
        self.seen.index_add_(0, indices, torch.ones_like(indices, dtype=torch.float64))
        self.kept.index_add_(0, indices, kept.to(torch.float64))

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "num_starts": len(self),
            "seen": self.seen.tolist(),
            "kept": self.kept.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "state") -> None:
        """Restore counts saved by `state_dict`; `source` names the file in errors."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"{source}: expected a start-sampler state of version {STATE_VERSION} "
                f"({{version, num_starts, seen, kept}}), got {type(state).__name__} "
                f"with version {state.get('version') if isinstance(state, dict) else None!r}"
            )
        if state.get("num_starts") != len(self):
            raise ValueError(
                f"{source}: saved for {state.get('num_starts')} start states, but this run has {len(self)}; "
                "resume with the same start states (tasks, start_states, num_reset_starts)"
            )
        seen, kept = state.get("seen"), state.get("kept")
        if not (isinstance(seen, list) and isinstance(kept, list) and len(seen) == len(kept) == len(self)):
            raise ValueError(f"{source}: 'seen' and 'kept' must be lists of {len(self)} counts")
        seen_t = torch.as_tensor(seen, dtype=torch.float64)
        kept_t = torch.as_tensor(kept, dtype=torch.float64)
        if bool((seen_t < 0).any() or (kept_t < 0).any() or (kept_t > seen_t).any()):
            raise ValueError(f"{source}: counts must satisfy 0 ≤ kept ≤ seen for every start")
        self.seen, self.kept = seen_t, kept_t
