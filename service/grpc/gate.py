"""The serving gate of the gRPC front end, the twin of HTTP's `api.middleware.ServingGateMiddleware`.

Every call of inference.GRPCInferenceService passes it before its request is parsed:

- `ServerLive` and `ServerReady` are probes, as HTTP's /v2/health/live and /v2/health/ready: always answered
  (while draining too, when ServerReady says false), without a key, and not counted as work in flight.
- While the server drains, any other call is refused with UNAVAILABLE and HTTP's ``shutting_down`` message.
- With API keys on, any other call needs one, in the metadata ``authorization: Bearer KEY`` or ``x-api-key: KEY``
  (what HTTP takes as headers); without an accepted key it gets UNAUTHENTICATED and HTTP's 401 message, and over
  its key's rate RESOURCE_EXHAUSTED with HTTP's 429 message and ``retry-after``. The key is `auth.current_key`
  for the rest of the call (the call's task).
- At most `max_calls` such calls are handled at once over all connections; one past it is refused at once with
  RESOURCE_EXHAUSTED (HTTP's ``overloaded`` 503) and ``retry-after``. This is gRPC's own per-server limit,
  moved here so that it counts the inference service's calls only: the probes and the health service (whose
  Watch streams have a budget of their own, `health.WatchBudget`) can never use up the room of inference.
- The calls let in count in the lifecycle's requests in flight from the moment their headers arrive until their
  handling ends, whatever the outcome, so that the SIGTERM drain waits for them as for HTTP requests.

The health service (grpc.health.v1) passes untouched, as HTTP's probes do.

Refusing here rather than stopping gRPC at the signal matters: when grpc's server stops, it cancels the calls it
has received but not yet handed to the application (under load, several per connection), so their clients would
see CANCELLED for calls sent before the signal. The listener is stopped once the drain is over.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from service.auth import KEY_REQUIRED, ApiKey, ApiKeys, current_key
from service.errors import Overloaded, RateLimited, ServiceError, ShuttingDown, Unauthorized
from service.grpc import errors
from service.grpc.messages import SERVICE_NAME
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.model_control import Caller
from service.ratelimit import KeyRateLimits

PROBES = frozenset({"ServerLive", "ServerReady"})

if TYPE_CHECKING:
    # The gate passes every method's handler, whatever its messages. grpc-stubs make the interceptor generic in
    # them; at run time it is not, and cannot be subscripted.
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("grpc_caller", default=Caller())  # noqa: B039 - frozen
"""Who makes the call (its key's name and role), for the RPCs that need to know: set in the call's own task."""


class ServingGate(_ServerInterceptor):
    def __init__(
        self,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
        api_keys: ApiKeys | None = None,
        rate_limits: KeyRateLimits | None = None,
        *,
        max_calls: int | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._api_keys = api_keys
        self._rate_limits = rate_limits if rate_limits is not None else KeyRateLimits()
        self._max_calls = max_calls
        self.calls_in_flight = 0
        """Calls of the inference service being handled now, probes aside."""
        self._prefix = f"/{SERVICE_NAME}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if not method.startswith(self._prefix) or method.removeprefix(self._prefix) in PROBES:
            return await continuation(handler_call_details)
        name = method.removeprefix(self._prefix)
        if not self._lifecycle.accepting:
            return self._refusal(name, ShuttingDown.draining())
        if self._api_keys is not None and self._api_keys.enabled:
            key = self._key(handler_call_details.invocation_metadata or ())
            if key is None:
                return self._refusal(name, Unauthorized(KEY_REQUIRED))
            try:
                self._rate_limits.admit(key)
            except RateLimited as exc:
                self._metrics.api_key_rate_limited.labels(key.name).inc()
                return self._refusal(name, exc)
            self._metrics.api_key_requests.labels(key.name).inc()
            # In the call's own task, for its handler; gone with the task.
            current_key.set(key)
            CALLER.set(Caller(key_name=key.name, role=key.role))
        if self._max_calls is not None and self.calls_in_flight >= self._max_calls:
            return self._refusal(
                name,
                Overloaded(f"the server is handling {self._max_calls} gRPC calls at once, its limit; retry shortly"),
            )
        call = asyncio.current_task()  # gRPC serves each call in a task of its own, interceptors included
        if call is not None:
            self._lifecycle.request_started()
            self.calls_in_flight += 1
            call.add_done_callback(self._call_finished)
        return await continuation(handler_call_details)

    def _call_finished(self, _: object) -> None:
        self.calls_in_flight -= 1
        self._lifecycle.request_finished()

    def _key(self, metadata: Sequence[tuple[str, str | bytes]]) -> ApiKey | None:
        assert self._api_keys is not None
        values = {key.lower(): value for key, value in metadata if isinstance(value, str)}
        return self._api_keys.key_for(values.get("authorization"), values.get("x-api-key"))

    def _refusal(self, method: str, refusal: ServiceError) -> grpc.RpcMethodHandler[bytes, None]:
        async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, None]) -> None:
            code = errors.status_code(refusal)
            self._metrics.count_rejection(refusal)
            self._metrics.grpc_requests.labels(method, code.name).inc()
            await context.abort(code, refusal.message, errors.trailing_metadata(refusal))

        # Every method of the service is unary; the request is never parsed.
        return grpc.unary_unary_rpc_method_handler(refuse)
