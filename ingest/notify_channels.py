"""What a notification looks like on the wire, per channel kind, and how each kind is signed.

- ``webhook``: the JSON of the notification, signed with HMAC-SHA256 over ``"{timestamp}.{body}"``
  (``X-Wulian-Signature: sha256=<hex>``, ``X-Wulian-Timestamp``: Unix seconds), and the
  ``Idempotency-Key`` header: a receiver drops repeats of a key (delivery is at least once).
- ``wecom`` (企业微信 group robot): markdown message; no signature, the robot's key is the ``key`` query
  parameter (stored as the channel secret when the URL does not carry it).
- ``dingtalk`` (钉钉 custom robot, 加签): ``timestamp`` (ms) and ``sign`` query parameters, sign =
  Base64(HMAC-SHA256(key=secret, msg=timestamp + "\\n" + secret)), URL-encoded.
- ``feishu`` (飞书 custom bot, 签名校验): ``timestamp`` (s) and ``sign`` in the JSON body, sign =
  Base64(HMAC-SHA256(key=timestamp + "\\n" + secret, msg="")).
The robots answer HTTP 200 with an error code in the body (``errcode`` / ``code``): non-zero is a failure.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

KINDS = ("webhook", "wecom", "dingtalk", "feishu")
SIGNATURE_HEADER = "X-Wulian-Signature"
TIMESTAMP_HEADER = "X-Wulian-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SEVERITY_LABEL = {"critical": "紧急 critical", "major": "重要 major", "minor": "次要 minor", "warning": "提示 warning"}


@dataclass(frozen=True, slots=True)
class WireRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


# A path segment that is a token rather than a word: Feishu/Lark robots carry theirs in the path
# (/open-apis/bot/v2/hook/<uuid>), generic webhooks often do too (/hooks/<key>).
_TOKEN_SEGMENT = re.compile(r"^(?=.*\d)[A-Za-z0-9_\-]{16,}$")


def redact_url(url: str) -> str:
    """The URL without what authenticates it (robot URLs carry access tokens): query values, a password
    in the authority, and token-like path segments. Safe to return and log."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: show nothing of it
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}" if ":" in user else netloc
    path = "/".join("***" if _TOKEN_SEGMENT.match(seg) else seg for seg in parts.path.split("/"))
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, True)) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, path=path, query=query))


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk 加签: Base64(HmacSHA256(secret, timestamp + "\\n" + secret)); the caller URL-encodes it."""
    mac = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu 签名校验: Base64(HmacSHA256(key = timestamp + "\\n" + secret, message = empty))."""
    mac = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def message_text(payload: dict, key: str) -> tuple[str, str]:
    """(title, text) of a robot message: severity, title, device, value, what happened."""
    sev = SEVERITY_LABEL.get(payload.get("severity", ""), payload.get("severity", ""))
    title = f"【{sev}】{payload.get('title', '')}"
    lines = [title,
             f"设备 device: {payload.get('device_id')} ({payload.get('region')}/{payload.get('stream')})",
             f"事件 event: {payload.get('event')} · 告警 alert #{payload.get('id')} · state {payload.get('state')}"]
    if payload.get("metric"):
        lines.append(f"{payload['metric']} = {payload.get('last_value')}")
    if payload.get("escalation_step"):
        lines.append(f"升级 escalation step {payload['escalation_step']}: {payload.get('comment', '')}")
    if payload.get("test"):
        lines.append("测试消息 test message")
    lines.append(f"[{key}]")
    return title, "\n".join(lines)


def build(kind: str, url: str, secret: str | None, payload: dict, key: str, now_ms: int) -> WireRequest:
    """The HTTP POST that delivers ``payload`` (an alert event) on a channel of ``kind``."""
    headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
    if kind == "webhook":
        body = orjson.dumps({"idempotency_key": key, "alert": payload})
        ts = now_ms // 1000
        if secret:
            headers[TIMESTAMP_HEADER] = str(ts)
            headers[SIGNATURE_HEADER] = webhook_signature(secret, ts, body)
        return WireRequest(url, headers, body)
    title, text = message_text(payload, key)
    if kind == "wecom":
        if secret and "key=" not in urlsplit(url).query:
            url = with_query(url, key=secret)
        return WireRequest(url, headers, orjson.dumps({"msgtype": "markdown", "markdown": {"content": text}}))
    if kind == "dingtalk":
        if secret:
            url = with_query(url, timestamp=str(now_ms), sign=dingtalk_sign(secret, now_ms))
        body = {"msgtype": "markdown", "markdown": {"title": title, "text": text.replace("\n", "  \n")}}
        return WireRequest(url, headers, orjson.dumps(body))
    if kind == "feishu":
        body = {"msg_type": "text", "content": {"text": text}}
        if secret:
            ts = now_ms // 1000
            body = {"timestamp": str(ts), "sign": feishu_sign(secret, ts), **body}
        return WireRequest(url, headers, orjson.dumps(body))
    raise ValueError(f"unknown channel kind {kind!r}; one of {KINDS}")


def response_error(kind: str, status: int, body: bytes) -> tuple[str | None, bool]:
    """(error or None, permanent): a 4xx other than 408/429 will not get better by retrying."""
    if not 200 <= status < 300:
        permanent = 400 <= status < 500 and status not in (408, 429)
        return f"HTTP {status}: {body[:200].decode(errors='replace')}", permanent
    if kind in ("wecom", "dingtalk", "feishu"):
        try:
            doc = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return f"not JSON: {body[:200].decode(errors='replace')}", False
        code = doc.get("errcode", doc.get("code", doc.get("StatusCode", 0))) if isinstance(doc, dict) else 0
        if code not in (0, None):
            return f"{kind} error {code}: {doc.get('errmsg') or doc.get('msg') or ''}", False
    return None, False
