"""Row ids as the API publishes them: 32-bit integer columns, never reused."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# Ids are 32-bit integer columns: a larger one would overflow the database, not just miss.
MAX_ID = 2_147_483_647

RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
