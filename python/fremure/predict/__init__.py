"""Scene graphs of any video: :class:`Predictor` (library) and what ``fremure predict`` writes
(docs/predict.md)."""

from .batch import PredictConfig, VideoOutcome, predict_videos, read_boxes_file
from .outputs import read_jsonl, write_jsonl
from .predictor import Predictor, gt_frames_from_boxes
from .scene_graph import SCHEMA_VERSION, Relation, SceneGraph, SceneObject
from .video import FrameSelection, VideoFrame, read_frames

__all__ = ["FrameSelection", "PredictConfig", "Predictor", "Relation", "SCHEMA_VERSION", "SceneGraph", "SceneObject",
           "VideoFrame", "VideoOutcome", "gt_frames_from_boxes", "predict_videos", "read_boxes_file", "read_frames",
           "read_jsonl", "write_jsonl"]
