#!/usr/bin/env bash
# Installs whatever wlarl needs on a bare Debian machine: MuJoCo rendering libraries, the CPU build of
# torch (pinned by constraints.txt so nothing pulls CUDA wheels), and the project with its extras.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# 1. System libraries for offscreen MuJoCo rendering (EGL; OSMesa as a fallback) and video encoding.
need_apt=()
for pkg in libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libosmesa6 libglfw3 ffmpeg; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[wlarl setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# 2. torch first (the CPU build), then everything else constrained to it.
PY=${PYTHON:-python3}
if ! $PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "[wlarl setup] pip install torch==2.13.0"
  $PY -m pip install -q torch==2.13.0
fi

# 3. The project with the default simulator, logging and dev extras.
if ! $PY -c "import wlarl, rollout, rewards, metaworld, trl, pytest, pytest_timeout, gym_pusht, wandb, tensorboard" 2>/dev/null \
   || [ "$($PY -c 'import wlarl, os; print(os.path.dirname(os.path.dirname(wlarl.__file__)))' 2>/dev/null)" != "$(pwd)" ]; then
  echo "[wlarl setup] pip install -e .[metaworld,logging,dev]"
  $PY -m pip install -q -c constraints.txt -e ".[metaworld,logging,dev]"
fi
echo "[wlarl setup] ready"
