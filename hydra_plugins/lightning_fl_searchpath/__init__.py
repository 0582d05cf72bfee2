"""Hydra plugin: lightning_fl's strategy configs in any Hydra app, as the config group ``trainer/strategy``.

Hydra imports every module under ``hydra_plugins`` when *any* Hydra app starts, so this module imports
only Hydra and the standard library: never torch, Lightning or ``lightning_fl`` (whose ``__init__`` loads
both). The configs are read from the installed package's ``conf/strategy`` directory, found without
importing the package. The typed schemas the YAML files build on (``fedavg_schema``, ...) are the
dataclasses of ``lightning_fl/cli/config.py``, which imports only Hydra and OmegaConf; that file is
executed on its own, and only when an app composes one of these configs. See docs/hydra.md.

    python train.py +trainer/strategy=fedavg trainer.strategy.num_clients=100
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

SCHEME = "lightning-fl"
MOUNT = "trainer/strategy"  # where the group appears in an app: `+trainer/strategy=fedavg` -> trainer.strategy
GROUP = "strategy"  # the group of lightning_fl's own config tree (conf/) that is served there


def _package_dir(name: str) -> Optional[str]:
    """Directory of the (sub)package ``name``, located by the import system's finders without executing
    any ``__init__`` (``importlib.util.find_spec`` would import the parents of a dotted name)."""
    parent, _, _ = name.rpartition(".")
    path = None
    if parent:
        parent_spec = importlib.util.find_spec(parent) if "." not in parent else None
        if parent_spec is None or parent_spec.submodule_search_locations is None:
            return None
        path = list(parent_spec.submodule_search_locations)
    for finder in sys.meta_path:  # the path finder (wheels) and setuptools' editable finder alike
        try:
            spec = finder.find_spec(name, path)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a finder that cannot answer is not the one we need
            continue
        if spec is not None and spec.submodule_search_locations:
            return list(spec.submodule_search_locations)[0]
    return None


class LightningFLSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="lightning-fl", path=f"{SCHEME}://{MOUNT}")


class LightningFLConfigSource(ConfigSource):
    """Serves ``<lightning_fl>/conf/strategy/**`` at ``trainer/strategy/**``, plus the schemas that
    ``lightning_fl.cli.config.register_configs`` stores in that group. Nothing else of lightning_fl's
    config tree (its ``config.yaml``, ``model/``, ``data/``, ``trainer/``) shows in the app."""

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self._conf_dir: Optional[str] = None
        self._schemas: Optional[dict[str, Any]] = None

    @staticmethod
    def scheme() -> str:
        return SCHEME

    # ------------------------------------------------------------------ where things are
    def _conf(self) -> Optional[str]:
        if self._conf_dir is None:
            self._conf_dir = _package_dir("lightning_fl.conf") or ""
        return self._conf_dir or None

    @staticmethod
    def _ours(config_path: str) -> Optional[str]:
        """The path inside lightning_fl's conf/ for an app path under MOUNT, else None."""
        path = config_path.strip("/")
        if path == MOUNT or path.startswith(MOUNT + "/"):
            return GROUP + path[len(MOUNT) :]
        return None

    def _file(self, inner: str, kind: str) -> Optional[str]:
        conf = self._conf()
        if conf is None:
            return None
        full = os.path.join(conf, *inner.split("/"))
        if kind == "group":
            return full if os.path.isdir(full) else None
        full = full if full.endswith(".yaml") else full + ".yaml"
        return full if os.path.isfile(full) else None

    def _schema_tree(self) -> dict[str, Any]:
        """The ConfigStore entries of group ``strategy`` (with subgroups), registered on first use."""
        if self._schemas is None:
            from hydra.core.config_store import ConfigStore

            config = _cli_config()
            config.register_resolvers()  # ${lightning_fl.seed:0} in the schemas
            store = ConfigStore.instance()
            saved, store.repo = store.repo, {}  # capture what register_configs stores, leave the app's alone
            try:
                config.register_configs()
                tree = store.repo.get(GROUP, {})
            finally:
                store.repo = saved
            self._schemas = tree
        return self._schemas

    def _schema(self, inner: str) -> Any:
        node: Any = {GROUP: self._schema_tree()}
        parts = inner.split("/")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return None
        name = parts[-1] if parts[-1].endswith(".yaml") else parts[-1] + ".yaml"
        return node.get(name) if isinstance(node, dict) else None

    # ------------------------------------------------------------------ the ConfigSource interface
    def available(self) -> bool:
        return self._conf() is not None

    def is_group(self, config_path: str) -> bool:
        path = config_path.strip("/")
        if path == "" or MOUNT.startswith(path + "/"):  # "" and "trainer": ancestors of the mount point
            return self.available()
        inner = self._ours(path)
        return inner is not None and self._file(inner, "group") is not None

    def is_config(self, config_path: str) -> bool:
        inner = self._ours(config_path)
        if inner is None or inner == GROUP:
            return False
        if self._file(inner, "config") is not None:
            return True
        # Schema names end in "_schema" (see register_configs): only those need the schemas loaded.
        return inner.rsplit("/", 1)[-1].removesuffix(".yaml").endswith("_schema") and self._schema(inner) is not None

    def load_config(self, config_path: str) -> ConfigResult:
        inner = self._ours(config_path)
        full = self._file(inner, "config") if inner is not None else None
        if full is not None:
            from omegaconf import OmegaConf

            with open(full, encoding="utf-8") as f:
                text = f.read()
            return ConfigResult(
                config=OmegaConf.create(text) if text.strip() else OmegaConf.create({}),
                path=f"{SCHEME}://{self.path}",
                provider=self.provider,
                header=ConfigSource._get_header_dict(text[:512]),
            )
        node = self._schema(inner) if inner is not None else None
        if node is None:
            raise ConfigLoadError(f"lightning_fl has no config {config_path}")
        return ConfigResult(
            config=copy.deepcopy(node.node),
            path=f"{SCHEME}://{self.path}",
            provider=self.provider,
            header={"package": node.package},
        )

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> list[str]:
        path = config_path.strip("/")
        want_groups = results_filter in (None, ObjectType.GROUP)
        if path == "" or MOUNT.startswith(path + "/"):
            child = MOUNT[len(path) :].strip("/").split("/")[0]
            return [child] if want_groups and self.available() else []
        inner = self._ours(path)
        directory = self._file(inner, "group") if inner is not None else None
        if directory is None:
            return []
        files: list[str] = []
        for name in os.listdir(directory):
            self._list_add_result(
                files=files, file_path=f"{path}/{name}", file_name=name, results_filter=results_filter
            )
        return sorted(set(files))


def _cli_config() -> ModuleType:
    """lightning_fl/cli/config.py, executed without lightning_fl/__init__.py (which imports torch)."""
    name = "lightning_fl.cli.config"
    if name in sys.modules:  # the lightning-fl command, or an app that imported lightning_fl already
        return sys.modules[name]
    alias = "_lightning_fl_cli_config"
    if alias in sys.modules:
        return sys.modules[alias]
    package = _package_dir("lightning_fl")
    if package is None:
        raise ConfigLoadError("lightning_fl is not installed where this Python can import it")
    spec = importlib.util.spec_from_file_location(alias, os.path.join(package, "cli", "config.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # dataclasses resolve their string annotations through sys.modules
    spec.loader.exec_module(module)
    return module
