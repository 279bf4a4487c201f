"""Issue 20's lever: Whisper tiny.en's encoder as SE4Lip's speech front end, frozen, under a head trained on lips.

The head reads, for each speech window (centred on t, as SE4Lip's 200 ms windows are), the encoder frames at
t + 20 k ms, k = -5..5 (linearly interpolated, as the ``whisper-tiny.en`` baseline puts frames on the sub-step
grid), and maps them to the 512-d space of a released model's lip encoder, which stays frozen: its lip
embeddings are computed once, so a step costs only the head. The loss is the model's own (Eq. 6's BCE + the
offset softmax, :func:`se4lip_features.model.pair_losses`), on SE4Lip's batches (runs of 8 lip windows per clip,
speech windows 8 frames beyond them). Whisper's encoder frames (each clip padded to 30 s, as Whisper reads it
and as the baseline computes them) are cached per set, so the baseline and the head share one encoder pass.

Then the held-out figures of ``generalise.py`` (sync with the frozen lip encoder, the landmark probe) for
log-mel, Whisper tiny.en, the release and the head, on each set. Writes ``whisper_front_end.{json,md}``,
the head (``head.safetensors``) and its training curve into ``--out``.

    python benchmarks/quality/whisper_front_end.py --threads 2 --cache /work/cache/whisper \\
        --out benchmarks/results/levers/whisper_front_end
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from generalise import default_sets, evaluate_set, parse_set, report_header, write_report
from torch import nn

import se4lip_features
from se4lip_features import evaluate
from se4lip_features.analysis import baselines, probe
from se4lip_features.frames import LAYOUTS, check_options, framed_waveform, substep_grid
from se4lip_features.model import LossConfig, pair_losses
from se4lip_features.training.data import PreparedData
from se4lip_features.training.train import _voiced_frames

LOSS = LossConfig()  # the release recipe's loss, without its consistency term (the head sees no noisy twin)
VAL_CLIPS = 40  # training clips per set set aside to choose the head's step (the held-out clips are never seen)
HALF_SPAN = 5  # encoder frames each side of a window's centre: 11 frames of 20 ms, the 200 ms window
DEFAULT_SETS = default_sets(Path("/work/data"))  # generalise.py's sets, where it looks for them by default

log = logging.getLogger("whisper_front_end")


class CachedWhisper(baselines.WhisperTinyEn):
    """The ``whisper-tiny.en`` baseline with its encoder frames kept per audio (by content) in memory and on disk."""

    def __init__(self, cache_dir: Path):
        super().__init__()
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.frames: dict[str, np.ndarray] = {}
        for path in sorted(cache_dir.glob("*.npz")):
            with np.load(path) as z:
                self.frames.update({k: z[k] for k in z.files})
        self.new: dict[str, np.ndarray] = {}

    def encoder_frames(self, wav16: np.ndarray) -> np.ndarray:
        key = hashlib.sha1(np.ascontiguousarray(wav16, np.float32).tobytes()).hexdigest()
        if key not in self.frames:
            self.frames[key] = self.new[key] = super().encoder_frames(wav16).astype(np.float16)
            if len(self.new) >= 200:
                self.flush()
        return self.frames[key].astype(np.float32)

    def flush(self) -> None:
        if self.new:
            np.savez(self.cache_dir / f"{len(list(self.cache_dir.glob('*.npz'))):04d}.npz", **self.new)
            self.new = {}


def window_frames(frames: np.ndarray, times: np.ndarray) -> torch.Tensor:
    """Encoder frames (T, 384) -> the 11 frames around each time (n, 11, 384), interpolated, ends repeated."""
    pos = np.asarray(times, np.float64)[:, None] / baselines.WHISPER_FRAME_S + np.arange(-HALF_SPAN, HALF_SPAN + 1)
    return torch.from_numpy(baselines.lerp_frames(frames, pos))


class Head(nn.Module):
    """(n, 11, 384) Whisper encoder frames around a window's centre -> (n, 512) unit-norm speech embedding."""

    def __init__(self, dim_in: int = baselines.WHISPER_DIM, width: int = 256, embed_dim: int = 512):
        super().__init__()
        self.norm = nn.LayerNorm(dim_in)
        self.net = nn.Sequential(nn.Conv1d(dim_in, width, 3, padding=1), nn.GELU(),
                                 nn.Conv1d(width, width, 3, stride=2, padding=1), nn.GELU(),  # 11 -> 6
                                 nn.Conv1d(width, width, 3, stride=2, padding=1), nn.GELU())  # 6 -> 3
        self.proj = nn.Linear(3 * width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(self.norm(x).transpose(1, 2))  # (n, width, 3)
        return F.normalize(self.proj(y.flatten(1)), dim=-1)


class HeadFeatures:
    """SE4Lip's extractor contract (``extract``, ``dim``, and ``model`` + ``embed`` for sync) for the head."""

    def __init__(self, head: Head, whisper: CachedWhisper, model, name: str):
        self.head, self.whisper, self.model, self.dim, self.name = head.eval(), whisper, model, 512, name

    @torch.inference_mode()
    def embed(self, wav: torch.Tensor, centres: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        frames = self.whisper.encoder_frames(wav.cpu().numpy())
        return self.head(window_frames(frames, centres.cpu().numpy() / se4lip_features.audio.SAMPLE_RATE))

    def extract(self, wav, sr, fps=25.0, layout="ds", name="audio") -> np.ndarray:
        check_options(fps, layout)
        wav16, n = framed_waveform(wav, sr, fps, name)
        times, index = substep_grid(n, fps, LAYOUTS[layout])
        centres = torch.from_numpy(np.round(times * se4lip_features.audio.SAMPLE_RATE).astype(np.int64))
        return self.embed(torch.from_numpy(wav16), centres).numpy()[index]


class CachedClips:
    """Per training clip: its Whisper encoder frames, the frozen lip encoder's embedding of every valid
    window, and the first frames of the runs of lip windows a batch may take (valid and voiced)."""

    def __init__(self, items, model, whisper: CachedWhisper, lip_span: int, reference: bool = False, margin: int = 8):
        self.frames, self.lips, self.starts, self.fps, self.reference, self.margin = [], [], [], [], [], margin
        half = model.config.window_frames // 2
        for data, clip in items:
            wav, valid = data.clip_audio(clip), data.clip_valid(clip)
            ok = evaluate.lip_windows(valid, half)
            emb = torch.zeros(clip.n_frames, 512)
            if ok.any():
                emb[ok] = evaluate.lip_embeddings(model, data.clip_lips(clip), np.flatnonzero(ok)).float()
            run = (np.convolve(ok.astype(int), np.ones(lip_span, int), mode="valid") == lip_span
                   if lip_span <= len(ok) else np.zeros(0, bool))
            voiced = _voiced_frames(wav, clip.n_frames, data.fps)[lip_span // 2: lip_span // 2 + len(run)]
            self.frames.append(whisper.encoder_frames(wav))
            self.lips.append(emb)
            self.starts.append(np.flatnonzero(run & voiced))
            self.fps.append(data.fps)
            if reference:  # the model's own speech windows at frames -margin .. n_frames + margin
                self.reference.append(evaluate.speech_embeddings(model, wav, np.arange(-margin, clip.n_frames + margin),
                                                                 data.fps).float())
        whisper.flush()
        self.usable = np.asarray([i for i, s in enumerate(self.starts) if len(s)])

    def batch(self, rng, clips: int, lip_span: int, margin: int, speech=None):
        """(lip (B*K, 512), speech windows, targets (offset, same_clip), and with ``reference`` the model's own
        speech embeddings of the same windows (B*S, 512), else None).

        speech : ``speech(clip_index, frames)`` -> that clip's speech windows at those frames; None: the cached
            encoder frames around them, (S, 11, 384), concatenated into (B*S, 11, 384)
        """
        lips, windows, ref, lip_f, sp_f, lip_c, sp_c = [], [], [], [], [], [], []
        for b, ci in enumerate(rng.choice(self.usable, size=clips, replace=len(self.usable) < clips)):
            s = int(rng.choice(self.starts[ci]))
            lf, sf = np.arange(s, s + lip_span), np.arange(s - margin, s + lip_span + margin)
            lips.append(self.lips[ci][lf])
            windows.append(window_frames(self.frames[ci], sf / self.fps[ci]) if speech is None else speech(ci, sf))
            if self.reference:
                ref.append(self.reference[ci][sf + self.margin])
            lip_f.append(lf), sp_f.append(sf), lip_c.append(np.full(len(lf), b)), sp_c.append(np.full(len(sf), b))
        lip_f, sp_f, lip_c, sp_c = (np.concatenate(x) for x in (lip_f, sp_f, lip_c, sp_c))
        targets = (torch.from_numpy(sp_f[None, :] - lip_f[:, None]), torch.from_numpy(lip_c[:, None] == sp_c[None]))
        return (torch.cat(lips), torch.cat(windows) if speech is None else windows, targets,
                torch.cat(ref) if ref else None)


def batch_loss(lips: torch.Tensor, speech: torch.Tensor, targets: tuple) -> torch.Tensor:
    """The model's training loss (Eq. 6's BCE + the offset softmax) of unit lip and speech embeddings."""
    bce, nce = pair_losses(lips @ speech.T, *targets, LOSS.min_negative_offset, LOSS.temperature)
    return bce + LOSS.nce_weight * nce


def train_head(clips: CachedClips, choose: list, steps: int, seed: int, lr: float = 1e-3,
               batch_clips: int = 32, lip_span: int = 8, margin: int = 8) -> tuple[Head, dict]:
    """The head, trained ``steps`` steps (AdamW, warm-up, cosine decay); of the steps every 250, the one of least
    loss on the ``choose`` batches is kept."""
    torch.manual_seed(seed)
    head = Head()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    history, best, running = {"step": [], "train": [], "val": []}, (math.inf, None, 0), []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * step / steps))
        lip, speech, targets, _ = clips.batch(rng, batch_clips, lip_span, margin)
        loss = batch_loss(lip, head(speech), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        if step % 250 == 0 or step == steps:
            v = choice_loss(head, choose)
            history["step"].append(step), history["train"].append(float(np.mean(running))), history["val"].append(v)
            running = []
            log.info("step %d: train %.3f, val %.3f", step, history["train"][-1], v)
            if v < best[0]:
                best = (v, {k: t.clone() for k, t in head.state_dict().items()}, step)
    head.load_state_dict(best[1])
    history["best_step"] = best[2]
    return head.eval(), history


@torch.no_grad()
def choice_loss(head: Head | None, batches: list) -> float:
    """Mean loss on the batches of the clips set aside, of the head (None: of the release's own speech windows)."""
    was = head is not None and head.training
    if head is not None:
        head.eval()
    out = np.mean([float(batch_loss(lp, ref if head is None else head(sp), t)) for lp, sp, t, ref in batches])
    if was:
        head.train()
    return float(out)


def training_clips(args):
    """(training items, items set aside to choose the step) of the training sets, outside their held-out clips."""
    train_sets = dict(args.train_sets) if args.train_sets else {k: DEFAULT_SETS[k] for k in ("grid_s1", "lrw_ar")}
    train_items, choose_items = [], []
    for name, (folder, split) in train_sets.items():
        data = PreparedData(folder)
        train, _ = probe.split_clips(data, 60, 0, split)  # the held-out clips stay out of training and its choices
        pick = np.random.default_rng(args.seed).permutation(len(train))
        train_items += [(data, train[i]) for i in pick[VAL_CLIPS:]]
        choose_items += [(data, train[i]) for i in pick[:VAL_CLIPS]]
        log.info("%s: %d training clips, %d for choosing the step", name, len(train) - VAL_CLIPS, VAL_CLIPS)
    return train_items, choose_items


def plot_history(history: dict, path: Path, title: str = "Whisper tiny.en + lip-trained head") -> None:
    """The training curve: loss on training batches and on the clips set aside, and the step kept."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.plot(history["step"], history["train"], label="training batches")
    ax.plot(history["step"], history["val"], label="clips set aside to choose the step")
    ax.axvline(history["best_step"], color="C3", ls="--", label=f"kept: step {history['best_step']}")
    ax.set(xlabel="step", ylabel="BCE + offset softmax", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report_sets(res: dict, sets: dict, specs: list, whisper: CachedWhisper, out: Path, stem: str) -> None:
    """generalise.py's figures of ``specs`` on each held-out set into ``res["sets"]``, then ``<out>/<stem>.*``."""
    for name, (folder, split) in sets.items():
        res["sets"][name] = evaluate_set(folder, split, specs)
        whisper.flush()
    write_report(res, out, stem)


def lever_arguments(p: argparse.ArgumentParser, cache_help: str) -> argparse.ArgumentParser:
    """The flags both Whisper levers take (this one and whisper_finetune.py)."""
    p.add_argument("--weights", default="se4lip-gridlrw-melcnn-v1", help="the release whose lip encoder is kept")
    p.add_argument("--train-set", dest="train_sets", type=parse_set, action="append", metavar="NAME=DATA[:SPLIT]",
                   help="sets to train on, outside their held-out clips (default: grid_s1 and lrw_ar)")
    p.add_argument("--set", dest="sets", type=parse_set, action="append", metavar="NAME=DATA[:SPLIT.json|:all]",
                   help="held-out sets to report (default: grid_s1, lrw_ar, wild, wild2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, required=True, help=cache_help)
    p.add_argument("--out", type=Path, required=True)
    return p


def get_parser() -> argparse.ArgumentParser:
    p = lever_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                        "folder for Whisper's encoder frames")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--head", type=Path, help="a head.safetensors of an earlier run: report it, train nothing")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    label, release = probe.feature_extractor(args.weights)
    model = release.model
    whisper = CachedWhisper(args.cache)
    sets = dict(args.sets) if args.sets else DEFAULT_SETS
    t0 = time.perf_counter()
    train_items, choose_items = training_clips(args)
    choose = CachedClips(choose_items, model, whisper, 8, reference=True)
    rng = np.random.default_rng(args.seed + 1)
    choose_batches = [choose.batch(rng, 32, 8, 8) for _ in range(8)]
    if args.head:
        from safetensors.torch import load_file

        head, history = Head(), json.loads((args.head.parent / "whisper_front_end.json").read_text())["history"]
        head.load_state_dict(load_file(str(args.head)))
        head.eval()
        cache_s = train_s = 0.0
        args.out.mkdir(parents=True, exist_ok=True)
    else:
        clips = CachedClips(train_items, model, whisper, 8)
        cache_s = time.perf_counter() - t0
        log.info("cached %d clips in %.0f s", len(train_items) + len(choose_items), cache_s)
        t1 = time.perf_counter()
        head, history = train_head(clips, choose_batches, args.steps, args.seed)
        train_s = time.perf_counter() - t1
        args.out.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        save_file(head.state_dict(), str(args.out / "head.safetensors"))
        plot_history(history, args.out / "training.png")
    losses = {"head": choice_loss(head, choose_batches), label: choice_loss(None, choose_batches)}
    log.info("loss on the clips set aside: %s", losses)
    feats = HeadFeatures(head, whisper, model, f"whisper-tiny.en+head ({label} lips)")
    specs = [probe.feature_extractor("log-mel"), ("whisper-tiny.en", whisper), (label, release),
             ("se4lip:whisper-tiny.en+head", feats)]
    res = {**report_header("whisper_front_end.py", argv, args.threads), "lip_encoder": label, "steps": args.steps,
           "history": history, "cache_s": round(cache_s, 1), "train_s": round(train_s, 1), "choice_loss": losses,
           "sets": {}}
    report_sets(res, sets, specs, whisper, args.out, "whisper_front_end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
