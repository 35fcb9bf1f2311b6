"""Former name of :mod:`candlejax.models.hub`."""

from candlejax.models.hub import *  # noqa: F403
from candlejax.models.hub import __all__  # noqa: F401
