"""Past batches: the list from PostgreSQL, and each batch's report page (liu.analysis builds it).

The report page is the one `trader backtest` writes as `report.html` (`liu.analysis.batch.batch_page`),
so the dashboard and the file never disagree; here it loads plotly.js from the dashboard instead of
embedding 4.8 MB of it. The last few pages are kept, each until its batch has new fills or ends.
"""

from __future__ import annotations

import asyncio
import collections

from liu.analysis.batch import batch_page, list_batches
from liu.store.db import connection

CACHED = 4
PLOTLY_PATH = "/static/plotly.min.js"  # served by liu.dashboard.app from the plotly package


class Reports:
    """Builds batch report pages, keeping the last few by (batch, fills, finished)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._cache: collections.OrderedDict[tuple, str] = collections.OrderedDict()
        self._lock = asyncio.Lock()

    async def batches(self) -> list[dict]:
        return await list_batches(self.dsn)

    async def page(self, batch_id: str) -> str:
        """The batch's report page (plotly.js from the dashboard); BatchNotFound for an unknown batch."""
        async with connection(self.dsn) as conn:
            key = (
                batch_id,
                await conn.fetchval("SELECT count(*) FROM trades WHERE batch_id = $1", batch_id),
                await conn.fetchval(
                    "SELECT bool_and(end_time IS NOT NULL) FROM algo_run WHERE batch_id = $1", batch_id
                ),
            )
        async with self._lock:  # one build at a time
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            page = await batch_page(self.dsn, batch_id, plotly_js=PLOTLY_PATH)
            self._cache[key] = page
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
            return page
