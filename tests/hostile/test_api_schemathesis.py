"""schemathesis against the app for every operation and role: no 5xx, responses match the schema."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from tests.fix_world import World

EXAMPLES_PER_OPERATION = 25


def test_every_operation_conforms_for_every_role(api_app: Any, world: World) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", api_app)
    bearers = [world.admin, world.restaurant, world.driver, world.demo, "not-a-token"]
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def exercise(case: Any) -> None:
            for bearer in bearers:
                # Schema-valid is not always meaningful (a random product id, a random cursor):
                # those get 4xx by design, so the "positive data accepted" check does not apply.
                case.call_and_validate(headers={"Authorization": f"Bearer {bearer}"},
                                       excluded_checks=[positive_data_acceptance])

        try:
            exercise()
        except Exception as exc:
            raise AssertionError(f"{operation.method.upper()} {operation.path}: {exc}") from exc
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 20, tested
