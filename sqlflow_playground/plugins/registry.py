"""Which task types exist: built-ins plus installed packages' entry points."""
import inspect
import logging
from importlib.metadata import entry_points
from typing import Any, Dict, Iterable, List, Optional, Tuple

import jsonschema

from ..blocking import BlockingRunner
from ..errors import NotFound, Unprocessable
from .base import TaskPlugin

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sqlflow_playground.plugins"


def discovered_plugins() -> List[TaskPlugin]:
    """Instances of every plugin class registered under the entry-point group."""
    try:
        found = entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python 3.9
        found = entry_points().get(ENTRY_POINT_GROUP, [])
    plugins = []
    for ep in found:
        try:
            plugins.append(ep.load()())
        except Exception:
            # A broken third-party package must not take the server down.
            log.exception("cannot load plugin %s from entry point %s", ep.name, ep.value)
    return plugins


class PluginRegistry:
    """Plugins keyed by (task_type, version); a second one for a key is refused."""

    def __init__(self, runner: BlockingRunner, plugins: Iterable[TaskPlugin] = ()):
        self.runner = runner
        self._plugins: Dict[Tuple[str, str], TaskPlugin] = {}
        for plugin in plugins:
            self.register(plugin)

    def register(self, plugin: TaskPlugin, override: bool = False) -> None:
        key = (plugin.task_type, plugin.version)
        if not plugin.task_type or not plugin.version:
            raise ValueError(f"{type(plugin).__name__} needs a task_type and a version")
        if key in self._plugins and not override:
            raise ValueError(f"task type {key[0]}/{key[1]} is already registered")
        jsonschema.Draft202012Validator.check_schema(plugin.spec_schema)
        self._plugins[key] = plugin

    def get(self, task_type: str, version: str) -> TaskPlugin:
        plugin = self._plugins.get((task_type, version))
        if plugin is None:
            self._unknown(f"{task_type}/{version}")
        return plugin

    def plugins(self) -> List[TaskPlugin]:
        return list(self._plugins.values())

    def latest_version(self, task_type: str) -> str:
        versions = sorted(v for t, v in self._plugins if t == task_type)
        if not versions:
            self._unknown(task_type)
        return versions[-1]

    def _unknown(self, name: str) -> None:
        known = sorted(f"{t}/{v}" for t, v in self._plugins)
        raise NotFound(f"unknown task type {name}; available: {', '.join(known) or 'none'}")

    def describe(self) -> List[Dict[str, Any]]:
        return [{"task_type": p.task_type, "version": p.version, "description": p.description,
                 "spec_schema": p.spec_schema, "needs_database": p.needs_database}
                for _, p in sorted(self._plugins.items())]

    @staticmethod
    def validate(plugin: TaskPlugin, spec: Any) -> None:
        """422 with the reason when ``spec`` does not fit the plugin's schema."""
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(plugin.spec_schema).iter_errors(spec))
        if error is not None:
            where = "spec" + "".join(f"[{p!r}]" for p in error.absolute_path)
            raise Unprocessable(f"{where}: {error.message}")

    async def call(self, method: Any, *args: Any) -> Any:
        """Await an async plugin method, or run a plain one in the executor."""
        if inspect.iscoroutinefunction(method):
            return await method(*args)
        return await self.runner.run(method, *args)


def builtin_plugins(enable_process: bool, cluster: Any = None, *,
                    sqlflow_server: Optional[str] = None,
                    sqlflow_server_ca: Optional[str] = None) -> List[TaskPlugin]:
    """The built-in task types: ``sql`` and ``sqlflow`` always (without a
    ``sqlflow_server``, a ``sqlflow`` job is refused saying there is no engine),
    ``process`` if enabled, ``pod`` given a ``k8s.Cluster``."""
    from .sql import SqlPlugin
    from .sqlflow_engine import SqlflowPlugin
    plugins: List[TaskPlugin] = [SqlPlugin(), SqlflowPlugin(sqlflow_server, sqlflow_server_ca)]
    if enable_process:
        from .process import ProcessPlugin
        plugins.append(ProcessPlugin())
    if cluster is not None:
        from .k8s_job import K8sJobPlugin
        from .pod import PodPlugin
        plugins.append(PodPlugin(cluster))
        plugins.append(K8sJobPlugin(cluster))
    return plugins


__all__ = ["PluginRegistry", "builtin_plugins", "discovered_plugins", "ENTRY_POINT_GROUP"]
