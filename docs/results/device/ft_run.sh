#!/usr/bin/env bash
# Fine-tuning speed before (a09da37^, unpacked to .devdata/ft/before by pack.sh) vs after (today's cram_core.downstream), one call.
# From the repo root with $OUT set:
#   bash docs/results/device/ft_run.sh                   # GPU: crammed-bert-short 60 s; 5 seeds x 3000 x 2 epochs; parallel 1,4
#   FT_DEVICE=cpu bash docs/results/device/ft_run.sh     # CPU check: tiny 20 s; 3 seeds x 1000 x 1 epoch; parallel 1,2
# Overrides: FT_RUN=DIR (reuse a finished run, no pretraining), FT_SEEDS, FT_MAX_TRAIN, FT_EPOCHS, FT_PARALLEL,
# FT_THREADS (CPU only, default 1: torch threads per process, via OMP_NUM_THREADS; parallel N workers get 1 each
# on 2 cores anyway). On a shared 2-core host 2 threads per process ran ~10x slower than 1 (oversubscription).
# Both versions are timed the same way: one whole evaluate_run over all seeds in a fresh process (run loading,
# tokenisation, model builds, training, evaluation), examples/s = max_train x epochs x seeds / wall.
set -euo pipefail
: "${OUT:?set OUT to the output folder}"
here=docs/results/device; before=.devdata/ft/before
corpus=$PWD/.devdata/corpus/en-imdb-00.jsonl.xz
eval_root=$PWD/.devdata/eval
device=${FT_DEVICE:-cuda}
case $device in
  cuda) preset=crammed-bert-short budget=budget.seconds=60 seeds=5 max_train=3000 epochs=2 parallel=1,4 ;;
  cpu)  preset=tiny budget=budget.seconds=20 seeds=3 max_train=1000 epochs=1 parallel=1,2 ;;
  *) echo "run.sh: FT_DEVICE must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac
seeds=${FT_SEEDS:-$seeds} max_train=${FT_MAX_TRAIN:-$max_train} epochs=${FT_EPOCHS:-$epochs}
parallel=${FT_PARALLEL:-$parallel}
[ "$device" = cpu ] && export OMP_NUM_THREADS=${FT_THREADS:-1}
for f in "$corpus" "$eval_root/rt-polarity/task.json" "$before/cram_core/downstream.py"; do
  [ -e "$f" ] || { echo "run.sh: missing $f" >&2; exit 2; }
done
mkdir -p "$OUT/logs"
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
python -c 'import torch, cram_core; print("torch", torch.__version__, "today:", cram_core.__file__)'

run=${FT_RUN:-/tmp/ft-run}
if [ -z "${FT_RUN:-}" ]; then
  echo "=== $(date +%T) pretrain $preset $budget"
  rm -rf "$run"
  python -m cram_core.train --preset "$preset" "$budget" "data.source=jsonl:$corpus" --out "$run" \
    2>&1 | tee "$OUT/logs/pretrain.log" | tail -3
  cp "$run/config.json" "$run/summary.json" "$OUT/"
fi

echo "=== $(date +%T) before: $seeds seeds x $max_train x $epochs epochs, sequential"
PYTHONPATH="$PWD/$before${PYTHONPATH:+:$PYTHONPATH}" python "$here/ft_before_bench.py" "$run" \
  --task rt-polarity --seeds "$seeds" --max-train "$max_train" --epochs "$epochs" --data-root "$eval_root" \
  --device "$device" --json "$OUT/ft_before.json" 2>&1 | tee "$OUT/logs/before.log" | sed '/ epoch /d'

echo "=== $(date +%T) after: parallel $parallel"
python -m cram_core.downstream bench "$run" --task rt-polarity --seeds "$seeds" --max-train "$max_train" \
  --epochs "$epochs" --parallel "$parallel" --data-root "$eval_root" --device "$device" \
  --json "$OUT/ft_bench.json" 2>&1 | tee "$OUT/logs/after.log"

echo "=== $(date +%T) table"
python "$here/ft_table.py" "$OUT/ft_before.json" "$OUT/ft_bench.json" --out "$OUT/ft_table.json" | tee "$OUT/ft_table.txt"
