"""Task pieces for the shared loop: each builds a `training.Task` (model, datasets, collator, evaluator)."""
