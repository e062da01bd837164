"""Measuring a scheduled delay without the machine's speed in it: run the function that
schedules with its module's clock stopped at a known instant, then measure from that instant."""

from __future__ import annotations

from typing import Any

from django.utils import timezone


def call_at_a_stopped_instant(monkeypatch, module: Any, function, *args, **kwargs):
    """Call `function` while `module.timezone.now()` returns one instant; (result, instant)."""
    instant = timezone.now()

    class Stopped:
        @staticmethod
        def now():
            return instant

    with monkeypatch.context() as stopped:
        stopped.setattr(module, "timezone", Stopped)
        result = function(*args, **kwargs)
    return result, instant
