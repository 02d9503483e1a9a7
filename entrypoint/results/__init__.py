"""What a person reads: the model card (card.py), report.html (report.py), the training curves (plots.py), and the
run directory written in its order, manifest.json last (write.py).
"""
