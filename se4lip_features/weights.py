"""Weights: the registry of released names, resolution (path, bundled, Hugging Face cache), integrity, I/O."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from . import atomic
from .model import ModelConfig, SE4Lip
from .sidecar import sha256_file

FORMAT = "se4lip-weights/1"

# Released weights: versioned names that are never re-pointed, each with the SHA-256 of its file
# (what each is: weights/MODEL_CARD.md).
REGISTRY: dict[str, str] = {
    "se4lip-grid-s1-melcnn-v1": "393d685ab7a45600fd5193709c4b8ca80c87f5e73886dd3266fb7c06fb90d8b9",
    "se4lip-grid-s1-v1": "83366b7b6079a5b8cd5578e8db5d84507ce182449b1b767bca21ed1b93736268",
    "se4lip-gridlrw-melcnn-v1": "fc80f7354b68c2bfa12e330f6517115e4a1e957fc2215fb499b29d2e5cbaebf2",
}
# Chosen where users are (issue 20): on speakers, languages and recordings outside the training data (held-out
# LRW-AR, the in-the-wild clips), not on GRID s1's own probe; until 0.4 the default was se4lip-grid-s1-melcnn-v1.
DEFAULT_NAME = "se4lip-gridlrw-melcnn-v1"


class WeightsError(RuntimeError):
    """Weights that cannot be found, or that fail their integrity check."""


def available_models() -> list[str]:
    """Names of the released weights."""
    return sorted(REGISTRY)


def resolve(name_or_path: str | Path | None = None) -> tuple[Path, str]:
    """Find a weights file: explicit path, then bundled ``weights/``, then ``hf://owner/repo/file[@rev]``.

    Returns
    -------
    path : Path of the file
    name : the registry name, or the file's stem for other files
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_NAME
    if name.startswith("hf://"):
        return _from_hub(name), Path(name.split("@")[0]).stem
    path = Path(name).expanduser()
    if isinstance(name_or_path, os.PathLike) or path.suffix == ".safetensors" or "/" in name or os.sep in name:
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        return path, path.stem
    if name in REGISTRY:
        bundled = _bundled(name)
        if bundled.is_file():
            return bundled, name
        raise WeightsError(f"{name}: registered but {bundled} is missing; reinstall se4lip-features")
    how = ("pass weights explicitly (se4lip-extract --weights W, se4lip_features.load(W)), W being a .safetensors "
           "file, e.g. one written by se4lip-train, or hf://owner/repo/file.safetensors[@revision]")
    if name == DEFAULT_NAME:
        raise WeightsError(f"no bundled weights exist yet: the default {DEFAULT_NAME} is not released in this "
                           f"version of se4lip-features; {how}")
    known = ", ".join(available_models()) or "none yet"
    raise WeightsError(f"unknown weights {name!r} (released names: {known}); {how}")


def _bundled(name: str) -> Path:
    """Where a released name's file lies inside the installed package.

    ``se4lip_features.pretrained`` (weights/ in the repository) is a plain folder on disk, so its ``__file__``
    locates the data on every Python (``importlib.resources.files`` needs 3.9).
    """
    from . import pretrained

    return Path(pretrained.__file__).parent / f"{name}.safetensors"


def _from_hub(uri: str) -> Path:
    """Download (or, with HF_HUB_OFFLINE=1, find in the cache) ``hf://owner/repo/path/file[@revision]``."""
    spec, _, revision = uri[len("hf://"):].partition("@")
    parts = spec.split("/")
    if len(parts) < 3:
        raise WeightsError(f"{uri}: expected hf://owner/repo/file.safetensors[@revision]")
    from huggingface_hub import constants, hf_hub_download

    cache = _hub_cache()
    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision or None,
                                    cache_dir=cache))
    except Exception as err:  # huggingface_hub raises many types: offline, missing, auth
        if constants.HF_HUB_OFFLINE:  # read by huggingface_hub when it is imported
            raise WeightsError(f"{uri}: not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE "
                               "forbids downloading; fetch it once online, or unset HF_HUB_OFFLINE") from err
        reason = " ".join(str(err).split())  # huggingface_hub messages span several lines
        raise WeightsError(f"{uri}: cannot get weights from the Hugging Face hub ({type(err).__name__}: "
                           f"{reason})") from err


def _hub_cache() -> str:
    """The Hugging Face cache folder. huggingface_hub 0.16 (the last release for Python 3.7) reads neither the
    HF_HUB_CACHE variable nor has ``constants.HF_HUB_CACHE``, only HUGGINGFACE_HUB_CACHE: honour HF_HUB_CACHE there."""
    from huggingface_hub import constants

    return (getattr(constants, "HF_HUB_CACHE", None) or os.environ.get("HF_HUB_CACHE")
            or constants.HUGGINGFACE_HUB_CACHE)


def save(model: SE4Lip, path: str | Path, *, fp16: bool = True, metadata: dict | None = None) -> str:
    """Write a self-describing ``.safetensors`` file (config in the metadata); returns its SHA-256.

    Floating tensors are stored in fp16 when ``fp16``, except the spectrogram statistics, which keep fp32.
    """
    from safetensors.torch import save as to_bytes

    keep32 = {"speech.spec_mean", "speech.spec_std"}
    state = {k: (v.half() if fp16 and v.is_floating_point() and k not in keep32 else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise ValueError(f"{path}: not written: tensor {bad} holds NaN or infinite values")
    config = json.dumps(model.config.to_dict())
    meta = {"format": FORMAT, "config": config, "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "tensors_sha256": tensors_sha256(state)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    with atomic.replacing(path) as (tmp,):
        tmp.write_bytes(to_bytes(state, metadata=meta))  # into the temporary as created: the umask's mode, not 0600
    return sha256_file(path)


def non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or infinite values, or None when all are finite."""
    return next((k for k, v in sorted(state.items()) if v.is_floating_point() and not torch.isfinite(v).all()), None)


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, stored in the metadata by :func:`save`.

    safetensors checks a file's layout but not its data; this catches damage that leaves the layout intact
    in files that are not in the registry (whose whole-file SHA-256 is checked instead).
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load(name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[SE4Lip, dict]:
    """Load weights into an SE4Lip model in eval mode, after checking the file's integrity.

    Returns
    -------
    model : SE4Lip, float32, on ``device``
    info : dict with ``name``, ``path``, ``sha256``, ``source`` (what finds the file again) and the file's metadata
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path, name = resolve(name_or_path)
    digest = sha256_file(path)
    # A file carrying a released name (bundled, from the hub or a local copy) must be that release.
    if name in REGISTRY and digest != REGISTRY[name]:
        raise WeightsError(f"{path}: SHA-256 {digest} does not match the released {name} ({REGISTRY[name]}); "
                           "the file is corrupted or was replaced")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file, truncated or corrupted ({err})") from err
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not SE4Lip weights (metadata format {meta.get('format')!r}, want {FORMAT})")
    # Files written before the checksum was added have none; their layout was still checked above.
    if "tensors_sha256" in meta and tensors_sha256(state) != meta["tensors_sha256"]:
        raise WeightsError(f"{path}: tensor data does not match the checksum in its metadata; the file is corrupted")
    # Files written before config_sha256 was added have none (the released ones are covered by their SHA-256).
    if "config_sha256" in meta and hashlib.sha256(meta.get("config", "").encode()).hexdigest() != meta["config_sha256"]:
        raise WeightsError(f"{path}: the model config in its metadata does not match its checksum; the file was "
                           "edited or is corrupted")
    bad = non_finite(state)
    if bad:
        raise WeightsError(f"{path}: tensor {bad} holds NaN or infinite values; these weights cannot be used")
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["config"]))
        cfg.check_front_end()
    except (KeyError, TypeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise WeightsError(f"{path}: unusable model config in its metadata ({err!r})") from err
    model = SE4Lip(cfg)
    own = model.state_dict()
    wrong = next((k for k in sorted(state) if k in own and state[k].is_floating_point() != own[k].is_floating_point()),
                 None)
    if wrong is not None:
        raise WeightsError(f"{path}: tensor {wrong} is {state[wrong].dtype}, the model's is {own[wrong].dtype}; these "
                           "weights cannot be used")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:
        raise WeightsError(f"{path}: tensors do not match the config in its metadata ({err})") from err
    # source: what finds this file again, recorded in sidecars (a stem alone would not, for hf:// or a path)
    given = str(name_or_path) if name_or_path is not None else DEFAULT_NAME
    source = given if given.startswith("hf://") or name in REGISTRY else str(path.resolve())
    return model.to(device).eval(), dict(meta, name=name, path=str(path), sha256=digest, source=source)
