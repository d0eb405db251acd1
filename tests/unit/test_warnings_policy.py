"""pyproject's filterwarnings: a DeprecationWarning from our own modules fails the test; one that an SDK
raises about itself does not."""

from __future__ import annotations

import warnings

import pytest


def test_a_deprecation_in_our_code_is_an_error() -> None:
    with pytest.raises(DeprecationWarning):
        warnings.warn("old API", DeprecationWarning, stacklevel=1)  # attributed to tests.unit...
    with pytest.raises(PendingDeprecationWarning):
        warnings.warn_explicit("old API", PendingDeprecationWarning, "shared/x.py", 1, module="shared.x")


def test_an_sdk_deprecation_about_itself_is_not() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        warnings.warn_explicit("old", DeprecationWarning, "azure/core/x.py", 1, module="azure.core.x")
    # Under the project's filters (not the simplefilter above) it would be shown, never raised:
    warnings.warn_explicit("old", DeprecationWarning, "azure/core/y.py", 2, module="azure.core.y")
    assert len(seen) == 1
