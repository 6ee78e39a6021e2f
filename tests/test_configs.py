"""GRPOWorldConfig: TRL names and meanings, derived batch sizes, validation messages, round trips, presets."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from wlarl.cli import PRESET_DIR, load_section, parse_config, save_config
from wlarl.configs import GRPOWorldConfig


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "run")


def test_defaults_construct_for_a_cpu(out):
    cfg = GRPOWorldConfig(output_dir=out)
    assert cfg.bf16 is False and cfg.report_to in ("none", [], ["none"])
    assert cfg.logging_steps == 1 and cfg.save_strategy == "steps" and cfg.remove_unused_columns is False
    assert cfg.num_generations == 8 and cfg.num_starts == 8
    assert (cfg.epsilon, cfg.epsilon_high, cfg.beta) == (0.2, 0.28, 0.0)  # VLA-GRPO recipe: clip .2/.28, KL 0
    assert cfg.loss_type == "dapo" and cfg.scale_rewards == "group"
    assert cfg.dynamic_sampling_range == [0.1, 0.9]
    # N = B·G rows per process and micro-step
    assert cfg.per_device_train_batch_size == 64 == cfg.group_rows
    assert cfg.steps_per_generation == 1 and cfg.generation_batch_size == 64


def test_use_cpu_works(out):
    cfg = GRPOWorldConfig(output_dir=out, use_cpu=True)
    assert cfg.device.type == "cpu"


@pytest.mark.parametrize("world_size", [1, 2])
def test_batch_fields_derived_for_one_and_two_processes(out, monkeypatch, world_size):
    # TRL's __post_init__ checks generation_batch_size % num_generations against the world size.
    monkeypatch.setattr(GRPOWorldConfig, "world_size", property(lambda self: world_size))
    cfg = GRPOWorldConfig(output_dir=out, num_generations=8, num_starts=8)
    assert cfg.per_device_train_batch_size == 64
    assert cfg.generation_batch_size == 64 * world_size
    cfg = GRPOWorldConfig(output_dir=out, num_generations=6, num_starts=3, gradient_accumulation_steps=2)
    assert cfg.per_device_train_batch_size == 18
    assert cfg.steps_per_generation == 2 and cfg.generation_batch_size == 18 * world_size * 2


def test_epsilon_high_none_means_epsilon(out):
    assert GRPOWorldConfig(output_dir=out, epsilon=0.1, epsilon_high=None).epsilon_high == 0.1


@pytest.mark.parametrize(
    ("given", "expected"), [(True, "group"), (False, "none"), ("false", "none"), ("batch", "batch")]
)
def test_scale_rewards_accepts_trl_booleans(out, given, expected):
    assert GRPOWorldConfig(output_dir=out, scale_rewards=given).scale_rewards == expected


@pytest.mark.parametrize(
    ("kwargs", "field_name", "hint"),
    [
        ({"num_generations": 1}, "num_generations", "at least 2 samples per group"),
        ({"num_starts": 0}, "num_starts", "num_starts ≥ 1"),
        ({"epsilon": 0.3, "epsilon_high": 0.2}, "epsilon_high", "must be ≥ epsilon"),
        ({"epsilon": -0.1, "epsilon_high": 0.2}, "epsilon", "≥ 0"),
        ({"delta": 0.9}, "delta", "> 1"),
        ({"dynamic_sampling_range": [0.9, 0.1]}, "dynamic_sampling_range", "lo ≤ hi"),
        ({"dynamic_sampling_range": [-0.1, 0.5]}, "dynamic_sampling_range", "0 ≤ lo"),
        ({"dynamic_sampling_range": [0.1, 1.5]}, "dynamic_sampling_range", "hi ≤ 1"),
        ({"dynamic_sampling_range": [0.1]}, "dynamic_sampling_range", "two numbers"),
        ({"max_resample_rounds": 0}, "max_resample_rounds", "≥ 1"),
        ({"loss_type": "cispo"}, "loss_type", "dr_grpo"),
        ({"scale_rewards": "std"}, "scale_rewards", "'group'"),
        ({"multi_objective_aggregation": "mean"}, "multi_objective_aggregation", "normalize_then_sum"),
        ({"importance_sampling_level": "chunk"}, "importance_sampling_level", "'sequence'"),
        ({"reward_funcs": ["a", "b"], "reward_weights": [1.0]}, "reward_weights", "one weight per function"),
        ({"reward_funcs": []}, "reward_funcs", "at least one"),
        ({"horizon": 0}, "horizon", "horizon ≥ 1"),
        ({"success_threshold": 0.0}, "success_threshold", "(0, 1)"),
        ({"success_threshold": 1.0}, "success_threshold", "(0, 1)"),
        ({"temperature": 0.0}, "temperature", "> 0"),
        ({"num_iterations": 0}, "num_iterations", "≥ 1"),
        ({"beta": -0.01}, "beta", "≥ 0"),
        ({"start_states": "sim"}, "start_states", "'reset'"),
        ({"start_states": "reset"}, "tasks", "--tasks"),
        ({"tasks": ["reach-v3", "reach-v3"]}, "tasks", "twice"),
        ({"eval_tasks": ["push-v3", "reach-v3", "push-v3"]}, "eval_tasks", "give each task once"),
        ({"nll_coef": -1.0}, "nll_coef", "≥ 0"),
        ({"solved_anchor_coef": -0.1}, "solved_anchor_coef", "≥ 0"),
        ({"subtask_coef": -0.5}, "subtask_coef", "≥ 0"),
        ({"verify_steps": -1}, "verify_steps", "≥ 0"),
        ({"eval_steps": -5}, "eval_steps", "≥ 0"),
        ({"eval_episodes_per_task": 0}, "eval_episodes_per_task", "≥ 1"),
        ({"num_env_workers": -1}, "num_env_workers", "≥ 0"),
        ({"image_size": 4}, "image_size", "≥ 8"),
        ({"mask_gap_threshold": 1.5}, "mask_gap_threshold", "[0, 1]"),
        ({"mask_unverified": True, "verify_steps": 0}, "mask_unverified", "verify_steps > 0"),
        ({"per_device_train_batch_size": 7}, "per_device_train_batch_size", "set num_starts instead"),
        ({"steps_per_generation": 3}, "steps_per_generation", "gradient_accumulation_steps"),
        ({"start_states": "keyframes", "keyframe_stride": 0}, "keyframe_stride", "≥ 1"),
        ({"num_reset_starts": 0}, "num_reset_starts", "≥ 1"),
        ({"refresh_world_steps": 10, "verify_steps": 0}, "refresh_world_steps", "verify_steps > 0"),
        ({"success_signal": "oracle"}, "success_signal", "'classifier'"),
        ({"imagined_state_dynamics": "physics"}, "imagined_state_dynamics", "'ensemble'"),
        ({"dynamics_ensemble_steps": 0}, "dynamics_ensemble_steps", "≥ 1"),
        ({"subtask_beta": -0.1}, "subtask_beta", "≥ 0"),
        ({"reward_kwargs": "{not json"}, "reward_kwargs", "not valid JSON"),
        ({"reward_kwargs": '{"f": 3}'}, "reward_kwargs", "{function name: {option: value}}"),
        ({"agreement_steps": -1}, "agreement_steps", "≥ 0"),
        ({"agreement_positions": ["end"]}, "agreement_positions", "'middle'"),
        ({"agreement_positions": []}, "agreement_positions", "one or more"),
        ({"rounds": 0}, "rounds", "≥ 1"),
        ({"rounds": 2}, "round_episodes_per_task", "needs episodes to collect"),
        ({"round_episodes_per_task": 1, "engine": "real"}, "rounds", "engine='imagined'"),
        ({"round_episodes_per_task": 1, "rounds": 3, "max_steps": 10}, "max_steps", "3 equal rounds"),
        ({"round_episodes_per_task": 1, "start_sampling": "signal"}, "start_sampling", "'uniform'"),
        ({"round_newest_weight": 0}, "round_newest_weight", "≥ 1"),
        # TRL's generation options do nothing in wlarl: setting one is an error, not a silent no-op
        ({"use_vllm": True}, "use_vllm", "leave it at False"),
        ({"vllm_mode": "server"}, "vllm_mode", "does not use TRL's"),
        ({"top_p": 0.9}, "top_p", "leave it at 1.0"),
        ({"generation_kwargs": {"top_k": 5}}, "generation_kwargs", "does not use TRL's"),
        ({"repetition_penalty": 1.1}, "repetition_penalty", "does not use TRL's"),
    ],
)
def test_bad_settings_raise_naming_the_field(out, kwargs, field_name, hint):
    with pytest.raises(ValueError) as err:
        GRPOWorldConfig(output_dir=out, **kwargs)
    msg = str(err.value)
    assert f"GRPOWorldConfig.{field_name}:" in msg, msg
    assert hint in msg, msg


def test_zero_env_workers_means_in_process(out):
    assert GRPOWorldConfig(output_dir=out, num_env_workers=0, use_cpu=True).num_env_workers == 0


def test_every_world_field_has_a_help_line():
    own = {f.name for f in dataclasses.fields(GRPOWorldConfig)}
    for f in dataclasses.fields(GRPOWorldConfig):
        if f.name in own:
            assert f.metadata.get("help"), f"{f.name} has no help line"


def test_to_dict_round_trip_and_json(out, tmp_path):
    cfg = GRPOWorldConfig(
        output_dir=out,
        reward_funcs=["subgoal_success", "shaping"],
        reward_weights=[1.0, 0.1],
        tasks=["reach-v3"],
        dynamic_sampling_range=[0.2, 0.8],
        multi_objective_aggregation="normalize_then_sum",
    )
    d = cfg.to_dict()
    text = json.dumps(d)  # JSON-serialisable
    again = GRPOWorldConfig(**json.loads(text))
    assert again.to_dict() == d
    assert again.reward_weights == [1.0, 0.1] and again.dynamic_sampling_range == [0.2, 0.8]
    path = save_config(cfg, tmp_path / "saved")
    assert json.loads(path.read_text())["num_starts"] == 8


def test_stale_generation_batch_size_from_another_world_size_is_replaced(out):
    d = GRPOWorldConfig(output_dir=out).to_dict()
    d["generation_batch_size"] = 128  # written by a 2-process run
    assert GRPOWorldConfig(**d).generation_batch_size == 64


def test_yaml_preset_with_cli_override(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "sft_wla": {"max_steps": 3},
                "grpo_world": {
                    "output_dir": str(tmp_path / "run"),
                    "num_starts": 2,
                    "num_generations": 4,
                    "horizon": 3,
                    "loss_type": "dr_grpo",
                    "reward_funcs": ["subgoal_success", "shaping"],
                    "reward_weights": [1.0, 0.1],
                    "dynamic_sampling_range": [0.2, 0.8],
                    "beta": 0.01,
                },
            }
        )
    )
    argv = ["--config", str(preset), "--num_starts", "3", "--tasks", "reach-v3", "push-v3", "--scale_rewards", "none"]
    cfg = parse_config(GRPOWorldConfig, "grpo_world", argv=argv)
    assert isinstance(cfg, GRPOWorldConfig)
    assert cfg.num_starts == 3  # CLI beats the preset
    assert (cfg.num_generations, cfg.horizon, cfg.loss_type, cfg.beta) == (4, 3, "dr_grpo", 0.01)
    assert cfg.reward_funcs == ["subgoal_success", "shaping"] and cfg.reward_weights == [1.0, 0.1]
    assert cfg.dynamic_sampling_range == [0.2, 0.8]
    assert cfg.tasks == ["reach-v3", "push-v3"] and cfg.scale_rewards == "none"
    assert cfg.per_device_train_batch_size == 12


def test_cli_list_overrides_and_bad_value(tmp_path):
    argv = ["--output_dir", str(tmp_path / "r"), "--dynamic_sampling_range", "0.25", "0.75", "--horizon", "5"]
    cfg = parse_config(GRPOWorldConfig, "grpo_world", argv=argv)
    assert cfg.dynamic_sampling_range == [0.25, 0.75] and cfg.horizon == 5
    with pytest.raises(ValueError, match="GRPOWorldConfig.num_generations"):
        parse_config(
            GRPOWorldConfig, "grpo_world", argv=["--output_dir", str(tmp_path / "r"), "--num_generations", "1"]
        )


PRESETS = sorted(PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
# The headline presets have no grpo_world section of their own; tests/recipes/test_headline.py parses their arms.
GRPO_PRESETS = [p for p in PRESETS if load_section(str(p), "grpo_world")]


def test_every_shipped_preset_is_checked():
    assert GRPO_PRESETS, "no shipped preset has a grpo_world section"
    assert {p.stem for p in PRESETS} - {p.stem for p in GRPO_PRESETS} <= {"headline", "headline_p1280"}


@pytest.mark.parametrize("preset", GRPO_PRESETS, ids=[p.stem for p in GRPO_PRESETS])
def test_shipped_presets_parse(preset, tmp_path):
    cfg = parse_config(GRPOWorldConfig, "grpo_world", argv=["--config", str(preset), "--output_dir", str(tmp_path)])
    assert cfg.per_device_train_batch_size == cfg.num_starts * cfg.num_generations


def test_reward_kwargs_from_a_json_string(out):
    cfg = GRPOWorldConfig(output_dir=out, reward_kwargs='{"get_repetition_penalty_reward": {"ngram_size": 3}}')
    assert cfg.reward_kwargs == {"get_repetition_penalty_reward": {"ngram_size": 3}}
    assert GRPOWorldConfig(output_dir=out).reward_kwargs is None


def test_checkpoints_between_the_updates_of_one_rollout_are_refused(out):
    with pytest.raises(ValueError, match=r"GRPOWorldConfig.save_steps.*multiple of num_iterations \(2\)"):
        GRPOWorldConfig(output_dir=out, num_iterations=2, save_steps=3, save_strategy="steps")
    assert GRPOWorldConfig(output_dir=out, num_iterations=2, save_steps=4, save_strategy="steps").save_steps == 4
    assert GRPOWorldConfig(output_dir=out, num_iterations=2, save_steps=3, save_strategy="no").save_steps == 3
