"""What every renderer adapter shares: reading and checking SE4Lip feature files and their sidecars, frame
counts, test audio, the checkpoint guard, the saved feature type and the test video's sound.

Standard library and numpy only at module level (torch inside the checkpoint guard, which the renderer's own
torch runs): ``se4lip-patch`` writes the adapters into the checkout, so a renderer's interpreter without
se4lip_features reads precomputed features, and extracts by running ``se4lip-extract`` of another environment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    from se4lip_features import sidecar
except ImportError:  # the adapters written into a checkout by se4lip-patch, with a copy of sidecar.py
    from . import sidecar

log = logging.getLogger("se4lip_features.adapters")

FEATURE = "se4lip"  # the value of --audio_feature / --asr_model / --audio_extractor that selects SE4Lip
SELF_FEATURES = "aud_se4lip.npy"  # self-driven features, beside the renderers' aud_ds.npy / aud_hu.npy
SOURCE_WAV = "aud.wav"  # the renderers' data_utils/process.py writes the training video's audio here
RENDER_FPS = 25.0  # the renderers read 25 fps video and write 25 fps results
MAX_WINDOW = 16  # AudioNet.forward keeps the first 16 steps of the window axis and drops the rest
FRAME_SLACK = 1  # feature rows may differ from video frames by one (audio and video lengths round apart)
TRANSFORMS = ("transforms_train.json", "transforms_val.json")  # together they list every video frame
# The renderers' own features, by the input width of AudioNet's first conv.
NATIVE_DIMS = {29: "deepspeech", 44: "esperanto", 1024: "hubert"}
# Persistent buffer on an SE4Lip-fed AudioNet: the SHA-256 of the weights that made its training features.
TAG = "se4lip_weights_sha256"
# se4lip-extract of another environment, for renderer environments without the package (else found on PATH)
EXTRACT_VAR = "SE4LIP_EXTRACT"


class FeatureError(ValueError):
    """A feature file that the renderer cannot use, or that does not belong with the trained avatar."""


class CheckpointError(ValueError):
    """A checkpoint whose audio network was trained on a different feature type than the model's."""


def use_console_logging() -> None:
    """Show this package's INFO messages on stderr when the renderer script has not configured logging.

    Called by the entry points the inserted lines reach first in an se4lip run (``self_meta``,
    ``load_features``), so a message such as "extracting aud_se4lip.npy" is seen rather than dropped by
    Python's last-resort handler.
    """
    pkg = logging.getLogger("se4lip_features")
    if logging.getLogger().handlers or pkg.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[se4lip] %(levelname)s %(message)s"))
    pkg.addHandler(handler)
    pkg.setLevel(logging.INFO)


def self_features(root: str | Path) -> Path:
    """``<root>/aud_se4lip.npy``, extracted from ``<root>/aud.wav`` with the default weights if missing.

    Refuses features whose sidecar says they came from an ``aud.wav`` with other contents than the one there
    now (the audio was replaced, by other audio of any length): they would be stale.
    """
    root = Path(root)
    npy = root / SELF_FEATURES
    wav = root / SOURCE_WAV
    if npy.exists():
        check_source(npy, wav)
        return npy
    if not wav.exists():
        raise FileNotFoundError(
            f"{npy}: not found, and neither is {wav} to extract it from; run the renderer's "
            f"data_utils/process.py on the training video first, or write it with "
            f"`se4lip-extract VIDEO_OR_WAV -o {npy}`"
        )
    log.info("%s not found: extracting it from %s with the default SE4Lip weights "
             "(same as `se4lip-extract %s -o %s`)", npy, wav, wav, npy)
    meta = extract(wav, npy)
    log.info("wrote %s: %d frames x %d x %d, weights %s", npy, meta["n_frames"], meta["window"], meta["dim"],
             meta["weights"])
    return npy


def check_source(npy: Path, wav: Path) -> None:
    """Refuse ``npy`` if its sidecar records an ``aud.wav`` whose SHA-256 differs from ``wav``'s now."""
    meta = sidecar.read_sidecar(npy)
    if Path(meta.get("audio") or "").name != wav.name or not meta.get("audio_sha256") or not wav.is_file():
        return  # extracted from another file (the video itself, say): nothing to compare with
    now = sidecar.sha256_file(wav)
    if now != meta["audio_sha256"]:
        raise FeatureError(
            f"{npy}: extracted from a {wav.name} with SHA-256 {meta['audio_sha256'][:12]}, but {wav} is now "
            f"{now[:12]}: the audio was replaced and these features are stale; re-extract them with "
            f"`{extract_command(wav, npy, meta)}`"
        )


def extract_command(audio: Path, npy: Path, meta: dict | None = None) -> str:
    """The ``se4lip-extract`` command that writes ``npy`` from ``audio`` (with the weights of ``meta``)."""
    weights = f" --weights {meta.get('weights_source') or meta['weights']}" if meta else ""
    layout = f" --layout {meta['layout']}" if meta and meta["layout"] != "ds" else ""
    return f"se4lip-extract {audio} -o {npy}{weights}{layout} --force"


def extract(audio: Path, npy: Path, weights: str | None = None, layout: str = "ds") -> dict:
    """Write ``npy`` and its sidecar from an audio or video file at 25 fps, replacing them; returns the sidecar.

    In this interpreter when se4lip_features is importable; else by running ``se4lip-extract`` from
    ``$SE4LIP_EXTRACT`` or PATH (the package in an environment of its own), which writes the same bytes.
    Concurrent extractions of one file each write whole files under unique names, renamed into place sidecar
    first, so a reader never sees a mixed or half-written pair.
    """
    try:
        from se4lip_features.extract import extract_file
    except ImportError:
        pass
    else:
        return extract_file(audio, npy, weights=weights, fps=RENDER_FPS, layout=layout, force=True)
    exe = os.environ.get(EXTRACT_VAR) or shutil.which("se4lip-extract")
    if not exe:
        raise FeatureError(
            f"cannot extract {npy} from {audio}: se4lip_features is not installed in this Python "
            f"({sys.executable}) and no se4lip-extract is on PATH; install se4lip-features here, or set "
            f"{EXTRACT_VAR}=/path/to/its/env/bin/se4lip-extract, or run `{extract_command(audio, npy)}` first"
        )
    cmd = [exe, str(audio), "-o", str(npy), "--fps", f"{RENDER_FPS:g}", "--layout", layout, "--force"]
    if weights:
        cmd += ["--weights", weights]
    log.info("running %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except OSError as err:
        raise FeatureError(f"{EXTRACT_VAR}={exe}: cannot run it ({err})") from err
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise FeatureError(f"{exe} failed on {audio}: {reason}")
    return sidecar.read_sidecar(npy)


def check_meta(meta: dict, where: str | Path) -> None:
    """Refuse sidecars of features the renderers cannot read: not 25 fps, or a window wider than 16."""
    if float(meta["fps"]) != RENDER_FPS:
        raise FeatureError(f"{where}: features at {meta['fps']:g} fps, but the renderers run at "
                           f"{RENDER_FPS:g} fps; re-extract with `se4lip-extract ... --fps 25`")
    if not 1 <= int(meta["window"]) <= MAX_WINDOW:
        raise FeatureError(f"{where}: window of {meta['window']} steps; the renderers' AudioNet reads at most "
                           f"{MAX_WINDOW} (layouts ds, hubert and ave fit)")


def read_features(npy: str | Path) -> tuple[np.ndarray, dict]:
    """A feature file and its sidecar, checked against each other (``sidecar.read_features``) and for 25 fps.

    Returns
    -------
    feats : np.ndarray float32 (n_frames, window, dim), as ``se4lip-extract`` wrote it
    meta : the sidecar dict (``dim``, ``layout``, ``window``, ``fps``, ``n_frames``, ``weights``, ...)
    """
    try:
        feats, meta = sidecar.read_features(npy)
    except ValueError as err:
        raise FeatureError(str(err)) from None
    check_meta(meta, npy)
    return feats, meta


def self_meta(root: str | Path) -> dict:
    """The sidecar of the self-driven features, which fixes the avatar's feature type (extracting if needed)."""
    use_console_logging()
    npy = self_features(root)
    meta = sidecar.read_sidecar(npy)
    check_meta(meta, npy)
    return meta


def video_frame_count(root: str | Path, id_key: str) -> int:
    """Frames of the training video: one more than the largest ``id_key`` in the train and val transforms."""
    root = Path(root)
    ids = []
    for name in TRANSFORMS:
        path = root / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found; SE4Lip features are checked against the frames listed "
                                    f"in {' and '.join(TRANSFORMS)}")
        frames = json.loads(path.read_text())["frames"]
        ids.extend(int(frame[id_key]) for frame in frames)
    if not ids:
        raise FeatureError(f"{root}: {' and '.join(TRANSFORMS)} list no frames")
    return max(ids) + 1


def check_frame_count(n_rows: int, n_frames: int, npy: str | Path, root: str | Path, meta: dict) -> None:
    """Refuse features whose row count is more than one away from the number of video frames."""
    if abs(n_rows - n_frames) <= FRAME_SLACK:
        return
    wav = Path(root) / SOURCE_WAV
    if Path(meta.get("audio") or "").name == SOURCE_WAV:  # and check_source found that same aud.wav there
        hint = (f"they came from {wav}, which is itself that short or long: the audio and the frames come from "
                "different videos (or runs); process the training video again with the renderer's "
                "data_utils/process.py")
    else:
        hint = f"re-extract from this video's audio: `{extract_command(wav, Path(npy), meta)}`"
    raise FeatureError(f"{npy}: {n_rows} feature rows for {n_frames} video frames (from {' and '.join(TRANSFORMS)} "
                       f"in {root}); they may differ by at most {FRAME_SLACK}; {hint}")


def check_same_features(meta: dict, reference: dict, where: str | Path, ref_where: str | Path) -> None:
    """Refuse test-time features that differ from the avatar's training features in type or weights."""
    for key in ("dim", "layout", "window"):
        if meta[key] != reference[key]:
            raise FeatureError(f"{where}: {key} {meta[key]!r}, but the avatar's features ({ref_where}) have "
                               f"{key} {reference[key]!r}; extract the test audio the same way")
    if meta["weights_sha256"] != reference["weights_sha256"]:
        raise FeatureError(
            f"{where}: made with weights {meta['weights']} ({meta['weights_sha256'][:12]}), but the avatar's "
            f"features ({ref_where}) come from {reference['weights']} ({reference['weights_sha256'][:12]}); "
            "extract the test audio with the same weights (se4lip-extract --weights)"
        )


def extract_like(audio_path: str | Path, reference: dict) -> np.ndarray:
    """Extract features from an audio or video file, with the weights and layout of ``reference``.

    Returns
    -------
    np.ndarray float32 (n_frames, window, dim), 25 fps
    """
    audio_path = Path(audio_path)
    if not audio_path.exists():
        raise FileNotFoundError(f"{audio_path}: no such audio file")
    source = reference.get("weights_source") or reference["weights"]
    log.info("extracting SE4Lip features from %s (weights %s, layout %s)", audio_path, source, reference["layout"])
    own = ("extract it yourself with `se4lip-extract " f"{audio_path} -o FEATS.npy --weights PATH_TO_THOSE.safetensors"
           f"{'' if reference['layout'] == 'ds' else ' --layout ' + reference['layout']}` and pass FEATS.npy")
    with tempfile.TemporaryDirectory(prefix="se4lip-") as tmp:
        npy = Path(tmp) / "test_se4lip.npy"
        try:
            extract(audio_path, npy, weights=source, layout=reference["layout"])
        except RuntimeError as err:  # WeightsError, in this interpreter (se4lip-extract's own message says more)
            raise FeatureError(f"{audio_path}: the avatar was trained on features from weights "
                               f"{reference['weights']} ({reference['weights_sha256'][:12]}), which cannot be "
                               f"used here ({err}); {own}") from None
        feats, meta = read_features(npy)
    if meta["weights_sha256"] != reference["weights_sha256"]:
        raise FeatureError(f"{audio_path}: the avatar was trained on features from weights {reference['weights']} "
                           f"({reference['weights_sha256'][:12]}), but {source} are now {meta['weights_sha256'][:12]}; "
                           f"{own}")
    return feats


def load_features(root: str | Path, aud: str | Path | None, id_key: str) -> np.ndarray:
    """The features a renderer's data loader should use in place of its own ``np.load``.

    Parameters
    ----------
    root : the renderer's data directory (``aud.wav``, ``transforms_*.json``, ``aud_se4lip.npy``)
    aud : None or "" for self-driven; else the test audio: a ``.npy`` from ``se4lip-extract`` (with its
        sidecar) or an audio file such as ``.wav``, extracted on the fly
    id_key : the transforms key the renderer indexes features with ("aud_id" or "img_id")

    Returns
    -------
    np.ndarray float32 (n_frames, window, dim), on the CPU like the renderers' ``np.load``; the renderer
    moves it to its device
    """
    use_console_logging()
    root = Path(root)
    npy = self_features(root)
    feats, meta = read_features(npy)
    if not aud:
        check_frame_count(len(feats), video_frame_count(root, id_key), npy, root, meta)
        log.info("self-driven SE4Lip features %s: %s", npy, feats.shape)
        return feats
    aud = Path(aud)
    if aud.suffix.lower() == ".npy":
        cross, cross_meta = read_features(aud)
        check_same_features(cross_meta, meta, aud, npy)
    else:  # any file se4lip-extract reads: audio or video (it names the problem if it cannot decode it)
        cross = extract_like(aud, meta)
    log.info("cross-driven SE4Lip features from %s: %s", aud, cross.shape)
    return cross


def describe_audio_net(state: dict) -> str:
    """What features an AudioNet state dict (keys without the module prefix) was trained on, in words."""
    conv = state.get("encoder_conv.0.weight")  # (32, dim, 3): AudioNet
    mlp = state.get("encoder_fc1.0.weight")  # (256, 512) without a conv: SyncTalk's AudioNet_ave
    if TAG in state:
        sha = bytes(state[TAG].tolist()).hex()
        dim = conv.shape[1] if conv is not None else "?"
        return f"{dim}-dim {FEATURE} features from weights {sha[:12]}"
    if conv is not None:
        dim = conv.shape[1]
        return f"{dim}-dim {NATIVE_DIMS[dim]} features" if dim in NATIVE_DIMS else f"{dim}-dim features"
    if mlp is not None:
        return f"{mlp.shape[1]}-dim ave features (SyncTalk's audio-visual encoder)"
    return "features of an unknown type"


def guard_audio_net(audio_net, reference: dict, flag: str, features: str | Path) -> None:
    """Make an SE4Lip-fed ``audio_net`` refuse, with a clear message, state dicts trained on other features.

    The check runs whenever a parent module's ``load_state_dict`` reaches this AudioNet, whichever script
    calls it, before torch would report a size mismatch (which it does even with ``strict=False``).
    The network gets a buffer with the SHA-256 of the weights that made its features, so a checkpoint is
    also refused when the data directory's features come from other weights. Only se4lip runs install it:
    a run on the renderer's own features never imports this package, and torch reports a mismatch itself.

    Parameters
    ----------
    audio_net : torch.nn.Module, the renderer's AudioNet (or SyncTalk's AudioNet_ave)
    reference : the sidecar of the avatar's SE4Lip features
    flag : the renderer's feature option, for the message ("--asr_model", "--audio_extractor", ...)
    features : the SE4Lip feature file ``reference`` describes, for the message
    """
    import torch

    sha = bytes.fromhex(reference["weights_sha256"])
    audio_net.register_buffer(TAG, torch.tensor(list(sha), dtype=torch.uint8))

    def check(state_dict, prefix, *_):
        incoming = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not incoming:
            return
        own = audio_net.state_dict()
        same = incoming.keys() == own.keys() and all(incoming[k].shape == own[k].shape for k in own)
        if same:
            same = torch.equal(incoming[TAG].cpu(), own[TAG].cpu())
        if same:
            return
        if TAG in incoming:
            hint = (f"{features} comes from other weights than the features this model was trained on; "
                    "re-extract it with the training weights (se4lip-extract --weights ... --force)")
        else:
            hint = f"pass the {flag} value it was trained with"
        raise CheckpointError(f"this checkpoint's audio network was trained on {describe_audio_net(incoming)}, "
                              f"but this model is built for {describe_audio_net(own)}; {hint}")

    # the private form: torch 1.12, which both renderers pin, has no public register_load_state_dict_pre_hook
    audio_net._register_load_state_dict_pre_hook(check)


def source_audio(aud: str | Path | None) -> Path | None:
    """The audio file of a cross-driven render, if known: ``aud`` itself, or the source of a ``.npy``."""
    if not aud:
        return None  # self-driven renders show the held-out frames: aud.wav would not line up
    aud = Path(aud)
    if aud.suffix.lower() != ".npy":
        return aud
    meta = sidecar.read_sidecar(aud)
    source = aud.parent / meta.get("audio", "")
    if meta.get("audio") and source.is_file() and sidecar.sha256_file(source) == meta.get("audio_sha256"):
        return source
    return None


def mux_audio(aud: str | Path | None, video: str | Path) -> Path | None:
    """Write ``<video stem>_audio.mp4``: the rendered (silent) video with the test audio.

    Returns the new file, or None when the audio is not known (self-driven, or a ``.npy`` whose source
    audio is not beside it).
    """
    video = Path(video)
    source = source_audio(aud)
    if source is None:
        log.info("no audio to add to %s; add it with `ffmpeg -i %s -i AUDIO -c:v copy -shortest OUT.mp4`",
                 video, video)
        return None
    out = video.with_name(video.stem + "_audio.mp4")
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-i", str(video), "-i", str(source), "-map", "0:v:0",
           "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-shortest", str(out)]
    try:  # the render is written already: a failure here must not end the run in an error
        subprocess.run(cmd, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("could not add the audio to %s (%s); the silent video is there; add it with: %s", video,
                    "ffmpeg not found" if isinstance(err, FileNotFoundError) else err, " ".join(cmd))
        return None
    log.info("wrote %s", out)
    return out


def names_flag(argv: list[str], flags: tuple[str, ...]) -> bool:
    """Whether a command line sets one of ``flags``, in any form argparse accepts (``--x=v``, abbreviated)."""
    for token in argv:
        name = token.split("=", 1)[0]
        if name.startswith("--audio_") and any(flag.startswith(name) for flag in flags):
            return True
    return False


def keep_saved_feature(merged: dict, saved: dict, argv: list[str], key: str, flags: tuple[str, ...]) -> None:
    """Let the feature type saved in ``cfg_args`` win over the parser's default (in place).

    Parameters
    ----------
    merged : the arguments ``get_combined_args`` is about to return (cfg_args overridden by the command line)
    saved : the arguments read from ``<model_path>/cfg_args`` (empty when there is none)
    argv : the command line, without the program name
    key : the feature option's attribute (``audio_extractor``)
    flags : the options that set it (the renderer's own and ``--audio_feature``)
    """
    if key not in saved or names_flag(argv, flags):
        return
    if merged.get(key) != saved[key]:
        log.info("audio features: %s, as saved in %s/cfg_args", saved[key], merged.get("model_path"))
        merged[key] = saved[key]
