"""The frozen Action Genome Faster R-CNN (ResNet-101, caffe-style C4), built from torchvision parts.

Architecture (docs/ag_and_eval.md section 2.1): ``backbone`` = conv1 .. layer3 (1024 channels,
stride 16, frozen batch-norms), an RPN with 12 anchors per cell (scales 4, 8, 16, 32; ratios
0.5, 1, 2), RoIAlign 7x7 at stride 16 (legacy alignment, adaptive sampling), ``res5`` = layer4
applied to each RoI and mean-pooled to 2048-d, then a 37-way classifier and class-specific box
regression. "Caffe-style" means the stride-2 of each stage sits on the first 1x1 convolution
and the stem max-pool has no padding and rounds up.

Weights load from the checkpoint the STTran / TEMPURA / FReMuRe authors distribute
(``faster_rcnn_ag.pth``: ``{'model': state_dict, ...}``) through an explicit key mapping.

All IoUs of this detector follow the "+1" pixel convention (width = x2 - x1 + 1); torchvision's
NMS is given boxes with ``x2 + 1, y2 + 1``, which yields exactly that convention.

torchvision (optional extra "detector") is imported here and by the box helpers that need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

try:
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d, roi_align
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError("fremure.data.detector needs torchvision (pip install 'fremure[detector]')") from _err

from .geometry import nms_plus1

NUM_CLASSES = 37
FEATURE_CHANNELS = 1024
HEAD_CHANNELS = 2048
FEAT_STRIDE = 16
POOL_SIZE = 7
ANCHOR_SCALES = (4, 8, 16, 32)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)
BBOX_MEANS = (0.0, 0.0, 0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Inference settings; the defaults are the reference's (docs/ag_and_eval.md 1.10, 2.1, 2.3, Q-S1, Q-S4)."""

    target_size: int = 600                # short side after resizing
    max_size: int | None = None           # long-side cap; None = reference (cap commented out)
    chunk_size: int = 10                  # frames per backbone batch
    rpn_pre_nms_top_n: int = 6000
    rpn_post_nms_top_n: int = 100         # proposals per frame, zero-padded (Q-S5)
    rpn_nms_thresh: float = 0.7
    score_thresh: float = 0.1             # per-class detection threshold (strict >)
    class_nms_thresh: float = 0.4
    clip_all_frames: bool = False         # reference clips only the first frame of a chunk (Q-S1)
    skip_padding_proposals: bool = False  # reference classifies the all-zero padding proposals (Q-S5)

    def __post_init__(self) -> None:
        for name in ("target_size", "chunk_size", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"DetectorConfig.{name} must be positive, got {getattr(self, name)}")


# ------------------------------------------------------------------ checkpoint key mapping
# Published (jwyang faster-rcnn.pytorch "resnet" class) -> this module. Inside each prefix the names
# are identical (torchvision and the reference share Bottleneck naming: conv1/bn1/conv2/bn2/conv3/bn3/
# downsample.0/downsample.1).
PUBLISHED_TO_OURS = (
    ("RCNN_base.0.", "backbone.conv1."), ("RCNN_base.1.", "backbone.bn1."), ("RCNN_base.4.", "backbone.layer1."),
    ("RCNN_base.5.", "backbone.layer2."), ("RCNN_base.6.", "backbone.layer3."), ("RCNN_top.0.", "res5."),
    ("RCNN_rpn.RPN_Conv.", "rpn.conv."), ("RCNN_rpn.RPN_cls_score.", "rpn.objectness."),
    ("RCNN_rpn.RPN_bbox_pred.", "rpn.deltas."), ("RCNN_cls_score.", "cls_score."), ("RCNN_bbox_pred.", "bbox_pred."),
)
# Batch-norm step counters exist in checkpoints written by PyTorch >= 0.4.1; frozen BN ignores them.
OPTIONAL_SUFFIX = "num_batches_tracked"


def published_key_to_ours(key: str) -> str | None:
    """Map one published state-dict key to this module's key (None when no prefix matches)."""
    for theirs, ours in PUBLISHED_TO_OURS:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def our_key_to_published(key: str) -> str:
    """Map one of this module's state-dict keys to the published name (KeyError if unmapped)."""
    for theirs, ours in PUBLISHED_TO_OURS:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(f"no published name for parameter {key!r}")


class CheckpointMismatchError(ValueError):
    """A detector checkpoint whose keys or shapes do not match the architecture."""


def _summarise(title: str, items: list[str], limit: int = 25) -> str:
    shown = ", ".join(items[:limit])
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{title} ({len(items)}): {shown}{more}"


# ------------------------------------------------------------------ anchors and box coding
def generate_anchors(base_size: int = FEAT_STRIDE, ratios=ANCHOR_RATIOS, scales=ANCHOR_SCALES) -> torch.Tensor:
    """Reference anchors around the cell ``[0, 0, base_size-1, base_size-1]``: float32 ``[R*S, 4]``.

    Ratio-major order (all scales of ratio 0, then ratio 1, ...); widths/heights are rounded
    (half to even) per ratio before scaling, as in the original Faster R-CNN.
    """
    ratios_t = torch.tensor(ratios, dtype=torch.float64)
    scales_t = torch.tensor(scales, dtype=torch.float64)
    centre = (base_size - 1) / 2.0
    ws = torch.round(torch.sqrt(base_size * base_size / ratios_t))
    hs = torch.round(ws * ratios_t)
    ws = (ws[:, None] * scales_t[None, :]).reshape(-1)
    hs = (hs[:, None] * scales_t[None, :]).reshape(-1)
    half_w, half_h = 0.5 * (ws - 1), 0.5 * (hs - 1)
    return torch.stack([centre - half_w, centre - half_h, centre + half_w, centre + half_h], 1).float()


def decode_boxes(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Apply (dx, dy, dw, dh) deltas to xyxy boxes with "+1" widths.

    ``boxes [..., 4]``, ``deltas [..., K, 4]`` (K deltas per box) -> ``[..., K, 4]``, same dtype.
    x1' = cx' - w'/2, x2' = cx' + w'/2 (no -1), as the reference.
    """
    widths = (boxes[..., 2] - boxes[..., 0] + 1.0).unsqueeze(-1)
    heights = (boxes[..., 3] - boxes[..., 1] + 1.0).unsqueeze(-1)
    ctr_x = boxes[..., 0].unsqueeze(-1) + 0.5 * widths
    ctr_y = boxes[..., 1].unsqueeze(-1) + 0.5 * heights
    pred_ctr_x = deltas[..., 0] * widths + ctr_x
    pred_ctr_y = deltas[..., 1] * heights + ctr_y
    pred_w = torch.exp(deltas[..., 2]) * widths
    pred_h = torch.exp(deltas[..., 3]) * heights
    return torch.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                        pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], -1)


def clip_boxes_(boxes: torch.Tensor, height: torch.Tensor | float, width: torch.Tensor | float) -> torch.Tensor:
    """Clamp xyxy boxes ``[..., 4]`` in place to ``[0, width-1] x [0, height-1]``."""
    boxes[..., 0::2] = boxes[..., 0::2].clamp(min=0).minimum(torch.as_tensor(width - 1, dtype=boxes.dtype))
    boxes[..., 1::2] = boxes[..., 1::2].clamp(min=0).minimum(torch.as_tensor(height - 1, dtype=boxes.dtype))
    return boxes


# ------------------------------------------------------------------ modules
def _caffe_resnet101() -> nn.Module:
    """torchvision ResNet-101 (no weights) rearranged into the caffe layout the checkpoint expects."""
    net = torchvision.models.resnet101(weights=None, norm_layer=FrozenBatchNorm2d)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for stage in (net.layer2, net.layer3, net.layer4):
        first = stage[0]
        first.conv1.stride = (2, 2)
        first.conv2.stride = (1, 1)
    return net


class RegionProposalNetwork(nn.Module):
    """RPN head and proposal layer (test settings): ``rois [B, post_nms_top_n, 5]`` per image batch."""

    def __init__(self, in_channels: int = FEATURE_CHANNELS) -> None:
        super().__init__()
        num_anchors = len(ANCHOR_SCALES) * len(ANCHOR_RATIOS)
        self.conv = nn.Conv2d(in_channels, 512, 3, 1, 1)
        self.objectness = nn.Conv2d(512, 2 * num_anchors, 1)   # [bg x A | fg x A]
        self.deltas = nn.Conv2d(512, 4 * num_anchors, 1)       # [A x (dx, dy, dw, dh)]

    def forward(self, fmaps: torch.Tensor, im_info: torch.Tensor, config: DetectorConfig) -> torch.Tensor:
        """``fmaps [B,1024,h,w]``, ``im_info [B,3]`` -> float ``[B, config.rpn_post_nms_top_n, 5]``.

        Rows are (image, x1, y1, x2, y2) in blob pixels; missing proposals are all-zero boxes.
        """
        batch, _, height, width = fmaps.shape
        num_anchors = self.objectness.out_channels // 2
        hidden = F.relu(self.conv(fmaps))
        logits = self.objectness(hidden)
        pair = torch.stack([logits[:, :num_anchors], logits[:, num_anchors:]])
        fg = F.softmax(pair, dim=0)[1]                                    # [B, A, h, w]
        scores = fg.permute(0, 2, 3, 1).reshape(batch, -1)                # (y, x, anchor) order
        deltas = self.deltas(hidden).permute(0, 2, 3, 1).reshape(batch, -1, 1, 4)
        anchors = self._shifted_anchors(height, width, fmaps.device, fmaps.dtype)
        proposals = decode_boxes(anchors, deltas).squeeze(2)              # [B, K*A, 4]
        proposals = clip_boxes_(proposals, im_info[:, 0].view(-1, 1, 1), im_info[:, 1].view(-1, 1, 1))
        return self._select(proposals, scores, config)

    def _shifted_anchors(self, height: int, width: int, device, dtype) -> torch.Tensor:
        shift_y, shift_x = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) * FEAT_STRIDE,
                                          torch.arange(width, device=device, dtype=dtype) * FEAT_STRIDE,
                                          indexing="ij")
        shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], -1).reshape(-1, 1, 4)
        return (generate_anchors().to(device=device, dtype=dtype).view(1, -1, 4) + shifts).reshape(-1, 4)

    @staticmethod
    def _select(proposals: torch.Tensor, scores: torch.Tensor, config: DetectorConfig) -> torch.Tensor:
        batch, total = scores.shape
        pre = min(config.rpn_pre_nms_top_n, total)
        top_scores, order = scores.topk(pre, dim=1, sorted=True)
        top_boxes = proposals.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        image = torch.arange(batch, device=scores.device).repeat_interleave(pre)
        keep = nms_plus1(top_boxes.reshape(-1, 4), top_scores.reshape(-1), image, config.rpn_nms_thresh)
        # Stable sort by image keeps each image's survivors in descending-score order.
        keep = keep[torch.sort(image[keep], stable=True).indices]
        kept_image = image[keep]
        counts = torch.bincount(kept_image, minlength=batch)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(keep.numel(), device=keep.device) - starts[kept_image]
        take = rank < config.rpn_post_nms_top_n
        rois = proposals.new_zeros(batch, config.rpn_post_nms_top_n, 5)
        rois[:, :, 0] = torch.arange(batch, device=rois.device, dtype=rois.dtype).view(-1, 1)
        rois[kept_image[take], rank[take], 1:] = top_boxes.reshape(-1, 4)[keep[take]]
        return rois


class AGFasterRCNN(nn.Module):
    """Frozen AG Faster R-CNN; always in eval mode, no parameter requires grad.

    Submodules: ``backbone`` (conv1..layer3), ``res5`` (layer4), ``rpn``, ``cls_score``
    (Linear 2048->37), ``bbox_pred`` (Linear 2048->148).
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or DetectorConfig()
        net = _caffe_resnet101()
        self.backbone = nn.Sequential(OrderedDict(
            conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool,
            layer1=net.layer1, layer2=net.layer2, layer3=net.layer3))
        self.res5 = net.layer4
        self.rpn = RegionProposalNetwork(FEATURE_CHANNELS)
        self.cls_score = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)
        self.bbox_pred = nn.Linear(HEAD_CHANNELS, 4 * NUM_CLASSES)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "AGFasterRCNN":
        """The detector is frozen: stays in eval mode whatever ``mode`` says."""
        return super().train(False)

    @property
    def folded(self) -> bool:
        """True after :meth:`fold_batchnorm_` (the model then no longer matches the checkpoint layout)."""
        return not any(isinstance(m, FrozenBatchNorm2d) for m in self.modules())

    def fold_batchnorm_(self) -> "AGFasterRCNN":
        """Fold every frozen batch-norm into the convolution before it, in place (about 20-30% faster).

        Outputs change only by float rounding (~1e-5 relative). A folded model cannot be exported
        to or loaded from the published format; fold after loading.
        """
        pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))
        with torch.no_grad():
            for module in list(self.modules()):
                for conv_name, bn_name in pairs:
                    conv, bn = module._modules.get(conv_name), module._modules.get(bn_name)
                    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d)):
                        continue
                    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
                    shift = bn.bias - bn.running_mean * scale
                    if conv.bias is not None:
                        shift = shift + conv.bias * scale
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    conv.bias = nn.Parameter(shift, requires_grad=False)
                    module._modules[bn_name] = nn.Identity()
        return self

    @property
    def device(self) -> torch.device:
        return self.cls_score.weight.device

    def base_features(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` float32 ``[B,3,H,W]`` (BGR, mean-subtracted) -> ``[B,1024,ceil(H/16),ceil(W/16)]``."""
        return self.backbone(images)

    def roi_align(self, fmaps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoIAlign ``rois [R,5]`` = (map index, x1, y1, x2, y2 in blob pixels) -> ``[R,1024,7,7]``."""
        return roi_align(fmaps, rois.to(fmaps.dtype), (POOL_SIZE, POOL_SIZE), 1.0 / FEAT_STRIDE,
                         sampling_ratio=0, aligned=False)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """res5 on pooled RoIs ``[R,1024,7,7]`` then spatial mean -> ``[R,2048]``."""
        return self.res5(pooled).mean(3).mean(2)

    def roi_features(self, fmaps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``head(roi_align(fmaps, rois))``: ``[R,2048]``."""
        return self.head(self.roi_align(fmaps, rois))

    def class_distribution(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax over the 36 object classes (background logit dropped): ``[R,36]``; column c-1 is class c."""
        return torch.softmax(self.cls_score(features)[:, 1:], dim=1)

    def detect(self, images: torch.Tensor, im_info: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full Faster R-CNN on a chunk of frames.

        Returns ``rois [B,P,5]``, ``cls_prob [B,P,37]`` (softmax incl. background),
        ``bbox_pred [B,P,148]``, ``fmaps [B,1024,h,w]``, ``features [B,P,2048]`` (P = post-NMS top-N).
        """
        fmaps = self.base_features(images)
        rois = self.rpn(fmaps, im_info, self.config)
        batch, count = rois.shape[:2]
        features = self.roi_features(fmaps, rois.view(-1, 5))
        cls_prob = torch.softmax(self.cls_score(features), dim=1)
        return {"rois": rois, "cls_prob": cls_prob.view(batch, count, -1),
                "bbox_pred": self.bbox_pred(features).view(batch, count, -1),
                "fmaps": fmaps, "features": features.view(batch, count, -1)}

    def select_detections(self, detections: dict[str, torch.Tensor], im_info: torch.Tensor,
                          frame_offset: int = 0) -> dict[str, torch.Tensor]:
        """Turn one chunk's :meth:`detect` output into per-class NMS'd rows (docs/ag_and_eval.md 2.3).

        Per frame and class j = 1..36: proposals with prob > score_thresh, class-specific boxes
        decoded with stds (0.1, 0.1, 0.2, 0.2), NMS at class_nms_thresh ("+1" IoU, on boxes
        divided by the frame-0 scale), persons reduced to the best one. Rows are ordered by frame,
        class, descending score. Returns ``boxes [M,5]`` (frame_offset + frame, x1, y1, x2, y2 in
        original pixels, not yet clamped at 0), ``labels [M]`` int64, ``scores [M]``,
        ``features [M,2048]`` (the proposal's feature).
        """
        rois, cls_prob, features = detections["rois"], detections["cls_prob"], detections["features"]
        batch, count, classes = cls_prob.shape
        stds = cls_prob.new_tensor(BBOX_STDS)
        means = cls_prob.new_tensor(BBOX_MEANS)
        deltas = detections["bbox_pred"].view(batch, count, classes, 4) * stds + means
        boxes = decode_boxes(rois[:, :, 1:5], deltas)                    # [B,P,C,4]
        if self.config.clip_all_frames:
            clip_boxes_(boxes, im_info[:, 0].view(-1, 1, 1, 1), im_info[:, 1].view(-1, 1, 1, 1))
        else:
            clip_boxes_(boxes[0], im_info[0, 0], im_info[0, 1])
        boxes = boxes / im_info[0, 2]
        candidates = cls_prob[:, :, 1:] > self.config.score_thresh
        if self.config.skip_padding_proposals:
            candidates &= (rois[:, :, 1:] != 0).any(-1, keepdim=True)
        frame, proposal, cls = candidates.nonzero(as_tuple=True)
        cls = cls + 1
        cand_boxes = boxes[frame, proposal, cls]
        cand_scores = cls_prob[frame, proposal, cls]
        group = frame * classes + cls
        keep = nms_plus1(cand_boxes, cand_scores, group, self.config.class_nms_thresh)
        keep = keep[torch.sort(group[keep], stable=True).indices]
        kept_group = group[keep]
        first_of_group = torch.ones_like(kept_group, dtype=torch.bool)
        first_of_group[1:] = kept_group[1:] != kept_group[:-1]
        keep = keep[(cls[keep] != 1) | first_of_group]
        frame_col = (frame[keep] + frame_offset).to(boxes.dtype).unsqueeze(1)
        return {"boxes": torch.cat([frame_col, cand_boxes[keep]], 1), "labels": cls[keep],
                "scores": cand_scores[keep], "features": features[frame[keep], proposal[keep]]}

    # -- checkpoints -------------------------------------------------------------------------
    def load_published_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load a state dict with published key names; raise CheckpointMismatchError listing every
        missing, unexpected and mis-shaped key. ``*.num_batches_tracked`` entries are optional."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"{source}: state dict must be a dict, got {type(state_dict).__name__}")
        if self.folded:
            raise ValueError("cannot load a published checkpoint into a model with folded batch-norms")
        if state_dict and all(k.startswith("module.") for k in state_dict):
            state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
        ours = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        unexpected, mis_shaped, bad_targets = [], [], set()
        for key, value in state_dict.items():
            target = published_key_to_ours(key)
            if target is None or target not in ours:
                if target is not None and target.endswith("." + OPTIONAL_SUFFIX) \
                        and target[: -len(OPTIONAL_SUFFIX)] + "running_mean" in ours:
                    continue
                unexpected.append(key)
                continue
            expected = tuple(ours[target].shape)
            if not isinstance(value, torch.Tensor):
                mis_shaped.append(f"{key} (not a tensor: {type(value).__name__})")
                bad_targets.add(target)
            elif tuple(value.shape) != expected:
                mis_shaped.append(f"{key} (checkpoint {tuple(value.shape)}, model {expected})")
                bad_targets.add(target)
            else:
                mapped[target] = value
        missing = [our_key_to_published(k) for k in ours if k not in mapped and k not in bad_targets]
        if missing or unexpected or mis_shaped:
            parts = [f"{source} does not match the AG Faster R-CNN (ResNet-101, 37 classes)"]
            parts += [_summarise(title, keys) for title, keys in
                      (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", mis_shaped)) if keys]
            raise CheckpointMismatchError("; ".join(parts))
        # A model built on the meta device (no initialisation cost) takes the checkpoint tensors as they are.
        on_meta = any(t.is_meta for t in ours.values())
        self.load_state_dict(mapped, strict=True, assign=on_meta)
        self.requires_grad_(False)

    def published_state_dict(self, num_batches_tracked: bool = True) -> OrderedDict:
        """State dict under the published key names (CPU tensors), as in ``faster_rcnn_ag.pth['model']``."""
        if self.folded:
            raise ValueError("a model with folded batch-norms has no published-format state dict")
        out = OrderedDict()
        for key, value in self.state_dict().items():
            name = our_key_to_published(key)
            out[name] = value.detach().cpu().clone()
            if num_batches_tracked and key.endswith(".running_var"):
                out[name[: -len("running_var")] + OPTIONAL_SUFFIX] = torch.tensor(0, dtype=torch.int64)
        return out

    def fingerprint(self) -> str:
        """sha256 of the weights (in key order) and the config: identifies what features were made with."""
        digest = hashlib.sha256(repr(dataclasses.asdict(self.config)).encode())
        for key, value in self.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def load_ag_detector(path: str | os.PathLike, device: str | torch.device = "cpu",
                     config: DetectorConfig | None = None, fold_batchnorm: bool = False) -> AGFasterRCNN:
    """Build the AG detector and load ``faster_rcnn_ag.pth`` (published ``{'model': state_dict, ...}``
    or a bare published state dict), read with ``torch.load(weights_only=True)``.

    ``fold_batchnorm`` folds the frozen batch-norms into the convolutions (faster; features
    change by float rounding only, and the cache fingerprint changes with them)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"detector checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        state_dict = checkpoint["model"]
    elif isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict = checkpoint
    else:
        raise ValueError(f"{path}: expected {{'model': state_dict, ...}} or a state dict, "
                         f"got {type(checkpoint).__name__} with keys {list(checkpoint)[:10] if isinstance(checkpoint, dict) else '-'}")
    with torch.device("meta"):
        model = AGFasterRCNN(config)
    model.load_published_state_dict(state_dict, source=path)
    if fold_batchnorm:
        model.fold_batchnorm_()
    return model.to(device)


def save_ag_detector(model: AGFasterRCNN, path: str | os.PathLike) -> None:
    """Write ``model`` in the published checkpoint format ``{'model': state_dict, 'pooling_mode': 'align', 'class_agnostic': False}``."""
    torch.save({"model": model.published_state_dict(), "pooling_mode": "align", "class_agnostic": False},
               os.fspath(path))


def randomize_detector_(model: AGFasterRCNN, seed: int = 0) -> AGFasterRCNN:
    """Deterministic random weights (for tests, benchmarks and demos without the real checkpoint).

    Convolutions are He-normal (fan-out); each frozen batch-norm gets the statistics of its
    input on one random image (a data-dependent init, so activations stay O(1) through the 33
    residual blocks and fit float16), with the last norm of every block scaled by 0.2; the RPN
    and box heads are N(0, 0.01) / N(0, 0.001) as the reference initialises them.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal_(tensor: torch.Tensor, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                normal_(module.weight, (2.0 / (module.out_channels * module.weight[0, 0].numel())) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, FrozenBatchNorm2d):
                module.weight.fill_(0.2 if name.endswith("bn3") else 1.0)
                module.bias.zero_()
        for module, std in ((model.rpn.conv, 0.01), (model.rpn.objectness, 0.01), (model.rpn.deltas, 0.01),
                            (model.cls_score, 0.01), (model.bbox_pred, 0.001)):
            normal_(module.weight, std)
            module.bias.zero_()

        def calibrate(module: FrozenBatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
            x = inputs[0]
            module.running_mean.copy_(x.mean((0, 2, 3)))
            module.running_var.copy_(x.var((0, 2, 3), unbiased=False))

        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        try:
            device = model.device
            image = (torch.randn(1, 3, 96, 96, generator=generator) * 60.0).to(device)
            model.res5(model.base_features(image))
        finally:
            for hook in hooks:
                hook.remove()
    return model
