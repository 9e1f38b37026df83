"""``python -m runtime.live.storage --root DIR``: run a storage server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from runtime.live.storage.server import StorageServer

# ------------------------------------------------------------------------------- CLI


async def _run_server(args: argparse.Namespace) -> None:
    server = StorageServer(args.root, args.host, args.port, args.replicas, fsync=args.fsync)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"storage listening on {server.host}:{server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a storage server until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m runtime.live.storage",
                                     description="Serve KV blocks stored under a directory.")
    parser.add_argument("--root", required=True, help="directory holding the replicas")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument("--replicas", type=int, default=2, help="copies kept of each block")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync each block file and its directory before replying")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(_run_server(args))
    except (OSError, ValueError) as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
