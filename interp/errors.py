"""Named errors: every bad input gets one that says what is wrong."""

from __future__ import annotations


class InterpError(Exception):
    """Base class for the suite's errors; the CLI prints these as one line."""


class ModelLoadError(InterpError):
    """A model could not be found or loaded (bad path, hub unreachable, unsupported file)."""


class HubUnavailableError(ModelLoadError):
    """A hub id was given but the Hugging Face hub cannot be reached (offline)."""


class ModelMismatchError(InterpError):
    """Base and fine-tuned models are not a comparable pair."""


class EmptyPromptSetError(InterpError):
    """A prompt set has no prompts."""


class PromptFormatError(InterpError):
    """A prompt file cannot be read as the format it claims to be."""


class UnknownHookError(InterpError):
    """A hook name that the model does not have."""


class PositionOutOfRangeError(InterpError):
    """A requested token position lies outside a prompt."""


class NonFiniteActivationError(InterpError):
    """A model produced NaN or infinite activations."""


class ConfigError(InterpError):
    """A configuration value is invalid."""


class LayerMapError(InterpError):
    """A layer map is malformed or does not fit the model it is applied to."""


class TrainingDivergedError(InterpError):
    """A training loss became NaN or infinite."""


class OutputExistsError(InterpError):
    """An output path exists and holds something the suite did not write: it is never replaced."""


class OrganismDataError(InterpError):
    """The organism data shipped in the package is damaged or does not match its pinned hashes."""
