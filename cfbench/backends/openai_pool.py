"""The openai backend over several servers (e.g. one ``vllm serve`` per GPU or node), load-balanced with failover.

``--backend openai --model-args "base_url=http://h1:8000/v1;http://h2:8000/v1"`` (URLs separated by
``;``, since ``,`` separates model args) builds an :class:`OpenAIPool`: every completions request goes
to the server with the fewest requests in flight; a connection error, timeout, 429 or 5xx moves the
request to the next server at once, and only when every server failed does the pool back off and
retry (``max_retries`` rounds). All servers must serve the same model: it is checked at start-up.

The numbers do not depend on which server scored a prompt (each request is independent and the
settings, hence the cache keys, are those of one server), so items over N servers equal items over
one (tests/test_openai_pool.py).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

from cfbench.backends.openai_api import OpenAIBackend, Retryable
from cfbench.errors import CfbenchError


def split_urls(base_url: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"u1;u2"`` or a list → the list of URLs (empty entries dropped)."""
    parts = base_url if isinstance(base_url, list | tuple) else str(base_url).split(";")
    return [p.strip() for p in parts if p and p.strip()]


def is_pool(base_url: Any) -> bool:
    """Whether ``base_url`` names several servers (``"u1;u2"`` or a list)."""
    return isinstance(base_url, list | tuple) or ";" in str(base_url or "")


class OpenAIPool(OpenAIBackend):
    """An :class:`OpenAIBackend` whose requests are spread over several servers of the same model.

    This is the class registered as the ``openai`` backend: given one server it builds a plain
    :class:`OpenAIBackend`, given several it builds the pool. The choice lives here, in the
    subclass, so that the single-server backend never has to know the pool exists.
    """

    def __new__(cls, *args: Any, **options: Any) -> OpenAIBackend:
        """Several base URLs build a pool; one builds a plain :class:`OpenAIBackend` (fully initialised)."""
        if cls is OpenAIPool and not is_pool(options.get("base_url")):
            return OpenAIBackend(*args, **options)
        return super().__new__(cls)

    def __init__(self, model_path: str | Path, *, base_url: str | list[str], max_retries: int = 5, **options: Any):
        urls = split_urls(base_url)
        if not urls:
            raise CfbenchError("base_url names no server: pass e.g. base_url=http://127.0.0.1:8000/v1")
        super().__init__(model_path, base_url=urls[0], max_retries=0, **options)
        self.pool_retries = max(0, int(max_retries))
        self.members: list[OpenAIBackend] = [self]
        try:
            for url in urls[1:]:
                member = OpenAIBackend(model_path, base_url=url, max_retries=0, **{**options, "model": self.model})
                self.members.append(member)
        except BaseException:
            self.close()
            raise
        self.base_urls = urls
        self._lock = threading.Lock()
        self._in_flight = [0] * len(self.members)
        self.requests_per_server = [0] * len(self.members)

    def close(self) -> None:
        for member in getattr(self, "members", [])[1:]:
            member.close()
        super().close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, retry_connect: bool = True) -> Any:
        members = getattr(self, "members", None)
        if members is None or method != "POST":  # start-up calls (models, version) go to server 0
            return super()._call(method, path, body, retry_connect)
        last: Exception | None = None
        for attempt in range(self.pool_retries + 1):
            with self._lock:
                order = sorted(range(len(members)), key=lambda i: (self._in_flight[i], random.random()))
            for i in order:
                with self._lock:
                    self._in_flight[i] += 1
                try:
                    call = super()._call if i == 0 else members[i]._call
                    result = call(method, path, body, retry_connect)
                    with self._lock:
                        self.requests_per_server[i] += 1
                    return result
                except CfbenchError as exc:
                    if not isinstance(exc.__cause__, Retryable):
                        raise  # the server answered with a real rejection: another server would too
                    last = exc
                finally:
                    with self._lock:
                        self._in_flight[i] -= 1
            if attempt < self.pool_retries:
                time.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise CfbenchError(
            f"all {len(members)} servers failed {path} after {self.pool_retries + 1} rounds "
            f"({' '.join(str(last).split())[:200]}): check that every base_url is up"
        )
