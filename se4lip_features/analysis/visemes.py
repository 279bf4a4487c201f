"""Phoneme-viseme ambiguity on real speech (the paper's Fig. 4): do features group GRID's letters by lip shape?

GRID's letter words give minimal pairs with word alignments: "b"/"p", "d"/"t" and "v"/"f" share a lip shape
and differ in voicing; "b"/"d" and "p"/"t" differ in place of articulation (lips against tongue tip). For
every letter word we take each feature type's embedding at the letter's consonant and measure how far
apart the letters lie with a Fisher ratio. Features that follow the lips keep same-viseme pairs close and
different-viseme pairs apart: their ratio same / different is low. Acoustic features separate voicing
(b/p, d/t) as readily as place, so their ratio is nearer 1.

Anchor
    The consonant of "bee", "pee", "dee", "tee" and "vee" starts the word, that of "eff" ends it. The
    anchor is the word's onset + 40 ms, or for "f" its end - 40 ms: on GRID s1 the frication of "v" peaks
    about 40 ms after the aligned onset and that of "f" about 30-40 ms before the aligned end (high-band
    energy measured on the 900 utterances), and a plosive's closure and burst span the first ~80 ms.

Embedding (two views)
    ``frame``: the [W, D] features of the video frame nearest the anchor, flattened: what a renderer
    receives for that frame (320 ms of context in the "ds" layout for every feature type).
    ``centre``: the one sub-step nearest the anchor, [D]: an SE4Lip window embedding (200 ms) or one
    acoustic analysis frame (25-50 ms).
    Either way each dimension is standardised over all letter samples before scoring.

Score
    Fisher ratio of two classes = squared distance of their centroids / mean of their within-class
    variances (each the mean squared distance to the class centroid, summed over dimensions). With n
    samples per class and no difference at all it is about 2 / (n - 1) by chance; the chance level is
    reported as the mean ratio over random relabellings of each pair.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import atomic

log = logging.getLogger(__name__)

LETTERS = ("b", "p", "d", "t", "v", "f")
SAME_VISEME = (("b", "p"), ("d", "t"), ("v", "f"))  # differ in voicing only
DIFFERENT_VISEME = (("b", "d"), ("p", "t"))  # differ in place: lips vs tongue tip
CONSONANT_AT_END = frozenset({"f"})  # "eff": the consonant closes the word; the others open theirs
ANCHOR_SHIFT_S = 0.04  # into the word from its aligned onset (or back from its end)
ALIGN_RATE = 25000.0  # GRID .align times are in 1/25000 s


def read_align(path: str | Path) -> list[tuple[float, float, str]]:
    """Words of a GRID ``.align`` file: (start s, end s, word); CRLF or LF line endings."""
    words = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            words.append((int(parts[0]) / ALIGN_RATE, int(parts[1]) / ALIGN_RATE, parts[2]))
    return words


def letter_anchors(align_dir: str | Path, clip_ids, letters=LETTERS) -> list[tuple[str, str, float]]:
    """The consonant instant of every letter word in the clips that have an alignment.

    Returns
    -------
    list of (clip id, letter, anchor time in s from the clip's start)
    """
    align_dir = Path(align_dir)
    out = []
    for cid in clip_ids:
        path = align_dir / f"{cid}.align"
        if not path.exists():
            continue
        for start, end, word in read_align(path):
            if word in letters:
                out.append((cid, word, end - ANCHOR_SHIFT_S if word in CONSONANT_AT_END else start + ANCHOR_SHIFT_S))
    return out


def embeddings(frame_features, data, anchors, view: str = "frame") -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's embedding from a feature source.

    Parameters
    ----------
    frame_features : callable, dataset frame indices (n,) -> features (n, W, D)
    data : PreparedData (its clips and fps)
    anchors : from :func:`letter_anchors`
    view : "frame" (the nearest frame's [W, D] flattened) or "centre" (the sub-step nearest the anchor)

    Returns
    -------
    x : float32 (n, W * D) or (n, D); labels : str (n,)
    """
    if view not in ("frame", "centre"):
        raise ValueError(f"unknown view {view!r}; choose frame or centre")
    clips = {c.id: c for c in data.clips}
    frames, subs, labels = [], [], []
    for cid, letter, t in anchors:
        clip = clips[cid]
        i = round(t * data.fps)
        if not 0 <= i < clip.n_frames:
            continue
        frames.append(clip.frame_start + i)
        subs.append((t - i / data.fps) * 2 * data.fps)  # offset from the frame centre, in sub-steps
        labels.append(letter)
    feats = frame_features(np.asarray(frames, np.int64))  # (n, W, D)
    if view == "frame":
        x = feats.reshape(len(feats), -1)
    else:
        width = feats.shape[1]
        k = np.clip(np.round(np.asarray(subs) + (width - 1) / 2), 0, width - 1).astype(int)
        x = feats[np.arange(len(feats)), k]
    return x.astype(np.float32), np.asarray(labels)


def standardise(x: np.ndarray) -> np.ndarray:
    """Each column to zero mean and unit variance over the rows (constant columns become 0)."""
    x = np.asarray(x, np.float64)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 1e-8, std, 1.0)


def fisher_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """Squared centroid distance over the mean within-class variance of two classes (n_a, D), (n_b, D).

    Each within-class variance is the mean squared distance of the class's points to its centroid.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    within = 0.5 * (((a - ma) ** 2).sum(axis=1).mean() + ((b - mb) ** 2).sum(axis=1).mean())
    return float(((ma - mb) ** 2).sum() / max(within, 1e-12))


def ambiguity(x: np.ndarray, labels: np.ndarray, n_perm: int = 200, seed: int = 0) -> dict:
    """Fisher ratio of every pair, the same/different-viseme means and their ratio, and the chance level.

    ``x`` is standardised over its rows first. Returns a dict with ``pairs`` {"b/p": ratio, ...},
    ``p_values`` {"b/p": fraction of ``n_perm`` random relabellings of the pair at least as separated},
    ``same``, ``different`` (means over the pairs), ``ratio`` (same / different: lower = grouped by lip
    shape), ``chance`` (mean ratio over the relabellings of all pairs) and ``counts`` per letter.
    """
    x = standardise(x)
    rng = np.random.default_rng(seed)
    pairs, p_values, null = {}, {}, []
    for p, q in SAME_VISEME + DIFFERENT_VISEME:
        a, b = x[labels == p], x[labels == q]
        if len(a) < 2 or len(b) < 2:
            pairs[f"{p}/{q}"] = p_values[f"{p}/{q}"] = None
            continue
        pairs[f"{p}/{q}"] = fisher_ratio(a, b)
        both = np.concatenate([a, b])
        perm_scores = []
        for _ in range(n_perm):
            perm = rng.permutation(len(both))
            perm_scores.append(fisher_ratio(both[perm[: len(a)]], both[perm[len(a):]]))
        p_values[f"{p}/{q}"] = (1 + sum(s >= pairs[f"{p}/{q}"] for s in perm_scores)) / (1 + n_perm)
        null += perm_scores
    same = [pairs[f"{p}/{q}"] for p, q in SAME_VISEME if pairs[f"{p}/{q}"] is not None]
    diff = [pairs[f"{p}/{q}"] for p, q in DIFFERENT_VISEME if pairs[f"{p}/{q}"] is not None]
    same_m = float(np.mean(same)) if same else None
    diff_m = float(np.mean(diff)) if diff else None
    return {"pairs": pairs, "p_values": p_values, "same": same_m, "different": diff_m,
            "ratio": same_m / diff_m if same_m is not None and diff_m else None,
            "chance": float(np.mean(null)) if null else None,
            "counts": {letter: int((labels == letter).sum()) for letter in LETTERS}}


def pca(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal components (scikit-learn).

    Returns
    -------
    scores : (n, k) coordinates; explained : (k,) fraction of the variance of each component
    """
    from sklearn.decomposition import PCA

    fitted = PCA(n_components=k).fit(np.asarray(x, np.float64))
    return fitted.transform(np.asarray(x, np.float64)), fitted.explained_variance_ratio_


def tsne(x: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """t-SNE to 2-D (scikit-learn's, initialised by PCA), perplexity capped at (n - 1) / 3 for small sets.

    Returns
    -------
    np.ndarray float64 (n, 2)
    """
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    return TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3), init="pca",
                random_state=seed).fit_transform(np.asarray(x, np.float64))


def plot_pair(views: dict, path: str | Path, pair: tuple[str, str] = ("d", "t"), seed: int = 0) -> None:
    """PCA (top) and t-SNE (bottom) of one letter pair, one column per feature type (as Fig. 4).

    ``views`` maps a feature type's name to (x (n, D), labels (n,)); each is standardised first.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or state

    names = list(views)
    fig = Figure(figsize=(3.2 * len(names), 6.2))
    axes = fig.subplots(2, len(names), squeeze=False)
    for j, name in enumerate(names):
        x, labels = views[name]
        keep = np.isin(labels, pair)
        if keep.sum() < 4:  # nothing to embed
            for i, method in enumerate(("PCA", "t-SNE")):
                axes[i, j].text(0.5, 0.5, f"{keep.sum()} samples", ha="center", transform=axes[i, j].transAxes)
                axes[i, j].set_title(f"{name}: {method}", fontsize=9)
            continue
        xs, ls = standardise(x[keep]), labels[keep]
        embedded = {"PCA": pca(xs, 2)[0], "t-SNE": tsne(xs, seed=seed)}
        for i, (method, y) in enumerate(embedded.items()):
            ax = axes[i, j]
            for c, letter in enumerate(pair):
                sel = ls == letter
                ax.scatter(y[sel, 0], y[sel, 1], s=12, color=f"C{c}", label=f"/{letter}/ ({sel.sum()})")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {method}", fontsize=9)
            if j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, path)


def markdown_table(results: dict, view: str = "frame") -> str:
    """One row per feature type: each pair's Fisher ratio, the means, the ratio and the chance level.

    A pair whose separation is not significant (permutation p >= 0.05) is marked "ns".
    """
    pairs = [f"{p}/{q}" for p, q in SAME_VISEME + DIFFERENT_VISEME]
    lines = ["| features | " + " | ".join(pairs) + " | same | different | same / different ↓ | chance |",
             "|---|" + "---:|" * (len(pairs) + 4)]

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    for name, r in results.items():
        a = r[view]
        def pair(p, a=a):
            ns = a.get("p_values", {}).get(p) is not None and a["p_values"][p] >= 0.05
            return f(a["pairs"][p]) + (" ns" if ns else "")

        lines.append(f"| {name} | " + " | ".join(pair(p) for p in pairs)
                     + f" | {f(a['same'])} | {f(a['different'])} | {f(a['ratio'])} | {f(a['chance'])} |")
    return "\n".join(lines)
