"""CSV export of orders over a creation-time range, streamed page by page (admin; restaurants their own)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, stream_with_context
from loguru import logger

from api.context import identity, request_id, require, services
from api.daterange import Range, query_range
from common.auth import Identity, claims_of
from common.db import Claims, claims
from common.events import iso
from common.orders import money

bp = Blueprint("export", __name__, url_prefix="/api/orders")

HEADER = ("id", "restaurant_id", "status", "total_amount", "customer_name", "driver_id", "created_at", "delivered_at")
PAGE_ROWS = 1000  # one short query per page; the connection goes back to the pool before the page is sent
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str | None) -> str:
    """Free text for a spreadsheet: a leading formula character gets a `'` before it, which spreadsheets
    show as text and do not evaluate; the rest of the text is kept as written."""
    if not text:
        return ""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _page_sql(*, scoped: bool, bounded_start: bool, bounded_end: bool, after: bool) -> str:
    where = []
    if scoped:
        where.append("restaurant_id = %(restaurant_id)s")
    if bounded_start:
        where.append("created_at >= %(start)s")
    if bounded_end:
        where.append("created_at < %(end)s")
    if after:
        where.append("(created_at, id) > (%(after_created)s, %(after_id)s)")
    return (
        "SELECT id, restaurant_id, status, total_amount, customer_name, driver_id, created_at, delivered_at"
        " FROM orders" + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY created_at, id LIMIT %(limit)s"
    )


def _fetch(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One page from a replica when one is fresh, else (or when it fails mid-export) from the primary."""
    return services().read(lambda conn: conn.execute(sql, params).fetchall())


def _lines(who: Identity, caller: Claims, window: Range, rid: str, *, page_rows: int) -> Iterator[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    yield out.getvalue()
    params: dict[str, Any] = {"restaurant_id": who.restaurant_id, "start": window.start, "end": window.end,
                              "limit": page_rows}
    after: tuple[datetime, Any] | None = None
    sent = 0
    while True:
        sql = _page_sql(scoped=not who.is_admin, bounded_start=window.start is not None,
                        bounded_end=window.end is not None, after=after is not None)
        if after is not None:
            params["after_created"], params["after_id"] = after
        with claims(caller):  # row-level security for every page, whoever iterates the body
            rows = _fetch(sql, params)
        out.seek(0)
        out.truncate()
        for row in rows:
            writer.writerow((row["id"], row["restaurant_id"], row["status"], money(row["total_amount"]),
                             safe_cell(row["customer_name"]), row["driver_id"] or "", iso(row["created_at"]),
                             iso(row["delivered_at"]) if row["delivered_at"] else ""))
        sent += len(rows)
        if rows:
            yield out.getvalue()
        if len(rows) < page_rows:
            logger.bind(request_id=rid, rows=sent).info("orders export finished")
            return
        after = (rows[-1]["created_at"], rows[-1]["id"])


@bp.get("/export.csv")
@require("admin", "restaurant", "demo")
def export_csv() -> Any:
    who = identity()
    window = query_range("created_from", "created_to")  # a bad range is a 422 before anything is sent
    body = _lines(who, claims_of(who), window, request_id(), page_rows=PAGE_ROWS)
    stamp = (window.start or window.end)
    name = "orders" + (f"-{stamp:%Y%m%d}" if stamp else "") + ".csv"
    return Response(stream_with_context(body), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
