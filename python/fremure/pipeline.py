"""The steps every command shares, from an AG folder to scores: load a split, build the detector,
extract features, compute the frequency priors, build the model, predict and evaluate. Training
(:mod:`fremure.train`), ``fremure eval`` and the benchmarks use these, so there is one way to do each.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .data import ActionGenome
from .data.cache import FeatureCache, extract_features
from .data.frequency import predicate_frequencies
from .eval import MultiConstraintEvaluator
from .model import FReMuRe, ModelConfig
from .model.config import build_model as build_from_config

if TYPE_CHECKING:
    from .train.config import TrainConfig

SPLITS = ("train", "test")
PRED_KEYS = ("boxes", "pred_labels", "pred_scores", "pair_idx", "im_idx", "attention_distribution",
             "spatial_distribution", "contacting_distribution", "labels", "scores")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def load_split(data_path: str | os.PathLike, split: str, mode: str) -> ActionGenome:
    """The AG split as the published scripts load it (filtersmall pickle for sgcls/sgdet)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return ActionGenome(data_path, split, filter_small_box=mode != "predcls").require_videos()


def make_detector(checkpoint: str | None = None, target_size: int | None = None, seed: int = 0,
                  device: str = "cpu", proposals: int | None = None):
    """AG Faster R-CNN from ``checkpoint`` (published faster_rcnn_ag.pth), or randomly initialised
    weights when None (features then carry no learned appearance). Returns (detector, description)."""
    from .data.detector import AGFasterRCNN, DetectorConfig, load_ag_detector, randomize_detector_
    options = {k: v for k, v in (("target_size", target_size), ("rpn_post_nms_top_n", proposals)) if v is not None}
    if checkpoint:
        detector = load_ag_detector(checkpoint, device=device, config=DetectorConfig(**options))
        return detector.eval(), f"AG Faster R-CNN from {checkpoint}"
    with torch.device("meta"):              # every tensor is set by randomize_detector_
        detector = AGFasterRCNN(DetectorConfig(**options))
    detector = randomize_detector_(detector.to_empty(device="cpu"), seed).to(device).eval()
    return detector, f"randomly initialised detector (seed {seed}; no --detector-checkpoint given)"


def extract_split(data_path: str, split: str, mode: str, detector, out_dir: str, dtype: str = "float32",
                  progress: bool = True) -> FeatureCache:
    """Runs the detector once over a split into ``out_dir`` (resumes a partial cache)."""
    dataset = load_split(data_path, split, mode)
    return extract_features(dataset, detector, out_dir, mode, dtype=dtype, progress=progress,
                            training=split == "train")


def frequencies(config: ModelConfig, train: ActionGenome, test: ActionGenome | None) -> dict[str, torch.Tensor] | None:
    """Frequency priors of the model ``config`` (None with ``freq: false``; published pooling of
    train+test unless ``freq_include_test`` is false)."""
    if not config.freq:
        return None
    return predicate_frequencies(train, test, include_test=config.freq_include_test)


def build_model(config: TrainConfig, obj_classes: Sequence[str] | int,
                frequencies: dict[str, torch.Tensor] | None) -> FReMuRe:
    """The model of ``config.model`` for training: its initial weights depend on ``config.seed``
    alone (whatever ran before), and in PredCls the object classifier is frozen. The kernel choice
    is the model config's (see :meth:`FReMuRe.forward`); the process default is left alone."""
    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        torch.manual_seed(config.seed)
        model = build_from_config(config.model, obj_classes, frequencies)
    if config.model.mode == "predcls":
        for p in model.object_classifier.parameters():
            p.requires_grad_(False)
    return model


def prediction_for_eval(entry: dict[str, Any]) -> dict[str, Any]:
    """The CPU tensors of a test-phase entry that the evaluator reads."""
    return {k: entry[k].detach().float().cpu() if entry[k].is_floating_point() else entry[k].detach().cpu()
            for k in PRED_KEYS if isinstance(entry.get(k), torch.Tensor)}


@torch.no_grad()
def predict_videos(model: FReMuRe, source, indices: Sequence[int], device: str | torch.device = "cpu",
                   amp: str = "none", progress: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """Test-phase predictions ``[(video index, pred dict)]`` of the given videos."""
    from tqdm.auto import tqdm
    model.eval()
    out = []
    for index in tqdm(indices, desc="eval", unit="video", disable=not progress):
        entry = to_device(source[index], device)
        with autocast(device, amp):
            pred = model(entry, phase="test")
        out.append((index, prediction_for_eval(pred)))
    return out


def evaluate_predictions(mode: str, predictions: Sequence[tuple[int, dict]], gt_annotations: Sequence,
                         constraints: Sequence[str] = ("with", "semi", "no"),
                         evaluator_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """R@K / mR@K summaries per constraint of predictions in video order; ``evaluator_options`` go to
    every ``SceneGraphEvaluator`` (e.g. ``mean_recall="per_frame"``)."""
    evaluator = MultiConstraintEvaluator(mode, tuple(constraints), **dict(evaluator_options or {}))
    for index, pred in sorted(predictions, key=lambda item: item[0]):
        evaluator.add_video(gt_annotations[index], pred)
    return evaluator.summary()


def evaluate(model: torch.nn.Module, source, gt_annotations: Sequence, mode: str, videos: int = 0,
             device: str | torch.device = "cpu", amp: str = "none", constraints: Sequence[str] = ("with", "semi", "no"),
             progress: bool = False, evaluator_options: Mapping[str, Any] | None = None,
             ) -> tuple[dict[str, dict[str, Any]], list[tuple[int, dict[str, Any]]]]:
    """R@K / mR@K of ``model`` on the first ``videos`` videos of ``source`` (0: all) against
    ``gt_annotations`` (the split's, same order): ``(results per constraint, predictions)``.
    ``evaluator_options`` as for ``evaluate_predictions``."""
    if isinstance(videos, bool) or not isinstance(videos, int) or videos < 0:
        raise ValueError(f"videos must be an integer >= 0 (0 = all), got {videos!r}")
    count = min(len(source), videos) if videos else len(source)
    model.to(device)
    predictions = predict_videos(model, source, range(count), device, amp, progress=progress)
    return evaluate_predictions(mode, predictions, gt_annotations, constraints, evaluator_options), predictions


def to_device(entry: dict[str, Any], device) -> dict[str, Any]:
    """The entry with its tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in entry.items()}


def autocast(device, amp: str):
    """Autocast context of ``amp`` ("none" | "bf16" | "fp16") on ``device``'s type."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])
