"""Where a pipeline runs on the worker-based engine: its Redis, its namespace, the stages of this replica.

The code's choices (``Pipeline(redis_url=, namespace=, stages=, lease=,
max_deliveries=)``) are checked when the pipeline is built; the deployment's
settings (``REDIS_URL``, ``PIPELINE_STAGES``, ``PIPELINE_NAMESPACE``,
``PIPELINE_LEASE``, ``PIPELINE_MAX_DELIVERIES``) override them when set, and
``resolve`` checks the result against the tree before anything runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..._config import mask_url
from ..._errors import RegistrationError
from ..._extras import require
from ..._validate import positive
from .._redis._settings import DEFAULT_REDIS_URL, check_redis_url

__all__ = ["Placement", "parse_stages"]

REDIS_WITHIN = 10.0  # seconds a worker-based pipeline waits for Redis to answer before it fails
DEFAULT_LEASE = 30.0
DEFAULT_MAX_DELIVERIES = 5


def parse_stages(value: str) -> list[str]:
    """``"a, b,c"`` as ``["a", "b", "c"]``; ``ValueError`` for an empty list or an empty name."""
    names = [name.strip() for name in value.split(",")]
    if not value.strip() or any(not name for name in names):
        raise ValueError("must name stages, comma-separated, e.g. square,store")
    return names


@dataclass
class Placement:
    """The worker-based options as the code gave them (``None``: not given)."""

    redis_url: str | None = None
    namespace: str | None = None
    stages: list[str] | None = None
    lease: float | None = None
    max_deliveries: int | None = None

    @classmethod
    def checked(
        cls,
        names: list[str],
        *,
        redis_url: Any,
        namespace: Any,
        stages: Any,
        lease: Any,
        max_deliveries: Any,
    ) -> Placement:
        """The code's options, each checked (``RegistrationError`` naming the option and what to give)."""
        owner = "Pipeline"
        if redis_url is not None:
            try:
                redis_url = check_redis_url(redis_url)
            except ValueError as exc:
                raise RegistrationError(f"{owner}: redis_url {_shown(redis_url)} {exc}") from None
        if namespace is not None and (
            not isinstance(namespace, str) or not namespace.strip() or any(c.isspace() for c in namespace)
        ):
            raise RegistrationError(
                f"{owner}: namespace must be a non-empty prefix without spaces (e.g. 'myapp:orders'), got {namespace!r}"
            )
        if stages is not None:
            if isinstance(stages, (str, bytes)) or not isinstance(stages, Iterable):
                raise RegistrationError(f"{owner}: stages must be a list of stage names, got {stages!r}")
            stages = list(stages)
            unknown = [name for name in stages if name not in names]
            if not stages or unknown:
                what = f"unknown stage(s) {unknown!r}" if unknown else "an empty list"
                raise RegistrationError(
                    f"{owner}: stages= names the stages this replica runs; got {what}. "
                    f"The pipeline's stages: {', '.join(names)}"
                )
        lease = positive(owner, "lease", lease, allow_none=True)
        if max_deliveries is not None:
            max_deliveries = positive(owner, "max_deliveries", max_deliveries, integer=True)
        return cls(redis_url, namespace, stages, lease, max_deliveries)

    def resolve(self, names: list[str], settings: Any, redis: Any, default_namespace: str) -> Placement:
        """The options in force: each setting that is set wins over the code's; every stage checked."""
        values = Placement(self.redis_url, self.namespace, self.stages, self.lease, self.max_deliveries)
        if redis is not None and "url" in redis.model_fields_set:
            values.redis_url = redis.url
        if settings is not None:
            if settings.stages is not None:
                values.stages = parse_stages(settings.stages)
            for name in ("namespace", "lease", "max_deliveries"):
                if getattr(settings, name) is not None:
                    setattr(values, name, getattr(settings, name))
        values.redis_url = values.redis_url or (redis.url if redis is not None else DEFAULT_REDIS_URL)
        values.namespace = values.namespace or default_namespace
        values.lease = values.lease or DEFAULT_LEASE
        values.max_deliveries = values.max_deliveries or DEFAULT_MAX_DELIVERIES
        if values.stages is not None:
            mine = [name for name in values.stages if name in names]
            if not mine:
                raise RegistrationError(
                    f"Pipeline (namespace {values.namespace!r}): PIPELINE_STAGES / stages= name no stage of this "
                    f"pipeline ({', '.join(values.stages)}), so this replica would run none of it. Its stages: "
                    f"{', '.join(names)}; name some of them, or leave the setting unset to run every stage"
                )
            values.stages = mine
        return values

    def for_engine(
        self, engine: str, names: list[str], settings: Any, redis: Any, default_namespace: str
    ) -> tuple[Placement | None, list[str]]:
        """For a run on ``engine``: the options in force (None unless worker-based), and the worker-based
        settings that are set but ignored (another engine: they serve every pipeline of the app, some of
        which may be worker-based). The code's worker-based options on another engine are an error."""
        if engine == "worker-based":
            require("coredis", "redis", "Pipeline(engine='worker-based')")  # before anything else
            return self.resolve(names, settings, redis, default_namespace), []
        if self.given():
            raise RegistrationError(
                f"Pipeline: {', '.join(self.given())} apply to the worker-based engine only, and this pipeline "
                f"runs on {engine!r}; set PIPELINE_ENGINE=worker-based (or engine='worker-based'), or drop them"
            )
        ignored = [
            f"PIPELINE_{name.upper()}"
            for name in ("stages", "namespace", "lease", "max_deliveries")
            if settings is not None and getattr(settings, name) is not None
        ]
        return None, ignored

    async def reach(self) -> None:
        """Fail (within 10 s, naming the URL, password masked) when Redis does not answer."""
        from .._redis._client import ping

        assert self.redis_url is not None
        await ping(self.redis_url, within=REDIS_WITHIN, who=f"Pipeline (namespace {self.namespace!r})")

    def options(self, nodes: list[Any], log: Any, health: Any) -> Any:
        """The worker-based engine's ``WorkerOptions`` for a run of ``nodes``."""
        from ._worker_based import WorkerOptions

        assert self.redis_url is not None and self.namespace is not None
        assert self.lease is not None and self.max_deliveries is not None
        stages = frozenset(self.stages if self.stages is not None else (n.name for n in nodes))
        return WorkerOptions(self.redis_url, self.namespace, stages, self.lease, self.max_deliveries, log, health)

    def fields(self) -> dict[str, Any]:
        """What the start of a run logs: the namespace, and the stages run here when not every one."""
        fields: dict[str, Any] = {"namespace": self.namespace}
        if self.stages is not None:
            fields["runs"] = self.stages
        return fields

    def given(self) -> list[str]:
        """The worker-based options the code gave (for the error when another engine runs)."""
        return [
            name
            for name in ("redis_url", "namespace", "stages", "lease", "max_deliveries")
            if getattr(self, name) is not None
        ]

    def shown_url(self) -> str:
        """The URL with its password masked."""
        return mask_url(self.redis_url or DEFAULT_REDIS_URL)


def _shown(value: Any) -> str:
    return repr(mask_url(value)) if isinstance(value, str) else repr(value)
