"""Training and scoring: KerasHub SAM fine-tuning, mask IoU evaluation."""
