"""Everything that runs the studied model or the encoder (torch is imported here and in causal/ only)."""
