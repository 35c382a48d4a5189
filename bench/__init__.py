"""medsam_edge.bench: every backend against the PyTorch reference, in one process, one run.

It ships with the package (the folder bench/ is mapped to medsam_edge.bench like
export/, engines/, calibration/ and runtime/), so `medsam-edge bench` works from a wheel
on the machine that is to be measured. Its dependencies beyond the runtime's are the
`bench` extra (psutil, matplotlib) and, for the PyTorch reference, the `export` extra.
The scripts run as modules: `python -m medsam_edge.bench.standard`, `...bench.reuse`,
`...bench.benchmarks_md`, `...bench.ground_truth`, `...bench.gpu_check`, `...bench.truth_run`,
`...bench.tracking`.

Modules, one job each:
  command.py   the `medsam-edge bench` command line
  frames.py    frame sources and boxes, read once with their read times
  rows.py      which rows to run (reference, backends x precisions) and opening them
  runners.py   one frame through one row, stage by stage
  timing.py    statistics with spread, memory sampling
  fidelity.py  masks and embeddings against the reference; thresholds as data
  flops.py     counted FLOPs and this machine's measured matrix rate
  compare.py   the round-robin loop over frames, runs and rows
  streaming.py the runtime scenarios (reuse off/on, real-time, long run)
  report.py    JSON and Markdown
  cells.py     table cells the Markdown tables share
  plots.py     PNG plots (skipped with a note without matplotlib)
  machine.py   what this ran on
  run.py       the command's body: all of the above, and the partial report on failure
  gpu_check.py the GPU layer in one call: backends as rows against the reference, TensorRT's behaviour
  clips.py     ground-truth clips: an image and its expert mask moved along a known sweep, fresh noise
  truth.py     Dice vs truth and flicker per mode (fresh, deterministic reuse, real-time 30/60 fps)
  lockstep.py  frames played to a real-time session at a fixed capture rate
  tracking.py  --track on annotated video beside truth-box and previous-frame-box prompts
  realtime_rows.py long real-time rows: answered share, latency by tenths, embeddings/s, Dice vs truth
  truth_md.py  the ground-truth report's Markdown; truth_run.py runs the three and writes the report
"""
