"""Basic things, each done one way: models, prompts, chat encoding and batching, the residual stream, generation."""
