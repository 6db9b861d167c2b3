"""Protection in front of the pipeline: API keys, a per-key rate limit, bounded bodies.

The serverless original relied on a WAF; here the ingress itself refuses what it should
not process, cheaply and before any decoding. Limits are per ingress replica (with N
replicas a client gets up to N times the rate), which bounds abuse without shared state.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict

from starlette.requests import Request

from raypipe.serve.errors import ApiError

API_KEY_HEADER = "X-API-Key"


class ApiKeys:
    """Constant-time key check; keys are kept only as SHA-256 digests in memory."""

    def __init__(self, keys: frozenset[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, request: Request) -> str:
        """Client identity for rate limiting: a key id, or the client address when auth is off.

        Raises ApiError(401) for a missing or unknown key when keys are configured.
        """
        if not self.enabled:
            return "ip:" + (request.client.host if request.client else "unknown")
        presented = request.headers.get(API_KEY_HEADER)
        if not presented:
            raise ApiError(401, "unauthorized", f"missing {API_KEY_HEADER} header")
        digest = hashlib.sha256(presented.encode(errors="replace")).digest()
        # Compare against every key so the time taken does not reveal which one matched.
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        if not any(matches):
            raise ApiError(401, "unauthorized", f"invalid {API_KEY_HEADER}")
        return "key:" + digest.hex()[:16]


class RateLimiter:
    """Token bucket per client: ``rate`` requests/s sustained, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, max(1, burst), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, time)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, client: str, now: float | None = None) -> None:
        """Take one token or raise ApiError(429) with a Retry-After hint."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._remember(client, tokens, now)
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise ApiError(429, "rate_limited", f"rate limit of {self.rate:g} requests/s exceeded",
                           headers={"Retry-After": str(retry)})
        self._remember(client, tokens - 1.0, now)

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)  # most recent last: the oldest client is evicted first
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) before reading when Content-Length is too big and
    while streaming when a chunked body grows past ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "invalid Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"request body is {declared} bytes, limit {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
