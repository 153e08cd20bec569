"""latentgen's DiT equals diffusers' DiTTransformer2DModel with the same weights (import and export)."""

from __future__ import annotations

import pytest
import torch

from latentgen.conditioning import Conditioning
from latentgen.errors import ConfigError
from latentgen.interop.diffusers_dit import dit_from_diffusers, dit_to_diffusers
from latentgen.networks import DiT

diffusers = pytest.importorskip("diffusers")


def random_diffusers_dit(patch_size: int = 2) -> torch.nn.Module:
    """A class-conditional diffusers DiT with random weights everywhere and one shared time/class embedder."""
    torch.manual_seed(0)
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=3,
        sample_size=8,
        patch_size=patch_size,
        num_embeds_ada_norm=10,
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
        first = ref.transformer_blocks[0].norm1.emb.state_dict()
        for block in ref.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first)
    return ref.eval()


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_forward_equals_diffusers_dit(patch_size):
    ref = random_diffusers_dit(patch_size)
    dit, table = dit_from_diffusers(ref)
    dit.eval()
    assert table.shape == (11, 32)  # 10 classes + the CFG null class
    x = torch.randn(4, 4, 8, 8)
    # Timesteps k whose k / 1000 is exact in float32: diffusers embeds the integer k, latentgen 1000 * (k / 1000).
    k = torch.tensor([0, 125, 500, 875])
    labels = torch.tensor([1, 10, 3, 0])  # 10 = the null class
    with torch.no_grad():
        want = ref(x, timestep=k, class_labels=labels).sample
        got = dit(x, k.float() / 1000, Conditioning(vector=table[labels]))
    assert want.abs().max() > 1.0  # the comparison is not between zeros
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_export_then_import_round_trips_the_weights_and_the_function():
    ref = random_diffusers_dit()
    dit, table = dit_from_diffusers(ref)
    exported = dit_to_diffusers(dit, table).eval()
    x, k, labels = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([2, 5])
    with torch.no_grad():
        torch.testing.assert_close(
            exported(x, timestep=k, class_labels=labels).sample,
            ref(x, timestep=k, class_labels=labels).sample,
            atol=0,
            rtol=0,
        )
    again, table2 = dit_from_diffusers(exported)
    assert torch.equal(table2, table)
    for (name, a), b in zip(dit.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_blocks_with_their_own_embedders_are_refused():
    ref = random_diffusers_dit()
    with torch.no_grad():
        ref.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.weight.add_(1.0)
    with pytest.raises(ConfigError, match="block 1"):
        dit_from_diffusers(ref)


def test_a_dit_diffusers_cannot_represent_is_refused():
    dit = DiT(4, 8, 8, 2, 32, 2, 2, context_dim=8, vector_dim=32, vector_projection=False, time_freq_shift=1.0)
    with pytest.raises(ConfigError, match="cross"):
        dit_to_diffusers(dit, torch.zeros(11, 32))
    with pytest.raises(ConfigError, match="time_freq_shift"):
        dit_to_diffusers(DiT(4, 8, 8, 2, 32, 2, 2, vector_dim=32, vector_projection=False), torch.zeros(11, 32))
