"""recbole_dsl: train any RecBole general model with SL, BSL, PSL, DSL or SL@K (plus BPR/BCE baselines).

Set `rec_loss` (and a few keys of properties/) in a RecBole YAML file; see README.md.
"""
from recbole_dsl.compat import quiet_recbole_warnings
from recbole_dsl.errors import ConfigError, TrainingDiverged
from recbole_dsl.checkpoint import UnsafeCheckpointError
from recbole_dsl.losses import LOSSES
from recbole_dsl.samplers import SAMPLERS
from recbole_dsl.adapters import ADAPTERS
from recbole_dsl.config import Config
from recbole_dsl.model import get_model
from recbole_dsl.trainer import get_trainer
from recbole_dsl.quick_start import run_recbole_dsl
from recbole_dsl.inference import load_data_and_model

quiet_recbole_warnings()

__version__ = "0.1.0"
__all__ = ["ConfigError", "TrainingDiverged", "UnsafeCheckpointError", "LOSSES", "SAMPLERS", "ADAPTERS", "Config", "get_model", "get_trainer", "run_recbole_dsl",
           "load_data_and_model", "run_tune"]


def __getattr__(name):
    # The Ray Tune search (recbole_dsl.tune) is imported on first use: `import recbole_dsl` stays light.
    if name == "run_tune":
        from recbole_dsl.tune import run_tune

        return run_tune
    raise AttributeError(f"module 'recbole_dsl' has no attribute {name!r}")
