"""One way to page every list route.

Every list answers ``{data, count, next_cursor}``: ``count`` is the number of items **in this page**
(never a total), and ``next_cursor`` is an opaque string to pass back as ``cursor`` for the next page,
``null`` on the last one. Time filters are ``from`` (inclusive) and ``to`` (exclusive for instants,
inclusive for China-time days). The cursor is base64url JSON: a keyset (the last row's sort key) on
routes ordered by a unique key, else the position in the ordered result; clients never look inside.
"""

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Query
from pydantic import BaseModel, Field

from wulian.api.errors import BadQuery

CURSOR_PATTERN = r"^[A-Za-z0-9_\-]{1,400}$"
COUNT_DOC = "number of items in this page (not a total); page on with next_cursor"
NEXT_DOC = "pass as 'cursor' to get the next page; null on the last page"
CURSOR_DOC = "next_cursor of the previous page (opaque)"
PAGING_DOC = ("Paged: `count` is the number of items in this page, `next_cursor` (opaque) is passed back as "
              "`cursor` until it is null. `format=csv` (or `Accept: text/csv`) answers CSV, `lang=zh` with "
              "Chinese column headers.")
DEPRECATED_ALIAS = "deprecated alias of '{0}' (kept for old clients; use '{0}')"


class ListPage(BaseModel):
    """The paging fields of every list response."""

    count: int = Field(description=COUNT_DOC)
    next_cursor: str | None = Field(default=None, description=NEXT_DOC)


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")


def _unb64(text: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BadQuery("cursor is not a next_cursor of this route") from None


@dataclass(frozen=True, slots=True)
class Page:
    """The requested page: ``limit`` and either an ``offset`` or the ``after`` keyset of the last row."""

    limit: int
    offset: int = 0
    after: tuple | None = None

    @property
    def fetch(self) -> int:
        """Rows to ask the database for: one more than the page, to know whether another follows."""
        return self.limit + 1

    def done(self, rows: Sequence, key: Callable[[Any], Sequence] | None = None) -> tuple[list, str | None]:
        """The page's rows and its ``next_cursor`` from ``fetch`` rows; ``key`` gives a row's keyset
        (JSON-able; datetimes as ISO text) on keyset routes."""
        rows = list(rows)
        more = len(rows) > self.limit
        rows = rows[:self.limit]
        if not more:
            return rows, None
        if key is not None:
            return rows, _b64({"k": [v.isoformat() if isinstance(v, datetime) else v for v in key(rows[-1])]})
        return rows, _b64({"o": self.offset + self.limit})

    def window(self, items: Sequence) -> tuple[list, str | None]:
        """Offset paging of a list computed in Python."""
        return self.done(items[self.offset:self.offset + self.fetch])


def _decode(cursor: str | None, limit: int, keyset: int) -> Page:
    if cursor is None:
        return Page(limit)
    obj = _unb64(cursor)
    if keyset:
        k = obj.get("k") if isinstance(obj, dict) else None
        if not isinstance(k, list) or len(k) != keyset or not all(isinstance(v, (int, str)) for v in k):
            raise BadQuery("cursor is not a next_cursor of this route")
        if any(isinstance(v, int) and not -2**63 <= v < 2**63 for v in k):
            raise BadQuery("cursor is not a next_cursor of this route")
        return Page(limit, after=tuple(k))
    o = obj.get("o") if isinstance(obj, dict) else None
    if not isinstance(o, int) or not 0 <= o < 2**31:
        raise BadQuery("cursor is not a next_cursor of this route")
    return Page(limit, offset=o)


def paging(default: int = 100, maximum: int = 1000, keyset: int = 0):
    """A dependency giving the :class:`Page`; ``keyset``: the number of values in this route's keyset
    (0: position paging)."""

    def page(
        cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description=CURSOR_DOC)] = None,
        limit: Annotated[int, Query(ge=1, le=maximum, description="items per page")] = default,
    ) -> Page:
        return _decode(cursor, limit, keyset)

    return page


def after_time(page: Page) -> datetime | None:
    """The keyset's first value read as a timestamp (routes keyed on (time, id))."""
    if page.after is None:
        return None
    try:
        return datetime.fromisoformat(str(page.after[0]))
    except ValueError:
        raise BadQuery("cursor is not a next_cursor of this route") from None


def pick(new, old, name: str):
    """``from``/``to`` win over their deprecated ``since``/``until`` aliases; both given differently is an error."""
    if new is not None and old is not None and new != old:
        raise BadQuery(f"give '{name}' only (its deprecated alias disagrees)")
    return new if new is not None else old
