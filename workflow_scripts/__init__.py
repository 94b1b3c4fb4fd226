"""ICL-as-kernel-regression analysis pipeline: the importable logic behind the Snakemake rules."""
