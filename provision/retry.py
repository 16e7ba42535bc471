"""The one retry policy for provision's HTTP calls (the Xinference client, the hub listing, RAGFlow's API).

Only failures worth another try are retried: no answer (connection refused or reset, a timeout) and,
where the caller says so, a transient status (5xx, 429). Back-off is exponential (0.5 s, 1 s, 2 s ..., at
most MAX_WAIT_S); never a refused credential: Xinference bans an address after 10 refused secrets.
"""

from __future__ import annotations

from typing import Callable

import requests
import tenacity

ATTEMPTS = 3
BACKOFF_S = 0.5  # the first wait; each next one doubles
MAX_WAIT_S = 4.0


def no_answer(exc: BaseException) -> bool:
    """The request got no HTTP answer at all."""
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def no_answer_or_busy(exc: BaseException) -> bool:
    """No answer, or an answer that says "try again later" (5xx, 429)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return no_answer(exc)


def policy(retry_on: Callable[[BaseException], bool] = no_answer, attempts: int | None = None,
           within: float | None = None) -> tenacity.Retrying:
    """A tenacity.Retrying for one call: `for attempt in policy(): with attempt: ...`, or `policy()(fn)`.
    `within`: no new attempt once that many seconds have passed. The last failure is raised as it is."""
    stop = tenacity.stop_after_attempt(attempts or ATTEMPTS)
    if within is not None:
        stop = stop | tenacity.stop_after_delay(within)
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=stop,
        wait=tenacity.wait_exponential(multiplier=BACKOFF_S, max=MAX_WAIT_S),
        reraise=True,
    )
