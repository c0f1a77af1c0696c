"""Scene-graph evaluation on Action Genome: R@K, mR@K and per-predicate recall (docs/ag_and_eval.md section 3).

Drop-in for the STTran/TEMPURA/FReMuRe evaluator::

    from fremure.eval import SceneGraphEvaluator
    evaluators = {c: SceneGraphEvaluator("predcls", constraint=c) for c in ("with", "semi", "no")}
    for gt_annotation, pred in videos:
        for ev in evaluators.values():
            ev.add_video(gt_annotation, pred)
    results = {c: ev.summary() for c, ev in evaluators.items()}
    print(format_table(results))
"""

from .classes import (ATTENTION_PREDICATES, CONTACTING_PREDICATES, NUM_PREDICATES, OBJECT_CLASSES, PREDICATES,
                      SPATIAL_PREDICATES)
from .evaluator import (KS, MEAN_RECALL_AGGREGATIONS, MEAN_RECALL_PREDICATES, PUBLISHED_MEAN_RECALL,
                        MultiConstraintEvaluator, SceneGraphEvaluator)
from .inputs import PackedGT, PackedPrediction, pack_gt, pack_prediction
from .matching import box_iou_plus1, paired_iou_plus1
from .report import format_table, plot_per_predicate, read_json, write_html, write_json, write_report

__all__ = [
    "ATTENTION_PREDICATES", "CONTACTING_PREDICATES", "KS", "MEAN_RECALL_AGGREGATIONS", "MEAN_RECALL_PREDICATES",
    "NUM_PREDICATES", "PUBLISHED_MEAN_RECALL", "OBJECT_CLASSES", "PREDICATES",
    "SPATIAL_PREDICATES", "MultiConstraintEvaluator", "PackedGT", "PackedPrediction", "SceneGraphEvaluator",
    "box_iou_plus1", "format_table", "pack_gt", "pack_prediction", "paired_iou_plus1", "plot_per_predicate",
    "read_json", "write_html", "write_json", "write_report",
]
