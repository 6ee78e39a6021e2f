"""Demonstration collection: scripted experts with a noise mix in parallel worker processes → episode dataset.

`CollectConfig` is the config of `recipes/collect_demos.py`; `collect(cfg)` runs it and returns a summary.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rollout.experts import NOISE_MODES, WORKSPACE_HIGH, WORKSPACE_LOW, NoiseSpec, ScriptedExpert
from rollout.sims.metaworld import resolve_tasks

logger = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    """Config of `recipes/collect_demos.py` (every field can be overridden on the command line)."""

    output_dir: str = field(
        default="runs/demos", metadata={"help": "Dataset folder (replaced atomically); config.json is written there."}
    )
    tasks: list[str] = field(
        default_factory=lambda: ["reach-v3"],
        metadata={"help": "Meta-World task names and/or task sets (MT10, MT50)."},
    )
    episodes_per_task: int = field(default=20, metadata={"help": "Episodes collected per task."})
    task_episodes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Per-task episode counts as TASK=N (e.g. reach-v3=200), overriding episodes_per_task for those "
            "tasks: more goals for the tasks whose goal the policy must read from the frame. Each task's episodes "
            "reset with seeds seed .. seed + N - 1, so keep them clear of the evaluation seeds."
        },
    )
    noise_modes: list[str] = field(
        default_factory=lambda: ["clean", "gaussian", "random_segments", "perturbed_start"],
        metadata={
            "help": f"Noise modes of the mix, from {NOISE_MODES} (`near_miss`: the clean expert stopped a few steps "
            "before its first success, then held still: hard negatives for the success classifier)."
        },
    )
    noise_weights: list[float] = field(
        default_factory=lambda: [0.4, 0.2, 0.2, 0.2],
        metadata={"help": "Share of each noise mode (normalised); episodes are split exactly by these shares."},
    )
    gaussian_sigma: float = field(default=0.3, metadata={"help": "Std of the action noise in `gaussian` mode."})
    segment_prob: float = field(
        default=0.03, metadata={"help": "Per-step probability of a wrong-target segment (`random_segments`)."}
    )
    segment_len_min: int = field(default=20, metadata={"help": "Shortest wrong-target segment, steps."})
    segment_len_max: int = field(default=60, metadata={"help": "Longest wrong-target segment, steps."})
    start_steps_min: int = field(
        default=20, metadata={"help": "Fewest wrong-target steps at the start (`perturbed_start`)."}
    )
    start_steps_max: int = field(
        default=50, metadata={"help": "Most wrong-target steps at the start (`perturbed_start`)."}
    )
    stop_before_min: int = field(
        default=1, metadata={"help": "`near_miss`: fewest steps before the clean expert's first success to stop at."}
    )
    stop_before_max: int = field(
        default=8, metadata={"help": "`near_miss`: most steps before the clean expert's first success to stop at."}
    )
    hold_steps: int = field(
        default=15,
        metadata={
            "help": "`near_miss`: steps of holding still (zero arm motion, gripper kept) after the stop; then the "
            "episode ends. The stop is found by a frameless clean pass from the same seed; an episode whose clean "
            "expert never succeeds is a clean one."
        },
    )
    ensure_miss: bool = field(
        default=False,
        metadata={"help": "`near_miss`: move the stop earlier until holding from it leaves the task unsolved."},
    )
    image_size: int = field(default=64, metadata={"help": "Camera frame side in pixels."})
    camera: str = field(default="corner", metadata={"help": "Meta-World camera name."})
    max_episode_steps: int = field(default=150, metadata={"help": "Episode length limit (truncation)."})
    steps_after_success: int = field(
        default=5, metadata={"help": "Steps kept after the first success before the episode ends."}
    )
    num_workers: int = field(default=2, metadata={"help": "Env worker processes (0 = collect in this process)."})
    seed: int = field(default=0, metadata={"help": "Base seed: episode e of a task resets with seed + e."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        self.tasks = resolve_tasks(self.tasks)  # raises with the list of valid names
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: {self.tasks} lists a task twice; give each task once")
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task={self.episodes_per_task}: expected >= 1")
        self.episode_counts()  # validates task_episodes
        bad = [m for m in self.noise_modes if m not in NOISE_MODES]
        if bad or not self.noise_modes:
            raise ValueError(f"noise_modes={self.noise_modes}: expected a non-empty list from {NOISE_MODES}")
        if len(self.noise_weights) != len(self.noise_modes):
            raise ValueError(
                f"noise_weights has {len(self.noise_weights)} entries but noise_modes has {len(self.noise_modes)}; "
                "give one weight per mode"
            )
        if any(w < 0 for w in self.noise_weights) or sum(self.noise_weights) <= 0:
            raise ValueError(f"noise_weights={self.noise_weights}: expected non-negative weights with a positive sum")
        if self.max_episode_steps < 1 or self.steps_after_success < 0:
            raise ValueError("max_episode_steps must be >= 1 and steps_after_success >= 0")
        if self.image_size < 8:
            raise ValueError(f"image_size={self.image_size}: expected at least 8 pixels")
        if self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers}: expected >= 0 (0 collects in this process)")
        # NoiseSpec validates sigma, probabilities and (min, max) ranges.
        for mode in self.noise_modes:
            self.noise_spec(mode)

    def noise_spec(self, mode: str) -> NoiseSpec:
        return NoiseSpec(
            mode=mode,
            sigma=self.gaussian_sigma,
            segment_prob=self.segment_prob,
            segment_len=(self.segment_len_min, self.segment_len_max),
            start_steps=(self.start_steps_min, self.start_steps_max),
            stop_before=(self.stop_before_min, self.stop_before_max),
            hold_steps=self.hold_steps,
            ensure_miss=self.ensure_miss,
        )

    def episode_counts(self) -> dict[str, int]:
        """Episodes of each task: `episodes_per_task`, or the task's `task_episodes` entry."""
        counts = dict.fromkeys(self.tasks, self.episodes_per_task)
        given: set[str] = set()
        for item in self.task_episodes:
            task, sep, n = str(item).partition("=")
            if not sep or not n.strip().lstrip("-").isdigit():
                raise ValueError(f"task_episodes entry {item!r}: expected TASK=N, e.g. reach-v3=200")
            task, n = task.strip(), int(n)
            if task not in counts:
                raise ValueError(
                    f"task_episodes entry {item!r}: {task!r} is not among the collected tasks {self.tasks}"
                )
            if n < 1:
                raise ValueError(f"task_episodes entry {item!r}: expected N >= 1 episodes")
            if task in given:
                raise ValueError(f"task_episodes: {task!r} is given twice ({self.task_episodes}); give each task once")
            given.add(task)
            counts[task] = n
        return counts

    def mode_counts(self, episodes: int | None = None) -> dict[str, int]:
        """Episodes of each noise mode among `episodes` (default `episodes_per_task`; largest-remainder split)."""
        total = self.episodes_per_task if episodes is None else int(episodes)
        w = np.asarray(self.noise_weights, dtype=np.float64)
        exact = w / w.sum() * total
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
            counts[i] += 1
        return {m: int(c) for m, c in zip(self.noise_modes, counts)}

    def env_kwargs(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "camera": self.camera,
            "max_episode_steps": self.max_episode_steps,
        }


# ---------------------------------------------------------------- worker side

_ENVS: dict[tuple[str, str], Any] = {}


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one episode in this process (envs cached per task)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import warnings

    from rollout.experts import ScriptedExpert, run_episode
    from rollout.sims import make_env

    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
    # keyed by the env settings too: a second collection in the same process may use other ones
    key = (job["task"], json.dumps(job["env_kwargs"], sort_keys=True, default=str))
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = make_env(job["task"], **job["env_kwargs"])
    expert = ScriptedExpert(job["task"], NoiseSpec(**job["noise"]))
    return run_episode(env, expert, seed=job["seed"], steps_after_success=job["steps_after_success"])


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_jobs(cfg: CollectConfig) -> list[dict[str, Any]]:
    """One job per episode: task, seed, noise spec and env arguments (in dataset order)."""
    jobs = []
    for task, episodes in cfg.episode_counts().items():
        e = 0
        for mode, count in cfg.mode_counts(episodes).items():
            for _ in range(count):
                spec = asdict(cfg.noise_spec(mode))
                jobs.append(
                    {
                        "task": task,
                        "seed": cfg.seed + e,
                        "noise": spec,
                        "env_kwargs": cfg.env_kwargs(),
                        "steps_after_success": cfg.steps_after_success,
                    }
                )
                e += 1
    return jobs


def iter_episodes(cfg: CollectConfig, jobs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Episodes of `jobs` in job order, run by `cfg.num_workers` processes (spawned: safe with EGL)."""
    if cfg.num_workers == 0:
        for job in jobs:
            yield _run_job(job)
        return
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=cfg.num_workers, mp_context=ctx, initializer=_worker_init) as pool:
        # Keep a bounded window of jobs in flight so memory stays flat and order is preserved.
        window = 4 * cfg.num_workers
        futures: list[cf.Future] = []
        next_job = 0
        while next_job < len(jobs) or futures:
            while next_job < len(jobs) and len(futures) < window:
                futures.append(pool.submit(_run_job, jobs[next_job]))
                next_job += 1
            yield futures.pop(0).result()


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows (task, noise_mode, episodes, success_rate, mean_length), plus per-mode and overall totals."""
    rows = []
    keys = sorted({(r["task_name"], r["noise_mode"]) for r in records})
    groups = [(t, m, [r for r in records if (r["task_name"], r["noise_mode"]) == (t, m)]) for t, m in keys]
    for mode in sorted({r["noise_mode"] for r in records}):
        groups.append(("all", mode, [r for r in records if r["noise_mode"] == mode]))
    groups.append(("all", "all", records))
    for task, mode, rs in groups:
        rows.append(
            {
                "task": task,
                "noise_mode": mode,
                "episodes": len(rs),
                "success_rate": float(np.mean([r["success"] for r in rs])),
                "mean_length": float(np.mean([r["length"] for r in rs])),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `summarize` rows."""
    header = f"{'task':<30} {'noise_mode':<16} {'episodes':>8} {'success':>8} {'length':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['task']:<30} {r['noise_mode']:<16} {r['episodes']:>8d} {r['success_rate']:>8.2f} {r['mean_length']:>7.1f}"
        )
    return "\n".join(lines)


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Collect `cfg` into `cfg.output_dir` (atomic) and return {"rows": summary rows, "seconds", "env_steps"}."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from tqdm.auto import tqdm

    from rollout.sims import make_env
    from wlarl.data import write_episodes

    probe = make_env(cfg.tasks[0], **cfg.env_kwargs(), render_images=False)
    meta = {**probe.describe(), "collection_config": asdict(cfg), "tasks": cfg.tasks}
    probe.close()

    jobs = make_jobs(cfg)
    records: list[dict[str, Any]] = []
    start = time.time()
    bar = tqdm(total=len(jobs), desc="collect_demos", unit="ep", disable=not cfg.progress)

    def episodes() -> Iterator[dict[str, Any]]:
        for ep in iter_episodes(cfg, jobs):
            records.append(
                {
                    "task_name": ep["task_name"],
                    "noise_mode": ep["noise_mode"],
                    "success": bool(ep["success"].any()),
                    "length": len(ep["action"]),
                }
            )
            bar.set_postfix(success=f"{np.mean([r['success'] for r in records]):.2f}", refresh=False)
            bar.update(1)
            yield ep

    try:
        write_episodes(episodes(), Path(cfg.output_dir), meta)
    finally:
        bar.close()
    seconds = time.time() - start
    return {"rows": summarize(records), "seconds": seconds, "env_steps": int(sum(r["length"] for r in records))}


def state_frames(
    task: str,
    seeds: range | list[int],
    image_size: int = 64,
    camera: str = "corner",
    random_steps: int = 0,
    progress: bool = True,
    expert_steps: int = 0,
    action_chunk: int = 0,
    target_steps: int = 0,
) -> dict[str, Any]:
    """One frame per seeded layout of `task`, with the simulator state it shows: training data for a state probe
    that must read goals and objects from the frame (every frame a new layout, so nothing can be recalled by episode).

    Each layout is reset from its seed; with `random_steps` > 0 the arm then takes k uniform random actions, k drawn
    from 0 … random_steps by a generator seeded with the layout's seed (hand positions and occlusions as in an
    episode). With `target_steps` > 0 the hand then heads for a random point of the workspace (the wrong-target box of
    `rollout.experts`) for m steps, m drawn from 0 … target_steps, so that where the hand is tells nothing of the goal.
    With `expert_steps` > 0 the clean scripted expert (`rollout.experts`) then takes j steps, j drawn from 0 …
    expert_steps by the same generator, so that frames also lie along the expert's way to the goal. The draws come in
    that order, each only when its option is on, so an option left at 0 leaves the frames of the others unchanged.

    With `action_chunk` H > 0 every frame is also labelled with the clean expert's next H actions, taken from the
    frame's state by stepping the simulator after the frame is rendered (the frame is unchanged): one expert chunk per
    fresh layout, for a policy's action loss. Every frame carries the subtask label of `rollout.experts`' rules,
    followed from the reset through the steps before it. Deterministic in (task, seeds, image_size, camera,
    random_steps, target_steps, expert_steps).

    Returns:
        {"image": uint8 [N, H, W, 3], "state": float32 [N, 4], "full_state": float32 [N, 39],
         "instruction": N strings, "subtask": N strings, "seed": int64 [N]}, plus "action" float32
        [N, action_chunk, 4] when `action_chunk` > 0.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    from tqdm.auto import tqdm

    from rollout.sims.metaworld import MetaWorldEnv

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError(f"state_frames({task!r}): expected at least one seed")
    for name, value in (
        ("random_steps", random_steps),
        ("target_steps", target_steps),
        ("expert_steps", expert_steps),
        ("action_chunk", action_chunk),
    ):
        if value < 0:
            raise ValueError(f"state_frames: {name}={value}: expected ≥ 0 (0 = off)")
    expert = ScriptedExpert(task, "clean")
    env = MetaWorldEnv(task, image_size=image_size, camera=camera, render_images=False)
    if random_steps + target_steps + expert_steps + action_chunk > env.max_episode_steps:
        env.close()
        raise ValueError(
            f"state_frames({task!r}): random_steps + target_steps + expert_steps + action_chunk = "
            f"{random_steps + target_steps + expert_steps + action_chunk} steps may run past the episode's "
            f"{env.max_episode_steps}"
        )
    out: dict[str, list] = {"image": [], "state": [], "full_state": [], "instruction": [], "subtask": [], "action": []}
    try:
        for seed in tqdm(seeds, desc=f"{task} state frames", unit="frame", disable=not progress, leave=False):
            obs, _ = env.reset(seed=seed)
            subtask = expert.reset(env.full_state, seed)
            rng = np.random.default_rng(seed)
            for _ in range(int(rng.integers(0, random_steps + 1)) if random_steps else 0):
                obs, *_ = env.step(rng.uniform(-1.0, 1.0, 4).astype(np.float32))
                subtask = expert.subtask(env.full_state)
            if target_steps:
                steps, target = int(rng.integers(0, target_steps + 1)), rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH)
                grip = float(rng.choice([-1.0, 1.0]))
                for _ in range(steps):
                    delta = np.clip(10.0 * (target - env.full_state[:3]), -1.0, 1.0)
                    obs, *_ = env.step(np.append(delta, grip).astype(np.float32))
                    subtask = expert.subtask(env.full_state)
            for _ in range(int(rng.integers(0, expert_steps + 1)) if expert_steps else 0):
                obs, *_ = env.step(expert.clean_action(env.full_state))
                subtask = expert.subtask(env.full_state)
            out["image"].append(env.refresh_frame())
            out["state"].append(obs["state"])
            out["full_state"].append(env.full_state)
            out["instruction"].append(obs["instruction"])
            out["subtask"].append(subtask)
            chunk = []
            for _ in range(action_chunk):  # the expert's chunk from the frame's state; the frame is already taken
                chunk.append(expert.clean_action(env.full_state))
                env.step(chunk[-1])
            out["action"].append(chunk)
    finally:
        env.close()
    frames = {
        "image": np.stack(out["image"]),
        "state": np.asarray(out["state"], dtype=np.float32),
        "full_state": np.asarray(out["full_state"], dtype=np.float32),
        "instruction": out["instruction"],
        "subtask": out["subtask"],
        "seed": np.asarray(seeds, dtype=np.int64),
    }
    if action_chunk:
        frames["action"] = np.asarray(out["action"], dtype=np.float32)
    return frames


# The code that decides what a state frame holds; a change to any of these files gives new cache keys.
_FRAME_SOURCES = ("collect.py", "experts.py", "sims/metaworld.py")
_FRAME_PACKAGES = ("metaworld", "mujoco", "gymnasium", "numpy")
_STATE_FRAMES_SIGNATURE = inspect.signature(state_frames)


def state_frames_key(task: str, seeds: range | list[int], **options: Any) -> str:
    """The content key of `state_frames(task, seeds, **options)`: its arguments (defaults filled in, `progress`
    left out), the source of the modules that render and label the frames, the simulator packages' versions and the
    MuJoCo rendering backend."""
    import hashlib
    import importlib.metadata

    bound = _STATE_FRAMES_SIGNATURE.bind(task, [int(s) for s in seeds], **options)
    bound.apply_defaults()
    args = {k: v for k, v in bound.arguments.items() if k != "progress"}
    versions = {}
    for pkg in _FRAME_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _FRAME_SOURCES:
        h.update((here / name).read_bytes())
    payload = {"args": args, "versions": versions, "gl": os.environ.get("MUJOCO_GL", "egl")}
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()[:16]


def save_state_frames(frames: dict[str, Any], path: str | Path) -> None:
    """`state_frames`' output as one safetensors file (arrays as tensors, the string lists in its metadata), written
    atomically: a reader never sees a partial file."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in frames.items() if isinstance(v, np.ndarray)}
    meta = {k: json.dumps(list(frames[k])) for k in ("instruction", "subtask")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(arrays, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state_frames(path: str | Path) -> dict[str, Any]:
    """What `save_state_frames` wrote, as `state_frames` returns it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        frames: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}
    missing = sorted({"image", "state", "full_state", "seed"} - set(frames)) + sorted(
        {"instruction", "subtask"} - set(meta)
    )
    if missing:
        raise ValueError(f"{path}: not a state-frames file (it lacks {missing})")
    for k in ("instruction", "subtask"):
        frames[k] = json.loads(meta[k])
    if not len(frames["instruction"]) == len(frames["subtask"]) == len(frames["image"]):
        raise ValueError(f"{path}: its {len(frames['image'])} frames and their string labels differ in number")
    return frames


def cached_state_frames(
    task: str, seeds: range | list[int], cache_dir: str | Path | None, progress: bool = True, **options: Any
) -> dict[str, Any]:
    """`state_frames(task, seeds, **options)` through a file cache in `cache_dir` (None: no cache), keyed by
    `state_frames_key`: the first call renders and saves them, later calls with the same arguments and code load
    them. A file that cannot be read is rendered again and replaced."""
    if cache_dir is None:
        return state_frames(task, seeds, progress=progress, **options)
    path = Path(cache_dir) / f"{task}-{state_frames_key(task, seeds, **options)}.safetensors"
    if path.is_file():
        try:
            return load_state_frames(path)
        except Exception as e:  # a damaged file costs a new rendering, not the run
            logger.warning("state frames cache %s is unreadable (%s); rendering them again", path, e)
    frames = state_frames(task, seeds, progress=progress, **options)
    save_state_frames(frames, path)
    return frames
