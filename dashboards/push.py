"""Upsert the dashboards into a running Grafana over its HTTP API (grafana-client): one folder per
stream, created when missing, dashboards overwritten by uid. ``dry_run`` only plans."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from wulian.dashboards.build import DASHBOARDS, rendered
from wulian.dashboards.render import DEFAULTS
from wulian.settings import DashboardSettings


def folder_uid(title: str) -> str:
    """Stable folder uid from its title (Grafana uids: at most 40 chars of [A-Za-z0-9_-])."""
    return "wulian-" + hashlib.sha1(title.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class PushAction:
    folder: str
    folder_uid: str
    dashboard_uid: str
    title: str
    status: str  # planned | created-folder+pushed | pushed


def plan(s: DashboardSettings = DEFAULTS) -> list[tuple[str, str, dict[str, Any]]]:
    """(folder title, folder uid, dashboard JSON) per dashboard."""
    return [(d.folder, folder_uid(d.folder), doc) for d, doc in zip(DASHBOARDS, rendered(s))]


def push(url: str, token: str | None, dry_run: bool = False, timeout: float = 10.0,
         s: DashboardSettings = DEFAULTS) -> list[PushAction]:
    items = plan(s)
    if dry_run:
        return [PushAction(f, fu, doc["uid"], doc["title"], "planned") for f, fu, doc in items]
    from grafana_client import GrafanaApi  # imported here: only push talks to Grafana

    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    existing = {f["uid"] for f in api.folder.get_all_folders()}
    out = []
    for folder, fuid, doc in items:
        status = "pushed"
        if fuid not in existing:
            api.folder.create_folder(folder, uid=fuid)
            existing.add(fuid)
            status = "created-folder+pushed"
        body = {"dashboard": {**doc, "id": None}, "folderUid": fuid, "overwrite": True,
                "message": "wulian dashboards push"}
        api.dashboard.update_dashboard(body)
        out.append(PushAction(folder, fuid, doc["uid"], doc["title"], status))
    return out
