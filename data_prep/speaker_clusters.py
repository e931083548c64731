"""Speaker clusters from window embeddings (numpy/scipy only): N voices, their names, how distinct.

Unit-length embeddings [W, D] (W windows, D dims) are clustered by average-linkage agglomerative
clustering on cosine distance. Cutting the tree into exactly N clusters would let one odd window
(a cough, a laugh) become a "speaker" of its own and merge two real ones; so the tree is cut into
N, N+1, ... clusters until N of them each hold at least MIN_CLUSTER_SHARE of the windows, and the
rest (outliers) join their nearest centroid. A few rounds of assigning every window to its nearest
centroid and recomputing the centroids (spherical k-means) then settle the boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dia2.errors import Dia2Error
from dia2.evaluation.speaker import unit

MIN_CLUSTER_SHARE = 0.05
"""A cluster must hold this share of the windows (and at least 2) to count as a speaker."""
MAX_CLUSTERED_WINDOWS = 2000
"""Windows the tree is built on (evenly spaced; all are assigned afterwards): the tree's cost grows
with the square of this (an hour of speech at a 0.4 s hop is ~9000 windows)."""
_EXTRA_CUTS = 12  # how many clusters past N to look for N big ones
_REFINE_ROUNDS = 5


class DiarizeError(Dia2Error, ValueError):
    """Speakers, enrollment clips or audio that diarisation cannot work with; the message names them and the fix."""


class TooFewVoicesError(DiarizeError):
    """A recording in which diarisation cannot tell N voices apart (too little speech, too few
    distinct voices): that recording is left out; the other DiarizeErrors (speakers, enrollment
    clips, the encoder) stop the run."""


def cluster_windows(embeddings: np.ndarray, speakers: int, label: str = "the recording") -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings [W, D] -> (unit centroids [N, D], each window's cluster [W]) for N = `speakers`."""
    from scipy.cluster.hierarchy import fcluster, linkage

    step = max(1, -(-len(embeddings) // MAX_CLUSTERED_WINDOWS))
    sample = embeddings[::step]
    tree = linkage(sample, method="average", metric="cosine")
    least = max(2, int(np.ceil(MIN_CLUSTER_SHARE * len(sample))))
    for count in range(speakers, speakers + _EXTRA_CUTS + 1):
        labels = fcluster(tree, count, criterion="maxclust")
        sizes = np.bincount(labels)
        big = [c for c in np.argsort(sizes)[::-1] if sizes[c] >= least][:speakers]
        if len(big) == speakers:
            break
    else:
        raise TooFewVoicesError(
            f"{label}: could not find {speakers} distinct voices (the windows form fewer groups of at least "
            f"{MIN_CLUSTER_SHARE:.0%} of the speech): check the number of speakers, or give a longer recording"
        )
    centroids = np.stack([unit(sample[labels == c].mean(axis=0)) for c in big])
    for _ in range(_REFINE_ROUNDS):
        assigned = np.argmax(embeddings @ centroids.T, axis=1)
        if len(np.unique(assigned)) < speakers:
            break  # a centroid lost every window: keep the previous round's
        updated = np.stack([unit(embeddings[assigned == k].mean(axis=0)) for k in range(speakers)])
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids, np.argmax(embeddings @ centroids.T, axis=1)


def match_enrollment(
    voices: Mapping[str, np.ndarray], centroids: np.ndarray, min_similarity: float, sources: Mapping[str, object]
) -> dict[str, int]:
    """Each enrolled name -> its cluster: the assignment with the highest total cosine (Hungarian
    method), every pair at least `min_similarity`; DiarizeError naming the clip (`sources[name]`)
    that matches no cluster that closely."""
    from scipy.optimize import linear_sum_assignment

    names = list(voices)
    if len(names) > len(centroids):
        raise DiarizeError(f"{len(names)} enrollment clips for {len(centroids)} speakers: give at most one clip per speaker")
    similarity = np.stack([voices[n] for n in names]) @ centroids.T  # [E, N]
    rows, cols = linear_sum_assignment(-similarity)
    claimed = {int(c): names[r] for r, c in zip(rows, cols)}
    for row, col in sorted(zip(rows, cols), key=lambda rc: similarity[rc]):  # the worst match first
        if similarity[row, col] >= min_similarity:
            continue
        name, best = names[row], int(np.argmax(similarity[row]))
        other = claimed.get(best)
        if other is not None and other != name and similarity[row, best] >= min_similarity:
            raise DiarizeError(
                f"enrollment clips {sources[name]} ({name}) and {sources[other]} ({other}) sound like the same speaker "
                f"(cosines {similarity[row, best]:.2f} and {similarity[names.index(other), best]:.2f} with that voice): "
                "give a clip of each speaker talking alone"
            )
        raise DiarizeError(
            f"enrollment clip {sources[name]} for {name} matches no speaker in the recording (its cosine with the nearest "
            f"is {similarity[row, best]:.2f}; at least {min_similarity:.2f} needed): give a clip of {name} talking alone"
        )
    return {names[r]: int(c) for r, c in zip(rows, cols)}


def silhouette(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (cosine distance) of the clustering, -1 to 1: how much nearer each window
    is to its own cluster than to the next one (1: tight and apart; about 0: no structure)."""
    step = max(1, -(-len(embeddings) // MAX_CLUSTERED_WINDOWS))
    x, y = embeddings[::step], labels[::step]
    distance = 1.0 - x @ x.T
    clusters = np.unique(y)
    if len(clusters) < 2:
        return 0.0
    mean_to = np.stack([distance[:, y == c].sum(axis=1) for c in clusters], axis=1)  # [W, N]
    counts = np.array([(y == c).sum() for c in clusters], dtype=np.float64)
    own = np.searchsorted(clusters, y)
    a = mean_to[np.arange(len(y)), own] / np.maximum(counts[own] - 1, 1)
    others = mean_to / counts
    others[np.arange(len(y)), own] = np.inf
    b = others.min(axis=1)
    score = np.where(counts[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(score.mean())
