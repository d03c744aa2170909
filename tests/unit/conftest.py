"""Fixtures of the unit tests that drive the shell: fresh in-memory fakes per test."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeConsul, FakeDocker


@pytest.fixture
def docker() -> FakeDocker:
    return FakeDocker()


@pytest.fixture
def consul() -> FakeConsul:
    return FakeConsul()
