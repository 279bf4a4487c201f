"""Data preparation: frame/audio alignment, lip crops, dropped faces, the renderer-folder reader."""

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import CLIPS, GRID, prepare_grid, renderer_folder

from se4lip_features import audio
from se4lip_features.training import data, lips


def test_read_video_resamples_by_time(tmp_path):
    frames, duration = lips.read_video(GRID / "bbaf2n.mp4", fps=25)
    assert frames.shape == (75, 288, 360, 3) and duration == pytest.approx(3.0)
    half, _ = lips.read_video(GRID / "bbaf2n.mp4", fps=12.5)
    assert len(half) == 38  # round(3.0 s * 12.5)
    np.testing.assert_array_equal(half[1], frames[2])  # t = 0.08 s is source frame 2
    double, _ = lips.read_video(GRID / "bbaf2n.mp4", fps=50)
    np.testing.assert_array_equal(double[3], frames[1])  # t = 0.06 s still shows frame 1 (0.04-0.08 s)


def test_prepare_videos_aligns_audio_frames_and_counts_dropped(tmp_path):
    meta = prepare_grid(tmp_path / "ds")
    ds = data.PreparedData(tmp_path / "ds")
    assert [c.id for c in ds.clips] == list(CLIPS)
    assert ds.lips.shape == (150, 48, 96, 3) and ds.lips.dtype == np.uint8
    assert ds.landmarks.shape == (150, 42, 2)
    for clip in ds.clips:
        assert clip.n_frames == 75 and clip.n_samples == 48000  # 3 s of 16 kHz audio for 75 frames at 25 fps
        assert clip.n_dropped == 2
        assert not ds.clip_valid(clip)[10:12].any() and ds.clip_valid(clip)[12:].all()
        assert (ds.clip_lips(clip)[10:12] == 0).all()  # never guessed: frames without a face are blank
    wav = audio.load_audio(GRID / "bbaf2n.mp4")
    np.testing.assert_allclose(ds.clip_audio(ds.clips[0]), wav[:48000], atol=1e-6)
    assert meta["landmarks"] == "mediapipe468" and meta["lip_crop_scale"] == 1.2


def test_lip_crop_is_mouth_centred(tmp_path):
    prepare_grid(tmp_path / "ds")
    ds = data.PreparedData(tmp_path / "ds")
    crop = ds.clip_lips(ds.clips[0])[40].astype(float)  # a frame with the mouth open
    # lips are redder than the skin around them: the red excess peaks near the crop's centre
    redness = (crop[..., 0] - crop[..., 1:].mean(-1)).mean(0)  # per column
    assert abs(int(np.argmax(np.convolve(redness, np.ones(9), "same"))) - 48) <= 12


def test_segments_split_long_videos(tmp_path):
    prepare_grid(tmp_path / "ds", segment_s=1.0)
    ds = data.PreparedData(tmp_path / "ds")
    assert [c.id for c in ds.clips][:4] == ["bbaf2n@0", "bbaf2n@25", "bbaf2n@50", "bbaf3s@0"]
    assert sum(c.n_frames for c in ds.clips) == 150 and all(c.n_samples == 16000 for c in ds.clips)


def test_renderer_folder_reader(tmp_path):
    wav = renderer_folder(tmp_path / "May")
    meta = data.prepare_renderer_folder(tmp_path / "May", tmp_path / "ds")
    ds = data.PreparedData(tmp_path / "ds")
    assert meta["landmarks"] == "ibug68" and len(ds.clips) == 1
    clip = ds.clips[0]
    assert clip.n_frames == 20 and clip.n_samples == 20 * 640 and clip.n_dropped == 1
    assert not ds.clip_valid(clip)[5] and ds.clip_valid(clip).sum() == 19
    np.testing.assert_allclose(ds.clip_audio(clip), wav[: 20 * 640], atol=1e-4)
    assert ds.lips.shape == (20, 48, 96, 3)
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["gap"] == [14, 18]


def test_renderer_folder_gaps_stay_in_place(tmp_path, caplog):
    """Frames 3-5 missing from ori_imgs moved every later frame 3 frames earlier against the audio (issue 21, H2)."""
    renderer_folder(tmp_path / "May")
    imgs = tmp_path / "May" / "ori_imgs"
    data.prepare_renderer_folder(tmp_path / "May", tmp_path / "full")
    for i in (3, 4, 5, 6):
        (imgs / f"{i}.jpg").unlink()
        (imgs / f"{i}.lms").unlink(missing_ok=True)
    (imgs / "9.lms").write_text("")  # an empty landmark file
    (imgs / "10.lms").write_text("1 2\n3 4\n")  # two points, not 68
    with caplog.at_level("WARNING"):
        data.prepare_renderer_folder(tmp_path / "May", tmp_path / "ds")
    assert "4 of 20 frames missing (first: 3.jpg, 4.jpg, 5.jpg, 6.jpg)" in caplog.text
    assert "9.lms: is empty; the frame counts as without a face" in caplog.text
    assert "10.lms: 2 points of 2 values, not 68 (x, y)" in caplog.text
    ds, before = data.PreparedData(tmp_path / "ds"), data.PreparedData(tmp_path / "full")
    clip = ds.clips[0]
    assert clip.n_frames == 20 and ds.clip_valid(clip).tolist() == [
        i not in (3, 4, 5, 6, 9, 10) and before.clip_valid(before.clips[0])[i] for i in range(20)]
    np.testing.assert_array_equal(ds.landmarks[11:20], before.landmarks[11:20])  # every later frame in its place
    assert not ds.clip_lips(clip)[3:7].any()
    (imgs / "x.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"x.jpg: not a renderer frame \(ori_imgs holds <index>.jpg"):
        data.prepare_renderer_folder(tmp_path / "May", tmp_path / "ds2")


def test_split_is_by_clip_and_checked(tmp_path):
    prepare_grid(tmp_path / "ds", segment_s=0.6)  # 15 frames: 5 clips per video
    ds = data.PreparedData(tmp_path / "ds")
    train, val = ds.split(3, seed=1)
    assert len(val) == 3 and not {c.id for c in train} & {c.id for c in val}
    assert [c.id for c in ds.split(3, seed=1)[1]] == [c.id for c in val]
    with pytest.raises(ValueError, match="cannot hold out 10 of 10"):
        ds.split(10)


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        data.PreparedData(tmp_path)


class _CentredFace:
    """A face detector stub: the same landmarks in every frame, mouth at the centre of a 64 x 64 frame."""

    scheme = lips.MEDIAPIPE

    def __call__(self, frames):
        out = np.full((len(frames), 468, 2), 32.0, np.float32)
        out[:, self.scheme.eye_corners[0]], out[:, self.scheme.eye_corners[1]] = (16, 20), (48, 20)
        return out

    def close(self):
        pass


def _flash_and_click(path: Path, n_frames: int, audio_s: float, flash: int, sr: int = 48000,
                     audio_start_s: float = 0.0, video_start_s: float = 0.0, drop=()):
    """A 25 fps video, dark but for a white frame ``flash``, whose audio (``audio_s`` long) clicks 5 ms into it.

    The streams start at ``video_start_s`` and ``audio_start_s`` of the media's clock (their first timestamps,
    as every player honours them); frames in ``drop`` are left out of the stream (a gap in its timestamps).
    """
    wav = np.zeros(round(audio_s * sr), np.float32)
    t0 = round((video_start_s + flash / 25 + 0.005 - audio_start_s) * sr)
    wav[t0: t0 + sr // 1000] = 0.5  # a 1 ms click
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        video.time_base = Fraction(1, 25)
        sound = out.add_stream("pcm_s16le", rate=sr)
        sound.layout = "mono"
        sound.time_base = Fraction(1, sr)
        for i in range(n_frames):
            if i in drop:
                continue
            img = np.full((64, 64, 3), 255 if i == flash else 30, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i + round(video_start_s * 25), Fraction(1, 25)
            for packet in video.encode(frame):
                out.mux(packet)
        samples = (wav * 32767).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sr, round(audio_start_s * sr), Fraction(1, sr)
        for packet in (*sound.encode(frame), *sound.encode(), *video.encode()):
            out.mux(packet)


# (audio starts, video starts) on the media's clock: the audio 0.4 s late, 0.4 s early, the video 80 ms late
STARTS = {"audio_late": (0.4, 0.0), "audio_early": (0.0, 0.4), "video_80ms_late": (0.0, 0.08)}


@pytest.mark.parametrize("name", list(STARTS))
def test_stream_start_times_put_each_click_on_its_flash(tmp_path, name):
    """Sample 0 is the first video frame's instant, whatever the tracks' own start times (issue 21, H1)."""
    audio_start, video_start = STARTS[name]
    lead = audio_start - video_start  # audio that exists only after (> 0) or before (< 0) the first frame
    path = tmp_path / f"{name}.mkv"
    _flash_and_click(path, 30, 1.2 - max(lead, 0) + max(-lead, 0), 17, audio_start_s=audio_start,
                     video_start_s=video_start)
    data.prepare_videos([path], tmp_path / "ds", detector=_CentredFace(), height=16, width=32, progress=False)
    ds = data.PreparedData(tmp_path / "ds")
    clip = ds.clips[0]
    assert (clip.n_frames, clip.n_samples) == (30, 19200)
    brightness = ds.clip_lips(clip).reshape(clip.n_frames, -1).mean(1)
    click = int(np.argmax(np.abs(ds.clip_audio(clip))))
    assert int(np.argmax(brightness)) == 17 and click // 640 == 17
    assert abs(click - round((17 / 25 + 0.005) * 16000)) <= 2  # to the sample, up to the resampler's filter
    wav = audio.load_audio(path)  # what se4lip-extract reads: one row per video frame, row 0 the first
    assert audio.frame_count(len(wav), 25) == 30
    if lead > 0:
        assert not wav[: round(lead * 16000) - 8].any()  # silence until the audio track starts


def test_dropped_frames_keep_the_frames_after_them_in_place(tmp_path):
    """A stream whose frames 3-5 are missing (a gap in its timestamps) holds the last frame there, on time."""
    _flash_and_click(tmp_path / "gap.mkv", 30, 1.2, 17, drop=(3, 4, 5))
    frames, _ = lips.read_video(tmp_path / "gap.mkv", 25)
    brightness = frames.reshape(len(frames), -1).mean(1)
    assert len(frames) == 30 and int(np.argmax(brightness)) == 17
    np.testing.assert_array_equal(frames[3:6], frames[[2, 2, 2]])


def test_short_and_long_audio_tracks_never_move_other_clips(tmp_path):
    """Each clip's click stays on its flash frame, whatever the audio tracks' lengths before it."""
    videos = {"short10ms": (30, 1.19, 20), "short30ms": (30, 1.17, 5), "long": (30, 1.3, 25), "exact": (30, 1.2, 12)}
    for name, (n_frames, audio_s, flash) in videos.items():
        _flash_and_click(tmp_path / f"{name}.mov", n_frames, audio_s, flash)
    meta = data.prepare_videos([tmp_path / f"{name}.mov" for name in videos], tmp_path / "ds",
                               detector=_CentredFace(), height=16, width=32, progress=False)
    ds = data.PreparedData(tmp_path / "ds")
    assert sum(c["n_samples"] for c in meta["clips"]) == len(ds.audio)
    # 10 ms short: padded with 160 silent samples; 30 ms short: the last frame (not reached by half) is dropped
    assert [(c.id, c.n_frames, c.n_samples, c.n_padded) for c in ds.clips] == [
        ("short10ms", 30, 19200, 160), ("short30ms", 29, 18560, 0), ("long", 30, 19200, 0), ("exact", 30, 19200, 0)]
    for clip, (_, _, flash) in zip(ds.clips, videos.values()):
        brightness = ds.clip_lips(clip).reshape(clip.n_frames, -1).mean(1)
        click = int(np.argmax(np.abs(ds.clip_audio(clip))))
        assert int(np.argmax(brightness)) == flash and click // 640 == flash, clip.id
        assert (ds.clip_audio(clip)[clip.n_samples - clip.n_padded:] == 0).all()


def test_segments_record_their_own_padding(tmp_path):
    _flash_and_click(tmp_path / "v.mov", 30, 1.19, 3)
    data.prepare_videos([tmp_path / "v.mov"], tmp_path / "ds", detector=_CentredFace(), height=16, width=32,
                        segment_s=0.4, progress=False)
    ds = data.PreparedData(tmp_path / "ds")
    assert [(c.id, c.n_samples, c.n_padded) for c in ds.clips] == [
        ("v@0", 6400, 0), ("v@10", 6400, 0), ("v@20", 6400, 160)]


def test_drifted_dataset_is_refused(tmp_path):
    """A dataset whose audio.npy is shorter than its clips say (older se4lip-prepare) is refused, naming the clip."""
    prepare_grid(tmp_path / "ds", segment_s=1.0)
    audio_npy = tmp_path / "ds" / "audio.npy"
    np.save(audio_npy, np.load(audio_npy)[:-360])
    with pytest.raises(ValueError, match=r"clip bbaf3s@50 runs past the arrays' 150 frames and 95640 samples "
                                         r"\(25 frames from 125, 16000 samples from 80000\): audio and lips disagree"):
        data.PreparedData(tmp_path / "ds")
    np.save(audio_npy, np.zeros(96000 + 5, np.float32))
    with pytest.raises(ValueError, match="meta.json's clips hold 150 frames and 96000 samples, the arrays 150 and "
                                         "96005"):
        data.PreparedData(tmp_path / "ds")


def test_clips_out_of_order_are_refused(tmp_path):
    prepare_grid(tmp_path / "ds")
    meta_path = tmp_path / "ds" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["clips"][1]["sample_start"] += 640
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="clip bbaf3s does not follow the clip before it"):
        data.PreparedData(tmp_path / "ds")


def test_clip_ids_are_unique_paths(tmp_path):
    """Two inputs a/x.mp4 and b/x.mp4 gave one clip id "x" (one result in se4lip-eval sync); issue 21, H4."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _flash_and_click(tmp_path / folder / "x.mkv", 30, 1.2, 5)
    videos = [tmp_path / "a" / "x.mkv", tmp_path / "b" / "x.mkv"]
    data.prepare_videos(videos, tmp_path / "ds", detector=_CentredFace(), height=16, width=32, progress=False)
    assert [c.id for c in data.PreparedData(tmp_path / "ds").clips] == ["a/x", "b/x"]
    assert data.clip_ids([tmp_path / "a" / "x.mkv", tmp_path / "a" / "y.mp4"]) == ["x", "y"]
    with pytest.raises(ValueError, match=r"b/x.mkv: the same file as .*b/x.mkv, given twice"):
        data.prepare_videos([videos[1], tmp_path / "a" / ".." / "b" / "x.mkv"], tmp_path / "ds2",
                            detector=_CentredFace(), progress=False)
    (tmp_path / "a" / "x.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"both would be clip 'x'; rename one"):
        data.prepare_videos([videos[0], tmp_path / "a" / "x.mp4"], tmp_path / "ds3", detector=_CentredFace(),
                            progress=False)
    assert not (tmp_path / "ds2").exists() and not (tmp_path / "ds3").exists()  # refused before any work
