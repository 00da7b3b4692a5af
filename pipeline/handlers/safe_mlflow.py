"""MLflow tracking that can never stop a training or an evaluation.

``--tracking mlflow`` adds MONAI's ``MLFlowHandler`` to the bundle's handler lists. The bundle configs pass those lists
through :func:`guard_tracking`, which wraps the handlers' event methods: an HTTP tracking server is probed once with a
short timeout, and if it is unreachable, or any MLflow call fails later, one warning line is printed and tracking is
switched off for the rest of the process while the work goes on (metrics are still written locally, see
:class:`~pipeline.handlers.MetricsCSV`). MLflow's own HTTP retries are capped (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 2,
``MLFLOW_HTTP_REQUEST_TIMEOUT`` 20 s unless set), so a server that disappears mid-run costs seconds, not minutes.
"""

from __future__ import annotations

import functools
import logging
import os
import urllib.error
import urllib.request

from monai.handlers import MLFlowHandler

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
EVENT_METHODS = ("start", "iteration_completed", "epoch_completed", "complete", "close")
_failed: dict[str, str] = {}  # tracking URI -> why tracking was switched off
_probed: set[str] = set()


def _one_line(err: BaseException | str) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + "..."


def tracking_failed(uri: str, err: BaseException | str) -> None:
    """Switches tracking to ``uri`` off for this process; warns once per URI."""
    if uri in _failed:
        return
    _failed[uri] = _one_line(err)
    logger.warning(f"MLflow tracking disabled: {uri} failed ({_failed[uri]}); the run continues without MLflow and "
                   f"its metrics are still written to a CSV file in output_dir")


def tracking_available(uri: str | None) -> bool:
    """False once tracking to ``uri`` failed. An ``http(s)`` URI is probed (``GET <uri>/health``) on first use:
    any HTTP answer counts as reachable, a refused or timed-out connection switches tracking off."""
    uri = str(uri or "")
    if uri in _failed:
        return False
    if uri.startswith(("http://", "https://")) and uri not in _probed:
        _probed.add(uri)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # the server answered
        except (OSError, ValueError) as err:  # URLError, refused, timeout, bad URL
            tracking_failed(uri, f"server unreachable: {getattr(err, 'reason', err)}")
            return False
    return True


def _guarded(method, uri: str):
    @functools.wraps(method)  # keeps the signature ignite inspects
    def call(*args, **kwargs):
        if not tracking_available(uri):
            return None
        try:
            return method(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop the work
            tracking_failed(uri, err)
            return None

    return call


def guard_tracking(handlers):
    """The same handler list, with every MONAI ``MLFlowHandler`` in it made fail-safe (in place)."""
    for handler in handlers or ():
        if isinstance(handler, MLFlowHandler) and not getattr(handler, "_guarded", False):
            uri = str(handler.client.tracking_uri)
            for name in EVENT_METHODS:
                setattr(handler, name, _guarded(getattr(handler, name), uri))
            handler._guarded = True
    return handlers
