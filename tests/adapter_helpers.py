"""Shared by the adapter tests: fixture checkouts, a tiny processed data folder, tiny weights, feature files.

The fixture checkouts (tests/fixtures/renderers) are our own minimal files holding only the anchor lines
the patcher relies on; the real renderers are never needed here.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from se4lip_features.adapters import patch

from se4lip_features import weights
from se4lip_features.model import ModelConfig, SE4Lip
from se4lip_features.sidecar import sidecar_path

FIXTURES = Path(__file__).parent / "fixtures" / "renderers"
REPO = Path(__file__).resolve().parent.parent
N_FRAMES = 30  # 1.2 s at 25 fps; transforms_train lists frames 0-26, transforms_val 27-29
N_TRAIN = 27
DIM = 24  # the tiny test weights' embedding size
CHECKOUT_MODULES = ("nerf_triplane", "nerf", "arguments", "scene", "scene_pretrain", "se4lip_adapters")
TINY_DESIGN = {"front_end": "stft", "speech_encoder": "gru"}  # a 1-layer GRU: the smallest, fastest model


# -- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter_weights(tmp_path_factory):
    """Two tiny random SE4Lip weight files with the same dim, and one with another dim."""
    root = tmp_path_factory.mktemp("weights")
    paths = {}
    for seed, (name, dim) in enumerate((("tiny", DIM), ("other", DIM), ("wide", 40))):
        torch.manual_seed(seed)
        paths[name] = root / f"{name}.safetensors"
        weights.save(SE4Lip(ModelConfig(gru_hidden=8, gru_layers=1, embed_dim=dim, **TINY_DESIGN)), paths[name])
    return paths


@pytest.fixture
def default_weights(monkeypatch, adapter_weights):
    """Make the tiny weights the package default (no released weights are bundled in the test env)."""
    monkeypatch.setattr(weights, "DEFAULT_NAME", str(adapter_weights["tiny"]))
    return adapter_weights


def write_wav(path, seconds, hz=220):
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def data_template(tmp_path_factory):
    """A processed data directory: aud.wav, and transforms listing N_FRAMES frames (no features yet)."""
    root = tmp_path_factory.mktemp("data")
    write_wav(root / "aud.wav", N_FRAMES / 25)
    for split, ids in (("train", range(N_TRAIN)), ("val", range(N_TRAIN, N_FRAMES))):
        frames = [{"img_id": i, "aud_id": i} for i in ids]
        (root / f"transforms_{split}.json").write_text(json.dumps({"frames": frames}))
    return root


@pytest.fixture
def data(tmp_path, data_template):
    return Path(shutil.copytree(data_template, tmp_path / "data"))


def write_features(npy, feats, **meta):
    """A feature file with a sidecar as se4lip-extract writes them; ``meta`` overrides sidecar keys."""
    np.save(npy, feats)
    side = {"dim": feats.shape[2], "layout": "ds", "window": feats.shape[1], "fps": 25.0,
            "n_frames": feats.shape[0], "weights": "tiny", "weights_sha256": "ab" * 32, "version": "0"}
    side.update(meta)
    sidecar_path(npy).write_text(json.dumps(side))


def copy_checkout(renderer, dest, eol="\n"):
    """A fixture checkout, with its line endings converted to ``eol``."""
    shutil.copytree(FIXTURES / renderer, dest)
    for path in dest.rglob("*.py"):
        path.write_bytes(path.read_bytes().replace(b"\n", eol.encode()))
    return dest


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """Patch a fixture checkout and import its modules (fresh, and forgotten after the test)."""
    def drop():
        for name in list(sys.modules):
            if name.split(".")[0] in CHECKOUT_MODULES:
                del sys.modules[name]

    def make(renderer, eol="\n"):
        root = copy_checkout(renderer, tmp_path / renderer, eol)
        assert patch.main([renderer, str(root)]) == 0
        drop()
        monkeypatch.syspath_prepend(str(root))
        return root

    yield make
    drop()


def synctalk_opt(data, **kw):
    values = {"path": str(data), "aud": "", "asr": False, "emb": False, "preload": 0, "asr_model": "se4lip"}
    values.update(kw)
    return argparse.Namespace(**values)


@pytest.fixture
def weights_512(monkeypatch, tmp_path_factory):
    """Tiny random weights with the released models' 512-dim embedding, made the package default.

    Untrained, like every weight file in the tests; only the feature dimension matches real use.
    """
    path = tmp_path_factory.getbasetemp() / "tiny512.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        weights.save(SE4Lip(ModelConfig(gru_hidden=8, gru_layers=1, embed_dim=512, **TINY_DESIGN)), path)
    monkeypatch.setattr(weights, "DEFAULT_NAME", str(path))
    return path


class BlockSE4Lip:
    """A meta path finder that makes ``import se4lip_features...`` fail, as where the package is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "se4lip_features":
            raise ImportError(f"No module named {name!r} (blocked by the test)")


def block_package(monkeypatch):
    """Forget se4lip_features and refuse to import it again for the rest of the test."""
    for name in list(sys.modules):
        if name.split(".")[0] == "se4lip_features":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [BlockSE4Lip(), *sys.meta_path])


@pytest.fixture
def without_package(monkeypatch):
    block_package(monkeypatch)


def extract_command(folder, default_weights):
    """An ``se4lip-extract`` of "another environment": this interpreter's, with ``default_weights`` as default.

    What a user names with ``SE4LIP_EXTRACT``; it runs in its own process, where the package is importable.
    """
    script = Path(folder) / "se4lip-extract"
    code = ("import sys; from se4lip_features import weights; weights.DEFAULT_NAME = sys.argv.pop(1); "
            "from se4lip_features.cli import extract_main; sys.exit(extract_main())")
    # -I: the working directory (a checkout of this repository) must not shadow the installed package
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -I -c '{code}' {default_weights} \"$@\"\n")
    script.chmod(0o755)
    return script
