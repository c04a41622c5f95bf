"""Datasets in, tokenized padded batches out: sources, the built-in labeled set, batching, the DataModule."""
