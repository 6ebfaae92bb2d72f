"""Periodic fine-tuning on new snapshots of the generated data (`python -m trainer.run`)."""
