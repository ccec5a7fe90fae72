"""The demo shop: a small FastAPI + SQLAlchemy (SQLite) + httpx service with the mistakes
otelkit exists to catch. Plain application code: it never imports otelkit, and gets its
telemetry the no-code way, ``opentelemetry-instrument uvicorn otelkit.demo.shop:app``.

Routes, and what each one shows:

- ``GET /products``, ``GET /products/{product_id}``: normal requests;
- ``GET /orders/{order_id}/invoice``: an unhandled exception for an order without lines;
- ``GET /orders``: an N+1 query (one query per order for its lines);
- ``GET /reports/sales``: a slow query;
- ``GET /recommendations``: sequential upstream calls that could run concurrently;
- ``POST /checkout``: an order; paid by invoice it waits on a slow payment provider and
  breaks the ``checkout`` budget's 2 s ceiling.

The "upstream" supplier and payment providers are routes of the shop itself, called over
real HTTP. SQLite answers in microseconds, so queries that stand for a database across
the network call ``sleep(seconds)``, a SQL function the shop registers.

Settings: ``SHOP_DATABASE_URL`` (default ``sqlite:///shop.db``), ``SHOP_BASE_URL`` (its own
address, for the upstream calls; default ``http://127.0.0.1:8000``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine, event, text

DATABASE_URL = os.environ.get("SHOP_DATABASE_URL", "sqlite:///shop.db")
BASE_URL = os.environ.get("SHOP_BASE_URL", "http://127.0.0.1:8000")
ROUND_TRIP_SECONDS = 0.012  # one query to a database across the network
REPORT_SECONDS = 0.6  # the sales report's aggregation; slow queries start at 500 ms
SUPPLIER_SECONDS = 0.75  # each stock lookup; four in a row waste over 2 s
INVOICE_PAYMENT_SECONDS = 2.3  # the invoice provider; checkout's budget is 2 s
ORDERS = 8
ORDER_WITHOUT_LINES = 13

log = logging.getLogger("shop")


def _engine(url: str) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _register_sleep(connection: Any, _record: Any) -> None:
        connection.create_function("sleep", 1, _sleep)

    return engine


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return 0


engine = _engine(DATABASE_URL)


def create_tables() -> None:
    with engine.begin() as db:
        for table in ("order_lines", "orders", "products"):
            db.execute(text(f"DROP TABLE IF EXISTS {table}"))
        db.execute(text("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, price REAL)"))
        db.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT)"))
        db.execute(
            text(
                "CREATE TABLE order_lines (id INTEGER PRIMARY KEY, order_id INTEGER, "
                "product_id INTEGER, quantity INTEGER)"
            )
        )
        for i in range(1, 11):
            db.execute(
                text("INSERT INTO products VALUES (:i, :name, :price)"),
                {"i": i, "name": f"product {i}", "price": 5.0 * i},
            )
        for order in [*range(1, ORDERS + 1), ORDER_WITHOUT_LINES]:
            db.execute(text("INSERT INTO orders VALUES (:i, :c)"), {"i": order, "c": f"c{order}"})
            if order != ORDER_WITHOUT_LINES:
                db.execute(
                    text("INSERT INTO order_lines (order_id, product_id, quantity) VALUES (:o, :p, 2)"),
                    {"o": order, "p": order % 10 + 1},
                )  # fmt: skip


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    create_tables()
    async with httpx.AsyncClient(base_url=BASE_URL, timeout=10) as client:
        _app.state.client = client
        yield


app = FastAPI(title="otelkit demo shop", lifespan=lifespan)


@app.get("/products")
def list_products() -> list[dict[str, Any]]:
    with engine.connect() as db:
        rows = db.execute(text("SELECT id, name, price FROM products ORDER BY id")).all()
    return [dict(row._mapping) for row in rows]


@app.get("/products/{product_id}")
def get_product(product_id: int) -> dict[str, Any]:
    with engine.connect() as db:
        row = db.execute(
            text("SELECT id, name, price FROM products WHERE id = :id"), {"id": product_id}
        ).first()
    if row is None:
        raise HTTPException(404, f"no product {product_id}")
    return dict(row._mapping)


@app.get("/orders")
def list_orders() -> list[dict[str, Any]]:
    """The N+1: the lines of each order are fetched with a query of their own."""
    with engine.connect() as db:
        orders = db.execute(text("SELECT id, customer FROM orders ORDER BY id")).all()
        return [
            {"id": order.id, "customer": order.customer, "lines": _lines(db, order.id)}
            for order in orders
        ]


def _lines(db: Any, order_id: int) -> list[dict[str, Any]]:
    rows = db.execute(
        text(
            f"SELECT product_id, quantity, sleep({ROUND_TRIP_SECONDS}) AS waited "
            "FROM order_lines WHERE order_id = :order_id"
        ),
        {"order_id": order_id},
    )
    return [{"product_id": row.product_id, "quantity": row.quantity} for row in rows]


@app.get("/orders/{order_id}/invoice")
def invoice(order_id: int) -> dict[str, Any]:
    """Fails for an order without lines: nobody thought of one."""
    with engine.connect() as db:
        lines = _lines(db, order_id)
    return render_invoice(order_id, lines)


def render_invoice(order_id: int, lines: list[dict[str, Any]]) -> dict[str, Any]:
    items = sum(line["quantity"] for line in lines)
    return {"order": order_id, "items": items, "average_quantity": items / len(lines)}


@app.get("/reports/sales")
def sales_report() -> dict[str, Any]:
    with engine.connect() as db:
        row = db.execute(
            text(
                f"SELECT count(*) AS lines, sum(quantity) AS items, sleep({REPORT_SECONDS}) "
                "AS waited FROM order_lines JOIN products ON products.id = product_id"
            )
        ).one()
    return {"lines": row.lines, "items": row.items}


@app.get("/recommendations")
async def recommendations() -> list[dict[str, Any]]:
    """Four stock lookups, one after the other, though none needs another's answer."""
    client: httpx.AsyncClient = app.state.client
    found = []
    for product_id in (2, 4, 6, 8):
        response = await client.get(f"/supplier/stock/{product_id}")
        found.append(response.json())
    return found


@app.get("/supplier/stock/{product_id}")
async def supplier_stock(product_id: int) -> dict[str, int]:
    await asyncio.sleep(SUPPLIER_SECONDS)
    return {"product_id": product_id, "in_stock": 7}


class Checkout(BaseModel):
    product_id: int
    quantity: int = 1
    payment: str = "card"


@app.post("/checkout")
async def checkout(order: Checkout) -> dict[str, Any]:
    client: httpx.AsyncClient = app.state.client
    response = await client.post(f"/payments/{order.payment}", json={"amount": 10.0})
    if response.status_code != 200:
        raise HTTPException(502, f"payment provider answered {response.status_code}")
    log.info(
        "checkout: %d x product %d paid by %s", order.quantity, order.product_id, order.payment
    )
    return {"status": "paid", "payment": order.payment}


@app.post("/payments/{method}")
async def pay(method: str) -> dict[str, str]:
    await asyncio.sleep(INVOICE_PAYMENT_SECONDS if method == "invoice" else 0.05)
    return {"authorized": method}
