"""Periodic fine-tuning on new snapshots of the generated data (`python -m trainer.run`, made for cron).

A run freezes a manifest of the complete Parquet files, trains with TRL's SFTTrainer only when enough rows are new,
and publishes model + tokenizer + metadata under the output directory before it moves the `latest` pointer.
"""
