"""SE4Lip features in the NeRF renderers' real-time mode (``--asr``): a stand-in for their ``ASR`` class.

SyncTalk, ER-NeRF and RAD-NeRF share one live audio path: ``NeRFGUI`` builds ``ASR(opt)``, calls ``warm_up()``
when playback starts, then per rendered frame two ``run_step()`` (20 ms of audio each) and one
``get_next_feat()``, the attention window of the next frame, ``[8, dim, window]`` on the renderer's device.
Audio comes from ``--asr_wav`` (a file streamed as if live) or the microphone (pyaudio, 20 ms reads on a
thread), and ``--asr_play`` plays it out. With ``--asr_model se4lip`` the patched GUI builds :class:`LiveASR`
instead: the same methods, fed by :class:`se4lip_features.StreamingExtractor` with the weights and layout of
the avatar's training features (the sidecar of ``<data>/aud_se4lip.npy``), so the window for frame i is the
one the renderer's offline path builds from ``se4lip-extract``'s file for frame i (float rounding only).

Unlike the renderers' own ASR, a window is never read before its audio has arrived: ``get_next_feat`` runs
``run_step`` until the frames it needs exist (at most :attr:`LiveASR.latency_s` of audio beyond the frame's
instant), so lips are never fed stale or zero features in the middle of the audio. Needs se4lip_features in
the renderer's Python (live extraction runs in-process).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
from pathlib import Path

import numpy as np

from . import common

log = logging.getLogger("se4lip_features.adapters")

SAMPLE_RATE = 16000  # the renderers' ASR reads 16 kHz mono
# Video frames after frame i that its attention window reads, by --att: the renderers' get_audio_features
# reads rows [i, i+1) for 0, [i-8, i) for 1, [i-4, i+4) for 2.
ATT_ROWS = {0: (0, 1), 1: (-8, 0), 2: (-4, 4)}


def _read_microphone(stream, exit_event, chunks, n):
    while not exit_event.is_set():
        pcm = stream.read(n, exception_on_overflow=False)
        chunks.put(np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32767)


def _play(stream, exit_event, chunks, n):
    while not exit_event.is_set():
        try:
            frame = chunks.get(timeout=0.1)
        except queue.Empty:
            continue
        stream.write((np.clip(frame, -1, 1) * 32767).astype(np.int16).tobytes(), n)


class LiveASR:
    """What a patched ``NeRFGUI`` uses in place of the renderer's ``ASR`` when ``opt.asr_model`` is se4lip.

    Parameters
    ----------
    opt : the renderer's options: ``asr_wav`` ('' for the microphone), ``asr_play``, ``asr_save_feats``,
        ``att``, ``fps`` (audio chunks per second, 50), ``workspace`` (where a microphone session is saved)
    reference : the sidecar of the avatar's training features, which names the weights and layout
    where : the feature file of ``reference``, for messages
    device : where windows are computed and returned; None: CUDA when available, as the renderers' ASR
    """

    def __init__(self, opt, reference: dict, where, device=None):
        try:
            import torch

            from se4lip_features import StreamingExtractor, audio, extract
        except ImportError as err:
            raise common.FeatureError(
                f"--asr with {common.FEATURE} features extracts them live in this Python, which needs "
                f"se4lip-features installed here (pip install se4lip-features): {err}") from None
        self._torch = torch
        self.opt = opt
        self.att = int(getattr(opt, "att", 2))
        if self.att not in ATT_ROWS:
            raise ValueError(f"--att {self.att}: the renderers' attention modes are 0, 1 and 2")
        self.reference = reference
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        source = self.reference.get("weights_source") or self.reference["weights"]
        extractor = extract.load(source, device=self.device)
        if extractor.sha256 != self.reference["weights_sha256"]:
            raise common.FeatureError(
                f"{where}: the avatar was trained on features from weights "
                f"{self.reference['weights']} ({self.reference['weights_sha256'][:12]}), but {source} is now "
                f"{extractor.sha256[:12]}; live features must come from the same weights")
        self.extractor = extractor
        self.layout = self.reference["layout"]
        self.stream = StreamingExtractor(extractor, fps=common.RENDER_FPS, layout=self.layout)
        self.dim, self.width = extractor.dim, self.stream.width
        self.fps = int(getattr(opt, "fps", 50))  # audio chunks per second, as the renderers' --fps
        self.chunk = SAMPLE_RATE // self.fps
        self.mode = "live" if not opt.asr_wav else "file"
        self.play = bool(getattr(opt, "asr_play", False))
        self.save_to = self._save_path() if getattr(opt, "asr_save_feats", False) else None
        if self.mode == "file":
            self.file_stream = audio.load_audio(opt.asr_wav)  # se4lip-extract's decoder: 16 kHz mono float32
            self.idx = 0
        self.exit_event = threading.Event()
        self._pyaudio = None
        if self.mode == "live" or self.play:
            import pyaudio  # the renderers' own live dependency

            self._pyaudio = pyaudio.PyAudio()
        if self.mode == "live":
            self.input_stream = self._pyaudio.open(format=pyaudio.paInt16, channels=1, rate=SAMPLE_RATE, input=True,
                                                   output=False, frames_per_buffer=self.chunk)
            self.queue = queue.Queue()
            self.reader = threading.Thread(target=_read_microphone, daemon=True,
                                           args=(self.input_stream, self.exit_event, self.queue, self.chunk))
        if self.play:
            self.output_stream = self._pyaudio.open(format=pyaudio.paInt16, channels=1, rate=SAMPLE_RATE,
                                                    input=False, output=True, frames_per_buffer=self.chunk)
            self.output_queue = queue.Queue()
            self.player = threading.Thread(target=_play, daemon=True,
                                           args=(self.output_stream, self.exit_event, self.output_queue, self.chunk))
        self.listening = self.playing = self.stopped = False
        self.terminated = False
        self.rows = collections.deque()  # (dim, window) tensors of frames [first_row, first_row + len)
        self.first_row = 0
        self.n_rows = 0  # frames produced so far
        self.next_frame = 0  # the frame get_next_feat returns next
        self.saved_rows, self.recorded = [], []  # with --asr_save_feats: every frame, and the microphone's audio
        self.lo, self.hi = ATT_ROWS[self.att]
        self.warm_up_steps = math.ceil(self.latency_s * self.fps)
        log.info("SE4Lip live features: weights %s, layout %s, %s, latency %.0f ms", extractor.name, self.layout,
                 opt.asr_wav or "microphone", 1000 * self.latency_s)

    @property
    def latency_s(self) -> float:
        """Audio needed after frame i's instant i / 25 before its attention window exists, in seconds.

        The last frame the window reads (i + 3 with ``--att 2``) plus the look-ahead of its last speech window.
        """
        return (self.hi - 1) / common.RENDER_FPS + self.stream.latency_s

    def _save_path(self) -> Path:
        """Where ``--asr_save_feats`` writes: ``<wav stem>_se4lip.npy`` beside the file, or the workspace's."""
        from se4lip_features import extract

        if self.opt.asr_wav:
            wav = Path(self.opt.asr_wav)
            path = wav.with_name(wav.stem + "_se4lip.npy")
        else:
            path = Path(getattr(self.opt, "workspace", None) or ".") / "asr_live_se4lip.npy"
            if self._recording(path).exists():
                raise FileExistsError(f"{self._recording(path)}: exists; move it away or drop --asr_save_feats")
        try:
            extract.refuse_existing(path, force=False)  # before any work, not at the end of the session
        except FileExistsError:
            raise FileExistsError(f"{path}: exists; move it away or drop --asr_save_feats") from None
        return path

    @staticmethod
    def _recording(save_to: Path) -> Path:
        """The microphone's audio of a saved live session, beside its features."""
        return save_to.with_name("asr_live.wav")

    # -- the renderers' ASR interface --------------------------------------------------------------------

    def listen(self) -> None:
        if self.mode == "live" and not self.listening:
            self.reader.start()
            self.listening = True
        if self.play and not self.playing:
            self.player.start()
            self.playing = True

    def stop(self) -> None:
        """Stop reading and playing; a microphone session with ``--asr_save_feats`` is saved now."""
        if self.stopped:  # the GUI's __exit__ and a with-block may both stop it
            return
        self.stopped = True
        self.exit_event.set()
        if self.play:
            self.output_stream.stop_stream()
            self.output_stream.close()
            if self.playing:
                self.player.join()
                self.playing = False
        if self.mode == "live":
            self.input_stream.stop_stream()
            self.input_stream.close()
            if self.listening:
                self.reader.join()
                self.listening = False
        if self._pyaudio is not None:
            self._pyaudio.terminate()
            self._pyaudio = None
        if self.mode == "live" and not self.terminated:  # a microphone never ends by itself
            self.terminated = True
            self._add(self.stream.flush())
            if self.save_to is not None:
                self._save()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.stop()

    def run_step(self) -> None:
        """Read the next 20 ms of audio and encode the frames it completes (at the end: all that remain)."""
        if self.terminated:
            return
        frame = self._next_chunk()
        if frame is None:
            self.terminated = True
            self._add(self.stream.flush())
            if self.save_to is not None:
                self._save()
            return
        if self.play:
            self.output_queue.put(frame)
        if self.save_to is not None and self.mode == "live":
            self.recorded.append(frame)
        self._add(self.stream.push(frame))

    def get_next_feat(self):
        """The next frame's attention window, ``(8, dim, window)`` (``(1, dim, window)`` with ``--att 0``).

        Rows outside the audio are zeros, as the renderers' ``get_audio_features`` pads them.
        """
        torch = self._torch
        i = self.next_frame
        while self.n_rows < i + self.hi and not self.terminated:
            self.run_step()  # the window's audio has not all arrived: wait for it (live: the microphone)
        zero = torch.zeros(self.dim, self.width, device=self.device)
        window = [self.rows[k - self.first_row] if self.first_row <= k < self.n_rows else zero
                  for k in range(i + self.lo, i + self.hi)]
        self.next_frame += 1
        while self.rows and self.first_row < self.next_frame + self.lo:  # rows no window will read again
            self.rows.popleft()
            self.first_row += 1
        return torch.stack(window)

    def warm_up(self) -> None:
        """Start listening and read audio until the first frame's window is complete."""
        self.listen()
        log.info("warm up SE4Lip live features: %d steps of %d ms, latency %.0f ms", self.warm_up_steps,
                 1000 // self.fps, 1000 * self.latency_s)
        for _ in range(self.warm_up_steps):
            self.run_step()
        self.clear_queue()

    def clear_queue(self) -> None:
        """Drop audio read from the microphone but not yet used (and not yet played), as the renderers do."""
        if self.mode == "live":
            self.queue.queue.clear()
        if self.play:
            self.output_queue.queue.clear()

    def run(self) -> None:
        """Stream all the audio through (the renderers' ``ASR.run``)."""
        self.listen()
        while not self.terminated:
            self.run_step()

    # -- internals ---------------------------------------------------------------------------------------

    def _next_chunk(self) -> np.ndarray | None:
        if self.mode == "file":
            if self.idx >= len(self.file_stream):
                return None
            frame = self.file_stream[self.idx: self.idx + self.chunk]
            self.idx += self.chunk
            return frame
        return self.queue.get()

    def _add(self, rows: np.ndarray) -> None:
        """Frames (k, window, dim) from the stream, kept as (dim, window) tensors on the device."""
        if not len(rows):
            return
        if self.save_to is not None:
            self.saved_rows.append(rows)
        feats = self._torch.from_numpy(np.ascontiguousarray(rows.transpose(0, 2, 1))).to(self.device)
        self.rows.extend(feats)
        self.n_rows += len(rows)

    def _save(self) -> None:
        """``--asr_save_feats``: the session's features and sidecar, as ``se4lip-extract`` writes them."""
        from se4lip_features import extract

        source = Path(self.opt.asr_wav) if self.mode == "file" else self._recording(self.save_to)
        if self.mode == "live":
            import soundfile

            # float samples: reading the file back gives the very samples the features were computed from
            soundfile.write(str(source), np.concatenate(self.recorded or [np.zeros(0, np.float32)]), SAMPLE_RATE,
                            subtype="FLOAT")
        meta = extract.write_features(self.save_to, self.saved_rows, self.extractor, fps=common.RENDER_FPS,
                                      layout=self.layout, audio_path=source)
        log.info("saved the live features to %s (%d frames, from %s)", self.save_to, meta["n_frames"], source)
