"""Weights: safetensors format, config in the metadata, fp16, registry and resolution, integrity, the hub cache."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import torch
from conftest import SPEECH, TINY_MODEL, tiny_model
from huggingface_hub import constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import se4lip_features
from se4lip_features import audio, available_models, extract, frames, sidecar, weights
from se4lip_features.weights import WeightsError

RELEASED = "se4lip-test-v1"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def registry(tmp_path, tiny_weights, monkeypatch):
    """A registry holding one released name, bundled in a temporary folder instead of the package."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    shutil.copy(tiny_weights, bundled / f"{RELEASED}.safetensors")
    monkeypatch.setattr(weights, "REGISTRY", {RELEASED: sidecar.sha256_file(tiny_weights)})
    monkeypatch.setattr(weights, "_bundled", lambda name: bundled / f"{name}.safetensors")
    return bundled


def metadata(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_round_trip_keeps_every_tensor_and_the_config(tmp_path):
    model = tiny_model(1)
    digest = weights.save(model, tmp_path / "w.safetensors", fp16=False, metadata={"steps": 5000})
    loaded, info = weights.load(tmp_path / "w.safetensors")
    assert loaded.config == TINY_MODEL and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert info["name"] == "w" and info["sha256"] == digest == sidecar.sha256_file(tmp_path / "w.safetensors")
    assert info["steps"] == "5000"  # extra metadata is kept, as text
    (tmp_path / "plain").write_text("")  # the file has the mode of any new file (the umask's), not 0600
    assert (tmp_path / "w.safetensors").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_metadata_makes_the_file_self_describing(tiny_weights):
    meta = metadata(tiny_weights)
    assert meta["format"] == weights.FORMAT
    config = json.loads(meta["config"])
    assert config == TINY_MODEL.to_dict()
    front_end = (config["sample_rate"], config["n_fft"], config["win_length"], config["hop_length"])
    assert front_end == (16000, 512, 512, 128)
    assert len(meta["tensors_sha256"]) == 64


def test_fp16_file_halves_the_weights_but_keeps_the_statistics(tmp_path, tiny_weights, speech):
    model = tiny_model(0)
    weights.save(model, tmp_path / "half.safetensors", fp16=True)
    stored = load_file(str(tmp_path / "half.safetensors"))
    assert stored["speech.gru.weight_hh_l0"].dtype == torch.float16
    assert stored["speech.spec_mean"].dtype == stored["speech.spec_std"].dtype == torch.float32
    assert (tmp_path / "half.safetensors").stat().st_size < 0.55 * tiny_weights.stat().st_size

    loaded, _ = weights.load(tmp_path / "half.safetensors")
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert loaded.state_dict()[key].dtype == torch.float32, key  # the model always runs in fp32
            want = value if key.startswith("speech.spec_") else value.half().float()
            assert torch.equal(loaded.state_dict()[key], want), key
    half = extract.load(tmp_path / "half.safetensors", device="cpu").extract(*speech)
    full = extract.load(tiny_weights, device="cpu").extract(*speech)
    np.testing.assert_allclose(half, full, atol=0.05)


def test_explicit_path_comes_first(tiny_weights, registry):
    copy = registry.parent / "elsewhere" / f"{RELEASED}.safetensors"  # a local copy of the release
    copy.parent.mkdir()
    shutil.copy(tiny_weights, copy)
    assert weights.resolve(str(copy)) == (copy, RELEASED)
    assert weights.resolve(copy) == (copy, RELEASED)
    assert weights.resolve(RELEASED) == (registry / f"{RELEASED}.safetensors", RELEASED)
    assert available_models() == [RELEASED]
    with pytest.raises(WeightsError, match=r"nowhere\.safetensors: no such weights file$"):
        weights.resolve(registry / "nowhere.safetensors")


def test_released_name_loads_the_bundled_file(registry, speech):
    enc = extract.load(RELEASED, device="cpu")
    assert enc.name == RELEASED and enc.sha256 == weights.REGISTRY[RELEASED]
    assert enc.extract(*speech).shape == (30, 16, TINY_MODEL.embed_dim)


def test_released_name_with_other_bytes_is_refused(registry, monkeypatch):
    monkeypatch.setitem(weights.REGISTRY, RELEASED, "0" * 64)
    with pytest.raises(WeightsError, match=rf"{RELEASED}\.safetensors: SHA-256 [0-9a-f]{{64}} does not match the "
                                           rf"released {RELEASED} \(0{{64}}\); the file is corrupted or was replaced"):
        weights.load(RELEASED)


def test_registered_but_missing_file(registry):
    (registry / f"{RELEASED}.safetensors").unlink()
    with pytest.raises(WeightsError, match=rf"^{RELEASED}: registered but .* is missing; reinstall se4lip-features"):
        weights.load(RELEASED)


def test_unknown_name_lists_the_released_ones(registry):
    with pytest.raises(WeightsError, match=rf"^unknown weights 'se4lip-nope-v9' \(released names: {RELEASED}\); "
                                           r"pass weights explicitly .*hf://owner/repo/file\.safetensors"):
        weights.load("se4lip-nope-v9")


def test_default_weights_before_any_release(monkeypatch):
    monkeypatch.setattr(weights, "REGISTRY", {})
    for name in (None, weights.DEFAULT_NAME):
        with pytest.raises(WeightsError, match=rf"^no bundled weights exist yet: the default {weights.DEFAULT_NAME} "
                                               r"is not released .*se4lip-extract --weights"):
            extract.load(name, device="cpu")


def test_default_weights_once_released(registry, monkeypatch):
    monkeypatch.setattr(weights, "DEFAULT_NAME", RELEASED)
    assert weights.resolve(None) == (registry / f"{RELEASED}.safetensors", RELEASED)


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b[: len(b) // 2], "not a readable safetensors file, truncated or corrupted"),
    (lambda b: b[:5], "not a readable safetensors file, truncated or corrupted"),
    (lambda b: b[:8] + b"\xff" * 16 + b[24:], "not a readable safetensors file, truncated or corrupted"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 0x10]), "tensor data does not match the checksum in its metadata"),
    (lambda b: b"", "not a readable safetensors file, truncated or corrupted"),
])
def test_damaged_file_is_refused_by_name(tmp_path, tiny_weights, damage, problem):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damage(tiny_weights.read_bytes()))
    with pytest.raises(WeightsError, match=rf"^{path}: {problem}"):
        weights.load(path)


def test_other_safetensors_files_are_refused(tmp_path, tiny_weights):
    state = load_file(str(tiny_weights))
    meta = metadata(tiny_weights)
    save_file(state, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match=r"plain\.safetensors: not SE4Lip weights \(metadata format None"):
        weights.load(tmp_path / "plain.safetensors")

    # an edited config (issue 21, M10: its fps changed the features, exit 0) no longer matches its checksum
    edited = dict(meta, config=json.dumps(dict(json.loads(meta["config"]), fps=30.0)))
    save_file(state, str(tmp_path / "edited.safetensors"), metadata=edited)
    with pytest.raises(WeightsError, match=r"edited\.safetensors: the model config in its metadata does not match "
                                           r"its checksum; the file was edited or is corrupted"):
        weights.load(tmp_path / "edited.safetensors")

    older = {k: v for k, v in meta.items() if k != "config_sha256"}  # files written before the config checksum
    narrow = dict(older, config=json.dumps(dict(json.loads(meta["config"]), gru_hidden=8)))
    save_file(state, str(tmp_path / "mismatch.safetensors"), metadata=narrow)
    with pytest.raises(WeightsError, match=r"mismatch\.safetensors: tensors do not match the config in its metadata"):
        weights.load(tmp_path / "mismatch.safetensors")

    other_hop = dict(older, config=json.dumps(dict(json.loads(meta["config"]), hop_length=160)))
    save_file(state, str(tmp_path / "hop.safetensors"), metadata=other_hop)
    with pytest.raises(WeightsError, match=r"hop\.safetensors: unusable model config .*front end"):
        weights.load(tmp_path / "hop.safetensors")

    for fps in (1e-3, 1e5):  # 1e-3 made extraction hang
        slow = dict(older, config=json.dumps(dict(json.loads(meta["config"]), fps=fps)))
        save_file(state, str(tmp_path / "fps.safetensors"), metadata=slow)
        with pytest.raises(WeightsError, match=r"fps\.safetensors: unusable model config .*fps must be within 1-240"):
            weights.load(tmp_path / "fps.safetensors")

    ints = {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}  # gave all-zero features
    save_file(ints, str(tmp_path / "int.safetensors"), metadata=dict(meta, tensors_sha256=weights.tensors_sha256(ints)))
    with pytest.raises(WeightsError, match=r"int\.safetensors: tensor \S+ is torch.int32, the model's is "
                                           r"torch.float32; these weights cannot be used"):
        weights.load(tmp_path / "int.safetensors")


def test_files_without_a_tensor_checksum_still_load(tmp_path, tiny_weights):
    meta = {k: v for k, v in metadata(tiny_weights).items() if k != "tensors_sha256"}
    save_file(load_file(str(tiny_weights)), str(tmp_path / "older.safetensors"), metadata=meta)
    model, _ = weights.load(tmp_path / "older.safetensors")
    assert model.config == TINY_MODEL


# --- Hugging Face hub: only ever from a pre-populated cache, offline -------------------------------------------

def populate_hub_cache(cache, weights_file, repo="owner/repo", filename="tiny.safetensors"):
    """The layout huggingface_hub leaves after a download: snapshots/<commit>/<file> and refs/main."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / REVISION / filename).parent.mkdir(parents=True)
    shutil.copy(weights_file, folder / "snapshots" / REVISION / filename)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    return folder / "snapshots" / REVISION / filename


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads those variables once, when it is imported (as it already is here)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache), raising=False)  # absent in huggingface_hub 0.16
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("suffix", ["", "@main", f"@{REVISION}"])
def test_hub_weights_come_from_the_cache(offline_hub, tiny_weights, suffix):
    cached = populate_hub_cache(offline_hub, tiny_weights, filename="sub/tiny.safetensors")
    path, name = weights.resolve(f"hf://owner/repo/sub/tiny.safetensors{suffix}")
    assert path == cached and name == "tiny"
    enc = extract.load(f"hf://owner/repo/sub/tiny.safetensors{suffix}", device="cpu")
    assert enc.sha256 == sidecar.sha256_file(tiny_weights)


def test_hub_without_a_cached_copy_fails_fast(offline_hub, tiny_weights):
    populate_hub_cache(offline_hub, tiny_weights)
    start = time.monotonic()
    for uri in ("hf://owner/other/tiny.safetensors", "hf://owner/repo/missing.safetensors",
                "hf://owner/repo/tiny.safetensors@v2"):
        with pytest.raises(WeightsError, match=rf"^{uri}: not in the Hugging Face cache \({offline_hub}\) and "
                                               "HF_HUB_OFFLINE forbids downloading"):
            weights.load(uri)
    assert time.monotonic() - start < 5


def test_hub_uri_needs_owner_repo_and_file():
    with pytest.raises(WeightsError, match=r"^hf://owner/tiny\.safetensors: expected hf://owner/repo/file\.safetensors"):
        weights.resolve("hf://owner/tiny.safetensors")


def test_hub_cache_from_the_environment_of_a_new_process(tmp_path, tiny_weights):
    """What a user does: set HF_HUB_CACHE and HF_HUB_OFFLINE, then start Python."""
    populate_hub_cache(tmp_path / "hub", tiny_weights)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    code = "import se4lip_features as s; e = s.load('hf://owner/repo/tiny.safetensors', device='cpu'); print(e.sha256)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == sidecar.sha256_file(tiny_weights)


# Released names -> (front end, speech encoder); names are never re-pointed, so these never change.
SHIPPED = {"se4lip-grid-s1-melcnn-v1": ("mel", "cnn"), "se4lip-grid-s1-v1": ("stft", "gru"),
           "se4lip-gridlrw-melcnn-v1": ("mel", "cnn")}


def test_the_default_is_the_release_that_generalises():
    assert weights.DEFAULT_NAME == "se4lip-gridlrw-melcnn-v1"  # README changelog, 0.4.0
    assert available_models() == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_offline_and_match_the_registry(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = se4lip_features.load(name, device="cpu")
    assert (enc.name, enc.dim) == (name, 512)
    assert enc.sha256 == weights.REGISTRY[name] == sidecar.sha256_file(weights.resolve(name)[0])
    assert (enc.config.front_end, enc.config.speech_encoder) == SHIPPED[name]
    assert (enc.config.lip_height, enc.config.lip_width) == (48, 96)
    wav, sr = soundfile.read(SPEECH, dtype="float32")
    feats = enc.extract(wav, sr)
    assert feats.shape == (30, 16, 512) and np.isfinite(feats).all()
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), np.sqrt(512), rtol=1e-4)  # unit embeddings x sqrt(D)
    # Extraction's path (features once per STFT frame, BatchNorm folded) is the model's own function
    times, index = frames.substep_grid(len(feats), 25.0, 16)
    centres = torch.from_numpy(np.round(times * 16000).astype(np.int64))
    spec = audio.speech_windows(torch.from_numpy(wav), centres, enc.config.n_stft_frames)
    with torch.inference_mode():
        reference = enc.model.encode_speech(spec).numpy() * np.sqrt(512)
    np.testing.assert_allclose(feats, reference[index], atol=2e-4)


@pytest.mark.skipif(not extract._cpu_has_bf16(), reason="this CPU has no native bf16: the fast path computes in fp32")
def test_default_weights_keep_their_features_on_the_bf16_path():
    wav, sr = soundfile.read(SPEECH, dtype="float32")
    exact = se4lip_features.load(device="cpu").extract(wav, sr, layout="ave")
    fast = se4lip_features.load(device="cpu", precision="bf16").extract(wav, sr, layout="ave")
    cos = (exact * fast).sum(-1) / (np.linalg.norm(exact, axis=-1) * np.linalg.norm(fast, axis=-1))
    assert cos.min() > 0.995


def test_the_generalising_release_keeps_its_features_at_any_level_and_in_noise():
    from se4lip_features.analysis.robustness import _cosines, with_noise

    wav, sr = soundfile.read(SPEECH, dtype="float32")
    quiet, noisy = wav * np.float32(0.01), with_noise(wav, 20, np.random.default_rng(0))  # -40 dB; 20 dB SNR
    cosines = {}
    for name in ("se4lip-gridlrw-melcnn-v1", "se4lip-grid-s1-melcnn-v1"):
        enc = se4lip_features.load(name, device="cpu")
        nominal = enc.extract(wav, sr)
        cosines[name] = [_cosines(enc.extract(x, sr), nominal).mean() for x in (quiet, noisy)]
    assert cosines["se4lip-gridlrw-melcnn-v1"] == pytest.approx([0.987, 0.968], abs=0.005)  # measured once
    assert max(cosines["se4lip-grid-s1-melcnn-v1"]) < 0.7  # the default, trained at +-6 dB, moves
