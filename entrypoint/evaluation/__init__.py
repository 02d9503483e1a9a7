"""Base vs tuned on the held-out pairs: DPO rewards and likelihoods (evaluate.py), greedy answers and task accuracy
(answers.py), the before/after table (comparison.py).
"""
