"""The three relation types of Action Genome: the one table every per-type table derives from.

``name`` ("contacting") is AG's spelling, used for entry keys, losses, memory, evaluation and
frequency tables; ``key`` ("contact") the published model's, used only where it names parameters
or constructor arguments (``freq_mapper.contact``, ``freq_contact``), so published checkpoints and
fixtures load unchanged. :func:`relation_type` accepts either.
"""

from __future__ import annotations

from typing import NamedTuple


class RelationType(NamedTuple):
    """One relation type: spellings, class count, place among AG's 26 predicates, the published
    head's activation and attribute name."""

    name: str
    key: str
    classes: int
    offset: int
    activation: str
    head: str

    @property
    def predicates(self) -> slice:
        """Its predicates' global indices (attention 0..2, spatial 3..8, contacting 9..25)."""
        return slice(self.offset, self.offset + self.classes)


RELATION_TYPES: tuple[RelationType, ...] = (
    RelationType("attention", "attention", 3, 0, "softmax", "a_rel_compress"),
    RelationType("spatial", "spatial", 6, 3, "sigmoid", "s_rel_compress"),
    RelationType("contacting", "contact", 17, 9, "sigmoid", "c_rel_compress"),
)
NAMES: tuple[str, ...] = tuple(r.name for r in RELATION_TYPES)
KEYS: tuple[str, ...] = tuple(r.key for r in RELATION_TYPES)
_LOOKUP = {**{r.name: r for r in RELATION_TYPES}, **{r.key: r for r in RELATION_TYPES}}


def relation_type(spelling: str) -> RelationType:
    """The relation type called ``spelling`` (name or key); ValueError for anything else."""
    try:
        return _LOOKUP[spelling]
    except (KeyError, TypeError):
        raise ValueError(f"relation type must be one of {list(NAMES)} (or {KEYS[-1]!r}), got {spelling!r}") from None


__all__ = ["KEYS", "NAMES", "RELATION_TYPES", "RelationType", "relation_type"]
