"""medq-bench: benchmark and reproducibility harness for quantised medical image classifiers.

Data flows one way: config -> plan of cells -> run a cell -> results store -> report.
"""

__version__ = "0.1.0"
