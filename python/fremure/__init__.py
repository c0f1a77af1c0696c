"""fremure: FReMuRe video scene-graph generation on Action Genome, on the torch.ops.fremure kernels.

The library's front door (what the ``fremure`` command calls)::

    import fremure
    run = fremure.load_run("runs/fremure")               # model, ModelConfig, priors, class names
    results, preds = fremure.evaluate(run.model, source, test.gt_annotations, run.config.mode)
    fremure.report("results/", results, preds, test)      # results.json/.txt, chart, report.html
    predictor = fremure.Predictor.from_run("runs/fremure", "faster_rcnn_ag.pth")
    graphs = predictor("my_video.mp4")                     # one SceneGraph per frame (docs/predict.md)

``ModelConfig`` / ``build_model`` make a model from options, ``TrainConfig`` / ``run_training``
train one, ``run_demo`` runs the main job. Names are imported on first use.
"""

from ._lazy import lazy_exports

from ._version import __version__

_EXPORTS = {
    "ModelConfig": "model.config", "build_model": "model.config", "register_model": "model.config",
    "TrainConfig": "train.config", "make_config": "train.config", "run_training": "train.run",
    "make_trainer": "train.run", "load_run": "runs", "load_published": "runs", "LoadedModel": "runs",
    "evaluate": "pipeline", "load_split": "pipeline", "report": "eval.report", "run_demo": "demo",
    "Predictor": "predict", "SceneGraph": "predict", "predict_videos": "predict",
}
_RENAMED = {"report": "write_report"}

__all__ = ["__version__", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _RENAMED)
