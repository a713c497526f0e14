"""The app's ``"machine"`` service: one root Machine, a sub-machine per component that asks.

The issue asks the core to pre-register a Machine, so this is the one place
the core reaches into ``nacelle_py.base``, and only lazily: importing
``nacelle_py`` does not import the Machine, and an app that never injects it
pays for one idle task group while it serves.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from .base._machine import Machine

__all__ = ["MachineService"]


class MachineService:
    """Owns an app's root machine: opened around the lifecycle, a sub-machine per component."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._root: Machine | None = None

    @staticmethod
    def settings_model() -> type[BaseSettings]:
        """The settings the root machine reads (``MACHINE_MAX_ROUTINES``, ``MACHINE_BUFFER``)."""
        from .base._machine import MachineSettings

        return MachineSettings

    def root(self) -> Machine:
        """The root machine (built on first use)."""
        if self._root is None:
            from .base._machine import Machine

            self._root = Machine(name="machine", logger=self._logger.bind(component="machine"))
        return self._root

    def for_component(self, name: str | None) -> Machine:
        """A component's own sub-machine (named after it); the root outside a component."""
        root = self.root()
        if name is None:
            return root
        return root.children.get(name) or root.sub(name)

    def stats(self) -> list[tuple[str, Any]]:
        """The machine tree's ``MachineStats`` by component: ``("", root)``, then each component's sub-machine.

        The root's own counts go under the app (component ``""``); a
        component's sub-machine, named ``<root>/<component>``, under the
        component. Nothing before anything used a machine.
        """
        root = self._root
        if root is None:
            return []
        tree = root.stats()
        return [("", tree._replace(subs={}))] + [
            (name, sub._replace(name=f"{tree.name}/{sub.name}")) for name, sub in tree.subs.items()
        ]

    def release(self, name: str) -> Awaitable[None] | None:
        """Cancel a component's sub-machine; what to await until its routines ended (None: it had none).

        The sub-machine leaves the tree at once: a later ``for_component(name)``
        (the component started again) gets a new one, as at its first start.
        """
        root = self._root
        sub = root.detach(name) if root is not None else None
        return None if sub is None else sub.end_quietly()

    async def open(self, settings: Any, logger: Any) -> None:
        """Open the root machine with the app's settings, before anything is injected."""
        self._logger = logger
        root = self.root()
        root.configure(
            max_routines=settings.max_routines, buffer=settings.buffer, logger=logger.bind(component="machine")
        )
        await root.open()

    async def close(self) -> None:
        """Cancel whatever still runs in the tree and close it (errors were logged already)."""
        if self._root is not None:
            await self._root.close()  # errors a routine raises while it is cancelled are dropped too
