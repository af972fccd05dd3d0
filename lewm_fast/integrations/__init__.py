"""Adapters that plug lewm_fast into other libraries (each imports its library lazily, if at all)."""
