"""Training: LoRA adapters, supervised fine-tuning (model organisms) and restoration."""
