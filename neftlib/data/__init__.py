"""Notebook 01: instruction data loaded, checked, formatted in the paper's prompt and tokenized; batches."""
