"""Data: loading and validation, tokenizer training, tokenization and packing."""
