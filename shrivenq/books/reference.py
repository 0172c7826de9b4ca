"""Plain-Python twins of the compiled books, written for clarity; the property tests hold
the compiled structures to them step by step."""

from __future__ import annotations

from sortedcontainers import SortedDict

BID, ASK = 0, 1


class ReferenceLadder:
    """An L2 ladder as two SortedDicts of price -> quantity."""

    def __init__(self):
        self.sides = (SortedDict(), SortedDict())

    def set_level(self, side: int, price: int, quantity: int) -> None:
        if quantity < 0:
            raise ValueError("negative quantity")
        book = self.sides[side]
        if quantity == 0:
            book.pop(price, None)
        else:
            book[price] = quantity

    def best_bid(self):
        return self.sides[BID].peekitem(-1) if self.sides[BID] else None

    def best_ask(self):
        return self.sides[ASK].peekitem(0) if self.sides[ASK] else None

    def top(self, side: int, levels: int) -> list[tuple[int, int]]:
        items = list(self.sides[side].items())
        if side == BID:
            items.reverse()
        return items[:max(levels, 0)]

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid[0] >= ask[0]


# Column groups a Kite packet's ``fields`` mask covers (see shrivenq.kite).
_GROUPS = {
    1: ("last_price",),
    2: ("open", "high", "low", "close", "change"),
    4: ("last_quantity", "average_price", "volume", "total_buy_quantity",
        "total_sell_quantity"),
    8: ("exchange_timestamp",),
    16: ("last_trade_time", "oi", "oi_day_high", "oi_day_low"),
    32: ("bid_quantity", "bid_price", "ask_quantity", "ask_price", "bid_orders", "ask_orders"),
}
_IDENTITY = ("token", "segment", "divisor", "tradable")
_LATEST = ("kind", "mode", "packet_length")


class ReferenceKiteBooks:
    """Kite books as a dict of token -> dict of column values."""

    def __init__(self):
        self.books: dict[int, dict] = {}
        self.ticks: dict[int, int] = {}

    def apply(self, rows) -> None:
        for row in rows:
            token = int(row["token"])
            book = self.books.setdefault(token, {"fields": 0})
            if len(book) == 1:
                for name in _IDENTITY:
                    book[name] = row[name].copy() if hasattr(row[name], "copy") else row[name]
            for bit, names in _GROUPS.items():
                if int(row["fields"]) & bit:
                    for name in names:
                        book[name] = row[name].copy() if hasattr(row[name], "copy") else row[name]
            for name in _LATEST:
                book[name] = row[name]
            book["fields"] = int(book["fields"]) | int(row["fields"])
            self.ticks[token] = self.ticks.get(token, 0) + 1

    def state(self):
        import numpy as np

        from shrivenq._ext.kite_frame import TICK_DTYPE

        out = np.zeros(len(self.books), dtype=TICK_DTYPE)
        for i, token in enumerate(sorted(self.books)):
            for name, value in self.books[token].items():
                out[i][name] = value
        return out
