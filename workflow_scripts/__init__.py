"""The pipeline's logic, one sub-package per stage over a small core. Imports run one way, down
this list (tests/test_structure.py checks the order, cycles, and that torch stays in model/ and causal/):

  core      what every stage shares: paths, config validation, layers, the Parquet tables' columns
            (tables), stats, splits, kernels, readers, resources, the paper's numbers, and how a rule's
            job runs its stage (code, job)
  sources   where tasks, models and the encoder come from (registry, hub, local) and their manifests
  prompts   the ICL prompts: demonstrations, templates, perturbations, retrieval
  model     runs the studied model (torch): extraction, zero-shot, embeddings
  analysis  the paper's Sections 5.1-5.5 and the ablations, on the extracted tables (no torch)
  causal    the edits at the last token and the causal check of the kernel heads (torch)
  theory    the synthetic check of Theorem 1 on HMMs
  report    one module per report section, and the assembler of results/report.md

A module that a rule runs (rules/*.smk: `script: stage("package.module:function")`) is a stage; what
two stages share lives in a library module that no rule runs.
"""
