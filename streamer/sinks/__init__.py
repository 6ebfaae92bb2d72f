"""Parquet output: the fixed schemas and the rolling, atomic writers for local paths and object stores."""
