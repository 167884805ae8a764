"""Reading and writing RecBole checkpoints: one loader for every path, refusing what a checkpoint never holds.

A RecBole checkpoint is a pickle (RecBole puts its Config object in it), and unpickling an arbitrary
file can run arbitrary code. torch's own safe loader (`weights_only=True`) cannot read RecBole's
files at all (it refuses the Config, and protocol 4's framing). So every checkpoint the plugin reads
(`load_data_and_model`, `resume_checkpoint`, the trainer's best-model reload) goes through
`load_checkpoint`, which unpickles with an allow-list:

- importable: the types RecBole and plugin checkpoints hold (RecBole's Config and enums, the
  plugin's Config and settings, torch tensors, storages and devices, numpy arrays and dtypes, scipy
  sparse matrices of the non-gradient models, builtin containers), plus two reference-only kinds
  that are kept as values but never called or instantiated (the model's class, which RecBole's Config
  records, and the YAML loader class it keeps);
- callable (REDUCE): only the rebuild functions and constructors in `_CALLABLE`, and RecBole's enums;
- instantiated without __init__ (NEWOBJ) and given state (BUILD): only the classes in `_INSTANTIABLE`,
  numpy arrays and dtypes; BUILD looks `__setstate__` up on the type, never on the instance (RecBole's
  Config answers attribute lookups from its dict).

Anything else raises UnsafeCheckpointError naming the type before it is imported; nothing of the
file's own code runs. `trust=True` (`trust_checkpoint=True`, `--trust_checkpoint`) unpickles the
whole file as plain torch.load does.
"""
from __future__ import annotations

import _compat_pickle
import collections
import importlib
import os
import pickle
import re
import signal
import threading
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import torch

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# (module, name) -> what the pickle may do with it; names are importable only if listed here or
# matched by one of the rules in _allowed_rule.
_CALL, _NEW, _REF = "call", "new", "ref"
_ALLOWED = {
    ("collections", "OrderedDict"): {_CALL, _NEW},
    ("builtins", "set"): {_CALL},
    ("builtins", "frozenset"): {_CALL},
    ("builtins", "complex"): {_CALL},
    ("builtins", "slice"): {_CALL},
    ("builtins", "bytearray"): {_CALL},
    ("_codecs", "encode"): {_CALL},  # bytes in protocol 2 (torch.save's default)
    ("torch", "device"): {_CALL},
    ("torch", "Size"): {_CALL},
    ("torch._utils", "_rebuild_tensor"): {_CALL},
    ("torch._utils", "_rebuild_tensor_v2"): {_CALL},
    ("torch._utils", "_rebuild_parameter"): {_CALL},
    ("torch._utils", "_rebuild_sparse_tensor"): {_CALL},
    ("torch._utils", "_rebuild_qtensor"): {_CALL},
    ("numpy", "dtype"): {_CALL},
    ("numpy", "ndarray"): {_REF},  # the subtype argument of _reconstruct
    ("numpy", "matrix"): {_REF},
    ("numpy.core.multiarray", "_reconstruct"): {_CALL},
    ("numpy.core.multiarray", "scalar"): {_CALL},
    ("numpy._core.multiarray", "_reconstruct"): {_CALL},
    ("numpy._core.multiarray", "scalar"): {_CALL},
    ("recbole.config.configurator", "Config"): {_NEW},
    ("recbole_dsl.config", "Config"): {_NEW},
    ("recbole_dsl.settings", "PluginSettings"): {_NEW},
    ("recbole_dsl.settings", "RecLossSettings"): {_NEW},
    ("recbole_dsl.protocols.settings", "ProtocolSettings"): {_NEW},
    ("yaml.loader", "FullLoader"): {_REF},
    ("yaml.loader", "SafeLoader"): {_REF},
}
for _dt in ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool",
            "complex64", "complex128"):
    _ALLOWED[("torch", _dt)] = {_REF}
for _fmt in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia"):
    _ALLOWED[(f"scipy.sparse._{_fmt}", f"{_fmt}_matrix")] = {_NEW}
    _ALLOWED[(f"scipy.sparse.{_fmt}", f"{_fmt}_matrix")] = {_NEW}


def _allowed_rule(module: str, name: str, obj: Any) -> set:
    """Uses allowed for a name not in _ALLOWED: RecBole's enums (called with their value) and
    RecBole's model classes (kept by the Config as a reference)."""
    if module == "recbole.utils.enum_type" and isinstance(obj, type) and issubclass(obj, Enum):
        return {_CALL}
    if module.startswith("recbole.model.") and isinstance(obj, type):
        from recbole.model.abstract_recommender import AbstractRecommender

        if issubclass(obj, AbstractRecommender):
            return {_REF}
    return set()


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds something a RecBole or plugin checkpoint never does; it was not loaded."""

    def __init__(self, path, what: str):
        self.path, self.what = str(path), what
        super().__init__(
            f"{self.path!r} was not loaded: it holds {what}, which no RecBole or recbole_dsl checkpoint holds, "
            "and unpickling it could run code from the file. If you trust whoever wrote the file, load it with "
            "trust_checkpoint=True (in a config: trust_checkpoint: True; command line: --trust_checkpoint)"
        )


def _restricted_pickle_module(path):
    """A module-like object for torch.load's `pickle_module`, whose Unpickler enforces the allow-list."""

    class Unpickler(pickle._Unpickler):  # the pure-Python one: its opcodes can be overridden
        dispatch = dict(pickle._Unpickler.dispatch)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._uses = {}  # id(object) -> allowed uses, for the objects find_class returned

        def _refuse(self, what):
            raise UnsafeCheckpointError(path, what)

        def find_class(self, module, name):
            if not (isinstance(module, str) and isinstance(name, str) and _IDENT.match(name)):
                self._refuse(f"the global {module!r}.{name!r}")
            if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle itself maps them
                if (module, name) in _compat_pickle.NAME_MAPPING:
                    module, name = _compat_pickle.NAME_MAPPING[(module, name)]
                elif module in _compat_pickle.IMPORT_MAPPING:
                    module = _compat_pickle.IMPORT_MAPPING[module]
            uses = _ALLOWED.get((module, name))
            if uses is None:
                # RecBole's own installed modules may be imported to look the name up (never the
                # file's code); an unimportable one is refused like any unknown global.
                if not (module == "recbole.utils.enum_type" or module.startswith("recbole.model.")):
                    self._refuse(f"the global {module}.{name}")
                try:
                    mod = importlib.import_module(module)
                except Exception:
                    self._refuse(f"the global {module}.{name}")
                uses = _allowed_rule(module, name, getattr(mod, name, None))
                if not uses:
                    self._refuse(f"the global {module}.{name}")
            obj = super().find_class(module, name)
            self._uses[id(obj)] = uses
            return obj

        def _check(self, obj, use: str, opcode: str):
            if use not in self._uses.get(id(obj), ()):
                self._refuse(f"a call of {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)!r} "
                             f"({opcode})")

        def load_reduce(self):
            self._check(self.stack[-2], _CALL, "REDUCE")
            super().load_reduce()

        def load_newobj(self):
            self._check(self.stack[-2], _NEW, "NEWOBJ")
            super().load_newobj()

        def load_newobj_ex(self):
            self._check(self.stack[-3], _NEW, "NEWOBJ_EX")
            super().load_newobj_ex()

        def load_inst(self):
            self._refuse("an INST opcode (protocol 0 instance)")

        def load_obj(self):
            self._refuse("an OBJ opcode (protocol 1 instance)")

        def load_build(self):
            import numpy as np

            state = self.stack.pop()
            inst = self.stack[-1]
            cls = type(inst)
            if not (isinstance(inst, (np.ndarray, np.dtype, collections.OrderedDict))
                    or _NEW in self._uses.get(id(cls), ())):
                self._refuse(f"state for a {cls.__module__}.{cls.__qualname__} (BUILD)")
            setstate = getattr(cls, "__setstate__", None)  # the type's, never the instance's __getattr__
            if setstate is not None:
                setstate(inst, state)
                return
            slotstate = None
            if isinstance(state, tuple) and len(state) == 2:
                state, slotstate = state
            if state:
                inst.__dict__.update({str(k): v for k, v in state.items()})
            if slotstate:
                for k, v in slotstate.items():
                    setattr(inst, str(k), v)

        dispatch[pickle.REDUCE[0]] = load_reduce
        dispatch[pickle.NEWOBJ[0]] = load_newobj
        dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
        dispatch[pickle.INST[0]] = load_inst
        dispatch[pickle.OBJ[0]] = load_obj
        dispatch[pickle.BUILD[0]] = load_build

    class Module:
        pass

    mod = Module()
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    mod.__name__ = "recbole_dsl.checkpoint.restricted_pickle"
    return mod


def load_checkpoint(path, map_location=None, trust: bool = False) -> dict:
    """Load a RecBole checkpoint (the plugin's or plain RecBole's) on torch >= 2.6.

    trust=False: through the allow-list above (UnsafeCheckpointError on anything else).
    trust=True: the whole file is unpickled, as torch.load(weights_only=False) does.
    Raises FileNotFoundError, or ValueError when the file is not a RecBole checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if trust:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=False)
    else:
        ckpt = torch.load(str(path), map_location=map_location, weights_only=False,
                          pickle_module=_restricted_pickle_module(path))
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(
            f"{str(path)!r} is not a RecBole checkpoint (expected a dict with 'config' and 'state_dict')"
        )
    return ckpt


def save_checkpoint(state: dict, path) -> None:
    """Write `state` as RecBole does (torch.save, pickle protocol 4), atomically: a copy is written
    beside the file and renamed over it, with Ctrl+C held back meanwhile, so an interruption or a crash
    never leaves a half-written checkpoint where a good one was."""
    path = str(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with _sigint_deferred():
        try:
            torch.save(state, tmp, pickle_protocol=4)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class _sigint_deferred:
    """Hold a SIGINT that arrives inside the block until its end (main thread only; elsewhere a no-op)."""

    def __enter__(self):
        self._pending = False
        self._old: Optional[Callable] = None
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._hold)
            except (ValueError, OSError):
                self._old = None
        return self

    def _hold(self, signum, frame):
        self._pending = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            if self._pending and callable(self._old):
                self._old(signal.SIGINT, None)
        return False
