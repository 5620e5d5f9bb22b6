"""Tell Airflow that the stream changed the shop mirror: an asset event through its REST API.

`fresh_marts` is scheduled on the asset `SHOP_MIRROR_URI` names (see apparel.transform). After each
batch the stream commits, it calls `AssetNotifier.changed()`, which only sets a flag: a background
thread posts `POST /api/v2/assets/events`, logged in as the stream's own Airflow user (role `op`, the
least role of Airflow's simple auth manager that may create asset events). So the stream never waits
for Airflow, and Airflow being down only costs a warning, at most one per `WARN_EVERY_S`; the
change stays pending and is told once Airflow answers again (tried after a pause that doubles up to
`MAX_RETRY_PAUSE_S`: Airflow may still be starting, as under `make up`).

Debounced: the first change after a quiet spell is posted at once (a lone order reaches the marts
soonest), then at most one event per `min_interval` seconds while changes keep coming. Events arriving
while a `fresh_marts` run is active are not lost and do not pile up: with `max_active_runs=1` Airflow
keeps them queued for the DAG and creates one next run from all of them once the active run ends.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx

log = logging.getLogger(__name__)

SHOP_MIRROR_URI = "postgres://warehouse/raw_store"
DEFAULT_MIN_INTERVAL_S = 2.0
# Short: a slow Airflow delays the next event, never the stream (the post runs on its own thread).
HTTP_TIMEOUT_S = 5.0
WARN_EVERY_S = 60.0
MAX_RETRY_PAUSE_S = 60.0


class AirflowError(RuntimeError):
    """Airflow answered, but not as expected (a wrong password, an unknown asset, ...)."""


class AssetNotifier:
    """Posts an asset event on `asset_uri` after changes, from its own thread (see the module)."""

    def __init__(
        self,
        airflow_url: str,
        username: str,
        password: str,
        *,
        asset_uri: str = SHOP_MIRROR_URI,
        min_interval: float = DEFAULT_MIN_INTERVAL_S,
    ):
        self.airflow_url = airflow_url.rstrip("/")
        self.username = username
        self._password = password
        self.asset_uri = asset_uri
        self.min_interval = min_interval
        self.posted = 0
        self.failed = 0
        self._token: str | None = None
        self._asset_id: int | None = None
        self._last_warning = float("-inf")
        self._failing = 0  # failed posts in a row
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="airflow-notify", daemon=True)

    def __enter__(self) -> AssetNotifier:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def changed(self) -> None:
        """The mirror changed: an event follows (never blocks, whatever Airflow does)."""
        self._pending.set()

    def close(self) -> None:
        """Post what is still pending (one short try), then stop the thread."""
        self._stop.set()
        self._thread.join(timeout=2 * HTTP_TIMEOUT_S + 1)

    def _run(self) -> None:
        with httpx.Client(base_url=self.airflow_url, timeout=HTTP_TIMEOUT_S) as client:
            while True:
                if not self._pending.wait(timeout=0.5):
                    if self._stop.is_set():
                        return
                    continue
                self._pending.clear()
                pause = self.min_interval
                if not self._try_post(client):
                    # Told later (see the module): pending again, after a growing pause.
                    self._pending.set()
                    self._failing += 1
                    pause = min(self.min_interval * 2**self._failing, MAX_RETRY_PAUSE_S)
                else:
                    self._failing = 0
                # Changes during this pause are told by one event after it; on close, at once.
                if self._stop.wait(pause):
                    if self._pending.is_set():
                        self._try_post(client)
                    return

    def _try_post(self, client: httpx.Client) -> bool:
        try:
            self._post(client)
        except (httpx.HTTPError, AirflowError) as e:
            self.failed += 1
            self._warn(e)
            return False
        self.posted += 1
        return True

    def _post(self, client: httpx.Client) -> None:
        if self._token is None:
            self._token = self._login(client)
        if self._asset_id is None:
            self._asset_id = self._find_asset(client)
        response = self._post_event(client)
        if response.status_code == 401:  # the token expired (a day by default): log in again
            self._token = self._login(client)
            response = self._post_event(client)
        if response.status_code == 404:  # the asset was removed and made again: a new id next time
            self._asset_id = None
        _check(response, "posting the asset event")

    def _post_event(self, client: httpx.Client) -> httpx.Response:
        body = {"asset_id": self._asset_id, "extra": {"source": "apparel stream"}}
        return client.post("/api/v2/assets/events", json=body, headers=self._auth())

    def _login(self, client: httpx.Client) -> str:
        response = client.post("/auth/token", json={"username": self.username, "password": self._password})
        _check(response, f"logging in as {self.username}")
        return response.json()["access_token"]

    def _find_asset(self, client: httpx.Client) -> int:
        response = client.get("/api/v2/assets", params={"uri_pattern": self.asset_uri}, headers=self._auth())
        _check(response, "looking up the asset")
        for asset in response.json()["assets"]:
            if asset["uri"] == self.asset_uri:
                return asset["id"]
        raise AirflowError(f"no asset {self.asset_uri} in Airflow yet (is the fresh_marts DAG parsed?)")

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "could not tell Airflow at %s that raw_store changed (%d failures so far): %s",
                self.airflow_url,
                self.failed,
                error,
            )


def _check(response: httpx.Response, doing: str) -> None:
    if response.is_success:
        return
    detail = response.text[:200].strip()
    raise AirflowError(f"{doing}: HTTP {response.status_code} {detail}")


STREAM_AIRFLOW_USER = "apparel_stream"


def notifier_from_settings(settings) -> AssetNotifier | None:
    """The stream's notifier, or None when it is off (STREAM_NOTIFY_AIRFLOW=0) or has no Airflow to
    tell (STREAM_AIRFLOW_URL unset: `make run` and the tests run the stream without Airflow; `make up`
    sets it to its own Airflow)."""
    url = settings.get("STREAM_AIRFLOW_URL")
    if settings.get("STREAM_NOTIFY_AIRFLOW", "1") == "0" or not url:
        return None
    password = settings.get("STREAM_AIRFLOW_PASSWORD")
    if not password:
        raise RuntimeError(
            "STREAM_AIRFLOW_URL is set but STREAM_AIRFLOW_PASSWORD is not: `make up` generates it into"
            " .env; or set STREAM_NOTIFY_AIRFLOW=0"
        )
    return AssetNotifier(
        url,
        settings.get("STREAM_AIRFLOW_USER", STREAM_AIRFLOW_USER),
        password,
        min_interval=float(settings.get("STREAM_NOTIFY_INTERVAL_S", str(DEFAULT_MIN_INTERVAL_S))),
    )
