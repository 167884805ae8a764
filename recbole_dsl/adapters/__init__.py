"""The `model` registry of adapters: one adapter class per supported RecBole model, registered
under RecBole's model name. Importing this package imports every module in it (each registers
its classes), so adding a model is adding a registered class.

- embedding.py: score = user_rep . item_rep (BPR/MF, SimpleX, DMF, FISM, ENMF);
- graph.py: propagated embeddings (LightGCN, NGCF, SpectralCF, DGCF, SGL, NCL);
- autoencoder.py: logits over all items per user (MultiVAE, MultiDAE, MacridVAE, RecVAE, RaCT, CDAE);
- pair.py: pair scorers without a factorised form (NeuMF, ConvNCF, NAIS, NNCF);
- refused.py: models the loss swap cannot apply to, and why.
"""
import importlib
import pkgutil

from recbole_dsl.adapters.base import ADAPTERS, Adapter, Forward, Rows, item_similarity
from recbole_dsl.adapters.refused import REFUSED

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "refused"):
        importlib.import_module(f"{__name__}.{_module.name}")

from recbole_dsl.adapters.embedding import EmbeddingAdapter  # noqa: E402
from recbole_dsl.adapters.graph import PropagationAdapter  # noqa: E402
from recbole_dsl.adapters.autoencoder import LogitsAdapter  # noqa: E402
from recbole_dsl.adapters.pair import PairAdapter  # noqa: E402



def kind_of(model_name: str) -> str:
    """A model's family, for tables and reports: embedding, logits (autoencoders) or pair."""
    cls = ADAPTERS.get(model_name)
    for base, kind in ((EmbeddingAdapter, "embedding"), (LogitsAdapter, "logits"), (PairAdapter, "pair")):
        if issubclass(cls, base):
            return kind
    return "other"


__all__ = ["ADAPTERS", "REFUSED", "Adapter", "Forward", "Rows", "item_similarity", "EmbeddingAdapter",
           "PropagationAdapter", "LogitsAdapter", "PairAdapter", "kind_of"]
