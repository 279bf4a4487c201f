"""Quality benchmark: renderer-proxy landmark probe, phoneme-viseme ambiguity and sync accuracy, SE4Lip vs acoustic.

Runs everything on a prepared dataset and writes, into ``--out`` (default: this folder):
    results.json   every number, the split, the recipe, the run times
    REPORT.md      the tables and figures below, generated from results.json
    probe.json / probe.md / probe.png / probe_<feature>.json   the landmark probe (se4lip_features.analysis.probe)
    visemes_dt.png PCA and t-SNE of /d/ vs /t/ per feature type (the paper's Fig. 4)

    python benchmarks/quality/run.py --weights weights/se4lip-grid-s1-v1.safetensors
    python benchmarks/quality/run.py --data /path/prepared --align /path/align --weights a.safetensors b.pt -f
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from se4lip_features import evaluate
from se4lip_features.analysis import probe, visemes
from se4lip_features.analysis.baselines import BASELINES
from se4lip_features.training.data import PreparedData

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = Path("/work/data/grid_s1")
DEFAULT_ALIGN = Path("/work/shared/data/grid_s1/align")
LIPS_REFERENCE = "lip landmarks (visual reference)"

log = logging.getLogger("quality")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset (se4lip-prepare)")
    p.add_argument("--align", type=Path, default=DEFAULT_ALIGN,
                   help="folder of GRID <clip id>.align files for the viseme analysis (skipped if absent)")
    p.add_argument("--weights", nargs="*", default=[], help="SE4Lip .safetensors weights or se4lip-train ckpt.pt")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=probe.ProbeConfig.steps, help="probe training steps")
    p.add_argument("--val-clips", type=int, default=60, help="held-out utterances (PreparedData.split)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--split", type=Path, help="split.json of a training run: hold out its 'val' clips")
    p.add_argument("--out", type=Path, default=HERE, help="output folder (default: benchmarks/quality)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-sync", action="store_true", help="skip the sync evaluation of SE4Lip weights")
    p.add_argument("--note", default="", help="a sentence for the report's header (e.g. what else ran on the machine)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing results.json")
    return p


def sync_accuracy(extractor, data, clips) -> dict:
    """SyncNet-style offsets of the held-out clips with the weights' own lip encoder."""
    sync = evaluate.sync_set(extractor.model, evaluate.dataset_clips(data, clips), data.fps, embed=extractor.embed)
    return {"summary": sync["summary"], "offsets": {k: r.get("offset") for k, r in sync["clips"].items()}}


def design(extractor) -> dict:
    """What an SE4Lip weights file is: its speech front end and encoder, and its training budget."""
    cfg, info = extractor.config, extractor.info
    train = json.loads(info.get("train_config") or "{}")
    return {"front_end": cfg.front_end, "speech_encoder": cfg.speech_encoder,
            "name": f"{'Mel' if cfg.front_end == 'mel' else 'STFT'}+{cfg.speech_encoder.upper()}",
            "steps": train.get("steps"),
            "clips_per_batch": train.get("clips_per_batch"), "lip_span": train.get("lip_span"),
            "train_wall_s": float(info["train_wall_s"]) if "train_wall_s" in info else None,
            "weights": info.get("path", info["name"]), "sha256": info["sha256"]}


def viseme_views(frame_features, data, anchors) -> dict:
    """Both embedding views of the letter anchors: {view: (x, labels)}."""
    return {view: visemes.embeddings(frame_features, data, anchors, view) for view in ("frame", "centre")}


def run(args) -> dict:
    t_start = time.perf_counter()
    data = PreparedData(args.data)
    train, held = probe.split_clips(data, args.val_clips, args.split_seed, args.split)
    cfg = probe.ProbeConfig(steps=args.steps)
    targets = probe.Targets.from_data(data, cfg.ref_eye_px)
    specs = [probe.feature_extractor(name) for name in args.baselines]
    specs += [probe.feature_extractor(str(w)) for w in args.weights]
    anchors = visemes.letter_anchors(args.align, [c.id for c in data.clips]) if args.align.is_dir() else []
    log.info("%s: %d clips (%d train, %d held out), %d letter anchors, features: %s", args.data, len(data.clips),
             len(train), len(held), len(anchors), ", ".join(label for label, _ in specs))

    viseme_results, dt_views, sync, timings = {}, {}, {}, {}
    designs = {label: design(ex) for label, ex in specs if hasattr(ex, "model")}
    if anchors:
        def lips_features(frames):
            return np.nan_to_num(targets.points[frames]).reshape(len(frames), 1, -1)
        views = viseme_views(lips_features, data, anchors)
        viseme_results[LIPS_REFERENCE] = {v: visemes.ambiguity(*xl) for v, xl in views.items()}
        dt_views[LIPS_REFERENCE] = views["frame"]

    def banks():
        for label, extractor in specs:
            bank = probe.FeatureBank.build(label, extractor, data, progress=sys.stderr.isatty())
            log.info("%s: features in %.0f s, table %s", label, bank.extract_s, bank.table.shape)
            yield bank
            t0 = time.perf_counter()
            if anchors:
                views = viseme_views(bank.frame_features, data, anchors)
                viseme_results[label] = {v: visemes.ambiguity(*xl) for v, xl in views.items()}
                x, labels = views["frame"]
                keep = np.isin(labels, ("d", "t"))
                dt_views[label] = (x[keep], labels[keep])
            timings.setdefault(label, {})["visemes_s"] = round(time.perf_counter() - t0, 2)
            if hasattr(extractor, "model") and not args.no_sync:
                t0 = time.perf_counter()
                sync[label] = sync_accuracy(extractor, data, held)
                timings[label]["sync_s"] = round(time.perf_counter() - t0, 2)
                log.info("%s: sync %s", label, sync[label]["summary"])

    result = probe.probe_all(banks(), targets, train, held, args.seeds, cfg)
    for label, r in result["features"].items():
        timings.setdefault(label, {}).update(extract_s=r["extract_s"], probe_s=round(float(np.sum(r["probe_s"])), 2))
    result["split"]["rule"] = (f"the 'val' ids of {args.split}" if args.split else
                               f"PreparedData.split({args.val_clips}, seed={args.split_seed})")
    result.update(dataset=str(args.data), fps=data.fps,
                  dataset_median_eye_px=float(np.nanmedian(np.linalg.norm(
                      np.asarray(data.landmarks[:, -2]) - np.asarray(data.landmarks[:, -1]), axis=-1))))
    t0 = time.perf_counter()
    if dt_views:
        visemes.plot_pair(dt_views, args.out / "visemes_dt.png")
    probe.write_outputs(result, args.out)
    plots_s = time.perf_counter() - t0
    return {
        "command": "python benchmarks/quality/run.py " + " ".join(sys.argv[1:]), "note": args.note,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "run_time_s": round(time.perf_counter() - t_start, 1), "plots_s": round(plots_s, 1), "timings": timings,
        "probe": result, "visemes": {"anchors": len(anchors), "align": str(args.align), "results": viseme_results},
        "sync": sync, "designs": designs,
    }


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's (benchmarks/live.py records it too)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _f(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def report(res: dict) -> str:
    """REPORT.md from the results."""
    pr = res["probe"]
    cfg = pr["config"]
    held = pr["split"]["held_out"]
    mins = res["run_time_s"] / 60
    out = [
        "# Quality benchmark: SE4Lip features against acoustic features",
        "",
        (f"Generated by `{res['command']}` on {res['date']}; every number below comes from that run "
        f"(`results.json`). Run time **{mins:.1f} min** on {res['machine']['cpu']} with "
        f"{res['machine']['torch_threads']} torch thread(s). {res['note']}"),
        "",
        f"Data: `{pr['dataset']}`, {pr['split']['n_train'] + pr['split']['n_held_out']} utterances at "
        f"{pr['fps']:g} fps. Split by utterance: {pr['split']['n_train']} for training, "
        f"{pr['split']['n_held_out']} held out, chosen by {pr['split']['rule']} (`PreparedData.split(60, seed=0)` "
        "is also the validation split of `se4lip-train`'s defaults, so weights trained with them never saw these "
        "utterances): "
        + ", ".join(f"`{c}`" for c in held) + ".",
        "",
        "## 1. Renderer-proxy landmark probe (the paper's LMD)",
        "",
        ("Our own implementation of the renderers' audio path (AudioNet: 4 × Conv1d k3 s2 over the W = 16 "
        "sub-steps, FC 64→64→32; AudioAttNet over frames i−4..i+3, zero-padded) plus an MLP head (32→"
        f"{cfg['hidden']}→80) predicting the frame's 40 mediapipe lip points, as the deviation from the training "
        "mean shape. Points are centred on the mean mouth position and scaled to "
        f"**{pr['ref_eye_px']:g} px between the outer eye corners** (this data: median "
        f"{pr['dataset_median_eye_px']:.1f} px). Same recipe for every feature type: features standardised "
        f"per channel on the training clips, Adam lr {cfg['lr']:g} cosine-decayed over {cfg['steps']} steps, "
        f"each step all frames of {cfg['clips_per_batch']} random training clips; seeds {pr['seeds']} "
        "(initialisation and batch order). LMD = mean Euclidean distance per landmark over all valid held-out "
        "frames; r = Pearson correlation of predicted vs true inner-lip gap over all valid held-out frames. "
        "± = standard deviation over seeds. Times: feature extraction for all utterances, probe training + "
        "scoring per seed."),
        "",
        probe.markdown_table(pr),
        "",
        "![probe](probe.png)",
        "",
        "## 2. Ablation of the speech encoder (the paper's Table 6)",
        "",
        *ablation_section(res),
        "",
        "## 3. Phoneme-viseme ambiguity (the paper's Fig. 4) on GRID letter words",
        "",
        (f"{res['visemes']['anchors']} letter words (b, p, d, t, v, f) from `{res['visemes']['align']}`, all "
        "utterances (SE4Lip's training utterances included: too few letters are held out). Anchor: the "
        "consonant, at the aligned onset + 40 ms (\"bee\", \"pee\", \"dee\", \"tee\", \"vee\") or end − 40 ms "
        "(\"eff\"). Score: Fisher ratio = squared centroid distance / mean within-class variance, each "
        "dimension standardised over the letter samples; same-viseme pairs b/p, d/t, v/f (voicing differs), "
        "different-viseme pairs b/d, p/t (place differs). **same / different: lower = the features group sounds "
        "by lip shape.** Chance = mean ratio over 200 random relabellings of each pair; \"ns\" marks a pair "
        "that is not separated beyond chance (permutation p ≥ 0.05). The lip-landmark row is the "
        "visual reference (normalised lip points of the anchor frame)."),
        "",
    ]
    vis = res["visemes"]["results"]
    if vis:
        out += [("**Frame view** — the anchor frame's [W, D] features flattened (what the renderer reads; "
                "320 ms of context for every feature type):"), "", visemes.markdown_table(vis, "frame"), "",
                ("**Centre view** — the single sub-step nearest the anchor (SE4Lip: one 200 ms window embedding; "
                "acoustic: one 25-50 ms frame):"), "", visemes.markdown_table(vis, "centre"), "",
                "![d vs t](visemes_dt.png)", "",
                "PCA (top) and t-SNE (bottom) of /d/ vs /t/, frame view, one column per feature type.", ""]
    else:
        out += ["(no alignments found: skipped)", ""]
    out += ["## 4. Sync accuracy (SE4Lip weights, held-out utterances)", ""]
    if res["sync"]:
        out += [("| weights | clips | accuracy (\\|offset\\| ≤ 1) | exact | mean offset | confidence | "
                "frame exact | frame ±1 |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, s in res["sync"].items():
            m = s["summary"]
            out.append(f"| {label} | {m['n_clips']} | {m['accuracy']:.3f} | {m['exact_accuracy']:.3f} | "
                       f"{m['mean_offset']:+.2f} | {m['mean_confidence']:.3f} | {m['frame_exact']:.3f} | "
                       f"{m['frame_within1']:.3f} |")
        out.append("")
        out.append("Acoustic features have no lip encoder, so no sync accuracy.")
        out += ["", *missed_clips(res["sync"])]
    else:
        out.append("(no SE4Lip weights given, or --no-sync)")
    out += ["", "## Run times (s)", "", "| features | extract | probe (all seeds) | visemes | sync |",
            "|---|---:|---:|---:|---:|"]
    for label, t in res["timings"].items():
        out.append(f"| {label} | {_f(t.get('extract_s'), 0)} | {_f(t.get('probe_s'), 0)} | "
                   f"{_f(t.get('visemes_s'), 0)} | {_f(t.get('sync_s'), 0)} |")
    out.append("")
    return "\n".join(out)


def missed_clips(sync: dict) -> list[str]:
    """Held-out clips that some encoder puts more than one frame off, with every encoder's offset.

    A clip that independently trained encoders all place at the same wrong offset points at the clip's own
    audio-video alignment rather than at an encoder.
    """
    labels = list(sync)
    missed = sorted({c for s in sync.values() for c, o in s["offsets"].items() if o is None or abs(o) > 1})
    if not missed:
        return ["Every encoder puts every held-out clip within one frame."]
    out = ["Clips that some encoder puts more than one frame off (predicted offset in frames per encoder):", "",
           "| clip | " + " | ".join(f"`{x}`" for x in labels) + " |", "|---|" + "---:|" * len(labels)]
    for clip in missed:
        out.append(f"| {clip} | " + " | ".join(f"{sync[x]['offsets'][clip]:+d}" for x in labels) + " |")
    return out


PAPER_ORDER = ("Mel+GRU", "Mel+CNN", "STFT+CNN", "STFT+GRU")


def ablation_section(res: dict) -> list[str]:
    """Table 6: the SE4Lip designs trained on the same budget, by LMD, mouth-opening r and sync accuracy."""
    designs, feats = res.get("designs", {}), res["probe"]["features"]
    budgets = {}
    for label, d in designs.items():
        budgets.setdefault((d["steps"], d["clips_per_batch"], d["lip_span"]), []).append(label)
    groups = {budget: labels for budget, labels in budgets.items() if len({designs[x]["name"] for x in labels}) > 1}
    if not groups:
        return [("(not run: pass weights of more than one design trained on the same budget with --weights, "
                 "e.g. se4lip-train --front-end mel --speech-encoder cnn)")]
    out = [("Encoders trained exactly like SE4Lip (same data, recipe, seed, validation split and number of steps; "
            "`se4lip-train --front-end {stft,mel} --speech-encoder {gru,cnn}`), differing only in the speech "
            "front end (257 log-STFT bins, or 80 log-mel bands of the same STFT with Wav2Lip's 55-7600 Hz "
            "Slaney filters) and the speech encoder (the 8-layer GRU, or a 2-D CNN sized to cost about the "
            "GRU's training step). LMD and r from the probe above; sync accuracy on the same held-out "
            "utterances. Training wall time: each run's own.")]
    for (steps, clips, span), labels in groups.items():
        labels = sorted(labels, key=lambda x: PAPER_ORDER.index(designs[x]["name"]))
        out += ["", f"Budget: {steps} steps of {clips} clips x {span} lip windows each.", "",
                "| speech encoder | LMD (px) ↓ | mouth-opening r ↑ | sync accuracy | exact | train (min) | weights |",
                "|---|---:|---:|---:|---:|---:|---|"]
        for label in labels:
            d, f = designs[label], feats[label]
            s = res["sync"].get(label, {}).get("summary", {})
            wall = "–" if d["train_wall_s"] is None else f"{d['train_wall_s'] / 60:.0f}"
            out.append(f"| {d['name']} | {probe.format_stat(f['lmd'])} | {probe.format_stat(f['gap_r'])} | "
                       f"{_f(s.get('accuracy'))} | {_f(s.get('exact_accuracy'))} | {wall} | `{label}` |")
    return out


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if (args.out / "results.json").exists() and not args.force:
        print(f"error: {args.out / 'results.json'} exists (use -f to overwrite)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        res = run(args)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    (args.out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "REPORT.md").write_text(report(res))
    print(f"wrote {args.out / 'REPORT.md'} ({res['run_time_s'] / 60:.1f} min)")
    print(probe.markdown_table(res["probe"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
