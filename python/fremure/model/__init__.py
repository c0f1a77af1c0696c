"""FReMuRe model (and STTran, its baseline): glocal transformer, relation heads, object classifier and
the relation models.

Every module keeps the published parameter names (published checkpoints load through
:mod:`fremure.compat`) and computes on packed tokens through the fremure ops, which run their
compiled kernels or their plain-PyTorch references (one switch: :mod:`fremure_ext.dispatch`).
:mod:`fremure.model.published` runs the same parameters the published (zero-padded) way.
:class:`ModelConfig` holds every option; ``build_model(config, obj_classes, frequencies)`` builds the
model it names (the registry: :mod:`fremure.model.config`).

Names are imported on first use, so that reading a ModelConfig (the command line does, for its
flags) does not load the modules and their compiled kernels.
"""

from fremure._lazy import lazy_exports

_EXPORTS = {
    "ModelConfig": "config", "build_model": "config", "register_model": "config",
    "GlocalTransformer": "glocal", "TransformerOutput": "glocal",
    "BayesianHead": "heads", "GMMHead": "heads", "GMMHeadPlus": "heads", "LinearHead": "heads", "make_rel_head": "heads",
    "FreqGate": "layers", "LogFreqGate": "layers", "frequency_statistics": "layers",
    "ObjectClassifier": "objects", "FReMuRe": "relation_model", "STTran": "sttran",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
