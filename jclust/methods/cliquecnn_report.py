"""CliqueCNN's round diagnostics (no labels): what a round's cliques and batches look like, the
collapse warning with its remedies, and the error when a round finds too few cliques."""

from __future__ import annotations

import numpy as np

from jclust import cluster as jcluster
from jclust.config_lib import ConfigError


def round_report(cliques: jcluster.Cliques, features, batches, num_samples: int) -> dict:
    """A round's diagnostics (no labels): coverage, cliques used and their sizes, compactness,
    intra- against inter-clique similarity, the share of batches passing the triplet check."""
    sizes = np.asarray(cliques.sizes)
    used = sizes > 0
    similarity = jcluster.clique_similarity(cliques, features)
    return {"clique_coverage": float(jcluster.clique_coverage(cliques, num_samples)),
            "cliques_used": int(used.sum()),
            "clique_size_mean": float(sizes[used].mean()) if used.any() else 0.0,
            "clique_compactness": float(np.mean(np.asarray(cliques.compactness)[used]))
            if used.any() else 0.0,
            "clique_intra_similarity": float(similarity.intra),
            "clique_inter_similarity": float(similarity.inter),
            "triplet_check_passed": float(np.mean(batches.passed))}


REMEDIES = ("a lower optim.learning_rate, more cliquecnn.round_epochs, "
            "cliquecnn.init_features='hog_lda'")


def collapse_warning(report: dict, min_gap: float, min_spread: float = 0.01) -> str | None:
    """A warning when the embedding has collapsed (rows nearly equal) or cliques are no more
    similar inside than across."""
    spread = report.get("feature_spread", 1.0)
    if spread < min_spread:
        return (f"embedding collapse: the trunk's features vary by {spread:.2g} of their norm "
                f"(the cliques are built on their z-scores, i.e. on noise); training goes on. "
                f"Remedies: {REMEDIES}")
    gap = report["clique_intra_similarity"] - report["clique_inter_similarity"]
    if gap >= min_gap:
        return None
    return (f"clique collapse: intra-clique similarity {report['clique_intra_similarity']:.3f} "
            f"against {report['clique_inter_similarity']:.3f} across cliques (gap below "
            f"{min_gap}); training goes on. Remedies: {REMEDIES}")


def check_enough_cliques(cliques: jcluster.Cliques, per_step: int, round_index: int) -> None:
    """Raises a ConfigError (the run stops, its checkpoints intact) when a round found fewer
    cliques than a batch holds."""
    found = int(np.sum(np.asarray(cliques.sizes) >= 2))
    if found < per_step:
        raise ConfigError(
            f"cliquecnn round {round_index}: only {found} cliques of two or more samples, fewer "
            f"than cliquecnn.cliques_per_step={per_step}: the similarities have collapsed (or "
            f"the data are too few); the last checkpoint is intact. Remedies: lower "
            f"cliquecnn.cliques_per_step, {REMEDIES}")
