# Run a plan's commands in order until DEADLINE_S (default 560) seconds have passed, on the GPU machine, from the
# repo root with $OUT set:  DEADLINE_S=555 bash docs/results/device/go.sh docs/results/device/plans/NAME.txt
# A command cut off by the deadline gets SIGINT (the sweep runner cancels its unfinished trials and the same
# command resumes them later). The store (.devdata/results.db), each command's output and the Ray workers'
# error logs that hold a crash come back under $OUT. Lines starting with '#' and empty lines are skipped.
plan=${1:?usage: go.sh PLAN.txt}
[ -f "$plan" ] || { echo "go.sh: no plan file $plan" >&2; exit 2; }
source docs/results/device/setup.sh
deadline=$(( $(date +%s) + ${DEADLINE_S:-560} ))
mkdir -p "$OUT/logs"
n=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue;; esac
  n=$((n+1)); left=$(( deadline - $(date +%s) ))
  [ $left -lt 60 ] && { echo "skipped (no time): $line"; continue; }
  echo "=== [$n] $(date +%T) $line (limit ${left}s)"
  timeout -s INT -k 25 $left bash -c "$line" > >(tee "$OUT/logs/cmd$n.log") 2>&1
  echo "=== [$n] rc=$? at $(date +%T)"
done < "$plan"
cp .devdata/results.db "$OUT/results.db"
# what a dead worker left in Ray's per-worker stderr (its faulthandler dump is in the store: worker_deaths)
for f in /tmp/cram-ray*/session_*/logs/worker-*.err; do
  [ -s "$f" ] && grep -lq "Fatal\|Traceback\|Segmentation" "$f" 2>/dev/null && { mkdir -p "$OUT/faults"; cp "$f" "$OUT/faults/"; }
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
