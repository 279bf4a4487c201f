"""Contrastive losses: the paper's cosine binary cross-entropy (Eq. 6) and a softmax over time offsets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def cosine_bce(cos: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Eq. 6 of the paper on cosine similarities, element-wise.

    Eq. 6 takes log(cos) and log(1 - cos), so the cosine must lie in (0, 1): we use p = (1 + cos) / 2,
    which keeps the full [-1, 1] range of the embedding space instead of forcing embeddings to be
    non-negative (Wav2Lip's ReLU route).

    Parameters
    ----------
    cos : (...) cosine similarities in [-1, 1]
    label : (...) 1 for a matching speech/lip pair, 0 otherwise
    """
    p = ((1.0 + cos) / 2.0).clamp(EPS, 1.0 - EPS)
    return -(label * torch.log(p) + (1.0 - label) * torch.log(1.0 - p))


def pair_losses(sim: torch.Tensor, offset: torch.Tensor, same_clip: torch.Tensor, min_negative_offset: int,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both losses over a similarity matrix of lip windows against speech windows.

    Parameters
    ----------
    sim : (n_lip, n_speech) cosine similarities
    offset : (n_lip, n_speech) int, speech frame minus lip frame (meaningful where ``same_clip``)
    same_clip : (n_lip, n_speech) bool
    min_negative_offset : same-clip pairs closer than this (but not aligned) are neither positive nor
        negative for Eq. 6: a window 1 frame away shares 4 of its 5 frames with the positive
    temperature : softmax temperature of the offset loss

    Returns
    -------
    bce : Eq. 6, the mean over positives plus the mean over negatives (the classes are balanced)
    nce : cross-entropy of picking the aligned speech window among all speech windows, per lip window
    """
    positive = same_clip & (offset == 0)
    negative = ~same_clip | (offset.abs() >= min_negative_offset)
    bce = cosine_bce(sim[positive], torch.ones_like(sim[positive])).mean()
    bce = bce + cosine_bce(sim[negative], torch.zeros_like(sim[negative])).mean()
    has_positive = positive.any(dim=1)
    logits = sim[has_positive] / temperature
    nce = F.cross_entropy(logits, positive[has_positive].float().argmax(dim=1))
    return bce, nce
