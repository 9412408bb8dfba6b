"""Data: tables and GLUE readers, the VADER lexicon task data, batching."""
