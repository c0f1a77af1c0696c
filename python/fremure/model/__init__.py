"""FReMuRe model: glocal transformer, relation heads, object classifier and the relation model.

Every module keeps the published parameter names (published checkpoints load through
:mod:`fremure.compat`) and computes on packed tokens through the fremure ops, which run their
compiled kernels or their plain-PyTorch references (one switch: :mod:`fremure_ext.dispatch`).
:mod:`fremure.model.published` runs the same parameters the published (zero-padded) way.
"""

from .glocal import GlocalTransformer, TransformerOutput
from .heads import BayesianHead, GMMHead, GMMHeadPlus, LinearHead, make_rel_head
from .layers import FreqGate, LogFreqGate, frequency_statistics
from .objects import ObjectClassifier
from .relation_model import FReMuRe

__all__ = ["FReMuRe", "ObjectClassifier", "GlocalTransformer", "TransformerOutput", "LinearHead", "BayesianHead",
           "GMMHead", "GMMHeadPlus", "make_rel_head", "FreqGate", "LogFreqGate", "frequency_statistics"]
