"""The ranking benchmark's pieces: branch points rebuilt bitwise in Meta-World, open-loop replay of a group, and the
within-group agreement of a reward with the real outcome."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from support import requires_metaworld

from rollout.ranking import (
    RebuildError,
    auroc,
    branch_points,
    branch_step,
    rebuild,
    replay_group,
    spearman,
    within_group_agreement,
)


def test_branch_steps_are_early_middle_and_late_in_the_episode():
    assert [branch_step(100, p, 24) for p in ("early", "middle", "late")] == [15, 50, 76]
    assert branch_step(10, "late", 24) == 0  # shorter than the late offset: the reset state
    with pytest.raises(ValueError, match="position"):
        branch_step(10, "end", 24)


def test_agreement_is_one_for_the_real_order_and_zero_for_its_reverse():
    outcome = np.array([[1, 0, 0, 1], [0, 0, 0, 0]], float)  # the second group has no variance: not counted
    good = np.array([[0.9, 0.2, 0.1, 0.8], [0.5, 0.1, 0.3, 0.2]])
    res = within_group_agreement(good, outcome)
    assert res == {"sign_agreement": 1.0, "spearman": pytest.approx(np.sqrt(0.8)), "groups": 1.0, "rows": 4.0}
    assert within_group_agreement(-good, outcome)["sign_agreement"] == 0.0
    # a constant reward orders nothing: every row's advantage is 0, a disagreement, and Spearman is 0
    flat = within_group_agreement(np.full((2, 4), 0.3), outcome)
    assert flat["sign_agreement"] == 0.0 and flat["spearman"] == 0.0
    assert np.isnan(within_group_agreement(good, np.zeros((2, 4)))["sign_agreement"])
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        within_group_agreement(good[0], outcome[0])


def test_spearman_and_auroc_on_hand_examples():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert auroc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts half
    assert np.isnan(auroc([0.1, 0.2], [0, 0]))


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    from rollout.collect import CollectConfig, collect
    from wlarl.data.episodes import load_episodes

    out = tmp_path_factory.mktemp("demos") / "reach"
    cfg = CollectConfig(
        output_dir=str(out), tasks=["reach-v3"], episodes_per_task=2, noise_modes=["gaussian"], noise_weights=[1.0],
        image_size=16, num_workers=0, progress=False,
    )  # fmt: skip
    collect(cfg)
    return load_episodes(out)


@pytest.mark.metaworld
@requires_metaworld
def test_branch_points_rebuild_bitwise_and_a_wrong_action_is_refused(demos):
    from rollout.sims.metaworld import MetaWorldEnv

    bps = branch_points(demos, late_steps=16)
    assert len(bps) == 6 and [b.position for b in bps[:3]] == ["early", "middle", "late"]
    env = MetaWorldEnv("reach-v3", image_size=16, render_images=False)
    ep = demos.episode(0)
    for bp in bps[:3]:
        assert bp.actions.shape == (bp.step, 4) and bp.row == demos.episode_ranges[0][0] + bp.step
        obs = rebuild(env, bp)
        np.testing.assert_array_equal(obs["state"], np.asarray(ep["state"][bp.step], np.float32))
    first_success = int(np.argmax(np.asarray(ep["success"][:-1], bool))) + 1
    assert bps[2].step == first_success - 16
    bad = dataclasses.replace(bps[1], actions=bps[1].actions + np.float32(0.01))
    with pytest.raises(RebuildError, match=r"reach-v3 seed \d+ step \d+.*bitwise"):
        rebuild(env, bad)


@pytest.mark.metaworld
@requires_metaworld
def test_replay_of_a_group_tells_the_recorded_continuation_from_standing_still(demos):
    from rollout.sims.metaworld import MetaWorldEnv

    late = [b for b in branch_points(demos, positions=["late"], late_steps=16)][0]
    ep = demos.episode(late.episode_index)
    recorded = np.asarray(ep["action"], np.float32)[late.step : late.step + 16].reshape(2, 8, 4)
    actions = np.stack([recorded, np.zeros_like(recorded), recorded])  # [G=3, h=2, H=8, A]
    env = MetaWorldEnv("reach-v3", image_size=16, render_images=False, max_episode_steps=late.step + 16)
    out = replay_group(env, late, actions)
    assert out["success"].tolist() == [True, False, True]
    assert out["steps_to_success"][0] == 16 and out["steps_to_success"][1] == -1
    assert out["success_chunk"][0].tolist() == [False, True]  # success at step 16: the end of chunk 2
    assert out["frames"].shape == (3, 2, 16, 16, 3) and out["full_states"].shape == (3, 2, 39)
    np.testing.assert_array_equal(out["frames"][0], out["frames"][2])  # the same actions from the same state
    assert out["shaped_return"][0] == out["shaped_return"][2] > out["shaped_return"][1]
    np.testing.assert_array_equal(
        out["full_states"][0, 1], np.asarray(ep["full_state"][late.step + 16], np.float32)
    )  # the replay follows the recorded episode
    with pytest.raises(ValueError, match=r"\[G, h, H, A\]"):
        replay_group(env, late, actions[0])


def test_real_replay_trajectories_carry_what_reality_made_of_the_rows():
    from wla_tiny import tiny_obs, tiny_policy

    from rollout.imagined import ImaginationEngine, freeze_snapshot
    from rollout.ranking import real_replay_trajectories

    policy = tiny_policy("gaussian").eval()
    imagined = ImaginationEngine(freeze_snapshot(policy), horizon=2).rollout(policy, tiny_obs(2), group_size=2)
    S = 8

    def group(success_chunk):
        ok = np.asarray(success_chunk, bool)
        return {
            "frames": np.full((2, 2, S, S, 3), 7, np.uint8), "states": np.ones((2, 2, 4), np.float32),
            "full_states": np.zeros((2, 2, 39), np.float32), "success_chunk": ok,
        }  # fmt: skip

    real = real_replay_trajectories(imagined, [group([[True, True], [False, False]]), group([[False, True]] * 2)])
    assert real.engine == "real" and real.num_rows == 4 and real.subgoal_images.shape == (4, 2, S, S, 3)
    assert real.success.tolist() == [True, False, True, True]
    assert real.alive.tolist() == [[True, False], [True, True], [True, True], [True, True]]  # ends after success
    assert real.success_logits[0].tolist() == [20.0, 20.0] and real.success_logits[1].tolist() == [-20.0, -20.0]
    assert torch.equal(real.actions, imagined.actions)  # the same rows, scored on what reality made of them
    with pytest.raises(ValueError, match="replays of G=2"):
        real_replay_trajectories(imagined, [group([[True, True]] * 2)])


def test_alive_runs_through_the_first_success_chunk():
    from rollout.ranking import alive_through_first_success

    reached = torch.tensor([[False, True, True, True], [False, False, False, False], [True, True, True, True]])
    assert alive_through_first_success(reached).tolist() == [
        [True, True, False, False], [True, True, True, True], [True, False, False, False],
    ]  # fmt: skip


def test_policy_branch_points_sit_at_chunk_boundaries_of_the_rollouts():
    from wla_tiny import tiny_obs, tiny_policy

    from rollout.imagined import ImaginationEngine, freeze_snapshot
    from rollout.ranking import policy_branch_points

    policy = tiny_policy("gaussian").eval()
    traj = ImaginationEngine(freeze_snapshot(policy), horizon=4).rollout(policy, tiny_obs(2), group_size=1)
    N, T = traj.num_rows, traj.horizon
    alive = torch.ones(N, T, dtype=torch.bool)
    alive[1, 2:] = False  # row 1 succeeded in its second chunk: its length is 2 chunks
    traj = dataclasses.replace(traj, alive=alive, full_states=torch.arange(N * T * 39.0).view(N, T, 39))
    H = traj.samples[0].actions.shape[1]
    bps = policy_branch_points(traj, seeds=[11, 12], positions=["middle", "late"], late_chunks=1)
    assert [(b.seed, b.position, b.step) for b in bps] == [
        (11, "middle", 2 * H),
        (11, "late", 3 * H),
        (12, "middle", 1 * H),
        (12, "late", 1 * H),
    ]
    assert bps[0].actions.shape == (2 * H, traj.actions.shape[-1])
    np.testing.assert_array_equal(bps[0].actions, traj.actions[0, :2].reshape(-1, traj.actions.shape[-1]).numpy())
    np.testing.assert_array_equal(bps[0].full_state, traj.full_states[0, 1].numpy())  # after chunk 2
    np.testing.assert_array_equal(bps[0].observation["image"], np.asarray(traj.subgoal_images[0, 1]))
    assert all(b.source == "policy" and b.row == -1 for b in bps)
    with pytest.raises(ValueError, match="full_states"):
        policy_branch_points(dataclasses.replace(traj, full_states=None), seeds=[11, 12])


class _PlannedEngine:
    """An imagination engine that 'imagines' fixed action chunks and fixed successes: the real replay decides what
    they are worth, so the agreement of the imagined successes with reality is known in advance."""

    def __init__(self, plan: np.ndarray, imagined_success: list[bool]):
        self.plan = torch.as_tensor(plan)  # [G, h, H, A]
        self.imagined_success = torch.tensor(imagined_success)

    def rollout(self, policy, starts, group_size=1, temperature=1.0, horizon=None, generator=None):
        from wlarl.types import ActionSample, Trajectories

        G, h, H, A = self.plan.shape
        assert len(starts) == 1 and group_size == G and horizon == h
        obs = starts.repeat_interleave(G)
        samples = [
            ActionSample(
                actions=self.plan[:, t].float(),
                log_prob=torch.zeros(G),
                log_prob_terms=torch.zeros(G, H, A),
                subtask_ids=torch.zeros(G, 1, dtype=torch.long),
                subtask_mask=torch.ones(G, 1, dtype=torch.bool),
                subtask_log_probs=torch.zeros(G, 1),
                subtask_text=[""] * G,
            )  # fmt: skip
            for t in range(h)
        ]
        S = starts.images.shape[1]
        return Trajectories(
            observations=[obs] * h, samples=samples, subgoal_images=torch.zeros(G, h, S, S, 3, dtype=torch.uint8),
            subgoal_latents=torch.zeros(G, h, 1, 1, 1), states=torch.zeros(G, h, starts.states.shape[1]),
            success_logits=torch.zeros(G, h), alive=torch.ones(G, h, dtype=torch.bool),
            success=self.imagined_success.clone(), instructions=list(obs.instructions),
            task_names=list(obs.task_names), group_size=G,
        )  # fmt: skip


def _success_scorer(traj, trainer_state=None):
    from wlarl.types import RewardOutput

    return RewardOutput(traj.success.float()[:, None], ["success"], torch.ones(1))


@pytest.mark.metaworld
@requires_metaworld
@pytest.mark.parametrize("honest", [True, False])
def test_advantage_agreement_is_one_when_imagination_ranks_as_reality_and_zero_when_it_inverts(
    demos, honest, tmp_path
):
    from rollout.agreement import AdvantageAgreement, agreement_points

    late = agreement_points(demos, ["reach-v3"], per_task=1, positions=["late"], late_steps=16)
    assert len(late) == 1
    ep = demos.episode(late[0].episode_index)
    recorded = np.asarray(ep["action"], np.float32)[late[0].step : late[0].step + 16].reshape(2, 8, 4)
    plan = np.stack([recorded, np.zeros_like(recorded), recorded, np.zeros_like(recorded)])  # rows 0, 2 succeed
    really = [True, False, True, False]
    imagined = really if honest else [not s for s in really]
    check = AdvantageAgreement(
        _PlannedEngine(plan, imagined), _success_scorer, late, group_size=4, horizon=2, chunk_size=8,
        env_kwargs={"image_size": 16}, strip_dir=tmp_path / "strips",
    )  # fmt: skip
    out = check(policy=None, step=3)
    # the strip: start frame + 2 real frames (top) over start + 2 predicted ones (bottom), 2-pixel separators
    import imageio.v3 as iio

    strip = iio.imread(tmp_path / "strips" / "strip_step_000003.png")
    assert strip.shape == (2 * 16 + 2, 3 * 16 + 2 * 2, 3)
    assert (strip[18:, 18:34] == 0).all()  # the engine's predicted frames are black
    assert (strip[:16, 18:34] != 0).any()  # the real frame after the first chunk is rendered
    assert (strip[:16, :16] == strip[18:, :16]).all()  # both rows start from the branch point's frame
    assert out["verify/advantage_agreement"] == (1.0 if honest else 0.0)
    assert out["verify/advantage_spearman"] == pytest.approx(1.0 if honest else -1.0)
    # the same reward on what reality made of the rows: a perfect ranking either way
    assert out["verify/advantage_agreement_ceiling"] == 1.0
    assert out["verify/agreement_groups"] == 1.0 and out["verify/agreement_real_success"] == 0.5
    assert out["verify/agreement_gap"] == 0.0  # half imagined, half real successes either way
    assert out["real_episodes"] == 4 and out["real_env_steps"] == 4 * (late[0].step + 16)
    assert check.history[-1]["success"].tolist() == [[1.0, 0.0, 1.0, 0.0]]
    check.close()


def test_advantage_agreement_refuses_points_without_observations_and_single_row_groups():
    from rollout.agreement import AdvantageAgreement
    from rollout.ranking import BranchPoint

    bp = BranchPoint("reach-v3", 0, 0, np.zeros((0, 4), np.float32), None, -1, "early")
    with pytest.raises(ValueError, match="no observation"):
        AdvantageAgreement(None, _success_scorer, [bp], group_size=4, horizon=1, chunk_size=8)
    with pytest.raises(ValueError, match="at least one branch point"):
        AdvantageAgreement(None, _success_scorer, [], group_size=4, horizon=1, chunk_size=8)
    bp = dataclasses.replace(bp, observation={"image": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="G ≥ 2"):
        AdvantageAgreement(None, _success_scorer, [bp], group_size=1, horizon=1, chunk_size=8)


def test_bench_ranking_combos_parse_and_default_to_the_presets_reward():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ranking.py"
    spec = importlib.util.spec_from_file_location("bench_ranking_cli", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_combo("mine=state_value:1,shaping:0.05") == ("mine", {"state_value": 1.0, "shaping": 0.05})
    with pytest.raises(SystemExit, match="expected name=fn:weight"):
        bench.parse_combo("state_value:1")
    combos = dict(
        bench.parse_combo(c)
        for c in bench.default_combos(["subgoal_success", "shaping", "state_progress", "state_value"])
    )
    preset = yaml.safe_load((path.parents[1] / "recipes" / "configs" / "default.yaml").read_text())["grpo_world"]
    assert combos["default_preset"] == dict(zip(preset["reward_funcs"], map(float, preset["reward_weights"])))
    assert combos["state_value+shaping"] == {"state_value": 1.0, "shaping": 0.05}
    assert combos["subgoal_success+shaping"] == {"subgoal_success": 1.0, "shaping": 0.05}
    assert len({tuple(sorted(p.items())) for p in combos.values()}) == len(combos)  # no combo listed twice
