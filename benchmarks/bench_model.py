"""End-to-end training step of the FReMuRe relation model (PredCls, D = 1936) on AG-sized videos.

One step = forward(entry, "train") + the published losses (attention cross-entropy on the head's
output, spatial/contacting binary cross-entropy) + backward + clip_grad_norm(5) + AdamW, one video
per step, frequency priors on, as the published train.py does.

Providers (each in its own subprocess, so the peak RSS is its own):
- ``ops``: fremure (packed tokens, torch.ops.fremure kernels, encoders shared by the three
  relation types);
- ``reference``: the same parameters through the published computation
  (:func:`fremure.model.published.to_published`: padded layouts, one relation type at a time)
  with every fremure op on its plain-PyTorch reference (``use_kernels("reference")``);
- ``published`` (with ``--published PATH``): the published code itself from a local checkout of
  lcx529955/FReMuRe (``PATH/lib/FReMuRe.py``; never vendored). Its compiled helpers that PredCls
  does not use (RoIAlign/NMS, the Cython box code, GloVe download) are replaced by stand-ins
  before import; ``--optimizer own`` gives each implementation its own AdamW (fremure: torch's fused AdamW;
published: its lib/AdamW.py), ``--optimizer torch`` torch.optim.AdamW for all.

Reports the median step time over the video set (several rounds, providers interleaved), the
median process CPU time per step (less sensitive to other jobs on a shared machine) and the peak
resident memory of each provider's process (and, with ``--device cuda``, its peak allocated GPU
memory; times are then taken between device synchronisations); writes
benchmarks/results/model_step_<cpu|cuda>_<optimizer>_optimizer.csv.

``--account`` adds the per-step accounting of each provider (benchmarks/_accounting.py, on the
largest video of the set): GFLOP per step (FlopCounterMode), dispatched ops, kernel launches and
host syncs (fremure.train.accounting.OpCounter), profiler leaf events, the GEMMs' time, share of the
CPU time and GFLOP/s against torch.mm on the same shapes in isolation; summary columns go to
model_step_<device>_<optimizer>_optimizer_account.csv, one row per GEMM shape to
model_step_gemm_<device>_<provider>.csv (docs/benchmarks.md).

    PYTHONPATH=python python3 benchmarks/bench_model.py [--published /path/to/FReMuRe] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
import warnings

import torch
import torch.nn.functional as F

import fremure_ext

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
REPO = pathlib.Path(__file__).resolve().parents[1]
FREQ = {"attention": [0.46, 0.40, 0.14], "spatial": [0.17, 0.05, 0.40, 0.13, 0.22, 0.03],
        "contact": [0.01, 0.01, 0.01, 0.02, 0.26, 0.08, 0.01, 0.01, 0.02, 0.20, 0.08, 0.03, 0.01, 0.02,
                    0.02, 0.20, 0.01]}


def sample_videos(count: int, seed: int, frames=(20, 60), pairs=(1, 6)) -> list[list[int]]:
    """Pairs per frame of ``count`` AG-sized videos: 20-60 frames, 1-6 pairs per frame."""
    gen = torch.Generator().manual_seed(seed)
    videos = []
    for _ in range(count):
        b = int(torch.randint(frames[0], frames[1] + 1, (1,), generator=gen))
        videos.append(torch.randint(pairs[0], pairs[1] + 1, (b,), generator=gen).tolist())
    return videos


def make_entry(pairs_per_frame: list[int], seed: int) -> tuple[dict, dict]:
    """A PredCls entry and its relation labels (one attention class, 1-2 spatial, 1-3 contacting)."""
    from fremure.data.synthetic_entry import predcls_entry

    entry = predcls_entry(pairs_per_frame, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    p = entry["pair_idx"].shape[0]
    spatial = torch.zeros(p, 6)
    contact = torch.zeros(p, 17)
    spatial[torch.arange(p), torch.randint(0, 6, (p,), generator=gen)] = 1
    contact[torch.arange(p), torch.randint(0, 17, (p,), generator=gen)] = 1
    contact[torch.arange(p), torch.randint(0, 17, (p,), generator=gen)] = 1
    labels = {"attention": torch.randint(0, 3, (p,), generator=gen), "spatial": spatial, "contacting": contact}
    return entry, labels


def published_loss(out: dict, labels: dict) -> torch.Tensor:
    """The published train.py losses for rel_head="bayesian" (cross-entropy on the probabilities, Q-T3)."""
    return (F.cross_entropy(out["attention_distribution"], labels["attention"])
            + F.binary_cross_entropy(out["spatial_distribution"], labels["spatial"])
            + F.binary_cross_entropy(out["contacting_distribution"], labels["contacting"]))


def build_fremure(provider: str, rel_head: str, memory: bool):
    from fremure.model import FReMuRe
    from fremure.model.published import to_published

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no GloVe vectors")
        model = FReMuRe(rel_head=rel_head, freq_attention=torch.tensor(FREQ["attention"]),
                        freq_spatial=torch.tensor(FREQ["spatial"]), freq_contact=torch.tensor(FREQ["contact"]))
    if provider == "reference":
        to_published(model)
    if memory:
        model.rel_memory = _memory()
    for name, p in model.named_parameters():
        if name.startswith("object_classifier."):
            p.requires_grad_(False)  # frozen in PredCls, as published
    return model


def _memory() -> dict:
    gen = torch.Generator().manual_seed(7)
    return {r: torch.randn(c, 1936, generator=gen) * 0.1 for r, c in (("attention", 3), ("spatial", 6),
                                                                        ("contacting", 17))}


def _install_published_stand_ins() -> None:
    """Stand-ins for the published code's compiled/online helpers that PredCls never calls."""
    import torchvision

    from fremure.data.geometry import pair_box_masks

    def module(name: str, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    for name in ("fasterRCNN", "fasterRCNN.lib", "fasterRCNN.lib.model"):
        module(name)
    module("fasterRCNN.lib.model.roi_layers", ROIAlign=torchvision.ops.RoIAlign, nms=torchvision.ops.nms)
    module("lib.draw_rectangles.draw_rectangles",
           draw_union_boxes=lambda pairs, size: pair_box_masks(torch.as_tensor(pairs), size).numpy())
    module("lib.fpn.box_intersections_cpu.bbox", bbox_overlaps=None, bbox_intersections=None)
    module("lib.word_vectors", obj_edge_vectors=lambda names, wv_type=None, wv_dir=None, wv_dim=200:
           torch.randn(len(names), wv_dim))


def build_published(path: str, rel_head: str, memory: bool):
    sys.path.insert(0, str(pathlib.Path(path).resolve()))
    _install_published_stand_ins()
    from lib.FReMuRe import FReMuRe as Published  # noqa: E402  (the published module, from PATH)

    model = Published(mode="predcls", attention_class_num=3, spatial_class_num=6, contact_class_num=17,
                      obj_classes=[f"class{i}" for i in range(37)], enc_layer_num=1, dec_layer_num=3,
                      obj_mem_compute=False, rel_mem_compute="joint", mem_fusion="late", selection="manual",
                      selection_lambda=0.5, take_obj_mem_feat=False, obj_head="linear", rel_head=rel_head, K=6,
                      tracking=False, freq_attention=torch.tensor(FREQ["attention"]),
                      freq_spatial=torch.tensor(FREQ["spatial"]), freq_contact=torch.tensor(FREQ["contact"]))
    if memory:
        model.rel_memory = _memory()
    for name, p in model.named_parameters():
        if name.startswith("object_classifier."):
            p.requires_grad_(False)
    return model


def make_optimizer(model, provider: str, choice: str, published: str | None):
    """AdamW, lr 1e-5 (published recipe). ``choice="own"``: each implementation's own optimizer
    (fremure: torch's fused AdamW; published: its lib/AdamW.py); ``"torch"``: torch.optim.AdamW
    (foreach) for every provider, so that only the model differs."""
    params = [p for p in model.parameters() if p.requires_grad]
    if choice == "torch":
        return torch.optim.AdamW(params, lr=1e-5)
    if provider == "published":
        from lib.AdamW import AdamW as PublishedAdamW  # from the checkout (build_published put it on sys.path)

        return PublishedAdamW(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5, fused=True)


def to_device(value, device: str):
    """``value`` (tensor, dict or list of them) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def synchronize(device: str) -> None:
    """Waits for queued GPU work, so wall-clock times cover the whole step."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_step(provider: str, args):
    """A training-step closure ``step(entry, labels)`` of one provider's model (on ``args.device``)."""
    torch.manual_seed(0)
    if provider == "published":
        model = build_published(args.published, args.rel_head, args.memory)
    else:
        model = build_fremure(provider, args.rel_head, args.memory)
    model.to(args.device)
    if getattr(model, "rel_memory", None) is not None:
        model.rel_memory = to_device(model.rel_memory, args.device)
    model.train()
    optimizer = make_optimizer(model, provider, args.optimizer, args.published)
    kernels = "reference" if provider == "reference" else "auto"

    amp = contextlib.nullcontext
    if args.amp != "none":
        amp = functools.partial(torch.autocast, torch.device(args.device).type, dtype=AMP_DTYPES[args.amp])

    def step(entry, labels):
        with fremure_ext.dispatch.use_kernels(kernels), amp():
            out = model(dict(entry), "train")
        loss = published_loss({k: v.float() for k, v in out.items() if k.endswith("_distribution")}, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5, norm_type=2)
        optimizer.step()

    return step


def paired(args, providers: list[str]) -> None:
    """All providers in one process, stepping in turn on each video: on a machine shared with
    other jobs, each video's time ratio compares steps run under nearly the same load."""
    steps = {p: make_step(p, args) for p in providers}
    videos = sample_videos(args.videos, args.seed)
    data = [to_device(make_entry(v, args.seed + i), args.device) for i, v in enumerate(videos)]
    for step in steps.values():
        step(*data[0])  # warm-up
    times: dict[str, list[float]] = {p: [] for p in providers}
    for round_ in range(args.rounds):
        for entry, labels in data:
            for p, step in steps.items():
                synchronize(args.device)
                start = time.perf_counter()
                step(entry, labels)
                synchronize(args.device)
                times[p].append(time.perf_counter() - start)
        print(f"round {round_} done", flush=True)
    baseline = providers[-1]
    for p in providers:
        ratios = [b / t for b, t in zip(times[baseline], times[p])]
        print(f"{p:10s} median step {statistics.median(times[p]) * 1e3:8.1f} ms  median per-video speed-up vs "
              f"{baseline} x{statistics.median(ratios):5.2f} (min x{min(ratios):5.2f}, max x{max(ratios):5.2f})")


def worker(args) -> dict:
    step = make_step(args.provider, args)
    videos = sample_videos(args.videos, args.seed)
    data = [to_device(make_entry(v, args.seed + i), args.device) for i, v in enumerate(videos)]
    step(*data[0])  # warm-up (allocator, optimizer state)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for entry, labels in data:
        synchronize(args.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        step(entry, labels)
        synchronize(args.device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    pairs = [sum(v) for v in videos]
    result = {"provider": args.provider, "times": times, "cpu_times": cpu_times, "pairs": pairs,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None}
    if args.account:
        from _accounting import account_step

        # after the timing, so that the three extra steps (FLOPs, op count, profiler) cost it nothing;
        # on the largest video of the set, the closest to the AG videos of 175-196 pairs
        largest = max(range(len(pairs)), key=pairs.__getitem__)
        result["account"], result["gemms"] = account_step(step, *data[largest], device=args.device)
        result["account"]["account_pairs"] = pairs[largest]
    return result


def run_worker(provider: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--provider", provider, "--videos", str(args.videos),
           "--seed", str(args.seed), "--rel-head", args.rel_head, "--optimizer", args.optimizer,
           "--device", args.device]
    if args.memory:
        cmd.append("--memory")
    if args.account:
        cmd.append("--account")
    cmd += ["--amp", args.amp]
    if args.published:
        cmd += ["--published", args.published]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{provider} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--published", help="local checkout of lcx529955/FReMuRe to time as well")
    parser.add_argument("--videos", type=int, default=6, help="videos (= steps) per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, providers interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rel-head", default="bayesian", choices=["linear", "bayesian", "gmm", "gmm_plus"])
    parser.add_argument("--memory", action="store_true", help="relation memory filled (epochs > 0)")
    parser.add_argument("--optimizer", default="own", choices=["own", "torch"],
                        help="own: fused AdamW for fremure, lib/AdamW.py for published; torch: torch AdamW for all")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (GPU: synchronised timing, peak "
                        "allocated GPU memory)")
    parser.add_argument("--quick", action="store_true", help="2 videos, 1 round (smoke test)")
    parser.add_argument("--providers", default="ops,reference", help="comma-separated subset of ops,reference")
    parser.add_argument("--paired", action="store_true",
                        help="one process, providers alternating per video; per-video speed-ups (no memory figures)")
    parser.add_argument("--account", action="store_true",
                        help="per-step accounting of the first video in each worker: FLOPs, dispatched ops, launches, "
                        "host syncs, GEMM time and GFLOP/s vs torch.mm on the same shapes in isolation "
                        "(summary columns in the CSV, per-shape rows in model_step_gemm_<device>_<provider>.csv)")
    parser.add_argument("--amp", default="none", choices=["none", *AMP_DTYPES],
                        help="autocast of the forward pass (losses, backward and optimizer stay outside it)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.videos, args.rounds = 2, 1
    providers = args.providers.split(",") + (["published"] if args.published else [])
    if args.paired:
        paired(args, providers)
        return
    runs: dict[str, list[dict]] = {p: [] for p in providers}
    for round_ in range(args.rounds):
        for provider in providers:
            result = run_worker(provider, args)
            runs[provider].append(result)
            print(f"round {round_} {provider:10s} median step {statistics.median(result['times']) * 1e3:8.1f} ms  "
                  f"(CPU {statistics.median(result['cpu_times']) * 1e3:8.1f} ms)  "
                  f"peak RSS {result['peak_rss_mib']:8.0f} MiB", flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name(torch.device(args.device))}, torch {torch.__version__}"
    baseline = "published" if args.published else "reference"
    if baseline not in providers:       # e.g. --providers ops: figures relative to the first provider
        baseline = providers[0]
    medians = {p: statistics.median(t for r in runs[p] for t in r["times"]) for p in providers}
    cpu = {p: statistics.median(t for r in runs[p] for t in r["cpu_times"]) for p in providers}
    rows = []
    for p in providers:
        rows.append(dict(provider=p, device=machine, rel_head=args.rel_head, memory=args.memory,
                         optimizer=args.optimizer, amp=args.amp,
                         videos=args.videos, rounds=args.rounds,
                         pairs_per_video=statistics.mean(runs[p][0]["pairs"]),
                         median_step_ms=medians[p] * 1e3, speedup_vs_baseline=medians[baseline] / medians[p],
                         median_step_cpu_ms=cpu[p] * 1e3, cpu_speedup_vs_baseline=cpu[baseline] / cpu[p],
                         baseline=baseline, peak_rss_mib=max(r["peak_rss_mib"] for r in runs[p]),
                         peak_gpu_mib=max((r["peak_gpu_mib"] or 0) for r in runs[p]) or None))
        if args.account:
            rows[-1].update(runs[p][-1]["account"])
        print(f"{p:10s} median step {medians[p] * 1e3:8.1f} ms  x{medians[baseline] / medians[p]:5.2f} vs {baseline}"
              f"  (CPU time {cpu[p] * 1e3:8.1f} ms, x{cpu[baseline] / cpu[p]:5.2f})"
              f"  peak RSS {rows[-1]['peak_rss_mib']:8.0f} MiB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    # accounting runs get their own file: the plain timing CSVs back earlier README figures
    suffix = ("_account" if args.account else "") + ("" if args.amp == "none" else f"_{args.amp}")
    write_csv(RESULTS / f"model_step_{kind}_{args.optimizer}_optimizer{suffix}.csv", rows)
    if args.account:
        write_accounting(rows, runs, kind)


def write_accounting(rows: list[dict], runs: dict[str, list[dict]], kind: str) -> None:
    """Prints the accounting columns of every provider and writes each one's per-shape GEMM rows."""
    for row in rows:
        print(f"{row['provider']:10s} {row['gflop_per_step']:7.1f} GFLOP  {row['launch_ops']:6d} launches "
              f"({row['dispatched_ops']} dispatched, {row['profiler_leaf_events']} profiler leaf events, "
              f"{row['host_syncs']} host syncs)  GEMMs {row['gemm_calls']} calls {row['gemm_ms']:8.1f} ms "
              f"{row['gemm_gflops']:6.1f} GFLOP/s = {row['gemm_fraction_of_isolated']:4.2f} of isolated "
              f"torch.mm ({row['isolated_gemm_gflops']:6.1f})")
        write_csv(RESULTS / f"model_step_gemm_{kind}_{row['provider']}.csv", runs[row["provider"]][-1]["gemms"])


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    """Writes ``rows`` (dicts with the same keys) to ``path`` with a header line."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("wrote", path)


if __name__ == "__main__":
    main()
