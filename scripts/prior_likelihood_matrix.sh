#!/usr/bin/env bash
# Every prior x {bernoulli, continuous-bernoulli, gaussian} from the command line: train on
# 2000 Fashion-MNIST images for 2 epochs, evaluate (IW log-likelihood), draw prior samples.
#
#   scripts/prior_likelihood_matrix.sh [OUT]   (default runs/matrix; PYTHON=... picks the interpreter)
#
# bernoulli trains on dynamically binarized images; the continuous likelihoods on grey levels
# (--binarize none), the data they are meant for. Evaluation uses K=100 samples on the first
# 500 test images to keep the 15 runs quick; pass EVAL_ARGS to change that.
set -euo pipefail
out=${1:-runs/matrix}
py=${PYTHON:-python}
eval_args=${EVAL_ARGS:---num-samples 100 --subset 500}
for prior in normal learned-normal mog vamp flow; do
  for likelihood in bernoulli continuous-bernoulli gaussian; do
    run="$out/$prior-$likelihood"
    binarize=none
    [ "$likelihood" = bernoulli ] && binarize=dynamic
    echo "== $prior x $likelihood"
    "$py" -m pyro_vae train --subset 2000 --epochs 2 --prior "$prior" --likelihood "$likelihood" \
      --binarize "$binarize" --out "$run" --no-progress
    # shellcheck disable=SC2086
    "$py" -m pyro_vae evaluate --run "$run" $eval_args --no-progress
    "$py" -c '
import sys
import pyro_vae
samples = pyro_vae.load_run(sys.argv[1]).sample(16)
assert samples.isfinite().all()
print(f"prior samples: {tuple(samples.shape)}, decoder means in [{samples.min():.3f}, {samples.max():.3f}]")
' "$run"
  done
done
