"""Sweeps: one job per setting (latentgen.sweep.job) and the report over a multirun dir.

python -m latentgen.sweep report multirun/<date>/<time>
"""
