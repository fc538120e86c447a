#!/usr/bin/env bash
# The GPU paths, checked on a machine with one or more NVIDIA GPUs, in one go and without
# interaction (about 5 minutes on one H200 after the install): a short Fashion-MNIST search with
# two worker processes training on CUDA (each its own GPU when there are two; the latency
# budget measured on the CPU), a CUDA latency measurement of the best architecture, and one
# full-recipe retraining on CUDA; then the figures. CI has no GPU: tests cover the device
# selection and the worker-to-GPU assignment on the CPU.
#
#   bash experiments/gpu_check.sh [WORK_DIR]       # default /tmp/lvit-gpu-check
#
# It uses .venv/bin/lvit when there is one, else the lvit on PATH (pip install -e '.[dev]').
# LVIT_CHECK_DEVICE=cpu LVIT_CHECK_SMALL=1 rehearses the same steps on the CPU in a minute or
# two (tests/test_workers.py does, so that the script is known to run before a GPU is lent).
# Fashion-MNIST comes from Debian's package (experiments/install_data.sh); without it a
# generated stand-in in the same idx format is used, and the figures say so.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/lvit-gpu-check}
rm -rf "$work" && mkdir -p "$work"
lvit=$([ -x .venv/bin/lvit ] && echo .venv/bin/lvit || command -v lvit)
python=$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)
start=$(date +%s)
device=${LVIT_CHECK_DEVICE:-cuda}
if [ -n "${LVIT_CHECK_SMALL:-}" ]; then
  max_train=600 n_trained=3 epochs=1 retrain_epochs=1 batch=64
else
  max_train=20000 n_trained=12 epochs=3 retrain_epochs=8 batch=256
fi

echo "== machine"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader || true
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'GPUs', torch.cuda.device_count())"
bash experiments/install_data.sh || true

data_path=""
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  data_path="$work/fashion"
  "$python" - "$data_path" <<'EOF'
import gzip, struct, sys
from pathlib import Path
import numpy as np
folder = Path(sys.argv[1]); folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for part, n in (("train", 12000), ("t10k", 2000)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, c in enumerate(labels):  # class c: a bright bar at row 2c + 4
        images[i, 2 * c + 4 : 2 * c + 6, 4:24] = 250
    for kind, a in (("images-idx3", images), ("labels-idx1", labels)):
        head = struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        with gzip.open(folder / f"{part}-{kind}-ubyte.gz", "wb") as f:
            f.write(head + a.astype(np.uint8).tobytes())
print("no dataset-fashion-mnist here: a generated stand-in in the same format")
EOF
fi

cat > "$work/gpu.yaml" <<EOF
study:
  name: gpu-check
  storage: journal:///$work/study.journal
  artifacts: $work/artifacts
  n_trials: $(( n_trained * 20 ))            # a cap: the budgets reject most survey draws
  n_trained: $n_trained
  seed: 0
  sampler: TPESampler
  sampler_args: {n_startup_trials: 6}
space: survey
data: {name: fashion_mnist, img_size: 32, val_fraction: 0.1, max_train: $max_train${data_path:+, path: $data_path}}
train: {recipe: proxy, epochs: $epochs, batch_size: $batch, lr: 0.004, device: $device, amp: true}
retrain: {recipe: full, epochs: $retrain_epochs, batch_size: $batch, device: $device, amp: true}
budget: {max_params: 500000, max_latency_ms: 2.5}
latency: {device: cpu, threads: 1, max_seconds: 0.5}
EOF

echo "== search: 2 workers training on $device, latency on the CPU"
t0=$(date +%s)
"$lvit" search "$work/gpu.yaml" --workers 2 2>&1 | tail -25
search_s=$(( $(date +%s) - t0 ))

"$python" - "$work" <<'EOF'
import json, sys
import optuna
work = sys.argv[1]
storage = optuna.storages.JournalStorage(
    optuna.storages.journal.JournalFileBackend(f"{work}/study.journal"))
study = optuna.load_study(study_name="gpu-check", storage=storage)
trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
gpus = sorted({t.user_attrs["worker"].get("cuda_visible_devices", "-") for t in trained})
rates = [t.user_attrs["train"]["images_per_second"] for t in trained]
print(f"trained {len(trained)}; workers' CUDA_VISIBLE_DEVICES {gpus}; training devices "
      f"{sorted({t.user_attrs['train']['device'] for t in trained})}; latency measured on "
      f"{sorted({t.user_attrs['costs']['latency']['conditions']['device'] for t in trained})}")
print(f"training images/s per candidate: median {sorted(rates)[len(rates) // 2]:.0f}, "
      f"max {max(rates):.0f}")
best = max(trained, key=lambda t: t.values[0])
json.dump(best.user_attrs["arch"], open(f"{work}/best.json", "w"))
print(f"best: trial {best.number}, val acc {best.values[0]:.4f}, {best.user_attrs['arch_line']}")
EOF

echo "== latency of the best on $device (batch 1 and 64)"
"$lvit" latency measure "$work/best.json" --device "$device" --max-seconds 2
"$lvit" latency measure "$work/best.json" --device "$device" --batch 64 --max-seconds 2

echo "== full-recipe retraining on $device"
t0=$(date +%s)
max_flag=$([ -n "${LVIT_CHECK_SMALL:-}" ] && echo "" || echo "--max-train 0")
# shellcheck disable=SC2086
"$lvit" train "$work/best.json" --config "$work/gpu.yaml" $max_flag --out "$work/best-full" 2>&1 | tail -3
train_s=$(( $(date +%s) - t0 ))
"$lvit" evaluate "$work/best-full" --config "$work/gpu.yaml" --split test --out "$work/report"

echo "== done in $(( $(date +%s) - start )) s (search ${search_s} s, retraining ${train_s} s)"
