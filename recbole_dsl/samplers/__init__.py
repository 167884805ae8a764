"""The `neg_sampler` registry. Importing this package registers every sampler."""
from recbole_dsl.samplers.base import (
    SAMPLERS,
    NegativeSampler,
    PositiveSet,
    UniformSampler,
    build_sampler,
)

__all__ = ["SAMPLERS", "NegativeSampler", "PositiveSet", "UniformSampler", "build_sampler"]
