"""Typed errors of the calibration package, under one root."""

from __future__ import annotations


class CalibrationError(Exception):
    """Root of every calibration error."""


class IncompatibleCalibratorError(CalibrationError):
    """A calibrator does not fit the model or feature layout it is used with."""


class CalibratorStateError(CalibrationError):
    """Persisted calibrator state is unreadable or of an unknown format."""


class NotEnoughDataError(CalibrationError):
    """Too few labeled examples (or positives) to fit a calibrator."""
