# Source on the GPU machine from the repo root (the working tree arrives there with .devdata and .devbundle
# carried beside it, see pack.sh): unpacks the Python packages the image lacks once per machine, points
# PYTHONPATH at them and names the corpus copy exactly as the committed store's trials did.
[ -d /tmp/site/ray ] || { mkdir -p /tmp/site && tar -xJf .devbundle/site.tar.xz -C /tmp/site; }
export PYTHONPATH=/tmp/site:$PWD
export CORPUS="jsonl:$PWD/.devdata/corpus/*.jsonl.xz"
export CRAM_EVAL_DATA=$PWD/.devdata/eval
export RAY_AUTH_MODE=disabled
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
