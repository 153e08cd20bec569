"""LPIPS without the internet: parity with the `lpips` package, weight resolution, invariants.

The ImageNet backbones cannot be downloaded here, so the tests make random torchvision state_dicts,
save them as the files torchvision would have downloaded, and load them through the real code paths
(config key, environment variable, torch hub cache). The `lpips` package gets the same backbone
weights (its `pnet_rand=True` path never downloads), so both implementations must agree exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from latentgen.autoencoders.perceptual import LPIPS, NoPerceptual, ShiftTolerantLPIPS
from latentgen.errors import CheckpointError, ConfigError, WeightsNotFoundError

CONF = Path(__file__).resolve().parents[2] / "conf"
FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
ENV = {"vgg": "LATENTGEN_LPIPS_BACKBONE", "alex": "LATENTGEN_LPIPS_ALEX_BACKBONE"}
SIZE = {"vgg": 32, "alex": 64}  # smallest convenient sizes that keep every tap non-empty


def _random_torchvision_state_dict(build) -> dict[str, torch.Tensor]:
    """A torchvision-format state_dict with random (He-initialised) `features`, as the ImageNet file has.

    The real file also holds the classifier (500 MB for VGG16), which LPIPS never reads; a small
    stand-in key keeps that "extra keys are ignored" path covered without writing 500 MB per run.
    """
    with torch.device("meta"):
        features = build(weights=None).features
    features = features.to_empty(device="cpu")
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(m.bias, 0.0, 0.01)
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)
    return sd


@pytest.fixture(scope="module")
def backbone_files(tmp_path_factory) -> dict[str, Path]:
    """Random but fixed torchvision backbone files, saved under torchvision's file names."""
    d = tmp_path_factory.mktemp("backbones")
    out = {}
    for net, build in (("vgg", torchvision.models.vgg16), ("alex", torchvision.models.alexnet)):
        torch.manual_seed(1234)
        path = d / FILES[net]
        torch.save(_random_torchvision_state_dict(build), path)
        out[net] = path
    return out


@pytest.fixture(scope="module")
def vgg_lpips(backbone_files) -> LPIPS:
    return LPIPS(net="vgg", backbone_weights=backbone_files["vgg"])


@pytest.fixture
def no_env(monkeypatch):
    for v in ENV.values():
        monkeypatch.delenv(v, raising=False)


def _reference_lpips(net: str, backbone_file: Path, monkeypatch) -> nn.Module:
    """lpips.LPIPS with our backbone file: lpips' slices index torchvision's `features` directly."""
    import lpips

    def no_download(*args, **kwargs):
        raise AssertionError("lpips tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    ref = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    sd = torch.load(backbone_file, map_location="cpu", weights_only=True)
    # lpips keys are slice{s}.{i}.{weight|bias} where i is the index into torchvision's `features`.
    mapped = {k: sd[f"features.{k.split('.')[1]}.{k.split('.')[2]}"] for k in ref.net.state_dict()}
    ref.net.load_state_dict(mapped, strict=True)
    return ref.eval()


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's deprecated `pretrained=` inside lpips
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_matches_lpips_package(net, backbone_files, torch_home, monkeypatch, no_env):
    ours = LPIPS(net=net, backbone_weights=backbone_files[net])  # via the config path
    ref = _reference_lpips(net, backbone_files[net], monkeypatch)
    # loading lpips with pnet_rand=True and an empty TORCH_HOME downloaded nothing
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []
    s = SIZE[net]
    x = torch.rand(3, 3, s, s) * 2 - 1
    for y in (torch.rand(3, 3, s, s) * 2 - 1, (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)):
        got = ours(x, y)
        want = ref(x, y).flatten()
        assert got.shape == (3,) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert float(got.min()) > 0


def test_backbone_from_env_var(backbone_files, torch_home, monkeypatch, no_env):
    monkeypatch.setenv("LATENTGEN_LPIPS_BACKBONE", str(backbone_files["vgg"]))
    p = LPIPS(net="vgg")
    assert Path(p.backbone_file) == backbone_files["vgg"]
    sd = torch.load(backbone_files["vgg"], map_location="cpu", weights_only=True)
    torch.testing.assert_close(p.features[28].weight, sd["features.28.weight"], rtol=0, atol=0)


def test_backbone_from_torch_hub_cache(backbone_files, torch_home, no_env):
    cached = torch_home / "hub" / "checkpoints" / FILES["alex"]
    cached.symlink_to(backbone_files["alex"])  # where torchvision would have downloaded it
    p = LPIPS(net="alex")
    assert Path(p.backbone_file) == cached
    sd = torch.load(backbone_files["alex"], map_location="cpu", weights_only=True)
    torch.testing.assert_close(p.features[0].weight, sd["features.0.weight"], rtol=0, atol=0)


def test_config_path_wins_over_env(backbone_files, tmp_path, monkeypatch, no_env):
    monkeypatch.setenv("LATENTGEN_LPIPS_BACKBONE", str(tmp_path / "missing.pth"))
    p = LPIPS(net="vgg", backbone_weights=str(backbone_files["vgg"]))
    assert Path(p.backbone_file) == backbone_files["vgg"]


def test_missing_backbone_explains_fix(torch_home, no_env):
    with pytest.raises(WeightsNotFoundError) as err:
        LPIPS(net="vgg")
    msg = str(err.value)
    for needle in ("vgg16-397923af.pth", "perceptual.backbone_weights", "LATENTGEN_LPIPS_BACKBONE", "pytorch.org"):
        assert needle in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_lin_weights_explains_fix(backbone_files, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="perceptual.lin_weights"):
        LPIPS(net="vgg", backbone_weights=backbone_files["vgg"], lin_weights=tmp_path / "nope.pth")


def test_wrong_backbone_file_is_named(backbone_files):
    with pytest.raises(CheckpointError, match="alexnet-owt-7be5be79.pth"):
        LPIPS(net="alex", backbone_weights=backbone_files["vgg"])  # a VGG file given for AlexNet


def test_unknown_net():
    with pytest.raises(ConfigError, match="perceptual.net"):
        LPIPS(net="squeeze")


def test_identity_symmetry_and_gradients(vgg_lpips):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(vgg_lpips(x, x), torch.zeros(2))
    torch.testing.assert_close(vgg_lpips(x, y), vgg_lpips(y, x), rtol=1e-6, atol=1e-7)

    xr = x.clone().requires_grad_(True)
    vgg_lpips(xr, y).sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in vgg_lpips.parameters())


def test_grayscale_is_repeated_to_rgb(vgg_lpips):
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(vgg_lpips(x, y), vgg_lpips(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))


def test_always_eval_frozen_and_fp32_under_autocast(vgg_lpips):
    parent = nn.Module()
    parent.lpips = vgg_lpips
    parent.train()
    assert not vgg_lpips.training and all(not m.training for m in vgg_lpips.modules())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = vgg_lpips(x, y)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, vgg_lpips(x, y), rtol=0, atol=0)  # autocast disabled inside


def test_not_in_checkpoints_but_strict_loading_works(vgg_lpips):
    parent = nn.Module()
    parent.lpips = vgg_lpips
    parent.head = nn.Linear(2, 2)
    sd = parent.state_dict()
    assert set(sd) == {"head.weight", "head.bias"}  # 15M frozen backbone weights are not checkpointed
    before = vgg_lpips.features[0].weight.clone()
    assert not parent.load_state_dict(sd, strict=True).missing_keys
    torch.testing.assert_close(vgg_lpips.features[0].weight, before, rtol=0, atol=0)


def test_no_perceptual():
    p = NoPerceptual()
    assert p.name == "none"
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(p(x, -x), torch.zeros(4))


def test_stlpips_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "stlpips_pytorch", None)  # import -> ImportError
    with pytest.raises(ConfigError, match="pip install stlpips-pytorch"):
        ShiftTolerantLPIPS(net="alex")


def test_stlpips_offline():
    pytest.importorskip("stlpips_pytorch.stlpips", reason="optional package stlpips-pytorch not installed")
    p = ShiftTolerantLPIPS(net="alex")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    d = p(x, y)
    assert d.shape == (2,) and (d > 0).all() and torch.equal(p(x, x), torch.zeros(2))
    assert p.name == "stlpips-alexnet" and not any(q.requires_grad for q in p.parameters())


def _compose(overrides: list[str], tmp_path: Path):
    from hydra import compose, initialize_config_dir

    root = tmp_path / "conf"
    root.mkdir(parents=True)
    for group in ("perceptual", "discriminator", "ae_loss"):
        (root / group).symlink_to(CONF / group)
    (root / "config.yaml").write_text(
        "defaults:\n  - perceptual: default\n  - discriminator: patchgan_tiny\n  - ae_loss: default\n  - _self_\n"
        "data:\n  channels: 3\n"
    )
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_perceptual_configs_instantiate(backbone_files, tmp_path, no_env, torch_home):
    from hydra.utils import instantiate

    cfg = _compose([f"perceptual.backbone_weights={backbone_files['vgg']}"], tmp_path)
    p = instantiate(cfg.perceptual)  # perceptual=default is LPIPS-VGG16
    assert isinstance(p, LPIPS) and p.name == "lpips-vgg16"
    assert Path(p.backbone_file) == backbone_files["vgg"]
    assert instantiate(_compose(["perceptual=none"], tmp_path / "b").perceptual).name == "none"
    cfg = _compose(["perceptual=lpips_alex"], tmp_path / "c")
    assert cfg.perceptual.net == "alex" and cfg.perceptual.backbone_weights is None
    assert _compose(["perceptual=stlpips"], tmp_path / "d").perceptual._target_.endswith("ShiftTolerantLPIPS")
