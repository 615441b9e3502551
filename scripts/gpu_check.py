"""The checks of scripts/gpu_check.sh, on stores made by `bench run`.

    python scripts/gpu_check.py require-cuda          # exit 3 unless torch sees a CUDA device
    python scripts/gpu_check.py check STORE --device cpu|cuda
    python scripts/gpu_check.py compare CUDA_STORE CPU_STORE

`check`: every cell is ok, ran on the device (its record's provenance; the saliency stage's
own record says where it ran), and has the deploy stage's deployed accuracy and the saliency
stage's statistics (deletion AUC of every method;
against FP32 for the cells that have an FP32 reference). `compare`: both stores pass `check`,
hold the same cells (ids: a cell's id does not depend on the device), and each cell's accuracy
and deployed accuracy agree within MAX_ACCURACY_GAP. Every mismatch is printed; exit 1 if any.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from methods.base import FP32

MAX_ACCURACY_GAP = 0.02
NO_CUDA = 3


@dataclass(frozen=True)
class Cell:
    """What the checks read of a stored cell."""

    cell_id: str
    label: str
    method: str
    status: str
    torch_device: str               # where it trained: its provenance's `device`
    accuracy: float | None
    deployed_accuracy: float | None
    saliency: dict[str, Any] | None

    @classmethod
    def of(cls, record: Any) -> Cell:
        bits = "" if record.w_bits == 32 else f" W{record.w_bits}A{record.a_bits}"
        metrics = record.metrics or {}
        deploy = (metrics.get("deploy") or {}).get("columns") or {}
        return cls(record.cell_id, f"{record.backbone}/{record.method}{bits}/seed {record.seed}",
                   record.method, record.status, str((record.provenance or {}).get("device", "?")),
                   record.accuracy, deploy.get("deployed_accuracy"), metrics.get("saliency"))


def read_cells(store: Path) -> dict[str, Cell]:
    from bench.store import ResultsStore

    if not (store / "medq.sqlite").is_file():
        raise SystemExit(f"gpu_check: no store at {store}")
    return {r.cell_id: Cell.of(r) for r in ResultsStore(store, readonly=True).records()}


def cell_problems(cell: Cell, torch_device: str) -> list[str]:
    """What is wrong with one cell of a store run on ``torch_device`` (cpu or cuda)."""
    where = f"{cell.label} [{cell.cell_id}] on {torch_device}"
    if cell.status != "ok":
        return [f"{where}: status {cell.status}"]
    problems = []
    if cell.torch_device.partition(":")[0] != torch_device:
        problems.append(f"{where}: ran on {cell.torch_device}, not {torch_device}")
    if cell.deployed_accuracy is None:
        problems.append(f"{where}: no deployed accuracy (deploy stage missing)")
    saliency = cell.saliency or {}
    stats = saliency.get("stats") or {}
    if not stats:
        problems.append(f"{where}: no saliency statistics")
    elif str(saliency.get("device", "?")).partition(":")[0] != torch_device:
        problems.append(f"{where}: saliency ran on {saliency.get('device', '?')}, "
                        f"not {torch_device}")
    skipped = (saliency.get("reference") or {}).get("skipped")
    if cell.method != FP32 and skipped:
        problems.append(f"{where}: no FP32 reference maps ({skipped})")
    for method, metrics in stats.items():
        if (metrics.get("deletion_auc") or {}).get("mean") is None:
            problems.append(f"{where}: saliency {method} has no deletion AUC")
        if cell.method != FP32 and (metrics.get("spearman_fp32") or {}).get("mean") is None:
            problems.append(f"{where}: saliency {method} has no Spearman against FP32")
    return problems


def check(cells: dict[str, Cell], torch_device: str) -> list[str]:
    if not cells:
        return [f"no cells in the {torch_device} store"]
    return [p for c in cells.values() for p in cell_problems(c, torch_device)]


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


def compare(cuda: dict[str, Cell], cpu: dict[str, Cell],
            max_gap: float = MAX_ACCURACY_GAP) -> list[str]:
    """Every difference that the GPU path must not make."""
    problems = check(cuda, "cuda") + check(cpu, "cpu")
    for cell_id in sorted(cuda.keys() - cpu.keys()):
        problems.append(f"{cuda[cell_id].label} [{cell_id}] is in the cuda store only")
    for cell_id in sorted(cpu.keys() - cuda.keys()):
        problems.append(f"{cpu[cell_id].label} [{cell_id}] is in the cpu store only")
    for cell_id in sorted(cuda.keys() & cpu.keys()):
        a, b = cuda[cell_id], cpu[cell_id]
        for what, x, y in (("accuracy", a.accuracy, b.accuracy),
                           ("deployed accuracy", a.deployed_accuracy, b.deployed_accuracy)):
            gap = _gap(x, y)
            if gap is not None and gap > max_gap:
                problems.append(f"{a.label} [{cell_id}]: {what} {x:.4f} on cuda, {y:.4f} on "
                                f"cpu: {100 * gap:.1f} points apart (at most "
                                f"{100 * max_gap:.0f})")
    return problems


def table(cuda: dict[str, Cell], cpu: dict[str, Cell]) -> Iterable[str]:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    yield f"{'cell':<40} {'acc cuda':>9} {'acc cpu':>9} {'deployed cuda':>14} {'deployed cpu':>13}"
    for cell_id in sorted(cuda.keys() | cpu.keys()):
        a, b = cuda.get(cell_id), cpu.get(cell_id)
        label = (a or b).label  # type: ignore[union-attr]
        yield (f"{label:<40} {f(a and a.accuracy):>9} {f(b and b.accuracy):>9} "
               f"{f(a and a.deployed_accuracy):>14} {f(b and b.deployed_accuracy):>13}")


def require_cuda() -> int:
    import torch

    if torch.cuda.is_available():
        print(f"gpu_check: CUDA device {torch.cuda.get_device_name(0)}, torch "
              f"{torch.__version__}", file=sys.stderr)
        return 0
    print(f"gpu_check: no CUDA device here (torch {torch.__version__}, "
          f"torch.cuda.is_available() is False): nothing was run. Run it on a machine with an "
          "NVIDIA GPU, or with --cpu-only to check the CPU half.", file=sys.stderr)
    return NO_CUDA


def report(problems: list[str], what: str) -> int:
    for problem in problems:
        print(f"gpu_check: MISMATCH: {problem}", file=sys.stderr)
    print(f"gpu_check: {what}: " + (f"{len(problems)} problems" if problems else "ok"),
          file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("require-cuda")
    one = verbs.add_parser("check")
    one.add_argument("store", type=Path)
    one.add_argument("--device", choices=("cpu", "cuda"), required=True)
    two = verbs.add_parser("compare")
    two.add_argument("cuda_store", type=Path)
    two.add_argument("cpu_store", type=Path)
    args = parser.parse_args(argv)
    if args.verb == "require-cuda":
        return require_cuda()
    if args.verb == "check":
        cells = read_cells(args.store)
        print("\n".join(table({}, cells) if args.device == "cpu" else table(cells, {})))
        return report(check(cells, args.device), f"{len(cells)} cells on {args.device}")
    cuda, cpu = read_cells(args.cuda_store), read_cells(args.cpu_store)
    print("\n".join(table(cuda, cpu)))
    return report(compare(cuda, cpu), f"{len(cuda)} cells on cuda against {len(cpu)} on cpu")


if __name__ == "__main__":
    sys.exit(main())
