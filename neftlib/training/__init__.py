"""Notebooks 02 and 03: models, fine-tuning through transformers' Trainer with NEFTune noise, memory."""
