from __future__ import annotations

import pytest

from tests.unit.workflow.fakes import World, make_world


@pytest.fixture
def world() -> World:
    """A runtime on fakes with the defaults (scopes: the test subscription; cooldown 30 minutes)."""
    return make_world()
