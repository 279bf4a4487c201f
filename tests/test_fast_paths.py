"""Fast paths (bf16 matmuls on CPU, batching, chunking) keep the features of the plain fp32 path, within stated
tolerances; measured speeds live in benchmarks/speed.py, never here."""

import numpy as np
import pytest
import torch
from conftest import SPEECH, TINY

from se4lip_features import StreamingExtractor, extract

BF16_CPU = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cosine(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def bf16(tiny_weights):
    return extract.load(tiny_weights, device="cpu", precision="bf16")


@pytest.mark.parametrize("layout", ["ds", "hubert", "ave"])
def test_bf16_features_are_close_to_fp32(extractor, bf16, speech, layout):
    exact = extractor.extract(*speech, layout=layout)
    fast = bf16.extract(*speech, layout=layout)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    # bf16 keeps 8 bits of mantissa in the matmul inputs; accumulation, GRU state and gates stay fp32
    assert cosine(fast, exact).min() > 0.9995
    assert np.abs(fast - exact).max() < 0.05  # features have unit RMS per channel
    if BF16_CPU:  # the fast path really ran (on CPUs without bf16, oneDNN computes in fp32)
        assert np.abs(fast - exact).max() > 1e-5


def test_bf16_setting_does_not_leak(bf16, speech, monkeypatch):
    before = torch.backends.mkldnn.matmul.fp32_precision
    bf16.extract(*speech, layout="ave")
    assert torch.backends.mkldnn.matmul.fp32_precision == before

    def failing(spec):
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bf16.model, "encode_speech", failing)
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
    assert one.shape[2] == TINY.embed_dim


def test_command_line_fast_path(tmp_path, bf16, speech, capfd, tiny_weights):
    from se4lip_features.cli import extract_main

    out = tmp_path / "f.npy"
    assert extract_main([str(SPEECH), "-o", str(out), "--weights", str(tiny_weights), "--precision", "bf16"]) == 0
    assert capfd.readouterr().err == ""
    np.testing.assert_array_equal(np.load(out), bf16.extract(*speech))
    assert extract.read_sidecar(out)["precision"] == "bf16"
    with pytest.raises(SystemExit):
        extract_main([str(SPEECH), "--precision", "fp16"])
    assert "argument --precision: invalid choice: 'fp16'" in capfd.readouterr().err


def test_probe_labels_the_fast_path(tiny_weights):
    from se4lip_features.probe import load_features

    label, ex = load_features(str(tiny_weights), precision="bf16")
    assert (label, ex.precision) == ("se4lip:tiny bf16", "bf16")
    assert load_features(str(tiny_weights))[0] == "se4lip:tiny"
