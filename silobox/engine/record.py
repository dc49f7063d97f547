"""The record of one Docker container, typed.

The store keeps each record as Docker's inspect document (the JSON ``docker inspect`` shows,
plus silod's own ``Silobox`` part), so a state directory written by any earlier silod loads
unchanged: :meth:`Container.from_document` reads one, :meth:`Container.to_document` writes one.
Keys of a stored document this version does not know are kept and written back as they were.

``Config``, ``HostConfig``, ``NetworkSettings`` and ``State`` stay Docker's documents (the API
sends and shows them as they are; ``State`` is written only by ``engine/state.py``).
``data`` is the same record seen as that document, key by key, for code that still reads
it so (the storage hook, until it moves into ``storage/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, MutableMapping

from silobox.engine.state import LIVE, initial_state

# Docker's fixed answers for what silobox has one of (moby's Windows values where it has them)
_CONSTANTS: dict[str, Any] = {"Driver": "windowsfilter", "Platform": "linux", "MountLabel": "",
                              "ProcessLabel": "", "AppArmorProfile": "", "ExecIDs": None}

# document key → attribute, in the order inspect shows them
_FIELDS = {"Id": "id", "Created": "created", "Path": "path", "Args": "args", "State": "state",
           "Image": "image", "ResolvConfPath": "resolv_conf_path",
           "HostnamePath": "hostname_path", "HostsPath": "hosts_path", "LogPath": "log_path",
           "Name": "name", "RestartCount": "restart_count", "HostConfig": "host_config",
           "GraphDriver": "graph_driver", "Mounts": "mounts", "Config": "config",
           "NetworkSettings": "network_settings", "Silobox": "silobox"}
_ORDER = ["Id", "Created", "Path", "Args", "State", "Image", "ResolvConfPath", "HostnamePath",
          "HostsPath", "LogPath", "Name", "RestartCount", *_CONSTANTS, "HostConfig",
          "GraphDriver", "Mounts", "Config", "NetworkSettings", "Silobox"]


@dataclass(eq=False)
class Container:
    """One Docker container as the store holds it."""

    id: str
    name: str                          # without Docker's leading "/"
    image: str                         # the image id
    config: dict[str, Any]             # Docker's Config
    host_config: dict[str, Any]        # Docker's HostConfig
    created: str = ""                  # RFC 3339
    path: str = ""                     # the command, then its arguments
    args: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=initial_state)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    network_settings: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    resolv_conf_path: str = ""
    hostname_path: str = ""
    hosts_path: str = ""
    log_path: str = ""
    graph_driver: dict[str, Any] = field(default_factory=dict)
    silobox: dict[str, Any] = field(default_factory=dict)
    """silod's own: Resources, Security, StoppedByUser, Storage, Layers, LinkEnv, ..."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of the stored document this version does not type (kept as they were)."""

    @property
    def running(self) -> bool:
        """Its processes exist (running or paused)."""
        return self.state["Status"] in LIVE

    @property
    def stopped_by_user(self) -> bool:
        """A user's stop or kill: no policy restart until the next start."""
        return bool(self.silobox.get("StoppedByUser"))

    @property
    def data(self) -> "DocumentView":
        return DocumentView(self)

    # ----- the stored document ----------------------------------------------------------------
    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> "Container":
        values = {attr: doc[key] for key, attr in _FIELDS.items() if key in doc}
        values["name"] = str(values.get("name") or "").lstrip("/")
        if values.get("mounts") is None:
            values["mounts"] = []
        if values.get("silobox") is None:
            values["silobox"] = {}
        extra = {k: v for k, v in doc.items() if k not in _FIELDS}
        return cls(**values, extra=extra)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for key in _ORDER:
            if key in _FIELDS:
                doc[key] = self._get(key)
            else:
                doc[key] = self.extra.get(key, _CONSTANTS[key])
        doc.update((k, v) for k, v in self.extra.items() if k not in doc)
        return doc

    def _get(self, key: str) -> Any:
        if key == "Name":
            return "/" + self.name
        return getattr(self, _FIELDS[key])

    def _set(self, key: str, value: Any) -> None:
        if key == "Name":
            self.name = str(value).lstrip("/")
        elif key in _FIELDS:
            setattr(self, _FIELDS[key], value)
        else:
            self.extra[key] = value


class DocumentView(MutableMapping[str, Any]):
    """A container record read and written as its inspect document, key by key."""

    def __init__(self, c: Container) -> None:
        self._c = c

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return self._c._get(key)
        if key in self._c.extra:
            return self._c.extra[key]
        if key in _CONSTANTS:
            return _CONSTANTS[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._c._set(key, value)

    def __delitem__(self, key: str) -> None:
        if key in _FIELDS:
            raise KeyError(f"{key} is a field of every container record")
        del self._c.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._c.to_document())

    def __len__(self) -> int:
        return len(self._c.to_document())
