"""``dualpath serve`` as a child process: started, waited for, stopped (SIGTERM, drained)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import TracebackType

_READY = re.compile(r"dualpath scheduler on (\S+):(\d+) serving")


class ServiceProcess:
    """Runs ``dualpath serve ARGS --port 0`` and learns its port from the banner.

    Use as a context manager; leaving it sends SIGTERM and waits for the drain.
    ``output`` collects the child's stdout and stderr lines.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None,
                 start_timeout_s: float = 120.0) -> None:
        cmd = [sys.executable, "-m", "experiments.cli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(env or {})},
                                     start_new_session=True)  # stopped by us, not Ctrl-C
        self.output: list[str] = []
        self.port = self._await_banner(start_timeout_s)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _await_banner(self, timeout_s: float) -> int:
        timer = threading.Timer(timeout_s, self.proc.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                if match := _READY.search(line):
                    return int(match.group(2))
        finally:
            timer.cancel()
        raise RuntimeError("dualpath serve exited before serving:\n" + "\n".join(self.output))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip())

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Signal the server and wait for it to exit; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self._reader.join(timeout_s)
        return code

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
