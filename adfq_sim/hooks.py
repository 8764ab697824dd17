"""Hooks that are always removed: observers attach to a model for one pass and must never stay on it
afterwards, also when the pass raises."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from torch.utils.hooks import RemovableHandle


@contextlib.contextmanager
def attached(handles: Iterable[RemovableHandle]) -> Iterator[None]:
    """Keep the hooks of `handles` for the `with` block (a generator registers them one by one, so a
    failure while registering removes the ones already attached)."""
    with contextlib.ExitStack() as stack:
        for handle in handles:
            stack.enter_context(handle)
        yield
