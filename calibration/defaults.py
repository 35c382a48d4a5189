"""INT8 search settings the `calibrate` command line shows as defaults.

Standard library only: the CLI builds every parser at start, and this module must
import where the `export` extra (onnx) is not installed.
"""

METHODS = ("minmax", "entropy", "percentile")
# A full one-node-at-a-time pass above this many nodes would take too long on a CPU.
MAX_TRIALS = 96
# The share of the INT8 target's allowed Dice loss the searches may spend on calibration
# frames: unseen sources lose more than the frames judged (docs/decisions.md#int8-search-margin-and-backends).
SEARCH_MARGIN = 0.25
