"""Notebooks 05 and 06: overfitting, length and diversity, the paper's tables beside ours, a verdict per
claim, the power of the design, and every figure."""
