"""Action Genome class lists as the evaluator sees them (docs/ag_and_eval.md sections 1.2 and 1.3).

Names use the pickle spelling (``'cup/glass/bottle'``, ``'looking_at'``), which is what the AG loader
produces after its renames. The 26 predicates are contiguous by group: attention 0..2, spatial 3..8,
contacting 9..25; a global predicate index is the group-local index plus the group offset.
"""

from __future__ import annotations

# One source of truth for the names: the AG loader's lists (after its renames).
from ..data.ag import OBJECT_CLASSES, RELATIONSHIP_CLASSES  # noqa: E402
from ..relations import NAMES, RELATION_TYPES

PERSON_CLASS = 1

ATTENTION_PREDICATES, SPATIAL_PREDICATES, CONTACTING_PREDICATES = (
    tuple(RELATIONSHIP_CLASSES[r.predicates]) for r in RELATION_TYPES)
PREDICATES: tuple[str, ...] = ATTENTION_PREDICATES + SPATIAL_PREDICATES + CONTACTING_PREDICATES

NUM_ATTENTION = len(ATTENTION_PREDICATES)      # 3
NUM_SPATIAL = len(SPATIAL_PREDICATES)          # 6
NUM_CONTACTING = len(CONTACTING_PREDICATES)    # 17
NUM_PREDICATES = len(PREDICATES)               # 26

ATTENTION_OFFSET, SPATIAL_OFFSET, CONTACTING_OFFSET = (r.offset for r in RELATION_TYPES)  # 0, 3, 9

# Group of each global predicate: 0 attention, 1 spatial, 2 contacting.
PREDICATE_GROUP: tuple[int, ...] = (0,) * NUM_ATTENTION + (1,) * NUM_SPATIAL + (2,) * NUM_CONTACTING
GROUP_NAMES: tuple[str, ...] = NAMES
