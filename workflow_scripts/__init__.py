"""The pipeline's logic. Imports run one way, from the library up to the stages (tests/test_structure.py
fails on a cycle, on a sibling import hidden inside a function, and on torch loaded outside the model stages):

  core        paths, schemas (every Parquet file's columns), config (validation, in one place), layers,
              stats, registry, hub, perturb, resources, report_files, model_check (what a studied
              model's folder must hold)
  library     split     which examples are test queries, dev queries, the demonstration pool; the
                        select / held-out prompts of Table 2 and those the ablations read
              render    a prompt's text and the token position of every span
              kernels   kernel weights from attention and from cosine similarity; the kernel-regression vote
              readers   intermediate tables several stages read (zero-shot, embeddings, shards with prompts)
              retrieval demonstrations by similarity
  stages      data, models, encoder, prompts; the model stages engine + extract + zero_shot,
              calibration and engine_edits + interventions (the only modules that import torch on import);
              reconstruction, attention_map, similarity, probes, heldout, table2, ablation, theory,
              report + ablation_report + interventions_report + model_comparison; step.py dispatches a rule to
              its stage (the map: stages.py).
"""
