"""Training: TRL's DPOTrainer wired from the settings (trainer.py), its callbacks (callbacks.py), wandb (tracking.py),
and the merged model written after training (merge.py).
"""
