"""Training and scoring: KerasHub SAM fine-tuning, mask IoU evaluation."""

# How `evaluation.choose` picks among several predictions of one mask: the
# best IoU (SAM's multimask convention) or the highest score. Here, not in
# evaluation.py, so the CLI lists them without importing TensorFlow.
SELECT = ('best_iou', 'score')
