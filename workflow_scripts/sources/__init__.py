"""Where tasks, models and the sentence encoder come from, and the manifests that say where they are."""
