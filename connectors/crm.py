"""`crm`: put a qualified lead into the seller's pipeline over a CRM's HTTP API (request shapes modelled on common
CRM contact APIs, HubSpot/Pipedrive style)."""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import quote

import orjson
from pydantic import AnyHttpUrl, Field, SecretStr

from connectors.base import ConnectorConfig
from connectors.context import LeadView
from connectors.http import HttpConnector
from engine.core.model import Action
from engine.events import format_ts


class CrmConfig(ConnectorConfig):
    """Options of a `crm` connector; `token` is a secret."""

    type: str = "crm"
    base_url: AnyHttpUrl
    token: SecretStr | None = None
    create_task: bool = Field(True, description="also create a follow-up task for the owner")
    task_due_in_h: float = Field(24.0, gt=0)


def contact_document(action: Action) -> dict[str, Any]:
    view = LeadView(action)
    rep = view.rep
    return {
        "external_id": view.lead_id,
        "email": view.email,
        "name": view.name,
        "company": view.company,
        "properties": {
            "lead_score": view.score,
            "lifecycle_stage": view.stage,
            "owner": (rep.email or rep.name) if rep else None,
            "nudge_rule": action.rule,
            "nudge_explanation": action.explanation,
            "last_page": view.last_page,
        },
    }


def task_document(action: Action, due_in_h: float) -> dict[str, Any]:
    view = LeadView(action)
    rep = view.rep
    given = action.payload.get("task")
    task: dict[str, Any] = given if isinstance(given, dict) else {}
    return {
        "contact_external_id": view.lead_id,
        "title": task.get("title") or f"Follow up with {view.display_name}",
        "body": task.get("body") or action.explanation,
        "owner": (rep.email or rep.name) if rep else None,
        "due_at": format_ts(action.fired_at_ms + int(due_in_h * 3600 * 1000)),
        "priority": "high" if action.priority > 0 else "normal",
    }


class CrmRequest(NamedTuple):
    """One HTTP request of a CRM delivery, ready to go."""

    method: str
    url: str
    body: bytes
    headers: dict[str, str]


class CrmConnector(HttpConnector[list[CrmRequest]]):
    """Upserts the contact, then creates the task; both requests are idempotent by key.

    1. `PUT {base_url}/contacts/{external_id}` with `{"external_id", "email", "name", "company", "properties":
       {"lead_score", "lifecycle_stage", "owner", "nudge_rule", "nudge_explanation", "last_page"}}`: an upsert keyed
       by our lead id, so repeating it is harmless.
    2. When `create_task` is on (default) or the action's payload has a `task`: `POST {base_url}/tasks` with
       `{"contact_external_id", "title", "body", "owner", "due_at", "priority"}`.
    Both carry `Authorization: Bearer <token>` (a secret) and `Idempotency-Key` (`<action_id>` for the upsert,
    `<action_id>:task` for the task) so a retried action does not create a second task on a CRM that honours the
    header. Errors follow `HttpClient.request`.
    """

    kind = "crm"
    config_model = CrmConfig
    config: CrmConfig

    def _headers(self, idempotency_key: str) -> dict[str, str]:
        headers = {"Idempotency-Key": idempotency_key, "X-Nudge-Action-Id": idempotency_key.split(":")[0]}
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.get_secret_value()}"
        return headers

    def build(self, action: Action) -> list[CrmRequest]:
        base = str(self.config.base_url).rstrip("/")
        json = {"Content-Type": "application/json"}
        requests = [
            CrmRequest(
                "PUT",
                f"{base}/contacts/{quote(action.lead_id, safe='')}",
                orjson.dumps(contact_document(action)),
                {**json, **self._headers(action.action_id)},
            )
        ]
        if self.config.create_task or "task" in action.payload:
            requests.append(
                CrmRequest(
                    "POST",
                    f"{base}/tasks",
                    orjson.dumps(task_document(action, self.config.task_due_in_h)),
                    {**json, **self._headers(f"{action.action_id}:task")},
                )
            )
        return requests

    async def transmit(self, message: list[CrmRequest]) -> None:
        for request in message:
            await self.http.request(request.method, request.url, request.body, request.headers)
