"""Per-task calibrators: logistic regression over the raw logit and calibration features.

Offline fit (Newton), online FTRL updates, versioned immutable sets tied to a
model version, an atomically swappable serving holder, and on-disk persistence.
"""

from .calset import FEATURE_LAYOUT_HASH, CalibratorHolder, CalibratorSet
from .data import LabeledBatch
from .errors import CalibrationError, CalibratorStateError, IncompatibleCalibratorError, NotEnoughDataError
from .fit import fit_calibrator_set
from .ftrl import FtrlCalibrator, FtrlConfig
from .logistic import LogisticCalibrator, fit_calibrator, fit_logistic
from .online import OnlineCalibration
from .store import CalibratorStore

__all__ = [
    "FEATURE_LAYOUT_HASH",
    "CalibrationError",
    "CalibratorHolder",
    "CalibratorSet",
    "CalibratorStateError",
    "CalibratorStore",
    "FtrlCalibrator",
    "FtrlConfig",
    "IncompatibleCalibratorError",
    "LabeledBatch",
    "LogisticCalibrator",
    "NotEnoughDataError",
    "OnlineCalibration",
    "fit_calibrator",
    "fit_calibrator_set",
    "fit_logistic",
]
