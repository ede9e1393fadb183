#!/usr/bin/env bash
# The GPU path, proven in one go on a CUDA machine (under 5 minutes on one GPU), printing what each step shows:
#   1. the default fit on the GPU, its parity check MATCH
#   2. RMSprop on the GPU
#   3. float64 (64-true) on the GPU: parity at float64 rounding (coefficients ≤ 3e-14)
#   4. bf16-mixed on the GPU
#   5. a CPU checkpoint resumed on the GPU, and that run's checkpoint resumed on the CPU
#   6. the tests marked gpu (pytest -m gpu)
#   7. the benchmark's GPU rows: 2000 and 20 million points, litpoly vs bare Lightning vs the raw loop, data resident
#
#   bash scripts/gpu_check.sh                  # ACCELERATOR=cpu runs the same steps on the CPU (a dry run)
set -euo pipefail
cd "$(dirname "$0")/.."
ACCELERATOR="${ACCELERATOR:-gpu}"
REPO="$PWD"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO/src:$REPO/examples${PYTHONPATH:+:$PYTHONPATH}"

echo "== the machine"
if [ "$ACCELERATOR" = gpu ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
python3 -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__, '| CUDA',
torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

fit() {  # the default config, on $ACCELERATOR, in $WORK
  (cd "$WORK" && python3 "$REPO/scripts/train.py" fit --trainer.accelerator "$ACCELERATOR" --trainer.devices 1 \
    --trainer.enable_progress_bar false "$@")
}
show() { grep -E "^(Run folder|Result|Verdict|Warning|error|Parity check skipped)|^ *2399 " || true; }

echo "== 1. the default fit (SGD)";     fit | show
echo "== 2. RMSprop";                   fit --model.optimizer rmsprop | show
echo "== 3. float64";                   fit --trainer.precision 64-true | show
echo "== 4. bf16-mixed";                fit --trainer.precision bf16-mixed --model.optimizer rmsprop | show
echo "== 5. resume across devices: 1200 steps on the CPU, on to 1800 on $ACCELERATOR, on to 2400 on the CPU"
(cd "$WORK" && rm -rf lightning_logs && python3 "$REPO/scripts/train.py" fit --trainer.accelerator cpu \
  --trainer.max_steps 1200 --trainer.enable_progress_bar false --model.parity false > /dev/null)
fit --trainer.max_steps 1800 --model.parity false --ckpt_path last | show
(cd "$WORK" && python3 "$REPO/scripts/train.py" fit --trainer.accelerator cpu --trainer.enable_progress_bar false \
  --ckpt_path last | show)
(cd "$WORK" && python3 "$REPO/scripts/train.py" fit --trainer.accelerator cpu --trainer.enable_progress_bar false \
  --trainer.max_steps 2400 --model.parity false | show)  # the same run without a break, on the CPU throughout
python3 - "$WORK/lightning_logs" <<'PY'
import sys, torch
from pathlib import Path
runs = sorted(Path(sys.argv[1]).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
resumed, straight = (torch.load(r / "checkpoints/last.ckpt", weights_only=True) for r in (runs[2], runs[3]))
diff = (resumed["state_dict"]["coefficients"] - straight["state_dict"]["coefficients"]).abs().max().item()
print(f"steps {resumed['global_step']} and {straight['global_step']}; coefficients CPU->GPU->CPU vs CPU only: {diff:.2e}")
PY

echo "== 6. pytest -m gpu"
python3 -m pytest -q -p no:cacheprovider -n 0 -m gpu --tb=line tests/run/test_gpu.py 2>&1 | tail -12 || echo "pytest -m gpu: FAILED (see above)"

echo "== 7. the benchmark's GPU rows"
DEVICE=cuda; [ "$ACCELERATOR" = gpu ] || DEVICE=cpu
(cd "$WORK" && python3 "$REPO/scripts/benchmark.py" --device "$DEVICE" --sizes "[2000, 20000000]" --repeats 3 \
  --breakdown false --optimizers "[sgd]" --json "$WORK/benchmark.json" | grep -vE "repeat [0-9]/")
if [ -n "${OUT:-}" ]; then cp "$WORK/benchmark.json" "$OUT/benchmark.json"; fi
