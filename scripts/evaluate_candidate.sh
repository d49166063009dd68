#!/usr/bin/env bash
# The generalisation table of a candidate, as issue-11 candidates are judged since session 16
# (docs/generalisation.md): the style rows v2-v7 and the held-out style on 2N seeds (the first N are
# the seeds of every earlier table, the second N the confirmation), the perturbation table on N
# (v4 base), then the held-out ablation on N, and the visible-CTV table on N seeds of v3-v7 (does it
# follow a CTV it can see? session 21); three one-thread processes (~25 min on the 2-core CPU for N = 8).
# Pair the result with the shipped default's 16-seed rows (its visible-CTV table: out/vis_* of session 21
# are not committed; rerun it for the default with the same -n):
#   scripts/evaluate_candidate.sh WEIGHTS_DIR [N=8] [OUT=out/gen_candidate]
#   python scripts/compare_candidates.py docs/generalisation_0.3.3_16seeds.json OUT
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?weights folder}; N=${2:-8}; OUT=${3:-out/gen_candidate}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
$PY scripts/evaluate_generalisation.py "$W" -o "$OUT/styles" -n $((2 * N)) --matrix 256 --perturb-style v4 \
    --rows v2 v3 v4 v5 > "$OUT/styles.log" 2>&1 &
a=$!
$PY scripts/evaluate_generalisation.py "$W" -o "$OUT/styles_b" -n $((2 * N)) --matrix 256 --perturb-style v4 \
    --rows v6 v7 heldout > "$OUT/styles_b.log" 2>&1 &
b=$!
{ $PY scripts/evaluate_generalisation.py "$W" -o "$OUT/perturbations" -n "$N" --matrix 256 --perturb-style v4 \
    --rows hu+40 hu-40 "contrast x0.85" "contrast x1.15" "noise x2" "blur 1px" "slices 1.25 mm" "slices 5 mm" \
    "pixels 0.5 mm" "pixels 1.0 mm" mirrored "rotated 10 deg" "plastic applicator" \
  && $PY scripts/evaluate_generalisation.py "$W" -o "$OUT/ablation" -n "$N" --matrix 256 --heldout-ablation; } \
    > "$OUT/perturbations.log" 2>&1 &
c=$!
wait $a
$PY scripts/evaluate_generalisation.py "$W" -o "$OUT/visible" -n "$N" --matrix 256 --visible-ctv > "$OUT/visible.log" 2>&1 &
d=$!
wait $b; wait $c; wait $d
for part in styles styles_b perturbations ablation visible; do cat "$OUT/$part/generalisation.md"; echo; done
