"""Read-throughput baseline: a bare FastAPI app returning constant JSON, served like the API.

`python -m benchmarks.bare_app --port 8001` runs it exactly as `riskalert serve` runs the real
app: logging.basicConfig at INFO, then uvicorn.run(app, host=..., port=...) with uvicorn's
defaults (one process, access log on).
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from fastapi import FastAPI

CONSTANT = {"status": "ok", "score": 42.0, "band": "elevated"}

app = FastAPI(title="bare baseline")


@app.get("/constant")
async def constant() -> dict[str, object]:
    """Constant JSON from an async endpoint (no thread pool): the cheapest FastAPI route."""
    return CONSTANT


@app.get("/constant-sync")
def constant_sync() -> dict[str, object]:
    """Constant JSON from a sync endpoint (run in the thread pool, like the API's routes)."""
    return CONSTANT


def main() -> None:
    """Serve the bare app on 127.0.0.1."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.workers > 1:
        uvicorn.run("benchmarks.bare_app:app", host=args.host, port=args.port, workers=args.workers)
    else:
        uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
