#!/usr/bin/env bash
# The few-step experiment on the embedded digits (experiments/few_step/README.md), one step after another.
# OUT: where runs go (default /tmp/few_step). One thread per process: the numbers in the README were taken
# on a shared 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/few_step}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH=src
COMMON=(logger=csv paths.cache_dir=$OUT/cache paths.first_stage_cache=$OUT/fs_cache)

# 1. The teacher: class-conditional rectified flow (guidance 1.5) on the KL-f4 latents of the digits. The
#    README's teacher is this run's step-500 checkpoint (the run was stopped there to stay in the CPU budget).
$PY train.py experiment=digits_ldm objective=rectified_flow sampler=euler guidance.scale=1.5 \
  trainer.max_steps=2000 sample_every_n_steps=100000 "${COMMON[@]}" hydra.run.dir=$OUT/teacher
TEACHER=${TEACHER:-$OUT/teacher/checkpoints/step0000500.ckpt}

# 2. The digits classifier that FID / precision / recall are measured with.
CLF=$OUT/cache/extractors/digits_32px.safetensors
$PY -m latentgen.metrics.dataset_classifier data=digits out=$CLF

# 3. The third stage: 1024 pairs from the teacher's guided Euler solver (20 steps), 600 student steps.
$PY train.py model=reflow teacher.ckpt=$TEACHER distill.num_pairs=1024 distill.val_pairs=64 distill.solver_steps=20 \
  trainer.max_steps=600 trainer.val_check_interval=300 sample_every_n_steps=100000 "${COMMON[@]}" \
  hydra.run.dir=$OUT/reflow

# 3b. Optional: distil the reflowed student to one step (pairs from its own 8-step Euler, training at t = 1).
$PY train.py model=reflow teacher.ckpt=$OUT/reflow/checkpoints/last.ckpt distill.one_step=true distill.num_pairs=1024 \
  distill.val_pairs=64 distill.solver_steps=8 trainer.max_steps=300 trainer.val_check_interval=300 \
  sample_every_n_steps=100000 "${COMMON[@]}" hydra.run.dir=$OUT/onestep

# 4. FID / precision / recall against the number of Euler steps, teacher and student, same classifier and N.
EVAL=(extractor=dataset_classifier extractor.weights_path=$CLF num_samples=500 batch_size=100
      "metrics=[fid,prc]" logger=csv paths.cache_dir=$OUT/cache)
$PY evaluate.py ckpt=$TEACHER sampler=euler sampler.steps=1,2,4,8,16,50 "${EVAL[@]}" hydra.sweep.dir=$OUT/eval_teacher -m
$PY evaluate.py ckpt=$OUT/reflow/checkpoints/last.ckpt sampler=euler sampler.steps=1,2,4,8,16,50 "${EVAL[@]}" \
  hydra.sweep.dir=$OUT/eval_student -m

$PY evaluate.py ckpt=$OUT/onestep/checkpoints/last.ckpt sampler=euler sampler.steps=1,2 "${EVAL[@]}" \
  hydra.sweep.dir=$OUT/eval_one_step -m

# 5. Figures and table.
$PY experiments/few_step/plot.py --teacher $OUT/eval_teacher --student $OUT/eval_student --stage $OUT/reflow \
  --one-step $OUT/eval_one_step
