"""Deprecated: the former ``inference`` package is split by job into :mod:`scan_lightning.cost`,
:mod:`scan_lightning.policy`, :mod:`scan_lightning.runtime`, :mod:`scan_lightning.export` and
:mod:`scan_lightning.evaluation`; this module re-exports their names for old imports."""
import warnings

from scan_lightning.cost import *  # noqa: F403
from scan_lightning.export import *  # noqa: F403
from scan_lightning.policy import *  # noqa: F403
from scan_lightning.runtime import *  # noqa: F403

warnings.warn("scan_lightning.inference is deprecated; import from scan_lightning.cost, .policy, .runtime or .export",
              DeprecationWarning, stacklevel=2)

# the old names of two runtime objects
from scan_lightning.runtime import EarlyExitRunner as EarlyExitPredictor  # noqa: E402, F401
from scan_lightning.runtime import plain_network as full_network  # noqa: E402, F401
