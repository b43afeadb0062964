"""What a failed deployment call was, looked up inside the wrappers Ray puts around it on its way through handles.

A refusal by design (bad input, a full queue, a request that could not start in time) is
told apart from a lost replica (retry elsewhere) and from a fault of ours. The Ingress maps
each onto its HTTP answer (ingress/errors.py); the replicas log refusals in one line
(replica_logging.py); the text deployments resend a call whose replica died (text_deployment.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from serve_app.engine.errors import EngineInputError
from serve_app.scheduling.errors import Refused
from serve_app.text.errors import TextInputError

InputError = EngineInputError | TextInputError


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and what caused it, outermost first (Ray's RayTaskError keeps the original as `cause`)."""
    seen = 0
    while exc is not None and seen < 8:
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1


def input_error(exc: BaseException) -> InputError | None:
    """The text or engine input error behind `exc`: a field of the client's input broke a rule."""
    return next((e for e in causes(exc) if isinstance(e, (EngineInputError, TextInputError))), None)


def admission_refusal(exc: BaseException) -> Refused | None:
    """The scheduler's refusal behind `exc`: the request could not have started before its deadline, or
    the device ran out of memory with it in the batch."""
    return next((e for e in causes(exc) if isinstance(e, Refused)), None)


def is_overload(exc: BaseException) -> bool:
    """The service is at capacity (a deployment's max_queued_requests was reached)."""
    from ray.serve.exceptions import BackPressureError

    return any(isinstance(e, BackPressureError) for e in causes(exc))


def is_refusal(exc: BaseException) -> bool:
    """Answered 422 or 503 + Retry-After by design (bad input, a full queue, a late start, no memory): not a fault of
    ours."""
    return input_error(exc) is not None or is_overload(exc) or admission_refusal(exc) is not None


def is_replica_loss(exc: BaseException) -> bool:
    """A replica died or became unreachable mid-request: Serve replaces it, the client should retry."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    lost = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError, ReplicaUnavailableError)
    return any(isinstance(e, lost) for e in causes(exc))
