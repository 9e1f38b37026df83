"""The KV block store of the live runtime: files on disk, a TCP server, and its clients.

Modules: :mod:`.store` (the files, :class:`BlockFileStore`), :mod:`.protocol` (limits,
errors, framing, the retry budget), :mod:`.server` (:class:`StorageServer`),
:mod:`.client` (:class:`StorageClient`, asyncio), :mod:`.sync_client`
(:class:`SyncStorageClient`, blocking) and ``__main__`` (the command).

Nodes read blocks over the network as from a distributed store and write the
blocks their requests produce back to it. A block is a Full Block named by its
token prefix (see :mod:`runtime.live.blocks`); it is stored as ``replicas``
copies, each a file ``<root>/r<k>/<name[:2]>/<name>`` holding a fixed header
(magic, version, payload length, checksum) and then the payload.

The server hands out payloads as stored, without checking them: the reader
verifies the bytes against the checksum (:func:`verify`), so corruption
anywhere between disk and the reader's buffer is caught at the reader, and
REPAIR rewrites bad replicas from a good one.

Wire protocol (little-endian, one reply per request, in order):

* request: ``REQUEST`` header (magic ``DPRQ``, op, replica, name length, arg,
  32-byte checksum, body length), then the name, then the body;
* reply: ``RESPONSE`` header (magic ``DPRS``, status, value, 32-byte checksum,
  body length), then the body: a payload, a JSON object (STATS) or an error
  message.

A request that does not start with the magic, or announces a body over
:data:`MAX_BODY`, leaves the stream unparseable: the server replies with an
error and closes the connection. Any other bad request gets an error reply and
the connection stays open.

Run a server with ``python -m runtime.live.storage --root DIR``; it prints
``storage listening on HOST:PORT`` once it accepts connections.

Surviving a server's death: a block is acknowledged only once its files are
renamed into place, so a server restarted on the same ``--root`` serves every
acknowledged block (and clears the temporaries the dead one left). Restarted
on the same ``--port``, it is found again by the clients, which reconnect and
resend the call they had in flight (see :class:`StorageClient`).
"""

from runtime.live.storage.client import (
    StorageClient,
)
from runtime.live.storage.protocol import (
    BACKOFF_S,
    CONNECT_TIMEOUT_S,
    ENSURE_BATCH,
    MAX_BODY,
    MAX_NAME,
    REQUEST,
    REQUEST_MAGIC,
    RESPONSE,
    RESPONSE_MAGIC,
    RETRY_S,
    SENDFILE_MIN,
    BlockNotFound,
    ChecksumMismatch,
    Op,
    Status,
    StorageConnectionLost,
    StorageError,
    StorageProtocolError,
    StorageUnavailable,
    validate_name,
    verify,
)
from runtime.live.storage.server import (
    StorageServer,
)
from runtime.live.storage.store import (
    FILE_HEADER,
    FILE_MAGIC,
    FILE_VERSION,
    BlockFileStore,
    block_path,
    corrupt_block,
)
from runtime.live.storage.sync_client import (
    SyncStorageClient,
)

__all__ = [
    "BACKOFF_S", "BlockFileStore", "BlockNotFound", "CONNECT_TIMEOUT_S", "ChecksumMismatch",
    "ENSURE_BATCH", "FILE_HEADER", "FILE_MAGIC", "FILE_VERSION", "MAX_BODY", "MAX_NAME", "Op",
    "REQUEST", "REQUEST_MAGIC", "RESPONSE", "RESPONSE_MAGIC", "RETRY_S", "SENDFILE_MIN", "Status",
    "StorageClient", "StorageConnectionLost", "StorageError", "StorageProtocolError",
    "StorageServer", "StorageUnavailable", "SyncStorageClient", "block_path", "corrupt_block",
    "validate_name", "verify",
]
