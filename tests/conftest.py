"""Shared fixtures: the child helper, and a leak check on every test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procflow import Proc
from procflow._pytest_plugin import leaks_since, snapshot

CHILD = str(Path(__file__).with_name("child.py"))


def child(name: str, *args: Any) -> Proc:
    """A Proc running one named behaviour of tests/child.py."""
    return Proc(sys.executable, CHILD, name, *[str(a) for a in args])


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test that leaves a child, an fd or a procflow-* thread behind."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    before = snapshot()
    yield
    problems = leaks_since(before)
    if problems:
        pytest.fail("leaked: " + "; ".join(problems), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_leaks: the test checks leaks itself")
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
