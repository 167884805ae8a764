"""The `rec_loss` registry. Importing this package imports every module in it, and each module
registers its losses (`@LOSSES.register`): adding a loss is adding a module."""
import importlib
import pkgutil

from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, ScoreNeeds, lme

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from recbole_dsl.losses.sl import sl_loss  # noqa: E402
from recbole_dsl.losses.bsl import bsl_loss  # noqa: E402
from recbole_dsl.losses.psl import psl_loss  # noqa: E402
from recbole_dsl.losses.baselines import bpr_loss, bce_loss  # noqa: E402
from recbole_dsl.losses.dsl import dsl_loss  # noqa: E402

__all__ = [
    "LOSSES", "LossContext", "RecLoss", "ScoreNeeds", "lme",
    "sl_loss", "bsl_loss", "psl_loss", "bpr_loss", "bce_loss", "dsl_loss",
]
