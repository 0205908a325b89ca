"""The evaluation table and the restoration targets checked on it."""
