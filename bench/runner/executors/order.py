"""Which cells a cell must wait for, so that every executor gives a sequential run's results.

- needs: the FP32 parent the cell starts from. The cell starts only once the parent's record
  is committed ok; if the parent fails, the cell is stored as failed without running.
- follows: the FP32 cells listed before it in the plan with the same data, backbone and seed,
  for a non-FP32 cell trained from scratch. Its stages may read them from the store (the
  saliency stage's same-seed FP32 reference), as they would in a sequential run. The cell
  waits until they are finished, whatever their status.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.runner.plan import Cell, Plan
from methods.base import FP32


@dataclass(frozen=True)
class Waits:
    needs: frozenset[str] = field(default_factory=frozenset)
    follows: frozenset[str] = field(default_factory=frozenset)


def _reference_key(cell: Cell) -> tuple[str, str, int, str]:
    c = cell.config
    return c.split_manifest, c.backbone.name, c.seed, c.dataset.name


def waits(plan: Plan) -> dict[str, Waits]:
    """For each cell of the plan, the cells of the plan it waits for."""
    ids = {c.cell_id for c in plan.cells}
    fp32_seen: dict[tuple[str, str, int, str], set[str]] = {}
    result = {}
    for cell in plan.cells:
        c = cell.config
        needs = frozenset({c.parent_id} & ids) if c.parent_id else frozenset()
        follows = (frozenset(fp32_seen.get(_reference_key(cell), ()))
                   if not c.parent_id and c.method != FP32 else frozenset())
        result[cell.cell_id] = Waits(needs, follows)
        if c.method == FP32 and not c.parent_id:
            fp32_seen.setdefault(_reference_key(cell), set()).add(cell.cell_id)
    return result
