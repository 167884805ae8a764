"""Fixes for what breaks RecBole 1.2.1 on its current dependency stack, kept inside the plugin.

Each fix is scoped: nothing here edits site-packages or patches a library globally.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import scipy.sparse as sp
import torch


def load_checkpoint(path, map_location=None) -> dict:
    """Load a RecBole checkpoint on torch >= 2.6.

    RecBole pickles its Config object into every checkpoint, which torch's weights_only loader
    (the default since 2.6) refuses. Only files the trainer wrote itself or the user names
    reach this function, so full unpickling is the intended trust level; we still refuse
    anything that is not a RecBole checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(str(path), map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(
            f"{str(path)!r} is not a RecBole checkpoint (expected a dict with 'config' and 'state_dict')"
        )
    return ckpt


class _DokMatrix(sp.dok_matrix):
    """dok_matrix with the private `_update` RecBole's graph models call (removed in scipy 1.13)."""

    def _update(self, data):
        # scipy >= 1.13 keeps the entries in `_dict`; values are already in the matrix dtype's range.
        self._dict.update(data)


class _ScipySparseWithUpdate:
    def __getattr__(self, name):
        return _DokMatrix if name == "dok_matrix" else getattr(sp, name)


@contextlib.contextmanager
def graph_compat(model_class):
    """While `model_class` and its bases build their graph, let their module's `sp.dok_matrix`
    have `_update` again. Affects only those modules, only for the duration of the block."""
    if hasattr(sp.dok_matrix, "_update"):
        yield
        return
    patched = []
    for cls in model_class.__mro__:
        mod = sys.modules.get(cls.__module__)
        if mod is not None and getattr(mod, "sp", None) is sp:
            mod.sp = _ScipySparseWithUpdate()
            patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            mod.sp = sp
