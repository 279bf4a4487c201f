"""Weights: the registry of released names, resolution (path, bundled, Hugging Face cache), integrity, safetensors I/O."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path

import torch

from .model import SE4Lip, ModelConfig

FORMAT = "se4lip-weights/1"

# Released weights: versioned names that are never re-pointed, each with the SHA-256 of its file.
REGISTRY: dict[str, str] = {}
DEFAULT_NAME = "se4lip-grid-s1-v1"


class WeightsError(RuntimeError):
    """Weights that cannot be found, or that fail their integrity check."""


def available_models() -> list[str]:
    """Names of the released weights."""
    return sorted(REGISTRY)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    if path.suffix == ".safetensors" or os.sep in name:
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        return path, path.stem
    if name in REGISTRY:
        bundled = Path(str(importlib.resources.files("se4lip_features.pretrained") / f"{name}.safetensors"))
        if bundled.is_file():
            return bundled, name
        raise WeightsError(f"{name}: registered but {bundled} is missing; reinstall se4lip-features")
    known = ", ".join(available_models()) or "none bundled yet"
    raise WeightsError(
        f"unknown weights {name!r}; released names: {known}. Pass a .safetensors path (e.g. one written by "
        "se4lip-train) or hf://owner/repo/file.safetensors[@revision]"
    )


def _from_hub(uri: str) -> Path:
    """Download (or, with HF_HUB_OFFLINE=1, find in the cache) ``hf://owner/repo/path/file[@revision]``."""
    spec, _, revision = uri[len("hf://"):].partition("@")
    parts = spec.split("/")
    if len(parts) < 3:
        raise WeightsError(f"{uri}: expected hf://owner/repo/file.safetensors[@revision]")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision or None))
    except Exception as err:  # huggingface_hub raises many types: offline, missing, auth
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        hint = " (HF_HUB_OFFLINE is set and the file is not in the cache)" if offline else ""
        raise WeightsError(f"{uri}: cannot get weights from the Hugging Face hub{hint}: {err}") from err


def save(model: SE4Lip, path: str | Path, *, fp16: bool = True, metadata: dict | None = None) -> str:
    """Write a self-describing ``.safetensors`` file (config in the metadata); returns its SHA-256.

    Floating tensors are stored in fp16 when ``fp16``, except the spectrogram statistics, which keep fp32.
    """
    from safetensors.torch import save_file

    keep32 = {"speech.spec_mean", "speech.spec_std"}
    state = {k: (v.half() if fp16 and v.is_floating_point() and k not in keep32 else v).contiguous()
             for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict())}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return sha256_file(path)


def load(name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[SE4Lip, dict]:
    """Load weights into an SE4Lip model in eval mode, after checking the file's integrity.

    Returns
    -------
    model : SE4Lip, float32, on ``device``
    info : dict with ``name``, ``path``, ``sha256`` and the file's metadata
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path, name = resolve(name_or_path)
    digest = sha256_file(path)
    if name in REGISTRY and not str(name_or_path or "").endswith(".safetensors") and digest != REGISTRY[name]:
        raise WeightsError(f"{path}: SHA-256 {digest} does not match the released {name} ({REGISTRY[name]}); "
                           "the file is corrupted or was replaced")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not SE4Lip weights (metadata format {meta.get('format')!r}, want {FORMAT})")
    cfg = ModelConfig.from_dict(json.loads(meta["config"]))
    cfg.check_front_end()
    model = SE4Lip(cfg)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:
        raise WeightsError(f"{path}: tensors do not match the config in its metadata ({err})") from err
    return model.to(device).eval(), dict(meta, name=name, path=str(path), sha256=digest)
