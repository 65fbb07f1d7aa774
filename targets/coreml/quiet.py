"""coremltools, imported and run without its noise: at import it logs that its macOS-only
parts are missing and warns about the torch and scikit-learn versions, and every conversion
draws progress bars on stderr. None of it is for a dynexport user (their spinner shares
stderr); errors still raise."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet():
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def coremltools():
    """The coremltools module, imported quietly."""
    with quiet():
        import coremltools as ct
    return ct
