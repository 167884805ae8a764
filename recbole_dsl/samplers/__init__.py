"""The `neg_sampler` registry. Importing this package registers every sampler."""
from recbole_dsl.samplers.base import (
    SAMPLERS,
    NegativeBatch,
    NegativeSampler,
    PositiveSet,
    UniformSampler,
    build_sampler,
    is_shared,
)
from recbole_dsl.samplers import all_items, popularity, in_batch, shared  # noqa: F401  (registration side effect)
from recbole_dsl.samplers.popularity import PopularitySampler
from recbole_dsl.samplers.in_batch import InBatchSampler
from recbole_dsl.samplers.shared import SharedSampler
from recbole_dsl.samplers.all_items import AllItemsSampler
from recbole_dsl.samplers.noisy import FalseNegativeSampler
from recbole_dsl.samplers.factory import catalogue_for_run, sampler_for_run

__all__ = [
    "SAMPLERS", "NegativeBatch", "NegativeSampler", "PositiveSet", "UniformSampler", "PopularitySampler",
    "InBatchSampler", "SharedSampler", "AllItemsSampler", "FalseNegativeSampler", "build_sampler", "is_shared",
    "catalogue_for_run",
    "sampler_for_run",
]
