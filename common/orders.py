"""Order rules shared by everyone: the status machine, who may move it, and the wire shape."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from common.auth import Identity
from common.errors import Forbidden, InvalidTransition
from common.events import iso
from common.roles import ROLES_WITH_RESTAURANT, Role

ACTIVE_STATUSES = ("pending", "confirmed", "preparing", "ready", "delivering")
ASSIGNABLE_STATUSES = ("confirmed", "preparing", "ready")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("confirmed", "cancelled"),
    "confirmed": ("preparing", "cancelled"),
    "preparing": ("ready",),
    "ready": ("delivering",),
    "delivering": ("delivered",),
    "delivered": (),
    "cancelled": (),
}
STATUSES = tuple(TRANSITIONS)
DRIVER_MOVES = {("ready", "delivering"), ("delivering", "delivered")}


def check_transition(who: Identity, order: dict[str, Any], target: str) -> None:
    """Raise unless `who` may move `order` to `target`; the one place these rules live."""
    if who.read_only:
        raise Forbidden("demo users are read-only")
    current = order["status"]
    if target not in TRANSITIONS.get(current, ()):
        raise InvalidTransition(f"an order cannot go from {current} to {target}",
                                details={"from": current, "to": target})
    if who.is_admin:
        return
    if who.role == Role.RESTAURANT and target == "cancelled" and str(order["restaurant_id"]) == who.restaurant_id:
        return
    if who.role == Role.DRIVER and (current, target) in DRIVER_MOVES and str(order["driver_id"]) == who.user_id:
        return
    raise InvalidTransition(f"a {who.role} may not move this order from {current} to {target}",
                            details={"from": current, "to": target})


def can_see_order(who: Identity, order: dict[str, Any]) -> bool:
    if who.is_admin:
        return True
    if who.role in ROLES_WITH_RESTAURANT:
        return str(order["restaurant_id"]) == who.restaurant_id
    if who.role == Role.DRIVER:
        return order.get("driver_id") is not None and str(order["driver_id"]) == who.user_id
    return False


def money(amount: Decimal | None) -> str | None:
    return None if amount is None else f"{amount:.2f}"


def order_json(order: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The contract's order object."""
    return {
        "id": str(order["id"]),
        "restaurant_id": str(order["restaurant_id"]),
        "created_by": str(order["created_by"]),
        "driver_id": str(order["driver_id"]) if order["driver_id"] else None,
        "status": order["status"],
        "items": [
            {
                "product_id": str(item["product_id"]),
                "name": item["name"],
                "quantity": item["quantity"],
                "unit_price": money(item["unit_price"]),
                "line_total": money(item["line_total"]),
            }
            for item in items
        ],
        "total_amount": money(order["total_amount"]),
        "notes": order["notes"],
        "customer_name": order["customer_name"],
        "version": order["version"],
        "created_at": iso(order["created_at"]),
        "updated_at": iso(order["updated_at"]),
    }


def order_event_data(order: dict[str, Any], *, request_id: str, previous_status: str | None = None) -> dict[str, Any]:
    """The contract's order event body."""
    data: dict[str, Any] = {
        "order_id": str(order["id"]),
        "restaurant_id": str(order["restaurant_id"]),
        "status": order["status"],
        "driver_id": str(order["driver_id"]) if order["driver_id"] else None,
        "version": order["version"],
        "total_amount": money(order["total_amount"]),
        "updated_at": iso(order["updated_at"]),
        "request_id": request_id,
    }
    if previous_status is not None:
        data["previous_status"] = previous_status
    return data


ORDER_COLUMNS = (
    "id, restaurant_id, created_by, driver_id, status, total_amount, notes, customer_name, version, "
    "created_at, updated_at"
)
ITEM_COLUMNS = "order_id, line_no, product_id, name, quantity, unit_price, line_total"
