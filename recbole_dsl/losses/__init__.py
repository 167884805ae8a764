"""The `rec_loss` registry. Importing this package registers every loss."""
from recbole_dsl.losses.base import LOSSES, LossContext, RecLoss, lme
from recbole_dsl.losses import sl, bsl, psl, baselines, dsl  # noqa: F401  (registration side effect)
from recbole_dsl.losses.sl import sl_loss
from recbole_dsl.losses.bsl import bsl_loss
from recbole_dsl.losses.psl import psl_loss
from recbole_dsl.losses.baselines import bpr_loss, bce_loss
from recbole_dsl.losses.dsl import dsl_loss

__all__ = [
    "LOSSES", "LossContext", "RecLoss", "lme",
    "sl_loss", "bsl_loss", "psl_loss", "bpr_loss", "bce_loss", "dsl_loss",
]
