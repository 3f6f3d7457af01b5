"""``datasets.GeneratorBasedBuilder`` classes for the A-FINE datasets (datasets 5.x has no loading scripts:
instantiate these classes directly, or use :func:`dataset_scripts.load`)."""

from .classic import KADID10k, PIPAL, TID2013
from .diffiqa import DiffIQA
from .sriqa_bench import SRIQABench

#: dataset name -> builder class
BUILDERS = {
    "diffiqa": DiffIQA,
    "sriqa_bench": SRIQABench,
    "kadid10k": KADID10k,
    "pipal": PIPAL,
    "tid2013": TID2013,
}

__all__ = ["BUILDERS", "DiffIQA", "SRIQABench", "KADID10k", "PIPAL", "TID2013"]
