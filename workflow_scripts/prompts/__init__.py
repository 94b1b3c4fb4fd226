"""The ICL prompts: demonstrations chosen per query, rendered and tokenized, with the ablations' perturbations."""
