"""Watching trees: ignore rules now; the observer and debouncer live beside them."""
