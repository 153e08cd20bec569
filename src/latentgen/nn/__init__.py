"""Shared layers: normalization, timestep/label embeddings, residual blocks, SDPA attention."""

from latentgen.nn.attention import Attention, SpatialSelfAttention, SpatialTransformer, TransformerBlock
from latentgen.nn.attention_block import AttentionBlock
from latentgen.nn.embeddings import TimestepEmbedder, timestep_embedding
from latentgen.nn.norms import GroupNorm32, group_norm
from latentgen.nn.resblocks import Downsample, ResBlock, Upsample

__all__ = [
    "Attention",
    "AttentionBlock",
    "Downsample",
    "GroupNorm32",
    "ResBlock",
    "SpatialSelfAttention",
    "SpatialTransformer",
    "TimestepEmbedder",
    "TransformerBlock",
    "Upsample",
    "group_norm",
    "timestep_embedding",
]
