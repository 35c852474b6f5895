"""The warning raised when a metric has no value for a class (it is then NaN)."""

from __future__ import annotations

import warnings


class UndefinedMetricWarning(UserWarning):
    """A metric has no value for a class (for example no anomalous image); it is reported as NaN."""


def warn_undefined(cls_name: str, keys, reason: str) -> None:
    who = f"class {cls_name!r}" if cls_name else "class"
    warnings.warn(f"{who}: {', '.join(keys)} undefined ({reason}); reported as NaN",
                  UndefinedMetricWarning, stacklevel=3)
