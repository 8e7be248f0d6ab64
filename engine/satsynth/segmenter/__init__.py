"""The segmenter stage: smp models trained on real (+ synthetic) chips, and their evaluation."""
