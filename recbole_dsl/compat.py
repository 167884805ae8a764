"""Fixes for what breaks RecBole 1.2.1 on its current dependency stack, kept inside the plugin.

Each fix is scoped: nothing here edits site-packages or patches a library globally.
"""
from __future__ import annotations

import contextlib
import sys

import scipy.sparse as sp
import torch


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


# glibc mallopt parameters (malloc.h) and the largest mmap threshold glibc accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_malloc_tuned = False


def tune_cpu_malloc() -> bool:
    """Make glibc keep large freed blocks in the process. Returns True if it was (or already is) applied.

    A softmax step over many negatives allocates and frees several [batch, items] blocks of tens
    of MB per batch. With glibc's defaults each of them is mmap-ed and unmapped again (or trimmed
    off the heap), so every batch pays for fresh pages: on the benchmark machine that was about a
    tenth of an MF + SL epoch at N = 1000. Serving blocks up to 32 MB from the heap and trimming
    only above 1 GB of free heap removes it; memory the process once needed stays mapped until it
    exits (its peak is unchanged). Process-wide, so it is applied once, and only where glibc's
    mallopt exists (a no-op on macOS, Windows and musl).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    _malloc_tuned = ok
    return ok


@contextlib.contextmanager
def keep_anomaly_mode():
    """Undo what importing RecBole's sequential models does to autograd: sine.py calls
    torch.autograd.set_detect_anomaly(True) at module level, and RecBole's model lookup imports it
    for any name it does not find among the general models (its Config looks the model up too).
    Anomaly detection then checks every backward of the process for NaN, several times slower."""
    before = torch.is_anomaly_enabled()
    try:
        yield
    finally:
        if torch.is_anomaly_enabled() != before:
            torch.autograd.set_detect_anomaly(before)


# Third-party deprecation warnings RecBole 1.2.1 triggers on its current stack in every run, each
# matched by its message and by the RecBole module it is raised from (the plugin's own warnings and
# anyone else's still show): pandas' chained-assignment notice (Dataset's fillna), torch.cuda.amp's
# GradScaler / autocast spelling (Trainer), torch.sparse.FloatTensor (the graph models).
RECBOLE_NOISE = (
    (FutureWarning, r"A value is trying to be set on a copy of a DataFrame or Series through chained assignment",
     r"recbole\.data\."),
    (FutureWarning, r"`torch\.cuda\.amp\.(GradScaler|autocast)\(args\.\.\.\)` is deprecated", r"recbole\.trainer\."),
    (UserWarning, r"torch\.sparse\.SparseTensor\(indices, values, shape, \*, device=\) is deprecated",
     r"recbole\.model\."),
)


def quiet_recbole_warnings() -> None:
    """Hide RECBOLE_NOISE, unless the user chose warning filters (python -W, PYTHONWARNINGS)."""
    import warnings

    if sys.warnoptions:
        return
    for category, message, module in RECBOLE_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


@contextlib.contextmanager
def cpu_ddp(config):
    """While RecBole's trainer wraps the model in DistributedDataParallel, drop the `device_ids`
    it passes when the model is on the CPU (DDP accepts them for GPU modules only). Affects only
    recbole.trainer.trainer's name, only for the duration of the block."""
    if config["single_spec"] or torch.device(config["device"]).type != "cpu":
        yield
        return
    import recbole.trainer.trainer as recbole_trainer

    ddp = recbole_trainer.DistributedDataParallel

    def on_cpu(module, device_ids=None, **kwargs):
        return ddp(module, **kwargs)

    recbole_trainer.DistributedDataParallel = on_cpu
    try:
        yield
    finally:
        recbole_trainer.DistributedDataParallel = ddp
