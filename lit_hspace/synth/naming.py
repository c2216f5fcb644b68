"""Names for discovered directions of the synthetic faces: the factor each one moves most."""

from __future__ import annotations

from torch import Tensor


def factor_names(changes: Tensor, strengths: tuple[float, ...], indices: list[int], factor_names: list[str]) -> dict[int, str]:
    """Name each edited direction after the factor it moves most (mean absolute change over its non-zero
    strengths); a factor already taken gets the direction's index appended.

    changes: (D, S, F) signed factor changes of D directions (set indices `indices`) at strengths `strengths`.
    """
    moved = [i for i, a in enumerate(strengths) if a != 0]
    if not moved:
        return {}
    mean_change = changes[:, moved].abs().mean(1)  # (D, F)
    names: dict[int, str] = {}
    for index, row in zip(indices, mean_change):
        top = factor_names[int(row.argmax())]
        names[index] = top if top not in names.values() else f"{top}_{index}"
    return names
