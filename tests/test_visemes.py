"""Phoneme-viseme analysis: alignments and anchors, embedding views, Fisher ratio, PCA and t-SNE on known cases."""

import numpy as np
import pytest

from se4lip_features.analysis import visemes
from se4lip_features.training.data import Clip


def test_fisher_ratio_of_perfectly_separable_classes():
    a = np.array([[-1.1], [-0.9]])  # centroid -1, variance 0.01
    b = np.array([[0.9], [1.1]])  # centroid +1, variance 0.01
    assert visemes.fisher_ratio(a, b) == pytest.approx(4.0 / 0.01)
    # extra dimensions where the classes agree add within-class variance only
    a2 = np.concatenate([a, [[0.1], [-0.1]]], axis=1)
    b2 = np.concatenate([b, [[0.1], [-0.1]]], axis=1)
    assert visemes.fisher_ratio(a2, b2) == pytest.approx(4.0 / 0.02)
    assert visemes.fisher_ratio(a, a + 0.0) == 0.0


def test_ambiguity_ratio_on_a_known_layout():
    """Letters of one viseme share a centroid; the two visemes lie 4 apart: same/different = 0."""
    rng = np.random.default_rng(0)
    centre = {"b": 0.0, "p": 0.0, "v": 0.0, "f": 0.0, "d": 4.0, "t": 4.0}
    labels = np.repeat(list(centre), 40)
    x = np.array([centre[c] for c in labels]) + rng.normal(0, 0.3, len(labels))
    for letter, c in centre.items():  # remove the sampling noise of the centroids exactly
        x[labels == letter] += c - x[labels == letter].mean()
    out = visemes.ambiguity(x[:, None], labels)
    assert out["counts"] == {c: 40 for c in visemes.LETTERS}
    assert out["pairs"]["b/p"] == pytest.approx(0.0, abs=1e-12)
    within = 0.5 * (x[labels == "b"].var() + x[labels == "d"].var())
    assert out["pairs"]["b/d"] == pytest.approx(16.0 / within)  # standardising one dimension changes nothing
    assert out["ratio"] == pytest.approx(0.0, abs=1e-12)
    assert 0 < out["chance"] < 0.5  # relabelled pairs are far less separable than b/d
    assert out["p_values"]["b/d"] == pytest.approx(1 / 201)  # no relabelling comes close
    assert out["p_values"]["b/p"] == 1.0  # every relabelling is at least as separated as identical centroids


def test_ambiguity_with_a_missing_letter():
    labels = np.array(["b", "b", "p", "p", "d", "d"])
    out = visemes.ambiguity(np.arange(12.0).reshape(6, 2), labels, n_perm=2)
    assert out["pairs"]["d/t"] is None and out["pairs"]["b/p"] is not None
    assert out["counts"]["t"] == 0


def test_pca_of_a_rank_one_set():
    v = np.array([3.0, 4.0, 0.0]) / 5.0
    s = np.linspace(-2, 2, 9)
    x = s[:, None] * v[None, :] + np.array([1.0, -1.0, 7.0])
    scores, explained = visemes.pca(x, 2)
    assert explained[0] == pytest.approx(1.0)
    assert explained[1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(np.abs(scores[:, 0]), np.abs(s), atol=1e-12)


def test_tsne_keeps_separate_clusters_apart():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (20, 10)), rng.normal(0, 1, (20, 10)) + 8.0])
    y = visemes.tsne(x, seed=0)
    assert y.shape == (40, 2) and np.isfinite(y).all()
    d = np.linalg.norm(y[:, None] - y[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    labels = np.repeat([0, 1], 20)
    assert (labels[d.argmin(axis=1)] == labels).all()
    np.testing.assert_array_equal(visemes.tsne(x, seed=3), visemes.tsne(x, seed=3))  # seeded: reproducible


def test_letter_anchors_from_crlf_alignments(tmp_path):
    (tmp_path / "c1.align").write_bytes(b"0 10000 sil\r\n10000 15000 bin\r\n15000 20000 b\r\n"
                                        b"20000 30000 f\r\n30000 35000 two\r\n")
    anchors = visemes.letter_anchors(tmp_path, ["c1", "missing"])
    assert [(c, w) for c, w, _ in anchors] == [("c1", "b"), ("c1", "f")]
    assert anchors[0][2] == pytest.approx(0.6 + 0.04)  # "bee": onset + 40 ms
    assert anchors[1][2] == pytest.approx(1.2 - 0.04)  # "eff": end - 40 ms


class Data:
    fps = 25.0
    clips = (Clip("c1", 100, 50, 0, 0, 0),)


def coded_features(frames):
    """Frame f, sub-step k -> [f, k]: (n, 16, 2)."""
    frames = np.asarray(frames)
    return np.stack(np.broadcast_arrays(frames[:, None], np.arange(16)[None, :]), axis=-1).astype(np.float32)


def test_embedding_views():
    anchors = [("c1", "b", 0.40 + 0.004), ("c1", "p", 0.40 - 0.006), ("c1", "d", 0.40 + 0.015), ("c1", "t", 9.0)]
    x, labels = visemes.embeddings(coded_features, Data, anchors, view="centre")
    assert labels.tolist() == ["b", "p", "d"]  # 9 s is past the clip's end
    assert x[:, 0].tolist() == [110, 110, 110]  # frame 10 of the clip
    # frame 10's sub-steps 7 and 8 sit 10 ms either side of 0.40 s; 15 ms after it is closest to sub-step 8
    assert x[:, 1].tolist() == [8, 7, 8]
    flat, _ = visemes.embeddings(coded_features, Data, anchors, view="frame")
    assert flat.shape == (3, 32)
    with pytest.raises(ValueError, match="unknown view"):
        visemes.embeddings(coded_features, Data, anchors, view="middle")


def test_plot_pair_and_table(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(list(visemes.LETTERS), 6)
    x = rng.normal(size=(len(labels), 5))
    visemes.plot_pair({"a": (x, labels), "b": (x[:, :3], labels)}, tmp_path / "dt.png")
    assert (tmp_path / "dt.png").read_bytes()[:4] == b"\x89PNG"
    table = visemes.markdown_table({"a": {"frame": visemes.ambiguity(x, labels, n_perm=3)}})
    assert table.splitlines()[0].startswith("| features | b/p | d/t | v/f | b/d | p/t |")
    assert table.splitlines()[2].startswith("| a | ")
