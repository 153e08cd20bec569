"""Interoperability with diffusers: import its pretrained models, export latentgen's as diffusers folders."""
