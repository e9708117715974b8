#!/usr/bin/env bash
# Pack what the offline GPU machine needs beside the working tree (both folders are git-ignored; name them in the
# device call's carry: [".devdata", ".devbundle"], ~58 MB of the 64 MiB it takes):
#   .devbundle/site.tar.xz  ray, optuna, sqlalchemy, ... for Python 3.12 (../shared/tools/device-bundle), trimmed
#                           of what a Tune run never loads (rllib, serve, dashboards, examples) to ~22 MB
#   .devdata/corpus         a copy of ../shared/data/corpus made with cp -p: the data cache key holds each file's
#                           path and mtime, and the committed store's trials name jsonl:/work/main/.devdata/corpus
#   .devdata/eval           the fine-tuning tasks the reports use (rt-polarity, sva)
#   .devdata/results.db     the committed store (docs/results/h200.db.xz), unless a newer copy is already there
#   .devdata/ft/before      cram_core as of a09da37^ (fine-tuning before its speed work), for ft_run.sh
# Run from the repo root:  bash docs/results/device/pack.sh [--force-store]
set -euo pipefail
shared=${SHARED:-../shared}
[ -d "$shared/data/corpus" ] || { echo "pack.sh: no $shared/data/corpus (set SHARED=path/to/shared)" >&2; exit 2; }
if [ ! -s .devbundle/site.tar.xz ]; then
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  bash "$shared/tools/device-bundle" "$work/bundle" pytest pluggy iniconfig >/dev/null  # pytest: the GPU tests
  mkdir -p "$work/site" && tar -xJf "$work/bundle/site.tar.xz" -C "$work/site"
  (cd "$work/site" && rm -rf ray/rllib ray/serve ray/llm ray/workflow ray/dashboard/client ray/train/examples \
     ray/tune/examples ray/util/dask ray/data/examples sqlalchemy/testing alembic/testing optuna_dashboard bottle* \
   && find . -name '*.pyi' -delete \
   && find . \( -name '*.so' -o -path './ray/core/src/ray/*' \) -type f -exec strip --strip-unneeded {} + 2>/dev/null || true)
  mkdir -p .devbundle && tar -cf - -C "$work/site" . | xz -T0 -9e > .devbundle/site.tar.xz
  cp "$work/bundle/CONTENTS" .devbundle/
fi
mkdir -p .devdata/eval .devdata/ft
[ -d .devdata/corpus ] || cp -rp "$shared/data/corpus" .devdata/corpus
for task in rt-polarity sva; do [ -d .devdata/eval/$task ] || cp -rp "$shared/data/eval/$task" .devdata/eval/; done
if [ ! -s .devdata/results.db ] || [ "${1:-}" = --force-store ]; then
  xz -dc docs/results/h200.db.xz > .devdata/results.db && chmod 644 .devdata/results.db
fi
[ -d .devdata/ft/before/cram_core ] || { mkdir -p .devdata/ft/before && git archive a09da37^ cram_core | tar -x -C .devdata/ft/before; }
du -sh .devbundle .devdata
