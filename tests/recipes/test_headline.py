"""recipes/headline.py: its preset, the arms' configs, the report and plots, and a debug-size run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import requires_metaworld

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

import headline  # noqa: E402

from wlarl.cli import load_section, parse_config  # noqa: E402
from wlarl.configs import GRPOWorldConfig  # noqa: E402
from wlarl.utils.video import branch_strip, write_png_atomic  # noqa: E402

PATHS = {"policy_path": "/p/policy", "dataset_path": "/p/data", "reward_model_path": "/p/reward",
         "state_reward_path": "/p/state"}  # fmt: skip


def test_shipped_headline_arms_are_valid_grpo_world_configs(tmp_path):
    head, arms = headline.load_headline("headline")
    assert list(arms) == ["real", "wlarl"] and head["eval_episodes_per_task"] >= 50
    cfgs = {}
    for i, (name, over) in enumerate(arms.items()):
        sec = headline.arm_config(head, over, PATHS, tmp_path / name, first=i == 0)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"grpo_world": sec}))
        cfgs[name] = parse_config(GRPOWorldConfig, "grpo_world", argv=["--config", str(tmp_path / f"{name}.yaml")])
    real, wl = cfgs["real"], cfgs["wlarl"]
    assert real.engine == "real" and wl.engine == "imagined"
    # the control keeps grpo_world's real-engine reward (the simulator's success): no preset reward carried over
    assert "reward_funcs" not in yaml.safe_load((tmp_path / "real.yaml").read_text())["grpo_world"]
    assert real.eval_at_start and not wl.eval_at_start  # the base is evaluated once
    assert real.seed == wl.seed == head["seed"] and real.eval_episodes_per_task == wl.eval_episodes_per_task
    assert wl.policy_path == real.policy_path == "/p/policy" and wl.state_reward_path == "/p/state"
    assert wl.reward_funcs == ["state_value"] and wl.reward_weights == [1.0]
    assert real.eval_steps == real.max_steps and wl.eval_steps == wl.max_steps and wl.verify_steps == 0
    # the same real training budget: real = rollouts × starts × G, wlarl = rounds × episodes per task × 8 tasks
    rollouts = real.max_steps // real.num_iterations
    assert rollouts * real.num_starts * real.num_generations == wl.rounds * wl.round_episodes_per_task * 8 == 256


def test_the_p1280_headline_gives_every_arm_the_same_1280_real_training_episodes(tmp_path):
    head, arms = headline.load_headline("headline_p1280")
    assert list(arms) == [
        "real", "wlarl", "wlarl_focus", "real_anchor", "wlarl_anchor", "real_reach_push", "wlarl_reach_push",
    ]  # fmt: skip
    assert head["eval_episodes_per_task"] >= 50
    cfgs = {}
    for i, (name, over) in enumerate(arms.items()):
        sec = headline.arm_config(head, over, PATHS, tmp_path / name, first=i == 0)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"grpo_world": sec}))
        cfgs[name] = parse_config(GRPOWorldConfig, "grpo_world", argv=["--config", str(tmp_path / f"{name}.yaml")])
    real = cfgs["real"]
    for name, c in cfgs.items():
        if c.engine == "real":
            assert c.max_steps // c.num_iterations * c.num_starts * c.num_generations == 1280, name
        else:  # the rounds' real episodes over the tasks trained on (all 8 unless `tasks` names some)
            assert c.engine == "imagined" and c.rounds * c.round_episodes_per_task * len(c.tasks or range(8)) == 1280
            assert c.max_steps // c.rounds == 10 and c.learning_rate == real.learning_rate
    # the focused arms train on reach and push and are evaluated, as the others, on the preset's 8 tasks
    default_tasks = load_section("default", "evaluate")["tasks"]
    for name in ("real_reach_push", "wlarl_reach_push"):
        assert cfgs[name].tasks == ["reach-v3", "push-v3"] and cfgs[name].eval_tasks == default_tasks
    # each variant differs from its arm in the settings named only
    for variant, arm, changed in (
        ("wlarl_focus", "wlarl", {"start_sampling"}),
        ("wlarl_anchor", "wlarl", {"solved_anchor_coef"}),
        ("real_anchor", "real", {"solved_anchor_coef"}),
        ("real_reach_push", "real", {"tasks", "eval_tasks"}),
        ("wlarl_reach_push", "wlarl", {"tasks", "eval_tasks", "round_episodes_per_task"}),
    ):
        v, a = (yaml.safe_load((tmp_path / f"{n}.yaml").read_text())["grpo_world"] for n in (variant, arm))
        assert {k for k in v if v[k] != a.get(k) and k not in ("output_dir", "eval_at_start")} == changed


@pytest.mark.parametrize(
    "text, match",
    [
        ("grpo_world: {}\n", "'headline' section"),
        ("headline: {arms: {a: {}}, colour: red}\n", "unknown key"),
        ("headline: {arms: {}}\n", "map arm names"),
        ("headline: {arms: {a: {horizn: 3}}}\n", "unknown grpo_world field"),
        ("headline: {arms: {a: {seed: 3}}}\n", "sets \\['seed'\\]"),
    ],
)
def test_bad_headline_configs_are_clear_errors(tmp_path, text, match):
    path = tmp_path / "h.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        headline.load_headline(str(path))


def _eval(step: int, success: float, n: int = 100, tasks: dict | None = None) -> dict:
    from wlarl.utils.stats import wilson_interval

    lo, hi = wilson_interval(round(success * n), n)
    row = {"step": step, "eval/real_success": success, "eval/real_success_ci_low": lo, "eval/real_success_ci_high": hi}
    for t, s in (tasks or {}).items():
        tl, th = wilson_interval(round(s * 50), 50)
        row.update({f"eval/{t}/success": s, f"eval/{t}/success_ci_low": tl, f"eval/{t}/success_ci_high": th})
    return row


def _write(run: Path, rows: list[dict]) -> None:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_and_plots_from_finished_arms(tmp_path):
    tasks = {"reach-v3": 0.1, "window-open-v3": 0.3}
    _write(tmp_path / "real", [
        _eval(0, 0.5, tasks=tasks),
        {"step": 2, "rollout/real_success_all_rows": 0.5, "budget/real_train_episodes": 128.0,
         "budget/real_train_env_steps": 9000.0},
        {"step": 4, "rollout/real_success_all_rows": 0.55, "budget/real_train_episodes": 256.0,
         "budget/real_train_env_steps": 18000.0},
        _eval(4, 0.55, tasks={"reach-v3": 0.1, "window-open-v3": 0.4}),
        {"step": 4, "train_runtime": 600.0},
    ])  # fmt: skip
    _write(tmp_path / "wlarl", [
        {"step": 0, "round/index": 0.0, "round/collected_success": 0.5, "budget/real_train_episodes": 128.0},
        {"step": 0, "verify/advantage_agreement": 0.6, "verify/agreement_gap": 0.1},
        {"step": 1, "rollout/imagined_success_all_rows": 0.6, "budget/real_train_episodes": 128.0},
        {"step": 2, "round/index": 1.0, "round/collected_success": 0.6, "budget/real_train_episodes": 256.0},
        {"step": 3, "rollout/imagined_success_all_rows": 0.7, "budget/real_train_episodes": 256.0,
         "budget/real_train_env_steps": 38400.0},
        {"step": 4, "verify/advantage_agreement": 0.7, "verify/agreement_gap": 0.05},
        _eval(4, 0.8, tasks={"reach-v3": 0.1, "window-open-v3": 0.9}),
        {"step": 4, "train_runtime": 1200.0},
    ])  # fmt: skip
    (tmp_path / "wlarl" / "config.json").write_text(json.dumps({"tasks": ["reach-v3"]}))
    arms = {n: headline.summarize(n, tmp_path / n) for n in ("real", "wlarl")}
    # the arm's trained tasks come from its saved config; without one (or without tasks), all of its dataset's
    assert arms["wlarl"]["train_tasks"] == ["reach-v3"] and arms["real"]["train_tasks"] == []
    results, table = headline.report(arms, seed=42, episodes_per_task=50)
    assert results["real"]["real_train_episodes"] == results["wlarl"]["real_train_episodes"] == 256
    assert results["real"]["intervals_apart"] is False and results["wlarl"]["intervals_apart"] is True
    assert results["wlarl"]["delta"] == pytest.approx(0.3)
    lines = table.splitlines()
    real_row = next(line for line in lines if line.startswith("| GRPO in the real simulator"))
    wl_row = next(line for line in lines if line.startswith("| wlarl"))
    assert "no measurable difference" in real_row and "| 256 (18000) |" in real_row and "| 10.0 |" in real_row
    assert "+0.300 (intervals apart)" in wl_row and "0.60 → 0.70" in wl_row and "+0.050" in wl_row
    assert "| 0.700 |" in wl_row  # imagined success at the last step
    window = next(line for line in lines if line.startswith("| window-open-v3"))
    assert window == "| window-open-v3 | 0.30 | 0.40 | 0.90, apart |"
    (tmp_path / "wlarl" / "agreement").mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    write_png_atomic(tmp_path / "wlarl" / "agreement" / "strip_step_000004.png",
                     branch_strip(frames[0], frames[1:3], frames[3:]))  # fmt: skip
    out = tmp_path / "report"
    out.mkdir()
    written = headline.plot(arms, out)
    assert [p.name for p in written] == ["headline_success.png", "headline_rounds.png", "headline_tasks.png",
                                         "headline_strip.png"]  # fmt: skip
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_report_refuses_arms_without_a_base_evaluation(tmp_path):
    _write(tmp_path / "a", [_eval(4, 0.5)])
    with pytest.raises(ValueError, match="base policy at step 0"):
        headline.report({"a": headline.summarize("a", tmp_path / "a")}, seed=0, episodes_per_task=1)


def test_evaluation_seeds_that_reset_training_demonstrations_are_refused(tmp_path, episode_factory):
    from wlarl.data import write_episodes

    eps = [episode_factory(seed=s, task="reach-v3") for s in (40, 60)] + [episode_factory(seed=45, task="push-v3")]
    write_episodes(eps, tmp_path / "data", {"tasks": ["reach-v3", "push-v3"]})
    with pytest.raises(ValueError, match=r"seeds 42\.\.51 .*\(push-v3: \[45\] \(1 seeds\)\)") as err:
        headline.check_eval_seeds(str(tmp_path / "data"), seed=42, episodes_per_task=10)
    assert "reach-v3" not in str(err.value)  # its demonstrations (40, 60) lie outside 42..51
    with pytest.raises(ValueError, match=r"reach-v3: \[60\]"):
        headline.check_eval_seeds(str(tmp_path / "data"), seed=42, episodes_per_task=19)
    headline.check_eval_seeds(str(tmp_path / "data"), seed=61, episodes_per_task=50)  # clear of every demo seed
    headline.check_eval_seeds(str(tmp_path / "data"), seed=41, episodes_per_task=4)  # 41..44


def test_bootstrap_option_overrides_the_presets_base(tmp_path, monkeypatch):
    built = []

    def fake_bootstrap(preset):  # records the preset instead of building a base policy
        built.append(preset)
        raise RuntimeError("stop after the bootstrap")

    monkeypatch.setattr(headline.grpo_world, "bootstrap", fake_bootstrap)
    with pytest.raises(RuntimeError, match="stop after the bootstrap"):
        headline.main(["--config", "headline_p1280", "--bootstrap", "many_goals", "--output_dir", str(tmp_path)])
    with pytest.raises(RuntimeError, match="stop after the bootstrap"):
        headline.main(["--config", "headline_p1280", "--output_dir", str(tmp_path)])
    assert built == ["many_goals", "default"]


@requires_metaworld
def test_debug_headline_runs_both_arms_reports_and_resumes(tmp_path):
    cfg = tmp_path / "headline_debug.yaml"
    common = {"tasks": ["reach-v3"], "real_max_episode_steps": 16, "num_env_workers": 1}
    cfg.write_text(yaml.safe_dump({"headline": {
        "bootstrap": "debug", "output_dir": str(tmp_path / "out"), "seed": 3, "eval_episodes_per_task": 2,
        "arms": {
            "real": {**common, "engine": "real", "max_steps": 2, "num_starts": 1},
            "wlarl": {**common, "max_steps": 2, "rounds": 1, "round_episodes_per_task": 2, "round_refresh_steps": 1,
                      "start_states": "keyframes", "keyframe_stride": 4, "reward_funcs": ["state_progress"],
                      "success_signal": "state", "agreement_steps": 2, "agreement_points_per_task": 1,
                      "agreement_positions": ["late"], "horizon": 2},
        },
    }}))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WLARL_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "recipes" / "headline.py"), "--config", str(cfg), "--docs_dir",
           str(tmp_path / "docs")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["real"]["real_train_episodes"] > 0 and results["wlarl"]["real_train_episodes"] == 2
    for name in ("real", "wlarl"):
        assert results[name]["final"]["eval/real_success"] is not None
    assert 0.0 <= results["base"]["eval/real_success"] <= 1.0
    table = (out / "headline.md").read_text()
    assert "| base SFT policy | 0 |" in table and "| reach-v3 |" in table
    for p in ("headline_success.png", "headline_rounds.png", "headline_tasks.png", "headline_strip.png"):
        assert (out / p).is_file() and (tmp_path / "docs" / p).is_file(), p
    # a second call finds both arms finished and only rewrites the report
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert proc.stderr.count("finished before; not run again") == 2


def test_training_curves_say_when_they_cover_fewer_tasks_than_evaluated():
    evaluated = ["reach-v3", "push-v3", "drawer-open-v3"]
    assert headline.trained_on(["reach-v3", "push-v3"], evaluated) == " (reach-v3, push-v3 only)"
    assert headline.trained_on([], evaluated) == ""  # trained on all of its dataset's tasks
    assert headline.trained_on(["push-v3", "reach-v3", "drawer-open-v3"], evaluated) == ""
