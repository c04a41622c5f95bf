"""The few collective operations the engine needs, on one process or many (torch.distributed)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (any picklable object); also a barrier."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
