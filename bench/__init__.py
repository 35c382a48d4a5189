"""The benchmark: every backend against the PyTorch reference, in one process, one run.

bench/ stays outside the installed package (DESIGN.md: only export/, engines/,
calibration/ and runtime/ ship). `medsam-edge bench` therefore works from a source
checkout (an editable install): medsam_edge/bench_command.py loads this folder as the
package `bench` from the path next to medsam_edge/, without putting the repository root
on sys.path. The scripts here (reuse.py, standard.py, benchmarks_md.py) run directly:
`python bench/<script>.py`.

Modules, one job each:
  frames.py    frame sources and boxes, read once with their read times
  rows.py      which rows to run (reference, backends x precisions) and opening them
  runners.py   one frame through one row, stage by stage
  timing.py    statistics with spread, memory sampling
  fidelity.py  masks and embeddings against the reference; thresholds as data
  flops.py     counted FLOPs and this machine's measured matrix rate
  compare.py   the round-robin loop over frames, runs and rows
  streaming.py the runtime scenarios (reuse off/on, real-time, long run)
  report.py    JSON and Markdown
  plots.py     PNG plots (skipped with a note without matplotlib)
  machine.py   what this ran on
  run.py       the command's body: all of the above, and the partial report on failure
"""
