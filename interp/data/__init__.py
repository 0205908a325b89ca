"""Prompt sets written for this project (JSON lists of {"instruction", "category"})."""
