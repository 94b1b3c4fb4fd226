"""The causal check's edit families as the report names them, and the measure each is judged by; the
causal-check section and the models side by side both read them here."""
from __future__ import annotations

FAMILY_TEXT = {
    "knockout": "head knockout",
    "label_knockout": "label-attention knockout",
    "steer": "kernel steering",
}
# The measure each family is judged by: whether the prediction changed, or moved to the steered class.
MAIN = {"knockout": "flip_rate", "label_knockout": "flip_rate", "steer": "steer_success"}
