"""Before any weights load: how many steps the run takes and when it evaluates (schedule.py), the GPU memory it needs
(memory.py) and what it costs (cost.py).
"""
