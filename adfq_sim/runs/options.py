"""The `executor:` section of the experiment config: where a run's cells and evaluation shards run.

Kept free of torch and Ray so that loading a config stays cheap; Ray is imported only by a run that asks
for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from adfq_sim.errors import UserInputError
from adfq_sim.schema import check_choice

EXECUTOR_KINDS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig:
    """`kind`: local (in this process) or ray; `address`: the Ray cluster to join (null starts one on this
    machine, `auto` finds a running one, `ray://host:port` a remote one; ignored by local); `eval_shards`: image ranges each
    evaluation is split into (null: one per Ray CPU slot, one for local); `threads`: torch and Numba
    threads of every cell and shard (null: torch's default in the process that starts the run)."""
    kind: str = "local"
    address: Optional[str] = None
    eval_shards: Optional[int] = None
    threads: Optional[int] = None


def check_executor(e: ExecutorConfig) -> None:
    check_choice(e.kind, EXECUTOR_KINDS, "executor.kind")
    for key in ("eval_shards", "threads"):
        value = getattr(e, key)
        if value is not None and value < 1:
            raise UserInputError(f"executor.{key}: must be >= 1, got {value}")
