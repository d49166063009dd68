#!/usr/bin/env bash
# The full generalisation table of a candidate, as every issue-11 candidate since session 8 was measured:
# n phantoms per row (same seeds), matrix 256, perturbations on v4, plus the held-out ablation; two
# one-thread processes (~7 min on the 2-core CPU for n = 8).
#   scripts/evaluate_candidate.sh WEIGHTS_DIR [N=8] [OUT=out/gen_candidate]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?weights folder}; N=${2:-8}; OUT=${3:-out/gen_candidate}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
$PY scripts/evaluate_generalisation.py "$W" -o "$OUT/styles" -n "$N" --matrix 256 --perturb-style v4 \
    --rows v2 v3 v4 v5 v6 v7 heldout > "$OUT/styles.log" 2>&1 &
a=$!
{ $PY scripts/evaluate_generalisation.py "$W" -o "$OUT/perturbations" -n "$N" --matrix 256 --perturb-style v4 \
    --rows hu+40 hu-40 "contrast x0.85" "contrast x1.15" "noise x2" "blur 1px" "slices 1.25 mm" "slices 5 mm" \
    "pixels 0.5 mm" "pixels 1.0 mm" mirrored "rotated 10 deg" "plastic applicator" \
  && $PY scripts/evaluate_generalisation.py "$W" -o "$OUT/ablation" -n "$N" --matrix 256 --heldout-ablation; } \
    > "$OUT/perturbations.log" 2>&1 &
b=$!
wait $a; wait $b
for part in styles perturbations ablation; do cat "$OUT/$part/generalisation.md"; echo; done
