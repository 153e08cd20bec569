#!/usr/bin/env bash
# Reproduce experiments/shapes_conditioning/README.md: first stage, attribute classifier, four tasks, evaluation.
# One job at a time, one thread each (the reference machine has 2 shared cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline
OUT=outputs/shapes_conditioning
QUIET=(logger=csv trainer.enable_progress_bar=false '~callbacks.progress_bar')
T() { /usr/bin/time -f "$1: wall %e s, cpu %U s" "${@:2}"; }

# 0. The shared first stage: KL-f4-tiny, L1 + KL (no perceptual term), lr 1e-3, 6000 steps.
FS=$OUT/first_stage/checkpoints/autoencoder.safetensors
[ -f "$FS" ] || T first_stage .venv/bin/python train.py model=autoencoder data=shapes autoencoder=kl_f4_tiny perceptual=none \
    model.learning_rate=1e-3 trainer.max_steps=6000 trainer.val_check_interval=250 sample_every_n_steps=1000 \
    hydra.run.dir=$OUT/first_stage "${QUIET[@]}"
# 1. The attribute classifier for text-to-image alignment.
CLF=.cache/latentgen/classifiers/shapes_attributes_32px
[ -f $CLF.safetensors ] || T classifier .venv/bin/python -m latentgen.metrics.attribute_classifier --out $CLF
# 2. The four tasks on that first stage (final grid only: sample_every_n_steps=0).
for task in text2img inpaint superres semantic; do
    extra=(); [ $task = text2img ] && extra=(guidance.scale=3)
    [ -f $OUT/$task/checkpoints/last.ckpt ] || T $task .venv/bin/python train.py experiment=shapes_$task first_stage.ckpt=$FS \
        sample_every_n_steps=0 hydra.run.dir=$OUT/$task "${extra[@]}" "${QUIET[@]}" > $OUT/$task.log 2>&1
done
# 3. Metrics and grids (written beside this script).
for task in text2img inpaint superres semantic; do
    T eval_$task .venv/bin/python experiments/shapes_conditioning/evaluate_tasks.py $task $OUT/$task \
        --classifier $CLF.safetensors --sampler ddpm --steps 100
done
