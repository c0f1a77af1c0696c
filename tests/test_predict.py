"""fremure.Predictor and ``fremure predict`` (docs/predict.md): the scene graphs of a video are the
evaluated model's predictions (the ``fremure eval`` SGDet path on the same frames), from frames, a
tensor or a video file, and the command writes, resumes and fails as documented."""

from __future__ import annotations

import json
import os
import pathlib
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from browser_support import browser, render
from detector_fakes import small_detector
from train_support import SAMPLE_DETECTOR
from video_support import encode_video, sample_frames
from fremure.cli import main
from fremure.data.cache import VideoEntrySource
from fremure.data.features import video_frame_paths
from fremure.data.frames import VideoDecodeError
from fremure.data.synthetic import sample_path
from fremure.model.config import ModelConfig, build_model
from fremure.pipeline import frequencies, load_split, predict_videos
from fremure.predict import (FrameSelection, PredictConfig, Predictor, SceneGraph, read_frames, read_jsonl)
from fremure.predict.predictor import clip_to_frame
from fremure.predict import predict_videos as predict_many
from fremure.runs import model_tensors
from fremure.train.checkpoint import save_checkpoint

SAMPLE = sample_path()
CONFIG = ModelConfig(mode="sgdet", dec_layer=1, keep_unused=False, rel_mem_compute="none", tracking=True)


@pytest.fixture(scope="module")
def sample():
    """(test split, model, detector, predictor): an untrained sgdet model on the small random detector."""
    train, test = load_split(SAMPLE, "train", "sgdet"), load_split(SAMPLE, "test", "sgdet")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = build_model(CONFIG, test.object_classes, frequencies(CONFIG, train, test)).eval()
    detector = small_detector(0, SAMPLE_DETECTOR)
    return test, model, detector, Predictor(model, detector, test.object_classes)


def _video_with_pairs(test, detector) -> int:
    source = VideoEntrySource(test, "sgdet", False, detector=detector)
    for index in range(len(test.video_list)):
        if source[index]["boxes"].shape[0] > 1:
            return index
    raise AssertionError("no sample video with a detection besides the person")


def test_predictor_on_ag_frames_gives_what_eval_predicts(sample):
    test, model, detector, predictor = sample
    index = _video_with_pairs(test, detector)
    source = VideoEntrySource(test, "sgdet", False, detector=detector)
    (_, pred), = predict_videos(model, source, [index])
    images = [Image.open(path) for path in video_frame_paths(test, index)]
    graphs = predictor(images, top_k=None)
    assert len(graphs) == len(images)
    boxes, labels, scores = pred["boxes"].numpy(), pred["pred_labels"].numpy(), pred["pred_scores"].numpy()
    pairs, im_idx = pred["pair_idx"].numpy(), pred["im_idx"].numpy()
    distributions = np.concatenate([pred[f"{n}_distribution"].numpy() for n in ("attention", "spatial", "contacting")], 1)
    assert sum(len(g.objects) for g in graphs) == boxes.shape[0]
    assert sum(len(g.relations) for g in graphs) == pairs.shape[0] * 26
    for t, graph in enumerate(graphs):
        rows = np.flatnonzero(boxes[:, 0] == t)
        assert [o.label for o in graph.objects] == labels[rows].tolist()
        assert [o.track for o in graph.objects] == labels[rows].tolist()         # tracking: one track per class
        expected = clip_to_frame(boxes[rows, 1:], graph.width, graph.height)     # eval's boxes, inside the frame
        np.testing.assert_array_equal(np.array([o.box for o in graph.objects]).reshape(-1, 4), expected)
        np.testing.assert_array_equal([o.score for o in graph.objects], scores[rows])
        for relation in graph.relations:
            human, thing = (relation.object, relation.subject) if relation.type == "spatial" else \
                (relation.subject, relation.object)
            pair = np.flatnonzero((im_idx == t) & (pairs[:, 0] == rows[human]) & (pairs[:, 1] == rows[thing]))
            assert pair.shape == (1,)
            assert relation.predicate_score == float(distributions[pair[0], relation.predicate])
            pair_score = float(scores[rows[human]]) * float(scores[rows[thing]])     # the evaluator's key, float64
            assert relation.score == pytest.approx(pair_score * relation.predicate_score, rel=1e-12)
        assert [r.score for r in graph.relations] == sorted((r.score for r in graph.relations), reverse=True)


def test_a_video_file_and_a_tensor_give_the_same_graphs_as_the_frames(sample, tmp_path):
    test, _, detector, predictor = sample
    index = _video_with_pairs(test, detector)
    name = test.video_list[index][0].split("/")[0]
    frames = sample_frames(SAMPLE)[name]
    encode_video(tmp_path / name, frames, "rgb_lossless")
    from_file = predictor(tmp_path / name, selection=FrameSelection(numbers=tuple(frames)))
    images = [np.asarray(Image.open(frames[n]).convert("RGB")) for n in sorted(frames)]
    from_images = predictor(images)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    from_tensor = predictor(tensor)
    assert [g.frame for g in from_file] == sorted(frames)
    assert all(g.time is not None for g in from_file)
    strip = [(g.objects, g.relations) for g in from_images]
    assert [(g.objects, g.relations) for g in from_file] == strip
    assert [(g.objects, g.relations) for g in from_tensor] == strip


def test_options_rank_and_cut_the_relations(sample):
    test, _, detector, predictor = sample
    images = [Image.open(path) for path in video_frame_paths(test, _video_with_pairs(test, detector))]
    every = predictor(images, top_k=None)
    top = predictor(images, top_k=3, min_score=every[0].relations[5].score)
    assert [g.relations for g in top] == [tuple(r for r in g.relations if r.score >= every[0].relations[5].score)[:3]
                                           for g in every]
    with_constraint = predictor(images, top_k=None, constraint="with")
    for graph in with_constraint:
        kinds = [(r.subject, r.object, r.type) for r in graph.relations]
        assert len(kinds) == len(set(kinds))       # one predicate per pair and relation type
    for bad, match in (({"top_k": 0}, "top_k"), ({"min_score": float("nan")}, "min_score"),
                       ({"constraint": "semi"}, "constraint")):
        with pytest.raises(ValueError, match=match):
            predictor(images, **bad)


def test_scene_graph_json_round_trips(sample):
    test, _, detector, predictor = sample
    graph = predictor([Image.open(p) for p in video_frame_paths(test, 0)], top_k=5)[0]
    data = json.loads(json.dumps(graph.to_dict(), allow_nan=False))
    assert data["schema"] == 1 and set(data) == {"schema", "frame", "time", "width", "height", "objects", "relations"}
    assert SceneGraph.from_dict(data) == graph
    with pytest.raises(ValueError, match="schema"):
        SceneGraph.from_dict({**data, "schema": 99})


def test_frame_selection_by_rate_every_and_numbers(tmp_path):
    name = "04V2Z.mp4"
    frames = sample_frames(SAMPLE)[name]
    count = encode_video(tmp_path / name, frames, "rgb_lossless")           # 24 fps
    assert [f.number for f in read_frames(tmp_path / name, FrameSelection(every=1))] == list(range(1, count + 1))
    assert [f.number for f in read_frames(tmp_path / name, FrameSelection(every=10))] == list(range(1, count + 1, 10))
    per_second = [f.number for f in read_frames(tmp_path / name)]             # default: the AG rate, 1 per second
    assert per_second == list(range(1, count + 1, 24))
    assert [f.number for f in read_frames(tmp_path / name, FrameSelection(fps=2.0))] == list(range(1, count + 1, 12))
    for bad in (dict(fps=0.0), dict(every=0), dict(fps=1.0, every=2), dict(numbers=())):
        with pytest.raises(ValueError):
            FrameSelection(**bad)


def _checkpoint(model, test, folder: pathlib.Path) -> str:
    """A run folder whose checkpoint records CONFIG, as ``fremure train`` writes one."""
    state = {"config": {"model": CONFIG.to_dict()}, "object_classes": list(test.object_classes)}
    return save_checkpoint(str(folder / "checkpoints"), "best_mrecall", model_tensors(model), state)


def test_predict_command_writes_resumes_and_names_failures(sample, tmp_path, capsys):
    test, model, detector, _ = sample
    _checkpoint(model, test, tmp_path / "run")
    name = test.video_list[_video_with_pairs(test, detector)][0].split("/")[0]
    encode_video(tmp_path / name, sample_frames(SAMPLE)[name], "rgb_lossless")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / name), str(tmp_path / "broken.mp4"), "--run", str(tmp_path / "run"),
            "--random-detector", "--target-size", "96", "--proposals", "4", "--every", "12", "--out", str(out),
            "--overlay", "--progress", "false"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "RANDOM weights" in err
    stem = pathlib.Path(name).stem
    graphs = read_jsonl(out / f"{stem}.jsonl")
    assert [g.frame for g in graphs] == [f.number for f in read_frames(tmp_path / name, FrameSelection(every=12))]
    assert all(json.loads(line)["video"] == stem for line in (out / f"{stem}.jsonl").read_text().splitlines())
    page = (out / f"{stem}.html").read_text()
    assert page.count("<section>") == len(graphs) and "data:image/jpeg;base64," in page
    assert "broken" in (out / "index.html").read_text()
    import av
    with av.open(str(out / f"{stem}.overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(graphs)
    stamp = (out / f"{stem}.jsonl").stat().st_mtime_ns
    assert main(args[:2] + args[3:]) == 0                       # without the broken video: resumed, nothing redone
    assert (out / f"{stem}.jsonl").stat().st_mtime_ns == stamp
    assert "1 skipped" in capsys.readouterr().out


def _run_and_video(sample, tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """A run folder of the sample's model and an (empty) video file: for the usage-error tests."""
    test, model, _, _ = sample
    _checkpoint(model, test, tmp_path / "run")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    return tmp_path / "run", video


def test_predict_command_refuses_bad_options(sample, tmp_path, capsys):
    run, video = _run_and_video(sample, tmp_path)
    base = ["predict", str(video), "--run", str(run), "--random-detector", "--out", str(tmp_path / "out")]
    assert main([*base, "--every", "2", "--fps", "2"]) == 2
    assert "--fps, --every and --all-frames" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--top-k", "0"])
    assert exit_info.value.code == 2 and "--top-k" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(run)]) == 2
    assert "exactly one of --run and --checkpoint" in capsys.readouterr().err


def test_predict_needs_a_detector_and_a_model_of_the_task(sample, tmp_path, capsys):
    test = sample[0]
    run, video = _run_and_video(sample, tmp_path)
    assert main(["predict", str(video), "--run", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "--detector-checkpoint" in capsys.readouterr().err
    predcls = ModelConfig(mode="predcls", dec_layer=1, keep_unused=False, rel_mem_compute="none")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        other = build_model(predcls, test.object_classes, None)
    state = {"config": {"model": {**predcls.to_dict(), "freq": False}}, "object_classes": list(test.object_classes)}
    save_checkpoint(str(tmp_path / "pc" / "checkpoints"), "last", model_tensors(other), state)
    assert main(["predict", str(video), "--run", str(tmp_path / "pc"), "--random-detector",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "predcls model" in err and "--boxes" in err


def test_user_boxes_give_what_predcls_eval_predicts(sample, tmp_path):
    """PredCls on boxes given per frame is the eval PredCls path on the same frames and GT boxes."""
    test, _, detector, _ = sample
    config = ModelConfig(mode="predcls", dec_layer=1, keep_unused=False, rel_mem_compute="none", freq=False)
    predcls = load_split(SAMPLE, "test", "predcls")
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = build_model(config, predcls.object_classes, None).eval()
    (_, pred), = predict_videos(model, VideoEntrySource(predcls, "predcls", False, detector=detector), [0])
    names = predcls.object_classes
    boxes = [[{"box": frame[0]["person_bbox"].reshape(-1).tolist(), "class": "person"}] +
             [{"box": np.asarray(o["bbox"]).tolist(), "class": names[o["class"]]} for o in frame[1:]]
             for frame in predcls.gt_annotations[0]]
    graphs = Predictor(model, detector, names)([Image.open(p) for p in video_frame_paths(predcls, 0)], boxes=boxes,
                                               top_k=None)
    got = np.concatenate([[o.box for o in g.objects] for g in graphs])
    np.testing.assert_allclose(got, pred["boxes"].numpy()[:, 1:], rtol=0, atol=1e-4)
    assert [o.label for g in graphs for o in g.objects] == pred["labels"].tolist()
    scores = sorted(r.predicate_score for g in graphs for r in g.relations)
    expected = np.concatenate([pred[f"{n}_distribution"].numpy().reshape(-1)
                               for n in ("attention", "spatial", "contacting")])
    assert scores == sorted(expected.tolist())
    with pytest.raises(ValueError, match="no box of class 'person'"):
        Predictor(model, detector, names)([Image.open(p) for p in video_frame_paths(predcls, 0)],
                                          boxes=[b[1:] for b in boxes])


def test_every_line_of_another_container_and_codec_validates(sample, tmp_path):
    """A lossy yuv420 Matroska file: every JSONL line validates against the shipped JSON schema,
    boxes lie inside the frame, relations are sorted by score."""
    jsonschema = pytest.importorskip("jsonschema")
    import importlib.resources
    schema = json.loads(importlib.resources.files("fremure.predict").joinpath("scene_graph.schema.json").read_text())
    test, _, detector, predictor = sample
    name = test.video_list[_video_with_pairs(test, detector)][0].split("/")[0]
    encode_video(tmp_path / "clip.mkv", sample_frames(SAMPLE)[name], "yuv420")
    outcomes = predict_many(predictor, [tmp_path / "clip.mkv"], tmp_path / "out",
                            PredictConfig(every=6, top_k=None, progress=False))
    assert outcomes[0].error is None and outcomes[0].frames > 1
    lines = (tmp_path / "out" / "clip.jsonl").read_text().splitlines()
    assert len(lines) == outcomes[0].frames
    for line in lines:
        record = json.loads(line)
        jsonschema.validate(record, schema)
        for obj in record["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 <= x2 <= record["width"] - 1 and 0 <= y1 <= y2 <= record["height"] - 1, obj
        scores = [r["score"] for r in record["relations"]]
        assert scores == sorted(scores, reverse=True)


def test_a_killed_batch_resumes_without_touching_finished_videos(sample, tmp_path):
    test, _, _, predictor = sample
    frames = sample_frames(SAMPLE)
    videos = []
    for name in sorted(frames)[:3]:
        encode_video(tmp_path / name, frames[name], "rgb_lossless")
        videos.append(tmp_path / name)
    calls = []

    class Interrupted:                      # Ctrl-C while the second video is predicted
        mode = predictor.mode

        def __call__(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return predictor(*args, **kwargs)

    config = PredictConfig(every=12, progress=False)
    with pytest.raises(KeyboardInterrupt):
        predict_many(Interrupted(), videos, tmp_path / "out", config)
    first = tmp_path / "out" / f"{videos[0].stem}.jsonl"
    assert first.is_file() and not (tmp_path / "out" / f"{videos[1].stem}.jsonl").exists()
    assert not list((tmp_path / "out").glob(".*.tmp"))
    stamp = first.stat().st_mtime_ns
    outcomes = predict_many(predictor, videos, tmp_path / "out", config)
    assert [o.skipped for o in outcomes] == [True, False, False] and not any(o.error for o in outcomes)
    assert first.stat().st_mtime_ns == stamp
    assert all((tmp_path / "out" / f"{v.stem}.jsonl").is_file() for v in videos)


def test_a_published_checkpoint_predicts_as_the_same_weights_in_our_format(sample, tmp_path):
    from fremure.compat import export_reference_state_dict
    from fremure.runs import load_published
    test, model, detector, predictor = sample
    train = load_split(SAMPLE, "train", "sgdet")
    torch.save({"state_dict": export_reference_state_dict(model)}, tmp_path / "published.tar")
    loaded = load_published(tmp_path / "published.tar", CONFIG, frequencies(CONFIG, train, test), test.object_classes)
    images = [Image.open(p) for p in video_frame_paths(test, _video_with_pairs(test, detector))]
    assert Predictor(loaded.model, detector, test.object_classes)(images) == predictor(images)


@pytest.mark.skipif(browser() is None, reason="no Chromium-family browser installed (apt-get install chromium)")
def test_the_viewer_renders_boxes_and_triplets(sample, tmp_path):
    test, _, detector, predictor = sample
    name = test.video_list[_video_with_pairs(test, detector)][0].split("/")[0]
    encode_video(tmp_path / name, sample_frames(SAMPLE)[name], "rgb_lossless")
    predict_many(predictor, [tmp_path / name], tmp_path / "out", PredictConfig(every=12, progress=False))
    stem = pathlib.Path(name).stem
    graphs = read_jsonl(tmp_path / "out" / f"{stem}.jsonl")
    dom = render(tmp_path / "out" / f"{stem}.html", tmp_path / "viewer.png")
    assert dom.count("<rect") == sum(len(g.objects) for g in graphs)
    first = graphs[0].relations[0]
    assert f"<td>{first.name}</td>" in dom and f"<td>{first.score:.3f}</td>" in dom
    with Image.open(tmp_path / "viewer.png") as shot:
        pixels = np.asarray(shot.convert("L"), dtype=np.float64)
    assert pixels.std() > 20, pixels.std()          # frames and tables, not a blank page


def test_videos_without_a_stream_or_frames_are_named(sample, tmp_path):
    import av
    _, _, _, predictor = sample
    with av.open(str(tmp_path / "audio.mkv"), "w") as container:          # an audio stream only
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (tmp_path / "empty.mp4").write_bytes(b"")                                # zero bytes
    outcomes = predict_many(predictor, [tmp_path / "audio.mkv", tmp_path / "empty.mp4", tmp_path / "missing.mp4"],
                            tmp_path / "out", PredictConfig(progress=False))
    errors = [o.error for o in outcomes]
    assert "has no video stream" in errors[0]
    assert "cannot open video" in errors[1] and "empty.mp4" in errors[1]
    assert "video file not found" in errors[2]
    assert not list((tmp_path / "out").glob("*.jsonl"))
    name = "04V2Z.mp4"                                                       # frames asked past the end: none
    encode_video(tmp_path / name, sample_frames(SAMPLE)[name], "rgb_lossless")
    with pytest.raises(VideoDecodeError, match="no frame decoded"):
        read_frames(tmp_path / name, FrameSelection(numbers=(10_000,)))
