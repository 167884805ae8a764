"""recbole_dsl: train any RecBole general model with SL, BSL, PSL or DSL (plus BPR/BCE baselines).

Set `rec_loss` (and a few keys of properties/) in a RecBole YAML file; see README.md.
"""
from recbole_dsl.errors import ConfigError
from recbole_dsl.losses import LOSSES
from recbole_dsl.samplers import SAMPLERS
from recbole_dsl.adapters import ADAPTERS
from recbole_dsl.config import Config
from recbole_dsl.model import get_model
from recbole_dsl.trainer import get_trainer
from recbole_dsl.quick_start import run_recbole_dsl

__version__ = "0.1.0"
__all__ = ["ConfigError", "LOSSES", "SAMPLERS", "ADAPTERS", "Config", "get_model", "get_trainer", "run_recbole_dsl"]
