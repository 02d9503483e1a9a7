"""The run on disk: its paths and the run-directory contract (paths.py, outputs.py), state.json (state.py), checkpoints
(checkpoints.py), the prepared pairs kept for restarts (prepared.py), the record of what made it (record.py) and
`--from-run` (rerun.py).
"""
