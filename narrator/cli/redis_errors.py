"""One-line messages for Redis failures a user can fix (wrong URL, password, ACL, a port that
is not Redis), and :func:`connect`, which checks a Redis URL before any work is done."""

from __future__ import annotations

import redis

from narrator.common.errors import ConfigError
from narrator.common.logging import redact_text

CONNECT_TIMEOUT_S = 10.0


def redis_error_message(exc: BaseException) -> str | None:
    """What to tell the user about ``exc`` (None when it is not a Redis error)."""
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return (
            f"Redis refused the credentials ({exc}); check the user and password in "
            "--redis-url / NARRATOR_REDIS_URL"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"the Redis user may not run a command narrator needs ({exc}); grant it access "
            "to the narrator:* and rq:* keys (ACL SETUSER ... ~narrator:* ~rq:* +@all) or "
            "use another user"
        )
    if isinstance(exc, redis.exceptions.InvalidResponse):
        return (
            f"the server behind --redis-url does not speak the Redis protocol ({exc}); is "
            "that an HTTP port? Give the port of a Redis server"
        )
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return (
            f"cannot reach Redis: {redact_text(str(exc)).rstrip('.')}. Start Redis or fix "
            "--redis-url / NARRATOR_REDIS_URL (without it, `annotate` starts its own)"
        )
    if isinstance(exc, redis.exceptions.RedisError):
        return f"Redis error: {redact_text(str(exc))}"
    return None


def connect(url: str) -> redis.Redis:
    """A client for ``url`` whose server has answered PING; ConfigError (one line) if not."""
    try:
        probe = redis.Redis.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
        )
    except ValueError as exc:
        raise ConfigError(f"--redis-url is not a Redis URL: {exc}") from exc
    try:
        probe.ping()
    except redis.exceptions.RedisError as exc:
        message = redis_error_message(exc) or str(exc)
        if "closed by server" in str(exc):
            message += " (the server closed the connection: is that port a Redis server?)"
        raise ConfigError(message) from exc
    finally:
        probe.close()
    return redis.Redis.from_url(url)
