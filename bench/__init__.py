"""medq-bench: benchmark and reproducibility harness for quantised medical image classifiers.

Data flows one way: config -> plan of cells -> run a cell -> results store -> report.
"""

import logging
import warnings

__version__ = "0.1.0"

# Third-party notices that say nothing about a run and would flood every cell's output: the
# CUDA build of torch finding no CUDA on a CPU machine, Brevitas' optional Hadamard kernels and
# its fx backport's use of a deprecated torch API.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="fast_hadamard_transform")
warnings.filterwarnings("ignore", message=".*children_specs", category=FutureWarning)
