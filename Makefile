# wlarl: `make run` (the main job) and `make test` (the default test suite) each install what is missing first.
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
PY ?= python3

.PHONY: setup run test test-slow lint format bench

setup:
	bash scripts/setup.sh

run: setup
	accelerate launch --config_file recipes/configs/accelerate_configs/cpu_1proc.yaml recipes/grpo_world.py

test: setup
	$(PY) -m pytest -q -x --timeout 900 tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .

bench: setup
	$(PY) benchmarks/bench_env.py
