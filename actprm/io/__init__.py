"""Readers (every input format → trajectory rows) and writers (rows → canonical Parquet shards)."""
