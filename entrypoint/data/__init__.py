"""Where rows come from (sources.py), what they become (formats.py, images.py), what they cost in tokens
(budget.py), the pipeline that turns them into pairs (prepare.py) with a run's settings (stage.py), and generated
samples (samples.py).
"""
