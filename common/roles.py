"""Who a token can say the caller is; pure, so the gateway's protocol core can use it too."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    RESTAURANT = "restaurant"
    DRIVER = "driver"
    DEMO = "demo"  # sees what its restaurant sees and writes nothing (`Identity.read_only`)


ROLES = tuple(Role)
# Roles whose token names a restaurant and who see that restaurant's orders and drivers.
ROLES_WITH_RESTAURANT = (Role.RESTAURANT, Role.DEMO)
