"""What every stage shares: paths, config, the Parquet tables, stats, splits, kernels, readers, and
how a rule's job runs its stage."""
