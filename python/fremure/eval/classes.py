"""Action Genome class lists as the evaluator sees them (spec sections 1.2 and 1.3).

Names use the pickle spelling (``'cup/glass/bottle'``, ``'looking_at'``), which is what the AG loader
produces after its renames. The 26 predicates are contiguous by group: attention 0..2, spatial 3..8,
contacting 9..25; a global predicate index is the group-local index plus the group offset.
"""

from __future__ import annotations

OBJECT_CLASSES: tuple[str, ...] = (
    "__background__", "person", "bag", "bed", "blanket", "book", "box", "broom", "chair",
    "closet/cabinet", "clothes", "cup/glass/bottle", "dish", "door", "doorknob", "doorway", "floor",
    "food", "groceries", "laptop", "light", "medicine", "mirror", "paper/notebook", "phone/camera",
    "picture", "pillow", "refrigerator", "sandwich", "shelf", "shoe", "sofa/couch", "table",
    "television", "towel", "vacuum", "window",
)
PERSON_CLASS = 1

ATTENTION_PREDICATES: tuple[str, ...] = ("looking_at", "not_looking_at", "unsure")
SPATIAL_PREDICATES: tuple[str, ...] = ("above", "beneath", "in_front_of", "behind", "on_the_side_of", "in")
CONTACTING_PREDICATES: tuple[str, ...] = (
    "carrying", "covered_by", "drinking_from", "eating", "have_it_on_the_back", "holding",
    "leaning_on", "lying_on", "not_contacting", "other_relationship", "sitting_on", "standing_on",
    "touching", "twisting", "wearing", "wiping", "writing_on",
)
PREDICATES: tuple[str, ...] = ATTENTION_PREDICATES + SPATIAL_PREDICATES + CONTACTING_PREDICATES

NUM_ATTENTION = len(ATTENTION_PREDICATES)      # 3
NUM_SPATIAL = len(SPATIAL_PREDICATES)          # 6
NUM_CONTACTING = len(CONTACTING_PREDICATES)    # 17
NUM_PREDICATES = len(PREDICATES)               # 26

ATTENTION_OFFSET = 0
SPATIAL_OFFSET = NUM_ATTENTION                 # 3
CONTACTING_OFFSET = NUM_ATTENTION + NUM_SPATIAL  # 9

# Group of each global predicate: 0 attention, 1 spatial, 2 contacting.
PREDICATE_GROUP: tuple[int, ...] = (0,) * NUM_ATTENTION + (1,) * NUM_SPATIAL + (2,) * NUM_CONTACTING
GROUP_NAMES: tuple[str, ...] = ("attention", "spatial", "contacting")
