"""STTran (Cong et al., "Spatial-Temporal Transformer for Dynamic Scene Graph Generation", ICCV 2021;
``yrcong/STTran``), the baseline FReMuRe builds on, as a configuration of this package's modules.

STTran's computation is FReMuRe's without what FReMuRe adds:

- the object classifier is the same (:class:`~fremure.model.objects.ObjectClassifier` with the
  linear head, no memory, no tracking); only its parameter names differ (the published
  ``decoder_lin.0/1/3`` are our ``intermediate.0/1`` and ``decoder_lin.0``; ``fremure.compat.sttran``);
- the relation features are the same ``[P, 1936]`` (subject, object, union branch, two class
  embeddings);
- the transformer is :class:`~fremure.model.glocal.GlocalTransformer` without the frequency branch
  (``frequency_branch=False``: no tail encoder, frequency gate, fusion gate or frequency mapper) and
  without memory: the spatial encoder over the pairs of each frame, then the temporal decoder over
  sliding windows of 2 frames with learned frame position embeddings, the latter window's output
  kept per frame (published ``mode='latter'``), on the same ops (``segment_attention``,
  ``window_pack``, ``window_unpack``);
- the heads are linear (``a_rel_compress``, ``s_rel_compress``, ``c_rel_compress``): attention
  logits (the published evaluator applies the softmax, which our head does at test time),
  spatial and contacting sigmoids.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from .config import ModelConfig
from .relation_model import FReMuRe


class STTran(FReMuRe):
    """STTran relation model on FReMuRe's modules (see the module docstring).

    Args (published): mode ("predcls" | "sgcls" | "sgdet"), attention/spatial/contact_class_num,
        obj_classes (names, background first, or their number), rel_classes (unused, kept for the
        signature), enc_layer_num (1), dec_layer_num (3).
    Args (beyond the published code): window, stride, window_mode (published 2, 1, "latter"),
        glove (GloVe path or table for the class embeddings), dropout (published 0.1).

    ``forward(entry, phase)`` returns the entry with ``attention_distribution`` ``[P, 3]`` (logits
    in training, softmax at test), ``spatial_distribution`` ``[P, 6]`` and
    ``contacting_distribution`` ``[P, 17]`` (sigmoids), as FReMuRe does.
    """

    def __init__(self, mode: str = "predcls", attention_class_num: int = 3, spatial_class_num: int = 6,
                 contact_class_num: int = 17, obj_classes: Sequence[str] | int = 37,
                 rel_classes: Sequence[str] | None = None, enc_layer_num: int = 1, dec_layer_num: int = 3, *,
                 window: int = 2, stride: int = 1, window_mode: str = "latter", glove: Any = None,
                 dropout: float = 0.1):
        super().__init__(mode=mode, attention_class_num=attention_class_num, spatial_class_num=spatial_class_num,
                         contact_class_num=contact_class_num, obj_classes=obj_classes, rel_classes=rel_classes,
                         enc_layer_num=enc_layer_num, dec_layer_num=dec_layer_num, obj_mem_compute=False,
                         rel_mem_compute=None, take_obj_mem_feat=False, obj_head="linear", rel_head="linear",
                         tracking=False, decouple="shared", window=window, stride=stride, window_mode=window_mode,
                         glove=glove, keep_unused=False, dropout=dropout, frequency_branch=False)

    @classmethod
    def from_config(cls, config: ModelConfig, obj_classes: Sequence[str] | int,
                    frequencies: Mapping[str, torch.Tensor | None] | None = None, glove: Any = None) -> "STTran":
        """The STTran of ``config`` (a :class:`~fremure.model.config.ModelConfig` named "sttran",
        whose check already refused the options STTran does not have) for ``obj_classes``.
        ``frequencies`` are not used (``config.freq`` is false for STTran; the argument keeps
        :func:`~fremure.model.config.build_model`'s signature). ``model.config`` keeps ``config``."""
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        if config.name != "sttran":
            raise ValueError(f"config names model {config.name!r}; STTran.from_config builds 'sttran'")
        model = cls(mode=config.mode, obj_classes=obj_classes, enc_layer_num=config.enc_layer,
                    dec_layer_num=config.dec_layer, window=config.window, stride=config.stride,
                    window_mode=config.window_mode, glove=glove, dropout=config.dropout)
        model.config = config
        return model


__all__ = ["STTran"]
