"""Scripted Meta-World experts with noise modes, and per-step subtask labels.

Experts are Meta-World's own scripted policies (`metaworld.policies`), which read the 39-d goal-observable state
(`info["full_state"]`). Noise modes give a controlled mix of successes and failures:

- `clean`: the scripted action.
- `gaussian`: scripted action + N(0, sigma^2) on every dimension, clipped to [-1, 1].
- `random_segments`: at each step, with probability `segment_prob`, the expert is replaced for a segment of
  `segment_len` steps by a *wrong-target* motion (the hand is driven towards a random point of the workspace with a
  random gripper command). Undirected uniform noise mostly averages out; a wrong target actually moves the arm
  away, knocks objects and costs time, so long segments produce real failures.
- `perturbed_start`: the first `start_steps` steps are one wrong-target motion, then the clean expert.
- `near_miss`: the clean expert stopped shortly before it would succeed. Meta-World is deterministic given the seed,
  so `run_episode` first rolls the clean expert from the seeded reset (no frames) to find its first-success step t*,
  resets with the same seed, runs the clean expert for t* - d steps (d drawn from `stop_before` with the episode's
  rng), then *holds* for `hold_steps` steps (zero arm motion, the last gripper command kept) and ends the episode.
  The hand ends near the success pose with the task not solved: hard negatives for the success classifier. Frames
  keep the simulator's own `success`: momentum can still finish the task during the hold (drawers and windows keep
  sliding for 5–12 steps), and `ensure_miss` moves the stop earlier, one step at a time (more frameless passes),
  until holding from it does not succeed. When the clean expert never succeeds within `max_episode_steps`, the
  episode is a plain clean one.

Subtask phase rules (one family per task, see `TASK_SUBTASKS`). `d` is the distance between the hand and the
task's main object (`full_state[4:7]`); `r` is the task's contact radius (`contact_radius`: 6 cm, wider where the
object's reference point sits away from where the gripper touches it, calibrated on clean expert runs). The hand
is *in contact* when d <= r, and stays in contact while d <= 2r (hysteresis, so labels do not flicker):

- `reach` (reach, reach-wall): always "move the gripper to the goal".
- `press` (buttons, coffee button, handle press), `slide` (plate slides, soccer), `push` (push, push-back,
  push-wall, sweep, sweep-into) and `articulated` (doors, drawers, windows, faucets, handle pulls, lever, dial):
  not in contact → "reach the <object>"; in contact → "<final phrase>" ("press the button", "pull the drawer open").
- `pick` (pick-place, shelf, basketball, bins, pegs, nuts, hammer, sticks, mugs, lid, ...): not in contact →
  "reach the <object>"; in contact and the object has not moved more than 2 cm since contact began → "grasp the
  <object>"; afterwards, while in contact → "<final phrase>".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NOISE_MODES = ("clean", "gaussian", "random_segments", "perturbed_start", "near_miss")
FAMILIES = ("reach", "press", "slide", "push", "pick", "articulated")
DEFAULT_CONTACT_RADIUS = 0.06  # metres
MOVED_THRESHOLD = 0.02  # metres
# Tasks whose object reference point lies further from the gripper at contact (measured: clean expert, d at success).
CONTACT_RADIUS: dict[str, float] = {
    "box-close-v3": 0.09,
    "button-press-topdown-wall-v3": 0.08,
    "button-press-v3": 0.09,
    "button-press-wall-v3": 0.08,
    "coffee-button-v3": 0.10,
    "coffee-pull-v3": 0.08,
    "coffee-push-v3": 0.08,
    "dial-turn-v3": 0.13,
    "door-close-v3": 0.15,
    "door-lock-v3": 0.075,
    "door-unlock-v3": 0.11,
    "faucet-close-v3": 0.08,
    "faucet-open-v3": 0.08,
    "hammer-v3": 0.07,
    "handle-pull-v3": 0.07,
    "lever-pull-v3": 0.12,
    "peg-unplug-side-v3": 0.09,
    "plate-slide-back-side-v3": 0.09,
    "plate-slide-back-v3": 0.10,
    "plate-slide-side-v3": 0.09,
    "plate-slide-v3": 0.09,
    "push-back-v3": 0.08,
    "soccer-v3": 0.08,
    "sweep-v3": 0.08,
    "window-close-v3": 0.10,
    "window-open-v3": 0.10,
}


def contact_radius(task_name: str) -> float:
    """Hand-object distance (metres) under which the hand counts as in contact for `task_name`."""
    return CONTACT_RADIUS.get(task_name, DEFAULT_CONTACT_RADIUS)


# task -> (family, object noun, final-phase subtask)
TASK_SUBTASKS: dict[str, tuple[str, str, str]] = {
    "assembly-v3": ("pick", "nut", "put the nut on the peg"),
    "basketball-v3": ("pick", "ball", "put the ball in the hoop"),
    "bin-picking-v3": ("pick", "cube", "put the cube in the target bin"),
    "box-close-v3": ("pick", "lid", "put the lid on the box"),
    "button-press-topdown-v3": ("press", "button", "press the button"),
    "button-press-topdown-wall-v3": ("press", "button", "press the button"),
    "button-press-v3": ("press", "button", "press the button"),
    "button-press-wall-v3": ("press", "button", "press the button"),
    "coffee-button-v3": ("press", "coffee button", "press the coffee button"),
    "coffee-pull-v3": ("pick", "mug", "pull the mug to the goal"),
    "coffee-push-v3": ("pick", "mug", "push the mug under the machine"),
    "dial-turn-v3": ("articulated", "dial", "turn the dial"),
    "disassemble-v3": ("pick", "nut", "lift the nut off the peg"),
    "door-close-v3": ("articulated", "door handle", "push the door closed"),
    "door-lock-v3": ("articulated", "lock", "turn the lock down"),
    "door-open-v3": ("articulated", "door handle", "pull the door open"),
    "door-unlock-v3": ("articulated", "lock", "turn the lock"),
    "drawer-close-v3": ("articulated", "drawer handle", "push the drawer closed"),
    "drawer-open-v3": ("articulated", "drawer handle", "pull the drawer open"),
    "faucet-close-v3": ("articulated", "faucet handle", "turn the faucet off"),
    "faucet-open-v3": ("articulated", "faucet handle", "turn the faucet on"),
    "hammer-v3": ("pick", "hammer", "hit the nail with the hammer"),
    "hand-insert-v3": ("pick", "puck", "put the puck in the hole"),
    "handle-press-side-v3": ("press", "handle", "press the handle down"),
    "handle-press-v3": ("press", "handle", "press the handle down"),
    "handle-pull-side-v3": ("articulated", "handle", "pull the handle up"),
    "handle-pull-v3": ("articulated", "handle", "pull the handle up"),
    "lever-pull-v3": ("articulated", "lever", "pull the lever up"),
    "peg-insert-side-v3": ("pick", "peg", "insert the peg into the hole"),
    "peg-unplug-side-v3": ("pick", "peg", "pull the peg out"),
    "pick-out-of-hole-v3": ("pick", "puck", "lift the puck to the goal"),
    "pick-place-v3": ("pick", "puck", "move the puck to the goal"),
    "pick-place-wall-v3": ("pick", "puck", "carry the puck over the wall to the goal"),
    "plate-slide-back-side-v3": ("slide", "plate", "slide the plate back out sideways"),
    "plate-slide-back-v3": ("slide", "plate", "slide the plate back"),
    "plate-slide-side-v3": ("slide", "plate", "slide the plate sideways into the goal"),
    "plate-slide-v3": ("slide", "plate", "slide the plate into the goal"),
    "push-back-v3": ("push", "puck", "push the puck back to the goal"),
    "push-v3": ("push", "puck", "push the puck to the goal"),
    "push-wall-v3": ("push", "puck", "push the puck around the wall to the goal"),
    "reach-v3": ("reach", "goal", "move the gripper to the goal"),
    "reach-wall-v3": ("reach", "goal", "move the gripper to the goal"),
    "shelf-place-v3": ("pick", "block", "put the block on the shelf"),
    "soccer-v3": ("slide", "ball", "push the ball into the goal"),
    "stick-pull-v3": ("pick", "stick", "pull the thermos with the stick"),
    "stick-push-v3": ("pick", "stick", "push the thermos with the stick"),
    "sweep-into-v3": ("push", "cube", "sweep the cube into the hole"),
    "sweep-v3": ("push", "cube", "sweep the cube off the table"),
    "window-close-v3": ("articulated", "window handle", "push the window closed"),
    "window-open-v3": ("articulated", "window handle", "push the window open"),
}


def subtask_phases(task_name: str) -> list[str]:
    """Ordered subtask phases of a task (what `SubtaskLabeler` can emit, in task order)."""
    if task_name not in TASK_SUBTASKS:
        raise KeyError(f"no subtask rule for task {task_name!r}; known tasks: {sorted(TASK_SUBTASKS)}")
    family, obj, final = TASK_SUBTASKS[task_name]
    if family == "reach":
        return [final]
    if family == "pick":
        return [f"reach the {obj}", f"grasp the {obj}", final]
    return [f"reach the {obj}", final]


SUBTASK_RULES: dict[str, list[str]] = {task: subtask_phases(task) for task in TASK_SUBTASKS}

# Wrong-target points are drawn from this box (the reachable part of Meta-World's hand space), metres.
WORKSPACE_LOW = np.array([-0.3, 0.4, 0.05])
WORKSPACE_HIGH = np.array([0.3, 0.9, 0.3])


class SubtaskLabeler:
    """Labels every step of one task with a subtask text from the family rules in the module docstring."""

    def __init__(self, task_name: str) -> None:
        if task_name not in TASK_SUBTASKS:
            raise KeyError(f"no subtask rule for task {task_name!r}; known tasks: {sorted(TASK_SUBTASKS)}")
        self.task_name = task_name
        self.family, self.object, self.final = TASK_SUBTASKS[task_name]
        self.radius = contact_radius(task_name)
        self._contact = False
        self._obj_at_contact: np.ndarray | None = None
        self._moved = False

    def reset(self, full_state: np.ndarray) -> str:
        """Start an episode; returns the label of the first observation."""
        self._contact = False
        self._obj_at_contact = None
        self._moved = False
        return self(full_state)

    def __call__(self, full_state: np.ndarray) -> str:
        """Subtask of the next observation `full_state` (39-d Meta-World state); call once per step, in order."""
        if self.family == "reach":
            return self.final
        hand = np.asarray(full_state[:3], dtype=np.float64)
        obj = np.asarray(full_state[4:7], dtype=np.float64)
        d = float(np.linalg.norm(hand - obj))
        self._contact = d <= self.radius or (self._contact and d <= 2 * self.radius)
        if not self._contact:
            self._obj_at_contact = None
            self._moved = False
            return f"reach the {self.object}"
        if self.family != "pick":
            return self.final
        if self._obj_at_contact is None:
            self._obj_at_contact = obj.copy()
        self._moved = self._moved or float(np.linalg.norm(obj - self._obj_at_contact)) > MOVED_THRESHOLD
        return self.final if self._moved else f"grasp the {self.object}"


@dataclass
class NoiseSpec:
    """How a scripted expert is perturbed.

    Attributes:
        mode: one of `NOISE_MODES` (`clean`, `gaussian`, `random_segments`, `perturbed_start`, `near_miss`).
        sigma: std of the Gaussian action noise (`gaussian`).
        segment_prob: per-step probability of starting a wrong-target segment (`random_segments`).
        segment_len: (min, max) length of a wrong-target segment in steps (`random_segments`).
        start_steps: (min, max) number of wrong-target steps at the start (`perturbed_start`).
        stop_before: (min, max) steps before the clean expert's first success at which it stops (`near_miss`);
            min >= 1, so the step that would succeed is never taken.
        hold_steps: steps of holding still after the stop, then the episode ends (`near_miss`); >= 1.
        ensure_miss: move the stop earlier until holding from it does not solve the task (`near_miss`): momentum
            finishes drawers and windows from several steps out, so a plain stop often still succeeds.
    """

    mode: str = "clean"
    sigma: float = 0.3
    segment_prob: float = 0.03
    segment_len: tuple[int, int] = (20, 60)
    start_steps: tuple[int, int] = (20, 50)
    stop_before: tuple[int, int] = (1, 8)
    hold_steps: int = 15
    ensure_miss: bool = False

    def __post_init__(self) -> None:
        if self.mode not in NOISE_MODES:
            raise ValueError(f"noise mode {self.mode!r}: expected one of {NOISE_MODES}")
        if self.sigma < 0:
            raise ValueError(f"sigma={self.sigma}: expected >= 0")
        if not 0.0 <= self.segment_prob <= 1.0:
            raise ValueError(f"segment_prob={self.segment_prob}: expected a probability in [0, 1]")
        for name, low in (("segment_len", 0), ("start_steps", 0), ("stop_before", 1)):
            lo, hi = getattr(self, name)
            if not low <= lo <= hi:
                raise ValueError(f"{name}={getattr(self, name)}: expected (min, max) with {low} <= min <= max")
            setattr(self, name, (int(lo), int(hi)))
        if self.hold_steps < 1:
            raise ValueError(f"hold_steps={self.hold_steps}: expected >= 1 step of holding after a near-miss stop")
        self.hold_steps = int(self.hold_steps)


class ScriptedExpert:
    """Meta-World's scripted policy for one task, with a noise mode.

    Args:
        task_name: Meta-World v3 task name.
        noise: a `NoiseSpec` or a mode name (default parameters).
    """

    def __init__(self, task_name: str, noise: NoiseSpec | str = "clean") -> None:
        try:
            from metaworld.policies import ENV_POLICY_MAP
        except ImportError as e:
            raise ImportError("scripted experts need Meta-World: pip install -e '.[metaworld]'") from e
        if task_name not in ENV_POLICY_MAP:
            raise KeyError(f"no scripted policy for task {task_name!r}; known tasks: {sorted(ENV_POLICY_MAP)}")
        self.task_name = task_name
        self.noise = NoiseSpec(mode=noise) if isinstance(noise, str) else noise
        self.policy = ENV_POLICY_MAP[task_name]()
        self.labeler = SubtaskLabeler(task_name)
        self._rng = np.random.default_rng(0)
        self._t = 0
        self._segment_left = 0
        self._target = np.zeros(3)
        self._grip = 0.0
        self.stop_step: int | None = None
        self.end_step: int | None = None
        self._hold_grip: float | None = None

    def reset(self, full_state: np.ndarray, seed: int, stop_step: int | None = None) -> str:
        """Start an episode (noise drawn from `seed`); returns the first subtask label.

        Args:
            full_state: the 39-d state after the seeded reset.
            seed: the episode seed (also seeds the noise).
            stop_step: `near_miss` only: clean actions before the hold (`plan_near_miss`); None when the clean
                expert never succeeds from this seed, and the episode is then a clean one.
        """
        self._rng = np.random.default_rng([int(seed), 104729])
        self._t = 0
        self._segment_left = 0
        self.stop_step = None  # near_miss: clean actions before the hold
        self.end_step = None  # near_miss: the episode ends after this many actions
        self._hold_grip = None
        if self.noise.mode == "perturbed_start":
            self._start_segment(self._rng.integers(self.noise.start_steps[0], self.noise.start_steps[1] + 1))
        elif self.noise.mode == "near_miss" and stop_step is not None:
            self.stop_step = int(stop_step)
            self.end_step = self.stop_step + self.noise.hold_steps
        return self.labeler.reset(full_state)

    def draw_stop_step(self, seed: int, first_success: int) -> int:
        """`near_miss`: first_success - d, d drawn from `stop_before` with the episode's rng (clamped at 0)."""
        lo, hi = self.noise.stop_before
        return max(int(first_success) - int(np.random.default_rng([int(seed), 104729]).integers(lo, hi + 1)), 0)

    def clean_action(self, full_state: np.ndarray) -> np.ndarray:
        """float32 [4] action of the clean scripted policy for the 39-d state `full_state`."""
        return np.clip(self._scripted(full_state), -1.0, 1.0).astype(np.float32)

    def act(self, full_state: np.ndarray) -> np.ndarray:
        """float32 [4] action for the 39-d state `full_state`."""
        self._t += 1
        mode = self.noise.mode
        if self.stop_step is not None:  # near_miss: the clean expert, then hold still with the gripper as it was
            if self._t <= self.stop_step or self._hold_grip is None:
                action = self.clean_action(full_state)
                self._hold_grip = float(action[3])
                if self._t <= self.stop_step:
                    return action
            return np.array([0.0, 0.0, 0.0, self._hold_grip], dtype=np.float32)
        if mode == "random_segments" and self._segment_left == 0 and self._rng.random() < self.noise.segment_prob:
            lo, hi = self.noise.segment_len
            self._start_segment(self._rng.integers(lo, hi + 1))
        if self._segment_left > 0:
            self._segment_left -= 1
            hand = np.asarray(full_state[:3], dtype=np.float64)
            delta = np.clip(10.0 * (self._target - hand), -1.0, 1.0)
            return np.append(delta, self._grip).astype(np.float32)
        action = self._scripted(full_state)
        if mode == "gaussian":
            action = action + self._rng.normal(0.0, self.noise.sigma, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def subtask(self, full_state: np.ndarray) -> str:
        return self.labeler(full_state)

    def _scripted(self, full_state: np.ndarray) -> np.ndarray:
        """float64 [4] raw (unclipped) action of Meta-World's scripted policy."""
        return np.asarray(self.policy.get_action(np.asarray(full_state, dtype=np.float64)), dtype=np.float64)

    def _start_segment(self, length: int) -> None:
        self._segment_left = int(length)
        self._target = self._rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH)
        self._grip = float(self._rng.choice([-1.0, 1.0]))


def clean_then_hold(env: Any, expert: ScriptedExpert, seed: int, stop_step: int | None = None) -> int | None:
    """First success of the clean expert from the reset of `seed` when it holds still after `stop_step` actions
    for `expert.noise.hold_steps` steps (None: never stops): the number of actions after which `success` was first
    set, or None when it was not before the end. A first pass for `near_miss` (Meta-World is deterministic given the
    seed); renders no frames where the env allows it (`render_images`)."""
    render = getattr(env, "render_images", None)
    if render is not None:
        env.render_images = False
    try:
        _, info = env.reset(seed=seed)
        end = None if stop_step is None else stop_step + expert.noise.hold_steps
        grip = None
        t = 0
        while True:
            action = expert.clean_action(info["full_state"])
            if stop_step is not None and t >= stop_step:  # hold: zero arm motion, the gripper as it was
                grip = float(action[3]) if grip is None else grip
                action = np.array([0.0, 0.0, 0.0, grip], dtype=np.float32)
            else:
                grip = float(action[3])
            _, _, terminated, truncated, info = env.step(action)
            t += 1
            if info["success"]:
                return t
            if terminated or truncated or (end is not None and t >= end):
                return None
    finally:
        if render is not None:
            env.render_images = render


def plan_near_miss(env: Any, expert: ScriptedExpert, seed: int) -> int | None:
    """`near_miss` stop step for `seed`: t* - d, where t* is the clean expert's first success (`clean_then_hold`)
    and d is drawn from `stop_before`; with `ensure_miss` moved earlier, one step at a time, until holding from it
    does not succeed (down to 0). None when the clean expert never succeeds (the episode is then a clean one)."""
    first_success = clean_then_hold(env, expert, seed)
    if first_success is None:
        return None
    stop = expert.draw_stop_step(seed, first_success)
    if expert.noise.ensure_miss:
        while stop > 0 and clean_then_hold(env, expert, seed, stop) is not None:
            stop -= 1
    return stop


def run_episode(
    env: Any,
    expert: ScriptedExpert,
    seed: int,
    steps_after_success: int = 5,
) -> dict[str, Any]:
    """Roll one episode of `expert` in a Meta-World contract env.

    The episode ends at truncation (`env.max_episode_steps`) or `steps_after_success` steps after the first
    success (so the dataset holds a few successful frames). In `near_miss` mode first passes without frames choose
    the stop step (`plan_near_miss`), and the episode also ends after the hold (`expert.end_step`).

    Returns:
        An episode dict for `wlarl.data.write_episodes`: per-observation arrays with T+1 rows (`image`, `state`,
        `full_state`, `subtask`), per-action arrays with T rows (`action`, `reward`, `success`), and `instruction`,
        `task_name`, `seed`, `noise_mode`.
    """
    stop_step = plan_near_miss(env, expert, seed) if expert.noise.mode == "near_miss" else None
    obs, info = env.reset(seed=seed)
    full = info["full_state"]
    images, states, fulls = [obs["image"]], [obs["state"]], [full]
    subtasks = [expert.reset(full, seed, stop_step=stop_step)]
    actions, rewards, successes = [], [], []
    first_success: int | None = None
    while True:
        action = expert.act(full)
        obs, reward, terminated, truncated, info = env.step(action)
        full = info["full_state"]
        actions.append(action)
        rewards.append(reward)
        successes.append(bool(info["success"]))
        images.append(obs["image"])
        states.append(obs["state"])
        fulls.append(full)
        subtasks.append(expert.subtask(full))
        t = len(actions)
        if info["success"] and first_success is None:
            first_success = t
        if terminated or truncated or (first_success is not None and t - first_success >= steps_after_success):
            break
        if expert.end_step is not None and t >= expert.end_step:  # near_miss: the hold is over
            break
    return {
        "image": np.stack(images),
        "state": np.stack(states).astype(np.float32),
        "full_state": np.stack(fulls).astype(np.float32),
        "action": np.stack(actions).astype(np.float32),
        "reward": np.asarray(rewards, dtype=np.float32),
        "success": np.asarray(successes, dtype=bool),
        "subtask": subtasks,
        "instruction": obs["instruction"],
        "task_name": env.task_name,
        "seed": int(seed),
        "noise_mode": expert.noise.mode,
    }
