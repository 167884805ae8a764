"""Reused scratch buffers for the large per-batch blocks of the score path.

A [B, n_items] block of a batch (B = 2048 rows against a few thousand items is tens of MB) would
otherwise be allocated and freed every batch. On CPU an allocation that size bypasses the heap,
so each batch pays for mapping and zero-filling fresh pages; a buffer that stays alive does not.
One workspace per (device, dtype); a buffer grows to the largest size asked for and smaller
requests get a view of its start. Callers must not keep a view past the next request of the same
name (the score path uses each block only within one forward or one backward).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor


class Workspace:
    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        self._buffers: Dict[str, Tensor] = {}

    def get(self, name: str, shape: Tuple[int, ...]) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` backed by the buffer ``name``."""
        numel = 1
        for n in shape:
            numel *= int(n)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, device=self.device, dtype=self.dtype)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


_WORKSPACES: Dict[Tuple[torch.device, torch.dtype], Workspace] = {}


def workspace(device, dtype: torch.dtype) -> Workspace:
    key = (torch.device(device), dtype)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = _WORKSPACES[key] = Workspace(key[0], dtype)
    return ws


def clear_workspaces() -> None:
    """Free every buffer (e.g. after training, before a large evaluation)."""
    _WORKSPACES.clear()
