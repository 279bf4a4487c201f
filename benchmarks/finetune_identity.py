"""Per-identity fine-tuning, measured: GRID utterances joined into one talking-head video, then se4lip-finetune's path.

The video is ``--n-videos`` consecutive utterances of a GRID speaker (3 s each: 40 make 2 minutes, 80 make 4),
joined in the order given and written as one .mkv (MPEG-4 video, 16 kHz PCM audio): with ``--side held-out``
(the default) the first of ``benchmarks/quality/heldout.json``, utterances the shipped weights never trained on;
with ``--side training`` the first of the other utterances, in name order, so that the fine-tuned weights can
then be measured on the held-out ones (``benchmarks/quality/generalise.py``). Fine-tuning then runs exactly as
``se4lip-finetune VIDEO -o OUT`` does (mediapipe landmarks, 2 s segments, the last 30% of the timeline held
out, early stopping on held-out sync). Writes the fine-tuning report plus the time per minute of video to
``--out``. GRID s1 is the shipped weights' own training speaker, so this measures the cost and the path, not the
gain to expect on a new identity.

    python benchmarks/finetune_identity.py --init se4lip-gridlrw-melcnn-v1 --side training --n-videos 80 \
        --threads 2 --work /tmp/se4lip-generalisation/finetune \
        --out benchmarks/results/generalisation/finetune_grid_s1_4min.json

benchmarks/results/generalisation/finetune_grid_s1_4min.json comes from that command, run by
``benchmarks/quality/generalisation.sh`` (2 threads, nothing else running: 5.6 minutes for 4 minutes of video).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from se4lip_features import audio
from se4lip_features.training import lips
from se4lip_features.training.finetune import RECIPE, FinetuneConfig, finetune

HERE = Path(__file__).resolve().parent


def join_videos(videos: list[Path], out: Path, fps: float = 25.0) -> float:
    """Write ``videos`` one after another as one .mkv (MPEG-4 + 16 kHz PCM); returns its seconds."""
    import av

    frames, wavs = [], []
    for path in videos:
        f, _ = lips.read_video(path, fps)
        wav = audio.load_audio(path)
        n = round(len(f) / fps * audio.SAMPLE_RATE)  # exactly the frames' span, so the clips stay in sync
        frames.append(f)
        wavs.append(np.pad(wav[:n], (0, max(0, n - len(wav)))))
    frames, wav = np.concatenate(frames), np.concatenate(wavs)
    with av.open(str(out), "w") as container:
        vs = container.add_stream("mpeg4", rate=int(fps))
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt, vs.bit_rate = "yuv420p", 4_000_000
        aus = container.add_stream("pcm_s16le", rate=audio.SAMPLE_RATE)
        aus.layout = "mono"
        for frame in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vs.encode():
            container.mux(packet)
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)[None, :]
        af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        af.sample_rate = audio.SAMPLE_RATE
        for packet in aus.encode(af):
            container.mux(packet)
        for packet in aus.encode():
            container.mux(packet)
    return len(frames) / fps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=Path, default=Path("/work/shared/data/grid_s1/video"))
    p.add_argument("--ids", type=Path, default=HERE / "quality" / "heldout.json",
                   help="{'val': [ids]}: the held-out ids")
    p.add_argument("--side", choices=("held-out", "training"), default="held-out",
                   help="take the utterances from the held-out ids (in their order) or from the others (by name)")
    p.add_argument("--n-videos", type=int, default=40)
    p.add_argument("--steps", type=int, help="default: se4lip-finetune's rule")
    p.add_argument("--eval-every", type=int, default=RECIPE.val_every)
    p.add_argument("--init", help="starting weights (default: the default weights)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/se4lip-finetune-identity"))
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    held = json.loads(args.ids.read_text())["val"]
    ids = (held if args.side == "held-out" else
           sorted(p.stem for p in args.videos.glob("*.mp4") if p.stem not in set(held)))[: args.n_videos]
    video = args.work / f"grid_{len(ids)}.mkv"
    t0 = time.perf_counter()
    seconds = join_videos([args.videos / f"{i}.mp4" for i in ids], video)
    join_s = time.perf_counter() - t0
    cfg = FinetuneConfig(steps=args.steps, train=dataclasses.replace(RECIPE, val_every=args.eval_every))
    weights_out = args.work / "finetuned.safetensors"
    report = finetune(video, weights_out, cfg, init=args.init, work=args.work / "run")
    minutes = seconds / 60
    total = report["time_s"]["total"]
    result = {
        "command": "python benchmarks/finetune_identity.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "video": {"utterances": ids, "seconds": seconds, "join_s": round(join_s, 1)},
        "threads": args.threads, "torch": torch.__version__,
        "per_minute_of_video_s": {"prepare": round(report["time_s"]["prepare"] / minutes, 1),
                                  "train": round(report["time_s"]["train"] / minutes, 1),
                                  "total": round(total / minutes, 1)},
        "train_s_per_step": round(report["time_s"]["train"] / max(1, report["steps"]["run"]), 2),
        "report": report,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    b, a = report["before"], report["after"]
    print(f"{seconds / 60:.1f} min of video: {total:.0f} s ({total / minutes:.0f} s per minute of video); "
          f"held-out accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}, confidence {b['mean_confidence']:.3f} -> "
          f"{a['mean_confidence']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
