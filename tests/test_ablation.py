"""The paper's Table 6 ablation encoders (mel front end, CNN speech encoder): trained, saved, extracted and
streamed through the same code as the STFT + GRU model."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, push_all, speech_of

from se4lip_features import StreamingExtractor, audio, extract, weights
from se4lip_features.audio import MEL_BANDS
from se4lip_features.cli import train_parser
from se4lip_features.model import ModelConfig, SE4Lip
from se4lip_features.training.train import TrainConfig, train

VARIANTS = [("mel", "gru"), ("stft", "cnn"), ("mel", "cnn")]


def variant(front_end, speech_encoder) -> ModelConfig:
    return dataclasses.replace(TINY_MODEL, front_end=front_end, speech_encoder=speech_encoder)


def test_mel_front_end_is_log_mel_of_the_stft_magnitude(speech):
    wav = torch.from_numpy(speech[0])
    spec = audio.speech_windows(wav, torch.arange(2000, len(wav), 4000), TINY_MODEL.n_stft_frames)
    got = SE4Lip(variant("mel", "gru")).speech.features(spec)
    basis = audio.mel_filterbank(16000, 512, 80, 55.0, 7600.0)  # Wav2Lip's bands on the SE4Lip STFT
    expected = np.log(np.exp(spec.numpy()) @ basis.T + audio.LOG_EPS)
    assert got.shape == (*spec.shape[:2], MEL_BANDS)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hz", [300.0, 1000.0, 3000.0])
def test_a_tone_peaks_in_the_mel_band_centred_nearest_it(hz):
    t = np.arange(16000) / 16000
    wav = torch.from_numpy(np.sin(2 * np.pi * hz * t).astype(np.float32))
    spec = audio.speech_windows(wav, torch.tensor([8000]), TINY_MODEL.n_stft_frames)
    bands = SE4Lip(variant("mel", "gru")).speech.features(spec)[0].mean(0)
    mel_points = np.linspace(audio.hz_to_mel(55.0), audio.hz_to_mel(7600.0), MEL_BANDS + 2)
    centres = audio.mel_to_hz(mel_points[1:-1])
    assert abs(int(bands.argmax()) - int(np.argmin(abs(centres - hz)))) <= 1


def test_config_and_command_line_refuse_unknown_designs(capsys):
    with pytest.raises(ValueError, match="front_end must be one of"):
        ModelConfig(front_end="mfcc")
    with pytest.raises(ValueError, match="speech_encoder must be one of"):
        ModelConfig(speech_encoder="lstm")
    args = train_parser().parse_args(["data", "--front-end", "mel", "--speech-encoder", "cnn"])
    assert (args.front_end, args.speech_encoder) == ("mel", "cnn")
    with pytest.raises(SystemExit):
        train_parser().parse_args(["data", "--speech-encoder", "lstm"])
    assert "invalid choice: 'lstm'" in capsys.readouterr().err


@pytest.mark.parametrize("front_end,speech_encoder", VARIANTS)
def test_variant_survives_the_weights_file_and_streams_like_offline(front_end, speech_encoder, tmp_path):
    cfg = variant(front_end, speech_encoder)
    torch.manual_seed(0)
    model = SE4Lip(cfg).eval()
    weights.save(model, tmp_path / "v.safetensors", fp16=False)
    extractor = extract.load(tmp_path / "v.safetensors", device="cpu")
    assert extractor.config == cfg
    for name, value in model.state_dict().items():
        torch.testing.assert_close(extractor.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    wav = speech_of(1.5)
    offline = extractor.extract(wav, 16000, layout="hubert")
    assert offline.shape == (38, 2, cfg.embed_dim) and np.isfinite(offline).all()
    stream = StreamingExtractor(extractor, layout="hubert")
    np.testing.assert_allclose(push_all(stream, wav, [1, 700, 2000]), offline, atol=1e-4)


def test_training_normalises_the_variant_s_own_input_features(grid_dataset, tmp_path):
    cfg = TrainConfig(steps=2, clips_per_batch=2, lip_span=4, speech_margin=3, warmup_steps=1, val_clips=2,
                      val_every=2, ckpt_every_s=0.0, bf16=False)
    train(grid_dataset, tmp_path / "run", cfg, variant("mel", "cnn"), progress=False)
    model, _ = weights.load(tmp_path / "run" / "final.safetensors")
    assert model.config.front_end == "mel" and model.config.speech_encoder == "cnn"
    mean, std = model.speech.spec_mean, model.speech.spec_std
    assert mean.shape == std.shape == (MEL_BANDS,)
    assert -12 < float(mean.min()) < float(mean.max()) < 3 and float(std.min()) > 0.1  # log-mel of speech
