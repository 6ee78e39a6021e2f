"""The reward contract: loading, calling, validating, weighting, None handling, async, TRL text rewards."""

from __future__ import annotations

import asyncio
import math
import textwrap
import time

import numpy as np
import pytest
import torch
from reward_fixtures import make_trajectories

from rewards import (
    RewardFunctionError,
    RewardLoadError,
    RewardScorer,
    build_reward_scorer,
    predicted_success,
    resolve_reward_func,
    trajectory_reward_kwargs,
)
from rewards.base import SUBTASK_JOIN, validate_rewards


@pytest.fixture
def traj():
    return make_trajectories()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's reward module importable as `my_rewards`."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            from rewards.base import reward_factory

            def row_index(*, instructions, **kwargs):
                return [float(i) for i in range(len(instructions))]

            @reward_factory
            def make_constant(value: float, **unused):
                def constant(*, instructions, **kwargs):
                    return [value] * len(instructions)
                return constant

            def needs_solution(*, completions, solution, **kwargs):
                return [float(c == s) for c, s in zip(completions, solution)]

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_kwargs_cover_the_documented_contract(traj):
    kw = trajectory_reward_kwargs(traj, trainer_state="state", extra_key=1)
    for key in (
        "subgoal_images",
        "subgoal_latents",
        "states",
        "actions",
        "alive",
        "instructions",
        "task_names",
        "subtasks",
        "success_logits",
        "group_size",
        "trainer_state",
        "prompts",
        "completions",
        "completion_ids",
    ):
        assert key in kw, key
    assert kw["subgoal_images"].shape == (4, 3, 8, 8, 3)
    assert kw["actions"].shape == (4, 3, 2, 4)
    assert kw["trainer_state"] == "state" and kw["extra_key"] == 1
    assert kw["completions"][0] == SUBTASK_JOIN.join(["step 0", "step 1", "step 2"])
    assert kw["completion_ids"][0] == [6, 7] * 3


def test_completions_only_hold_chunks_that_ran():
    alive = torch.tensor([[True, True, False], [True, False, False]])
    traj = make_trajectories(n=2, t=3, subtasks=[["a", "b", "c"], ["d", "e", "f"]], alive=alive)
    kw = trajectory_reward_kwargs(traj)
    assert kw["completions"] == ["a\nb", "d"]


def test_builtin_by_name_and_weights(traj):
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 100.0], [-100.0] * 3, [0.0] * 3])
    traj = make_trajectories(success_logits=logits, success=[False, True, False, False])
    scorer = RewardScorer(["predicted_success", "trajectory_success"], weights=[2.0, 1.0])
    out = scorer(traj)
    assert out.names == ["predicted_success", "trajectory_success"]
    assert torch.allclose(out.per_function[:, 0], torch.tensor([0.5, 1.0, 0.0, 0.5]))
    assert torch.allclose(out.per_function[:, 1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(out.weighted_sum(), torch.tensor([1.0, 3.0, 0.0, 1.0]))


def test_predicted_success_reads_last_alive_chunk():
    logits = torch.tensor([[100.0, -100.0], [-100.0, 100.0]])
    alive = torch.tensor([[True, False], [True, True]])
    assert predicted_success(success_logits=logits, alive=alive) == pytest.approx([1.0, 1.0])


def test_none_becomes_nan_and_is_skipped_in_weighted_sum(traj):
    def sometimes(*, instructions, **kwargs):
        return [1.0, None, 3, None]

    out = RewardScorer([sometimes])(traj)
    col = out.per_function[:, 0]
    assert col[0] == 1.0 and col[2] == 3.0
    assert math.isnan(col[1]) and math.isnan(col[3])
    assert out.weighted_sum().tolist() == [1.0, 0.0, 3.0, 0.0]


def test_weights_length_mismatch_is_named(traj):
    with pytest.raises(ValueError, match="2 weights for 1 reward functions"):
        RewardScorer(["trajectory_success"], weights=[1.0, 2.0])


def test_accepts_arrays_and_tensors(traj):
    out = RewardScorer(
        [lambda **k: np.arange(4.0), lambda **k: torch.ones(4), lambda **k: (1, 2, 3, 4)], names=["np", "pt", "tup"]
    )(traj)
    assert out.per_function.shape == (4, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda **k: [1.0, 2.0], r"'bad' returned 2 values; expected one per row, N=4"),
        (lambda **k: [1.0, float("nan"), 0.0, 0.0], r"'bad', row 1: got non-finite value nan"),
        (lambda **k: [1.0, 0.0, float("inf"), 0.0], r"'bad', row 2: got non-finite value inf"),
        (lambda **k: [1.0, 0.0, 0.0, "yes"], r"'bad', row 3: got str"),
        (lambda **k: [[1.0], 0.0, 0.0, 0.0], r"'bad', row 0: got list"),
        (lambda **k: {"a": 1}, r"'bad' returned a dict; expected a list of 4 floats"),
        (lambda **k: 1.0, r"'bad' returned a float"),
        (lambda **k: torch.ones(4, 1), r"'bad' returned a tensor of shape \(4, 1\)"),
        (lambda **k: np.ones((2, 2)), r"'bad' returned an array of shape \(2, 2\)"),
    ],
)
def test_bad_outputs_name_function_and_row(traj, bad, message):
    with pytest.raises(RewardFunctionError, match=message):
        RewardScorer([lambda **k: [0.0] * 4, bad], names=["good", "bad"])(traj)


def test_exception_names_function(traj):
    def broken(**kwargs):
        raise KeyError("missing thing")

    with pytest.raises(RewardFunctionError, match=r"'broken' raised KeyError: 'missing thing'"):
        RewardScorer([broken])(traj)


def test_async_functions_run_concurrently(traj):
    async def slow_a(*, instructions, **kwargs):
        await asyncio.sleep(0.3)
        return [1.0] * len(instructions)

    async def slow_b(*, instructions, **kwargs):
        await asyncio.sleep(0.3)
        return [2.0] * len(instructions)

    scorer = RewardScorer([slow_a, slow_b, "trajectory_success"])
    start = time.perf_counter()
    out = scorer(traj)
    elapsed = time.perf_counter() - start
    assert out.per_function[:, :2].tolist() == [[1.0, 2.0]] * 4
    assert elapsed < 0.55, f"async rewards ran one after the other ({elapsed:.2f}s)"


def test_async_exception_and_inside_running_loop(traj):
    async def failing(**kwargs):
        raise ValueError("boom")

    with pytest.raises(RewardFunctionError, match=r"'failing' raised ValueError: boom"):
        RewardScorer([failing])(traj)

    async def ok(*, instructions, **kwargs):
        return [0.5] * len(instructions)

    async def main():  # the scorer called from code that already runs an event loop
        return RewardScorer([ok])(traj)

    assert asyncio.run(main()).per_function[:, 0].tolist() == [0.5] * 4


def test_dotted_path_and_factory(traj, user_module):
    scorer = build_reward_scorer([f"{user_module}:row_index", f"{user_module}:make_constant"], value=0.25)
    out = scorer(traj)
    assert out.names == ["row_index", "make_constant"]
    assert out.per_function.tolist() == [[0.0, 0.25], [1.0, 0.25], [2.0, 0.25], [3.0, 0.25]]


def test_missing_module_is_named():
    with pytest.raises(RewardLoadError, match=r"cannot import module 'no_such_pkg.rewards'"):
        resolve_reward_func("no_such_pkg.rewards:fn")


def test_missing_attribute_lists_module_contents(user_module):
    with pytest.raises(RewardLoadError, match=r"module 'my_rewards' has no attribute 'nope'; it has: .*row_index"):
        resolve_reward_func(f"{user_module}:nope")


def test_not_callable_and_bad_names(user_module):
    with pytest.raises(RewardLoadError, match="not a callable"):
        resolve_reward_func(f"{user_module}:NOT_CALLABLE")
    with pytest.raises(RewardLoadError, match="not a built-in name"):
        resolve_reward_func("subgoal_sucess")


def test_factory_missing_option_is_named(user_module):
    with pytest.raises(RewardLoadError, match=r"needs option\(s\) \['value'\]"):
        resolve_reward_func(f"{user_module}:make_constant")


def test_trl_text_reward_on_subtask_text():
    """A reward shipped in trl itself works unchanged: think_format_reward reads completion[0]['content']."""
    from trl.rewards import think_format_reward

    subtasks = [["<think>", "the puck is left", "</think>", "push the puck"], ["reach", "grasp", "push", "done"]]
    traj = make_trajectories(n=2, t=4, group_size=2, subtasks=subtasks)
    out = RewardScorer(["trl.rewards:think_format_reward"])(traj)
    assert out.names == ["think_format_reward"]
    assert out.per_function[:, 0].tolist() == [1.0, 0.0]
    assert RewardScorer([think_format_reward])(traj).per_function[:, 0].tolist() == [1.0, 0.0]


def test_trl_token_reward_on_subtask_ids():
    from trl.rewards import get_soft_overlong_punishment

    traj = make_trajectories(n=2, t=4, group_size=2)  # 2 subtask tokens per chunk -> 8 ids per row
    fn = get_soft_overlong_punishment(max_completion_len=8, soft_punish_cache=4)
    assert RewardScorer([fn])(traj).per_function[:, 0].tolist() == [-1.0, -1.0]


def test_standard_text_reward_gets_plain_strings(traj):
    def length(prompts, completions, **kwargs):  # a TRL-style standard-format reward
        assert isinstance(prompts[0], str) and isinstance(completions[0], str)
        return [float(len(c)) for c in completions]

    out = RewardScorer([length])(traj)
    assert out.per_function[0, 0] == len("step 0\nstep 1\nstep 2")


def test_score_without_trajectories():
    scorer = RewardScorer(["trajectory_success"])
    out = scorer.score(success=torch.tensor([True, False]), instructions=["a", "b"])
    assert out.per_function[:, 0].tolist() == [1.0, 0.0]


def test_validate_accepts_numpy_scalars():
    assert validate_rewards("f", [np.float32(1.5), np.int64(2), None], 3)[:2] == [1.5, 2.0]


def test_unique_names(traj):
    with pytest.raises(ValueError, match="unique"):
        RewardScorer(["trajectory_success", "trajectory_success"])


# ---------------------------------------------------------------- reward_kwargs and signatures checked at load


def test_trl_factory_configured_from_the_command_line():
    from wlarl.cli import parse_config
    from wlarl.configs import GRPOWorldConfig

    cfg = parse_config(
        GRPOWorldConfig,
        "grpo_world",
        ["--output_dir", "/tmp/x", "--reward_funcs", "trl.rewards:get_soft_overlong_punishment", "--reward_kwargs",
         '{"get_soft_overlong_punishment": {"max_completion_len": 20, "soft_punish_cache": 5}}'],
    )  # fmt: skip
    scorer = build_reward_scorer(cfg.reward_funcs, cfg.reward_weights, reward_kwargs=cfg.reward_kwargs)
    assert scorer.names == ["get_soft_overlong_punishment"]
    chunks_run = torch.tensor([7, 8, 10, 11])  # 2 subtask tokens per chunk: 14, 16, 20, 22 completion ids
    traj = make_trajectories(n=4, t=11, alive=torch.arange(11)[None] < chunks_run[:, None])
    # DAPO's soft overlong punishment: 0 up to 20 - 5 ids, then linear to -1 at 20, -1 beyond
    assert scorer(traj).per_function[:, 0].tolist() == pytest.approx([0.0, -0.2, -1.0, -1.0])


def test_trl_factory_without_its_kwargs_is_rejected_at_load():
    with pytest.raises(
        RewardLoadError, match=r"'get_soft_overlong_punishment': required parameter 'max_completion_len'"
    ):
        build_reward_scorer(["trl.rewards:get_soft_overlong_punishment"])


def test_repetition_penalty_factory_by_kwargs(traj):
    scorer = build_reward_scorer(
        ["trl.rewards:get_repetition_penalty_reward"],
        reward_kwargs={"get_repetition_penalty_reward": {"ngram_size": 2, "max_penalty": -1.0}},
    )
    assert scorer.names == ["get_repetition_penalty_reward"] and len(scorer(traj).per_function) == 4


def test_decorated_factory_gets_context_and_its_kwargs(traj, user_module):
    scorer = build_reward_scorer(
        [f"{user_module}:make_constant", "shaping"],
        reward_kwargs={"make_constant": {"value": 3.0}, "shaping": {"smoothness_weight": 0.0}},
        value=1.0,  # context: the function's own kwargs win
    )
    assert scorer.funcs[1].smoothness_weight == 0.0
    assert scorer(traj).per_function[:, 0].tolist() == [3.0] * 4


def test_reward_kwargs_for_an_unknown_function_is_named():
    with pytest.raises(RewardLoadError, match=r"reward_kwargs names \['get_repetition_penalty_reward'\].*'shaping'"):
        build_reward_scorer(["shaping"], reward_kwargs={"get_repetition_penalty_reward": {"ngram_size": 3}})


def _positional(x, /, **kwargs):
    return [0.0]


def _no_kwargs(*, states):
    return [0.0] * len(states)


@pytest.mark.parametrize(
    "fn,message",
    [
        (_positional, r"'_positional': parameter 'x' is positional-only"),
        (_no_kwargs, r"'_no_kwargs' takes no \*\*kwargs"),
        (
            lambda *, reward_scale, **kw: [reward_scale],
            r"'<lambda>': required parameter 'reward_scale' is not a reward",
        ),
    ],
)
def test_signature_that_cannot_take_the_reward_kwargs_is_rejected_at_load(fn, message):
    with pytest.raises(RewardLoadError, match=message):
        build_reward_scorer([fn])
    with pytest.raises(RewardLoadError, match=message):
        RewardScorer([fn])


def test_dotted_path_with_a_foreign_required_argument_is_rejected_at_load(user_module):
    with pytest.raises(RewardLoadError, match=r"'needs_solution': required parameter 'solution'"):
        build_reward_scorer([f"{user_module}:needs_solution"])
    # optional parameters and the documented keyword arguments are fine
    build_reward_scorer([lambda completions, prompts=None, *args, scale=1.0, **kw: [scale] * len(completions)])


def test_reward_kwargs_list_matches_what_functions_get_and_the_readme(traj):
    from pathlib import Path

    from rewards import REWARD_KWARGS

    assert set(trajectory_reward_kwargs(traj)) == set(REWARD_KWARGS)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("**Arguments** your function receives") :]
    table = table[: table.index("**Return**")]
    assert [k for k in REWARD_KWARGS if f"`{k}`" not in table] == []
