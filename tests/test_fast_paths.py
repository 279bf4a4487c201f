"""Fast paths (bf16 matmuls on CPU, batching, chunking) keep the features of the plain fp32 path, within stated
tolerances; measured speeds live in benchmarks/speed.py, never here."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import SPEECH, TINY_MODEL

from se4lip_features import StreamingExtractor, audio, extract, sidecar
from se4lip_features.model import SE4Lip

BF16_CPU = extract._cpu_has_bf16()


def cosine(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def bf16(tiny_weights):
    return extract.load(tiny_weights, device="cpu", precision="bf16")


needs_bf16 = pytest.mark.skipif(not BF16_CPU, reason="this CPU has no native bf16: the fast path computes in fp32")
needs_hint = pytest.mark.skipif(not hasattr(torch.backends.mkldnn, "matmul"),
                                reason="no oneDNN matmul hint before torch 2.9: the GRU computes in fp32")


@needs_bf16
@needs_hint
@pytest.mark.parametrize("layout", ["ds", "hubert", "ave"])
def test_bf16_features_are_close_to_fp32(extractor, bf16, speech, layout, monkeypatch):
    # Whether oneDNN then computes nn.GRU's matmuls in bf16 is its own choice, by CPU and matrix size (an AMD
    # EPYC with AVX-512 BF16 keeps the tiny GRU, and the shipped one, in fp32; an Intel Xeon with AMX does not):
    # so the test checks that the hint is in force during the encoder call, and the features' tolerance.
    hinted = []
    encode = bf16.speech.encode
    monkeypatch.setattr(bf16.speech, "encode",
                        lambda x: hinted.append(torch.backends.mkldnn.matmul.fp32_precision) or encode(x))
    exact = extractor.extract(*speech, layout=layout)
    fast = bf16.extract(*speech, layout=layout)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    assert hinted and set(hinted) == {"bf16"}
    # bf16 keeps 8 bits of mantissa in the matmul inputs; accumulation, GRU state and gates stay fp32
    assert cosine(fast, exact).min() > 0.9995
    assert np.abs(fast - exact).max() < 0.05  # features have unit RMS


@needs_hint
def test_bf16_setting_does_not_leak(bf16, speech, monkeypatch):
    monkeypatch.setattr(extract, "_cpu_has_bf16", lambda: True)  # the setting is made on any CPU then
    before = torch.backends.mkldnn.matmul.fp32_precision
    bf16.extract(*speech, layout="ave")
    assert torch.backends.mkldnn.matmul.fp32_precision == before

    def failing(x):
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bf16.speech, "encode", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        bf16.extract(*speech, layout="ave")
    assert torch.backends.mkldnn.matmul.fp32_precision == before


@pytest.mark.parametrize("layout", ["ds", "ave"])
def test_streaming_computes_in_fp32_whatever_the_precision(extractor, bf16, speech, layout):
    exact = extractor.extract(*speech, layout=layout)
    stream = StreamingExtractor(bf16, layout=layout)
    rows = [stream.push(speech[0][k: k + 640]) for k in range(0, len(speech[0]), 640)]  # 40 ms pushes
    np.testing.assert_allclose(np.concatenate(rows + [stream.flush()]), exact, atol=1e-4)


def test_precision_is_checked(tiny_weights, extractor):
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; choose one of fp32, bf16"):
        extract.load(tiny_weights, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match=r"precision 'bf16' is a CPU fast path; on cuda use 'fp32'"):
        extract.Extractor(extractor.model, extractor.info, torch.device("cuda"), "bf16")


@pytest.mark.parametrize("layout", ["ds", "ave"])
def test_batch_size_changes_speed_not_features(extractor, speech, layout):
    one = extractor.extract(*speech, layout=layout, batch_size=1)
    np.testing.assert_allclose(extractor.extract(*speech, layout=layout, batch_size=4096), one, atol=1e-5)
    assert one.shape[2] == TINY_MODEL.embed_dim


def test_command_line_fast_path(tmp_path, bf16, speech, capfd, tiny_weights):
    from se4lip_features.cli import extract_main

    out = tmp_path / "f.npy"
    assert extract_main([str(SPEECH), "-o", str(out), "--weights", str(tiny_weights), "--precision", "bf16"]) == 0
    assert capfd.readouterr().err == ""
    np.testing.assert_array_equal(np.load(out), bf16.extract(*speech))
    assert sidecar.read_sidecar(out)["precision"] == "bf16"
    with pytest.raises(SystemExit):
        extract_main([str(SPEECH), "--precision", "fp16"])
    assert "argument --precision: invalid choice: 'fp16'" in capfd.readouterr().err


def test_probe_labels_the_fast_path(tiny_weights):
    from se4lip_features.analysis.probe import feature_extractor

    label, ex = feature_extractor(str(tiny_weights), precision="bf16")
    assert (label, ex.precision) == ("se4lip:tiny bf16", "bf16")
    assert feature_extractor(str(tiny_weights))[0] == "se4lip:tiny"


@pytest.fixture(scope="module")
def cnn_model():
    """The ablation's Mel + CNN encoder, with BatchNorm statistics far from the identity (as after training)."""
    torch.manual_seed(0)
    model = SE4Lip(dataclasses.replace(TINY_MODEL, front_end="mel", speech_encoder="cnn")).eval()
    for bn in (m for m in model.speech.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return model


def test_folding_batchnorm_keeps_the_cnn_function(cnn_model, speech):
    spec = audio.speech_windows(torch.from_numpy(speech[0]), torch.arange(0, len(speech[0]), 640),
                                TINY_MODEL.n_stft_frames)
    folded = cnn_model.speech.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in cnn_model.speech.modules()) == 8  # a copy was folded
    with torch.inference_mode():
        exact, got = cnn_model.speech(spec), folded(spec)
    assert exact.abs().mean() > 0.1
    np.testing.assert_allclose(got.numpy(), exact.numpy(), rtol=1e-4, atol=1e-5)
    gru = SE4Lip(TINY_MODEL).speech
    assert gru.for_inference() is gru  # nothing to fold


def cnn_features(model, speech, precision, layout="ave"):
    return extract.Extractor(model, {"name": "tiny-cnn", "sha256": ""}, torch.device("cpu"),
                             precision).extract(*speech, layout=layout)


@needs_bf16
@pytest.mark.parametrize("layout", ["ds", "ave"])
def test_cnn_bf16_autocast_is_close_to_fp32(cnn_model, speech, layout):
    exact, fast = (cnn_features(cnn_model, speech, precision, layout) for precision in ("fp32", "bf16"))
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    # bf16 activations through 9 convolutions: 8 bits of mantissa each, fp32 accumulation
    assert cosine(fast, exact).min() > 0.999 and np.abs(fast - exact).max() > 1e-4
    assert not cpu_autocast_enabled()  # the scope ended with the call


def cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # older torch (1.12) takes no device type here
        return torch.is_autocast_cpu_enabled()


def test_bf16_changes_nothing_on_cpus_without_it(cnn_model, bf16, extractor, speech, monkeypatch):
    monkeypatch.setattr(extract, "_cpu_has_bf16", lambda: False)  # emulated bf16 would only be slower
    np.testing.assert_array_equal(bf16.extract(*speech), extractor.extract(*speech))
    np.testing.assert_array_equal(cnn_features(cnn_model, speech, "bf16"), cnn_features(cnn_model, speech, "fp32"))
