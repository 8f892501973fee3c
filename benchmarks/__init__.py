"""Side-by-side measurements of llm-recipes against its peers (see run_all.py)."""
