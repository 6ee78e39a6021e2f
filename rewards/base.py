"""The reward-function contract: loading by name or dotted path, calling, validating and weighting.

A reward function is any callable, sync or async, called with keyword arguments only (N rows, see
docs/internals.md)::

    fn(*, subgoal_images, subgoal_latents, states, full_states, actions, action_means, alive, instructions,
       task_names, subtasks, success_logits, success, group_size, start_latents, trainer_state, prompts, completions,
       completion_ids, **kwargs)
        -> list[float | int | None]   # one value per row; None = this function skips the row

Shapes: ``subgoal_images`` uint8 [N,T,H,W,3], ``subgoal_latents`` [N,T,C,h,w], ``states`` [N,T,S], ``full_states``
[N,T,F] or None (the full simulator state after each chunk: object and goal positions), ``actions`` [N,T,H,A] (the
*executed* actions, clipped to the action bounds as the simulator does), ``action_means`` [N,T,H,A] (the policy's
greedy mean chunks, clipped; None for heads without a mean), ``alive`` bool [N,T], ``success_logits`` [N,T],
``success`` bool [N], ``subtasks`` N lists of T strings, ``start_latents`` [N,C,h,w].

Text rewards written for TRL (``fn(prompts, completions, **kwargs)``) work unchanged on the subtask text:
``prompts`` are the instructions and ``completions`` are the subtasks of the chunks the episode ran (``alive``),
joined with ``SUBTASK_JOIN`` ("\\n", one subtask per line). Functions defined in the ``trl`` package get TRL's
*conversational* format (``prompts[i] = [{"role": "user", "content": ...}]``, ``completions[i] =
[{"role": "assistant", "content": ...}]``) because every text reward shipped in ``trl.rewards`` reads
``completion[0]["content"]``; every other function gets plain strings. Force either with :func:`text_format`.
``completion_ids`` are the subtask token ids of those chunks, concatenated (for TRL's length/repetition rewards).

Built-in names live in ``BUILTIN_REWARDS``; anything else is loaded from ``pkg.module:callable``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import numbers
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from wlarl.types import RewardOutput, Trajectories, last_alive_index

SUBTASK_JOIN = "\n"

# The keyword arguments every reward function is called with (`trajectory_reward_kwargs`; README "Arguments").
REWARD_KWARGS: tuple[str, ...] = (
    "subgoal_images",
    "subgoal_latents",
    "states",
    "full_states",
    "actions",
    "action_means",
    "alive",
    "instructions",
    "task_names",
    "subtasks",
    "success_logits",
    "success",
    "group_size",
    "start_latents",
    "start_full_states",
    "trainer_state",
    "prompts",
    "completions",
    "completion_ids",
)

# name -> "module:attribute". Attributes marked with @reward_factory are built with options from the context.
BUILTIN_REWARDS: dict[str, str] = {
    "predicted_success": "rewards.base:predicted_success",
    "trajectory_success": "rewards.base:trajectory_success",
    "subgoal_success": "rewards.subgoal_success:build_subgoal_success_reward",
    "subgoal_progress": "rewards.subgoal_success:build_subgoal_progress_reward",
    "goal_similarity": "rewards.goal_similarity:build_goal_similarity_reward",
    "progress": "rewards.progress:build_progress_reward",
    "subtask_text": "rewards.subtask_text:build_subtask_text_reward",
    "shaping": "rewards.shaping:build_shaping_reward",
    "state_success": "rewards.state_reward.reward:build_state_success_reward",
    "state_progress": "rewards.state_reward.reward:build_state_progress_reward",
    "state_value": "rewards.state_reward.reward:build_state_value_reward",
    "dynamics_disagreement": "rewards.dynamics_ensemble.reward:build_dynamics_disagreement_reward",
}


class RewardFunctionError(RuntimeError):
    """A reward function failed or returned something outside the contract; the message names it and the row."""


class RewardLoadError(ImportError):
    """A reward name or dotted path could not be resolved to a callable."""


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def reward_factory(fn: Callable) -> Callable:
    """Mark `fn` as a factory: `resolve_reward_func` calls it with the options it accepts and uses the result.

    Use it for rewards that need something built first (a model path, a dataset, the policy)::

        @reward_factory
        def make_my_reward(reward_model_path: str, threshold: float = 0.5):
            model = load(reward_model_path)
            def my_reward(*, subgoal_images, **kwargs): ...
            return my_reward
    """
    fn.__wlarl_reward_factory__ = True
    return fn


def text_format(fmt: str) -> Callable[[Callable], Callable]:
    """Decorator forcing the `prompts`/`completions` format a function receives: "standard" or "conversational"."""
    if fmt not in ("standard", "conversational"):
        raise ValueError(f"text_format: expected 'standard' or 'conversational', got {fmt!r}")

    def mark(fn: Callable) -> Callable:
        fn.__wlarl_text_format__ = fmt
        return fn

    return mark


def reward_name(fn: Callable) -> str:
    """The name used in metric keys (``reward/<name>``): `__name__`, else the class name."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def _accepted(fn: Callable, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Options `fn` accepts (all of them when it takes **kwargs) and its required parameters that are missing."""
    sig = inspect.signature(fn)
    params = sig.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in options.items() if var_kw or k in params}
    missing = [
        name
        for name, p in params.items()
        if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in given
    ]
    return given, missing


def _import_module(module_name: str) -> Any:
    """Import a module; a top-level package found in the current directory is importable too (recipes are launched
    as scripts, so the working directory is not on sys.path: `examples.my_reward:fn` works from the repo root)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        here = os.path.isdir(os.path.join(cwd, top)) or os.path.isfile(os.path.join(cwd, top + ".py"))
        if e.name != top or not here or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _import_attr(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RewardLoadError(
            f"reward {path!r}: not a built-in name ({sorted(BUILTIN_REWARDS)}) and not a dotted path "
            f"'pkg.module:callable'"
        )
    try:
        module = _import_module(module_name)
    except ImportError as e:
        raise RewardLoadError(
            f"reward {path!r}: cannot import module {module_name!r} ({e}). Is the package installed or on "
            f"PYTHONPATH (run from the repository root, or `pip install -e .`)?"
        ) from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise RewardLoadError(
                f"reward {path!r}: module {module_name!r} has no attribute {attr!r}; it has: {public}"
            )
        obj = getattr(obj, part)
    return obj


def resolve_reward_func(
    name_or_path: str | Callable, func_kwargs: Mapping[str, Any] | None = None, **options: Any
) -> Callable:
    """A reward callable from a built-in name, a dotted path ``pkg.module:callable``, or a callable.

    Factories (marked with :func:`reward_factory`) and classes are called with the `options` their signature
    accepts plus `func_kwargs` (which win over the context); a missing required option raises an error naming it.
    A callable given `func_kwargs` that is not a factory (TRL's ``get_soft_overlong_punishment``,
    ``get_repetition_penalty_reward``) is called with them to build the reward function.

    Args:
        name_or_path: e.g. ``"shaping"``, ``"examples.my_reward:keep_gripper_open"``.
        func_kwargs: this function's own options (``--reward_kwargs '{"<name>": {...}}'``).
        **options: context such as ``reward_model_path``, ``dataset_path``, ``policy``, ``subtask_rules``.

    Returns:
        The reward function (sync or async callable).
    """
    if not callable(name_or_path) and not isinstance(name_or_path, str):
        raise TypeError(f"reward: expected a name, a dotted path or a callable, got {type(name_or_path).__name__}")
    path = name_or_path if callable(name_or_path) else BUILTIN_REWARDS.get(name_or_path, name_or_path)
    obj = name_or_path if callable(name_or_path) else _import_attr(path)
    label = name_or_path if isinstance(name_or_path, str) else reward_name(name_or_path)
    own = dict(func_kwargs or {})
    if getattr(obj, "__wlarl_reward_factory__", False) or (inspect.isclass(obj) and isinstance(name_or_path, str)):
        kwargs, missing = _accepted(obj, {**options, **own})
        ignored = sorted(set(own) - set(kwargs))
        if ignored:
            raise RewardLoadError(
                f"reward {label!r}: reward_kwargs option(s) {ignored} are not parameters of {path}; it takes "
                f"{sorted(inspect.signature(obj).parameters)}"
            )
        if missing:
            raise RewardLoadError(
                f"reward {label!r} needs option(s) {missing} to be built (pass them in the context, e.g. "
                f"--{missing[0]} on the command line, or in --reward_kwargs); got {sorted({**options, **own})}"
            )
        obj = obj(**kwargs)
    elif own:
        try:
            obj = obj(**own)
        except TypeError as e:
            raise RewardLoadError(f"reward {label!r}: building it with reward_kwargs {own} failed: {e}") from e
    if not callable(obj):
        raise RewardLoadError(f"reward {label!r}: {path} is a {type(obj).__name__}, not a callable")
    return obj


def check_reward_signature(name: str, fn: Callable) -> None:
    """Raise `RewardLoadError` when `fn` cannot be called with the reward keyword arguments.

    A reward function is called as ``fn(**kwargs)`` with every name in `REWARD_KWARGS` (plus extras), so it must
    take ``**kwargs`` and may require no positional-only parameter and no keyword outside `REWARD_KWARGS`. Checked
    when the function is loaded, not after the first rollout.
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): the first call will tell
        return
    hint = "reward functions are called with keyword arguments only, e.g. `def my_reward(*, states, **kwargs)`"
    for p in params:
        required = p.default is p.empty
        if p.kind is p.POSITIONAL_ONLY and required:
            raise RewardLoadError(f"reward function {name!r}: parameter {p.name!r} is positional-only; {hint}")
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and required and p.name not in REWARD_KWARGS:
            factory_hint = (
                f"; if {name!r} builds the reward function, give its options with "
                f'--reward_kwargs \'{{"{name}": {{"{p.name}": ...}}}}\''
            )
            raise RewardLoadError(
                f"reward function {name!r}: required parameter {p.name!r} is not a reward keyword argument "
                f"({', '.join(REWARD_KWARGS)}){factory_hint}"
            )
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise RewardLoadError(
            f"reward function {name!r} takes no **kwargs, but it is called with every reward keyword argument; {hint}"
        )


def _display_name(spec: str | Callable) -> str:
    """Metric name of a reward spec: a built-in's name, a dotted path's attribute, a callable's `__name__`."""
    if isinstance(spec, str):
        return spec if spec in BUILTIN_REWARDS else spec.rpartition(":")[2].rpartition(".")[2]
    return reward_name(spec)


def build_reward_funcs(
    names: Sequence[str | Callable], reward_kwargs: Mapping[str, Mapping[str, Any]] | None = None, **context: Any
) -> tuple[list[Callable], list[str]]:
    """Resolve every name (built-in, dotted path or callable), building factories with `context`, and check that
    each function can take the reward keyword arguments (`check_reward_signature`).

    Args:
        names: F reward functions.
        reward_kwargs: ``{function name: {option: value}}``, a function named by its display name (the attribute of a
            dotted path, e.g. ``get_soft_overlong_punishment``) or as written in `names`.
        **context: options every factory may take (``reward_model_path``, ``policy``, ``subtask_rules``, …).

    Returns:
        (functions, display names) — built-ins keep their name, dotted paths use the attribute name.
    """
    if isinstance(names, str) or callable(names):
        names = [names]
    reward_kwargs = dict(reward_kwargs or {})
    keys = [(spec, _display_name(spec)) for spec in names]
    known = {k for pair in keys for k in pair if isinstance(k, str)}
    unknown = sorted(set(reward_kwargs) - known)
    if unknown:
        raise RewardLoadError(
            f"reward_kwargs names {unknown}, which are not among the reward functions {[d for _, d in keys]}"
        )
    funcs, display = [], []
    for spec, shown in keys:
        own = reward_kwargs.get(spec) if isinstance(spec, str) and spec in reward_kwargs else reward_kwargs.get(shown)
        if own is not None and not isinstance(own, Mapping):
            raise RewardLoadError(f"reward_kwargs[{shown!r}]: expected a mapping of options, got {own!r}")
        fn = resolve_reward_func(spec, own, **context)
        check_reward_signature(shown, fn)
        funcs.append(fn)
        display.append(shown)
    return funcs, display


def build_reward_scorer(
    names: Sequence[str | Callable],
    weights: Sequence[float] | None = None,
    reward_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    **context: Any,
) -> RewardScorer:
    """`RewardScorer` over `build_reward_funcs(names, reward_kwargs, **context)` with `weights` (default 1 each)."""
    funcs, display = build_reward_funcs(names, reward_kwargs, **context)
    return RewardScorer(funcs, weights, display)


# ----------------------------------------------------------------------------------------------------------------
# Keyword arguments from Trajectories
# ----------------------------------------------------------------------------------------------------------------


def join_subtasks(subtasks: Sequence[Sequence[str]], alive: torch.Tensor | None = None) -> list[str]:
    """N strings: each row's subtasks of the chunks it ran (alive), joined with `SUBTASK_JOIN`."""
    out = []
    for i, row in enumerate(subtasks):
        keep = row if alive is None else [s for s, a in zip(row, alive[i].tolist()) if a]
        out.append(SUBTASK_JOIN.join(keep))
    return out


def trajectory_reward_kwargs(traj: Trajectories, trainer_state: Any = None, **extra: Any) -> dict[str, Any]:
    """The keyword arguments every reward function receives, built from `traj` (docs/internals.md)."""
    alive = traj.alive.bool()
    subtasks = traj.subtasks
    completion_ids = []
    for i in range(traj.num_rows):
        ids: list[int] = []
        for t, s in enumerate(traj.samples):
            if alive[i, t]:
                ids.extend(s.subtask_ids[i][s.subtask_mask[i]].tolist())
        completion_ids.append(ids)
    start_latents = traj.observations[0].latents if traj.observations else None
    start_full_states = traj.observations[0].full_states if traj.observations else None
    kwargs = dict(
        subgoal_images=traj.subgoal_images,
        subgoal_latents=traj.subgoal_latents,
        states=traj.states,
        full_states=traj.full_states,  # real engine: the simulator's; imagination: the World Expert's, or None
        actions=traj.actions,  # executed: clipped to the action bounds, as the simulator does
        action_means=getattr(traj, "action_means", None),  # greedy mean chunks (clipped), None for flow heads
        alive=alive,
        instructions=list(traj.instructions),
        task_names=list(traj.task_names),
        subtasks=subtasks,
        success_logits=traj.success_logits,
        success=traj.success.bool(),
        group_size=traj.group_size,
        start_latents=start_latents,
        start_full_states=start_full_states,  # float [N, F] the start's full state, or None
        trainer_state=trainer_state,
        prompts=list(traj.instructions),
        completions=join_subtasks(subtasks, alive),
        completion_ids=completion_ids,
    )
    kwargs.update(extra)
    return kwargs


def _is_trl_function(fn: Callable) -> bool:
    module = getattr(fn, "__module__", None) or type(fn).__module__ or ""
    return module == "trl" or module.startswith("trl.")


def _text_format_of(fn: Callable) -> str:
    fmt = getattr(fn, "__wlarl_text_format__", None)
    if fmt is not None:
        return fmt
    return "conversational" if _is_trl_function(fn) else "standard"


def _conversational(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    out["prompts"] = [[{"role": "user", "content": p}] for p in kwargs["prompts"]]
    out["completions"] = [[{"role": "assistant", "content": c}] for c in kwargs["completions"]]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def validate_rewards(name: str, values: Any, n: int) -> list[float]:
    """Check one function's output and return N floats (NaN for None).

    Raises:
        RewardFunctionError: wrong container, wrong length, a wrong element type or a non-finite value; the message
            names the function and the row.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.ndim != 1:
            raise RewardFunctionError(
                f"reward function {name!r} returned a tensor of shape {tuple(values.shape)}; expected 1-D [N={n}]"
            )
        values = values.tolist()
    elif isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise RewardFunctionError(
                f"reward function {name!r} returned an array of shape {values.shape}; expected 1-D [N={n}]"
            )
        values = values.tolist()
    elif not isinstance(values, (list, tuple)):
        raise RewardFunctionError(
            f"reward function {name!r} returned a {type(values).__name__}; expected a list of {n} floats "
            f"(or None per skipped row)"
        )
    if len(values) != n:
        raise RewardFunctionError(
            f"reward function {name!r} returned {len(values)} values; expected one per row, N={n}"
        )
    out = []
    for row, v in enumerate(values):
        if v is None:
            out.append(math.nan)
            continue
        if isinstance(v, (np.generic, torch.Tensor)) and getattr(v, "ndim", 0) == 0:
            v = v.item()
        if not isinstance(v, numbers.Real):
            raise RewardFunctionError(
                f"reward function {name!r}, row {row}: got {type(v).__name__} {v!r:.60}; expected a float, an int or "
                f"None"
            )
        v = float(v)
        if not math.isfinite(v):
            raise RewardFunctionError(
                f"reward function {name!r}, row {row}: got non-finite value {v}; expected a finite float (return "
                f"None to skip the row)"
            )
        out.append(v)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Scorer
# ----------------------------------------------------------------------------------------------------------------


def _run_coroutines(coros: list) -> list:
    """Run coroutines concurrently; works whether or not an event loop is already running in this thread."""

    async def gather():
        return await asyncio.gather(*coros, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    # A loop is running here (e.g. a notebook): run ours in a helper thread.
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("out", asyncio.run(gather())))
    thread.start()
    thread.join()
    return box["out"]


class RewardScorer:
    """Calls F reward functions on a batch and returns their validated, weighted outputs.

    Args:
        funcs: F callables (sync or async).
        weights: F weights (default 1.0 each).
        names: F names for metric keys (default: each function's `__name__`).

    Example:
        >>> scorer = RewardScorer([my_reward, "shaping"], weights=[1.0, 0.1])  # doctest: +SKIP
        >>> out = scorer(trajectories)  # RewardOutput, per_function [N, F]
    """

    def __init__(
        self,
        funcs: Sequence[Callable | str],
        weights: Sequence[float] | torch.Tensor | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if isinstance(funcs, (str,)) or callable(funcs):
            funcs = [funcs]
        if len(funcs) == 0:
            raise ValueError("RewardScorer: expected at least one reward function")
        resolved, default_names = build_reward_funcs(list(funcs))
        self.funcs = resolved
        self.names = list(names) if names is not None else default_names
        if len(self.names) != len(self.funcs):
            raise ValueError(f"RewardScorer: {len(self.funcs)} functions but {len(self.names)} names")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"RewardScorer: reward names must be unique (they key metrics), got {self.names}")
        if weights is None:
            weights = [1.0] * len(self.funcs)
        weights = [float(w) for w in (weights.tolist() if isinstance(weights, torch.Tensor) else weights)]
        if len(weights) != len(self.funcs):
            raise ValueError(
                f"reward_weights: got {len(weights)} weights for {len(self.funcs)} reward functions {self.names}; "
                f"give one weight per function"
            )
        if not all(math.isfinite(w) for w in weights):
            raise ValueError(f"reward_weights: expected finite numbers, got {weights}")
        self.weights = torch.tensor(weights, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"RewardScorer({dict(zip(self.names, [round(w, 6) for w in self.weights.tolist()]))})"

    def find_success_classifier(self) -> tuple[Callable[[torch.Tensor, list[str]], torch.Tensor], float] | None:
        """The success classifier among the functions, as ``(predict_proba, threshold)``, or None.

        A function qualifies when it has ``.model.predict_proba`` and a ``.threshold`` (e.g. `subgoal_success`);
        the first one is returned. ``predict_proba(images uint8 [N, H, W, 3], task_names N strings) -> float [N]``
        gives calibrated success probabilities; success is ``p >= threshold``.
        """
        for fn in self.funcs:
            predict = getattr(getattr(fn, "model", None), "predict_proba", None)
            threshold = getattr(fn, "threshold", None)
            if callable(predict) and threshold is not None:
                return predict, float(threshold() if callable(threshold) else threshold)
        return None

    def __call__(self, trajectories: Trajectories, trainer_state: Any = None, **extra: Any) -> RewardOutput:
        """Score N trajectories: per_function [N, F] (NaN where a function skipped a row)."""
        kwargs = trajectory_reward_kwargs(trajectories, trainer_state=trainer_state, **extra)
        return self.score(n=trajectories.num_rows, **kwargs)

    def score(self, n: int | None = None, **kwargs: Any) -> RewardOutput:
        """Score a batch given the reward keyword arguments directly (no Trajectories needed).

        Args:
            n: number of rows; inferred from `instructions`, `task_names` or `subgoal_images` when omitted.
            **kwargs: the reward keyword arguments (any subset; functions get what is given).
        """
        if n is None:
            n = _infer_rows(kwargs)
        if "completions" not in kwargs and "subtasks" in kwargs:
            kwargs["completions"] = join_subtasks(kwargs["subtasks"], kwargs.get("alive"))
        if "prompts" not in kwargs and "instructions" in kwargs:
            kwargs["prompts"] = list(kwargs["instructions"])
        conv = None
        results: list[Any] = [None] * len(self.funcs)
        pending: list[tuple[int, Any]] = []
        for i, (fn, name) in enumerate(zip(self.funcs, self.names)):
            call_kwargs = kwargs
            if _text_format_of(fn) == "conversational" and "completions" in kwargs:
                conv = conv if conv is not None else _conversational(kwargs)
                call_kwargs = conv
            try:
                out = fn(**call_kwargs)
            except Exception as e:  # re-raised with the function's name
                for _, coro in pending:
                    coro.close()
                raise RewardFunctionError(
                    f"reward function {name!r} raised {type(e).__name__}: {e} (batch of N={n} rows)"
                ) from e
            if inspect.isawaitable(out):
                pending.append((i, out))
            else:
                results[i] = out
        if pending:
            # async functions run concurrently (their coroutines were created above, awaited together here)
            outs = _run_coroutines([c for _, c in pending])
            for (i, _), out in zip(pending, outs):
                if isinstance(out, BaseException):
                    name = self.names[i]
                    raise RewardFunctionError(
                        f"reward function {name!r} raised {type(out).__name__}: {out} (batch of N={n} rows)"
                    ) from out
                results[i] = out
        columns = [validate_rewards(name, out, n) for name, out in zip(self.names, results)]
        per_function = torch.tensor(columns, dtype=torch.float32).T.reshape(n, len(self.funcs))  # [N, F]
        return RewardOutput(per_function=per_function, names=list(self.names), weights=self.weights.clone())


def _infer_rows(kwargs: dict[str, Any]) -> int:
    for key in ("instructions", "task_names", "subtasks", "prompts", "completions"):
        if key in kwargs and kwargs[key] is not None:
            return len(kwargs[key])
    for key in ("subgoal_images", "success_logits", "states", "actions", "alive"):
        if key in kwargs and kwargs[key] is not None:
            return int(kwargs[key].shape[0])
    raise ValueError("RewardScorer.score: cannot infer the number of rows; pass n= or instructions=")


# ----------------------------------------------------------------------------------------------------------------
# Cheap built-ins (no model needed)
# ----------------------------------------------------------------------------------------------------------------


def predicted_success(
    *, success_logits: torch.Tensor, alive: torch.Tensor | None = None, **kwargs: Any
) -> list[float]:
    """World Expert's success probability sigmoid(logit) after the last chunk each row ran.

    Args:
        success_logits: float [N, T].
        alive: bool [N, T] (all True when omitted).

    Returns:
        N floats in [0, 1].
    """
    logits = torch.as_tensor(success_logits).float()
    if alive is None:
        alive = torch.ones_like(logits, dtype=torch.bool)
    last = last_alive_index(torch.as_tensor(alive))
    return torch.sigmoid(logits.gather(1, last[:, None].to(logits.device))[:, 0]).tolist()


def trajectory_success(*, success: torch.Tensor | Iterable[bool], **kwargs: Any) -> list[float]:
    """1.0 where the episode ended in (predicted) success, else 0.0 (from Trajectories.success [N])."""
    return [float(bool(s)) for s in torch.as_tensor(success).tolist()]
