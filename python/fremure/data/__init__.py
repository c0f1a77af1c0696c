"""Action Genome data: annotation loader, restricted unpickler, predicate frequencies, synthetic AG.

Submodules: ``ag`` (``ActionGenome``), ``safe_pickle`` (``safe_load``), ``frequency``
(predicate priors, table, long-tail plot), ``synthetic`` (``generate_synthetic_ag``,
``sample_path``: a tiny bundled dataset in AG's on-disk format), ``images`` (frame loading and
preprocessing), ``detector`` (the AG Faster R-CNN from torchvision parts, published-checkpoint
loading), ``features`` (per-video ``entry`` builder), ``cache`` (safetensors feature cache).
"""

from .ag import ActionGenome, AGIssue, AnnotationError
from .safe_pickle import UnsafePickleError, safe_load
from .synthetic import generate_synthetic_ag, sample_path

__all__ = ["ActionGenome", "AGIssue", "AnnotationError", "UnsafePickleError", "safe_load",
           "generate_synthetic_ag", "sample_path"]
