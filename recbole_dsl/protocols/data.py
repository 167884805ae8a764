"""RecBole's data_preparation with the plugin's training-data protocols (noise injection)."""
from __future__ import annotations

from recbole.data import data_preparation as recbole_data_preparation

from recbole_dsl.protocols.noise import apply_training_noise
from recbole_dsl.protocols.settings import ProtocolSettings


def data_preparation(config, dataset):
    """RecBole's ``data_preparation(config, dataset)``, with the noise protocols applied to the
    training split (false-negative pool held out, false positives added) right after RecBole
    splits the data and before any sampler or loader is built, so everything downstream (the
    training loader, RecBole's own samplers, the evaluation's history masks, the training
    counts of the popularity metrics, the plugin's negative sampler) sees the same noisy split.

    Without protocol keys set it is exactly RecBole's function. Validation and test splits are
    never changed. Returns (train_data, valid_data, test_data) like RecBole's.
    """
    settings = ProtocolSettings.of(config)
    if not settings.changes_training_data:
        return recbole_data_preparation(config, dataset)
    seed = settings.seed(config)
    build = dataset.build

    def build_with_noise():
        built = list(build())
        built[0] = apply_training_noise(built[0], dataset, settings, seed)
        return built

    # Only this dataset object, only for this call: RecBole's data_preparation calls build() once.
    dataset.build = build_with_noise
    try:
        return recbole_data_preparation(config, dataset)
    finally:
        del dataset.build
