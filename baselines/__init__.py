"""Baseline methods on the shared engine: plain AT (fine-tune, individual), later PackNet and ANP-VS."""
