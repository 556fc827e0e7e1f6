"""The example shop: products with stock, and orders of several lines.

Two aggregate types in one application, to show that nothing in cqrsflow is shaped by
the bank. A `Product` (keyed by its SKU) is added with a price and a stock, restocked,
and has stock reserved for an order and released again; its stock never goes below
zero, and only what an order reserved can be released for it. An `Order` is placed with
its lines, paid (the exact total), shipped once paid, or cancelled before it ships.

Until orders reserve their own stock (a process between the two types), the workload of
``cqrsflow generate shop`` sends the reservations itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from flows._app import App
from flows._domain import Aggregate, Decision, Rejected
from queries import View

Quantity = Annotated[int, msgspec.Meta(gt=0, le=10**6)]
Price = Annotated[int, msgspec.Meta(gt=0, le=10**12)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


# -- Product -------------------------------------------------------------------


class AddProduct(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    price: Price
    stock: Annotated[int, msgspec.Meta(ge=0, le=10**9)] = 0


class Restock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    quantity: Quantity


class ReserveStock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    order_id: Id
    quantity: Quantity


class ReleaseStock(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    order_id: Id


class ProductAdded(msgspec.Struct, frozen=True, gc=False):
    name: str
    price: int
    stock: int


class Restocked(msgspec.Struct, frozen=True, gc=False):
    quantity: int


class StockReserved(msgspec.Struct, frozen=True, gc=False):
    order_id: str
    quantity: int


class StockReleased(msgspec.Struct, frozen=True, gc=False):
    order_id: str
    quantity: int


class Product(msgspec.Struct, frozen=True):
    added: bool = False
    name: str = ""
    price: int = 0
    available: int = 0
    reserved: tuple[tuple[str, int], ...] = ()  # (order, quantity), a few at a time


def decide_product(command: Any, state: Product) -> Decision:
    if isinstance(command, AddProduct):
        if state.added:
            return Rejected(f"the product is already added, as {state.name!r}")
        return [ProductAdded(command.name, command.price, command.stock)]
    if not state.added:
        return Rejected("no such product: add it first")
    if isinstance(command, Restock):
        return [Restocked(command.quantity)]
    if isinstance(command, ReserveStock):
        if any(order == command.order_id for order, _ in state.reserved):
            return Rejected(f"stock is already reserved for order {command.order_id}")
        if command.quantity > state.available:
            return Rejected(
                f"insufficient stock: {state.available} available, {command.quantity} asked"
            )
        return [StockReserved(command.order_id, command.quantity)]
    if isinstance(command, ReleaseStock):
        held = next((q for order, q in state.reserved if order == command.order_id), None)
        if held is None:
            return Rejected(f"no stock is reserved for order {command.order_id}")
        return [StockReleased(command.order_id, held)]
    return Rejected(f"unknown command {type(command).__name__}")


def evolve_product(state: Product, event: Any) -> Product:
    if isinstance(event, StockReserved):
        reserved = (*state.reserved, (event.order_id, event.quantity))
        return msgspec.structs.replace(
            state, available=state.available - event.quantity, reserved=reserved
        )
    if isinstance(event, StockReleased):
        reserved = tuple(r for r in state.reserved if r[0] != event.order_id)
        return msgspec.structs.replace(
            state, available=state.available + event.quantity, reserved=reserved
        )
    if isinstance(event, Restocked):
        return msgspec.structs.replace(state, available=state.available + event.quantity)
    if isinstance(event, ProductAdded):
        return Product(True, event.name, event.price, event.stock)
    return state


PRODUCT = Aggregate(
    name="Product",
    initial=Product(),
    decide=decide_product,
    evolve=evolve_product,
    commands=(AddProduct, Restock, ReserveStock, ReleaseStock),
    events=(ProductAdded, Restocked, StockReserved, StockReleased),
)


# -- Order ---------------------------------------------------------------------


class Line(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sku: Id
    quantity: Quantity
    price: Price


class PlaceOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer: Name
    lines: Annotated[tuple[Line, ...], msgspec.Meta(min_length=1, max_length=100)]


class PayOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Price


class ShipOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class CancelOrder(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


# One event per line, so that views can read each line's SKU and quantity as columns.
class OrderPlaced(msgspec.Struct, frozen=True, gc=False):
    customer: str
    lines: int
    total: int


class LineAdded(msgspec.Struct, frozen=True, gc=False):
    sku: str
    quantity: int
    price: int


class OrderPaid(msgspec.Struct, frozen=True, gc=False):
    amount: int


class OrderShipped(msgspec.Struct, frozen=True, gc=False):
    pass


class OrderCancelled(msgspec.Struct, frozen=True, gc=False):
    reason: str


class Order(msgspec.Struct, frozen=True, gc=False):
    status: Literal["new", "placed", "paid", "shipped", "cancelled"] = "new"
    total: int = 0


def decide_order(command: Any, state: Order) -> Decision:
    if isinstance(command, PlaceOrder):
        if state.status != "new":
            return Rejected(f"the order is already {state.status}")
        total = sum(line.quantity * line.price for line in command.lines)
        placed = OrderPlaced(command.customer, len(command.lines), total)
        return [placed, *(LineAdded(x.sku, x.quantity, x.price) for x in command.lines)]
    if state.status == "new":
        return Rejected("no such order: place it first")
    if isinstance(command, PayOrder):
        if state.status != "placed":
            return Rejected(f"the order is {state.status}; only a placed order is paid")
        if command.amount != state.total:
            return Rejected(f"the order's total is {state.total}, not {command.amount}")
        return [OrderPaid(command.amount)]
    if isinstance(command, ShipOrder):
        if state.status != "paid":
            return Rejected(f"the order is {state.status}; only a paid order ships")
        return [OrderShipped()]
    if isinstance(command, CancelOrder):
        if state.status in ("shipped", "cancelled"):
            return Rejected(f"the order is already {state.status}")
        return [OrderCancelled(command.reason)]
    return Rejected(f"unknown command {type(command).__name__}")


def evolve_order(state: Order, event: Any) -> Order:
    if isinstance(event, OrderPlaced):
        return Order("placed", event.total)
    if isinstance(event, OrderPaid):
        return Order("paid", state.total)
    if isinstance(event, OrderShipped):
        return Order("shipped", state.total)
    if isinstance(event, OrderCancelled):
        return Order("cancelled", state.total)
    return state


ORDER = Aggregate(
    name="Order",
    initial=Order(),
    decide=decide_order,
    evolve=evolve_order,
    commands=(PlaceOrder, PayOrder, ShipOrder, CancelOrder),
    events=(OrderPlaced, LineAdded, OrderPaid, OrderShipped, OrderCancelled),
)


# -- the read side -------------------------------------------------------------

VIEWS: tuple[View, ...] = (
    View(
        "stock",
        """
        SELECT aggregate_id AS sku,
               arg_max_null(name, version) FILTER (WHERE event_type = 'ProductAdded') AS name,
               sum(CASE event_type WHEN 'ProductAdded' THEN stock
                                   WHEN 'Restocked' THEN quantity
                                   WHEN 'StockReserved' THEN -quantity
                                   WHEN 'StockReleased' THEN quantity ELSE 0 END) AS available,
               count(*) FILTER (WHERE event_type = 'StockReserved') AS reservations
        FROM events WHERE aggregate_type = 'Product' GROUP BY aggregate_id
        """,
        description="every product's name, available stock and how often it was reserved",
    ),
    View(
        "orders",
        """
        SELECT aggregate_id AS order_id,
               arg_max_null(CASE event_type WHEN 'OrderPlaced' THEN 'placed'
                                            WHEN 'OrderPaid' THEN 'paid'
                                            WHEN 'OrderShipped' THEN 'shipped'
                                            WHEN 'OrderCancelled' THEN 'cancelled' END, version)
                   FILTER (WHERE event_type <> 'LineAdded') AS status,
               arg_max_null(customer, version) FILTER (WHERE event_type = 'OrderPlaced')
                   AS customer,
               sum(total) AS total,
               min(timestamp) AS placed_at
        FROM events WHERE aggregate_type = 'Order' GROUP BY aggregate_id
        """,
        description="every order's status, customer, total and when it was placed",
    ),
    View(
        "sales_by_product",
        """
        SELECT sku, count(*) AS lines, sum(quantity) AS units, sum(quantity * price) AS revenue
        FROM events WHERE event_type = 'LineAdded' GROUP BY sku
        """,
        description="per product: the order lines that asked for it, units and revenue",
    ),
)

APP = App("shop", (PRODUCT, ORDER), VIEWS)
