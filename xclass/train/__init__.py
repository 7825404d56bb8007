"""The one training loop (loop.py) and what it needs: engines, checkpoints, schedules, logs."""
