"""Container links and ``--volumes-from``: one container naming another in its create body.

Docker has two kinds of links, and docker-compose sends both for every ``links:`` entry:

* ``HostConfig.Links`` are *legacy* links, honoured only on the default network (silobox's
  ``nat``, Docker's ``bridge``): the linked container must exist at create and run at start, and
  the linking container's ``/etc/hosts`` names it by its alias, id and name. Inspect shows them
  as ``/child:/parent/alias``. On a user network mode Docker ignores them (moby
  ``registerLinks``), and so does silobox.
* ``EndpointSettings.Links`` (create's ``NetworkingConfig`` or ``POST /networks/{id}/connect``)
  are per-network aliases that only the linking container resolves through the embedded DNS
  (libnetwork's ``CreateOptionAlias``).

``HostConfig.VolumesFrom`` (``container[:ro|rw]``) copies another container's mounts at create,
as moby's ``registerMountPoints`` does: the container's own binds, mounts and tmpfs win over a
copied mount of the same destination, and ``ro`` makes a copied mount read-only.
"""

from __future__ import annotations

import os
from typing import Any

from silobox.engine.hooks import ContainerHook
from silobox.errors import Conflict, InvalidArgument, NotFound

DEFAULT_NETWORK_MODES = ("default", "bridge", "nat")
_VOLUMES_FROM_MODES = {"ro", "rw", "z", "Z"}


def parse_link(text: Any) -> tuple[str, str]:
    """``name:alias`` (or ``name``, or inspect's ``/name:/parent/alias``) → (name, alias);
    moby's ``opts.ParseLink`` with its messages."""
    if not isinstance(text, str):
        raise InvalidArgument(f"bad format for links: {text!r} is not a string")
    if text == "":
        raise InvalidArgument("empty string specified for links")
    parts = text.split(":")
    if len(parts) > 2 or not all(parts):
        raise InvalidArgument(f"bad format for links: {text}")
    if len(parts) == 1:
        return text.lstrip("/"), text.lstrip("/")
    if parts[0].startswith("/"):
        return parts[0][1:], os.path.basename(parts[1])
    return parts[0], parts[1]


def check_endpoint_links(links: Any) -> list[str] | None:
    """``EndpointSettings.Links`` as stored: validated, None when empty (Docker's null)."""
    if links is None:
        return None
    if not isinstance(links, list):
        raise InvalidArgument("json: cannot unmarshal into Go struct field "
                              "EndpointSettings.Links of type []string")
    for item in links:
        parse_link(item)
    return list(links) or None


def parse_volumes_from(spec: Any) -> tuple[str, str]:
    """``container[:mode]`` → (container, mode); moby's ``ParseVolumesFrom`` with its messages."""
    if not isinstance(spec, str):
        raise InvalidArgument(f"invalid volumes-from specification: {spec!r} is not a string")
    if spec == "":
        raise InvalidArgument("volumes-from specification cannot be an empty string")
    ref, sep, mode = spec.partition(":")
    if not sep:
        return ref, "rw"
    opts = mode.split(",")
    if not mode or any(o not in _VOLUMES_FROM_MODES for o in opts) or \
            ("ro" in opts and "rw" in opts):
        raise InvalidArgument(f"invalid mode: {mode}")
    return ref, mode


def link_env(parent: str, alias: str, ip: str, exposed: Any, env: list[str]) -> list[str]:
    """The variables a legacy link gives the linking container (moby ``links.Link.ToEnv``):
    ``ALIAS_NAME``, ``ALIAS_PORT*`` for the linked container's exposed ports (contiguous ports
    also as ``_START``/``_END`` ranges) and ``ALIAS_ENV_*`` for its environment."""
    prefix = alias.upper().replace("-", "_")
    ports = []
    for key in exposed or {}:
        port, _, proto = str(key).partition("/")
        if port.isdigit():
            ports.append((int(port), (proto or "tcp").lower()))
    ports.sort(key=lambda p: (p[0], p[1] != "tcp"))
    out = []
    if ports:
        out.append(f"{prefix}_PORT={ports[0][1]}://{ip}:{ports[0][0]}")

    def entries(port: int, proto: str) -> list[str]:
        key = f"{prefix}_PORT_{port}_{proto.upper()}"
        return [f"{key}={proto}://{ip}:{port}", f"{key}_ADDR={ip}", f"{key}_PORT={port}",
                f"{key}_PROTO={proto}"]
    i = 0
    while i < len(ports):
        port, proto = ports[i]
        j, value = i, port
        while j + 1 < len(ports) and ports[j + 1][0] <= value + 1:   # moby's nextContiguous
            j, value = j + 1, value + 1
        if j > i + 1:
            key, (last, last_proto) = f"{prefix}_PORT_{port}_{proto.upper()}", ports[j]
            out += [f"{key}_START={proto}://{ip}:{port}", f"{key}_ADDR={ip}",
                    f"{key}_PROTO={proto}", f"{key}_PORT_START={port}",
                    f"{prefix}_PORT_{port}_{last_proto.upper()}_END={last_proto}://{ip}:{last}",
                    f"{prefix}_PORT_{port}_{last_proto.upper()}_PORT_END={last}"]
        for k in range(i, j + 1):
            out += entries(*ports[k])
        i = j + 1
    out.append(f"{prefix}_NAME=/{parent}/{alias}")
    for item in env:
        key, sep, value = item.partition("=")
        if sep and key not in ("HOME", "PATH"):
            out.append(f"{prefix}_ENV_{key}={value}")
    return out


def is_default_network(mode: str) -> bool:
    return (mode or "default") in DEFAULT_NETWORK_MODES


class VolumesFromHook(ContainerHook):
    """Copies the mounts of ``HostConfig.VolumesFrom`` containers into a new container.

    It runs before the storage hook, so a copied volume covers an image ``VOLUME`` of the same
    path (no anonymous volume is made there) and counts as a user of the volume."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def on_create(self, c: Any, body: dict[str, Any]) -> None:
        hc = c.host_config
        specs = hc.get("VolumesFrom") or []
        if not isinstance(specs, list):
            raise InvalidArgument("json: cannot unmarshal into Go struct field "
                                  "HostConfig.VolumesFrom of type []string")
        if not specs:
            return
        own = self._own_destinations(c)
        copied: dict[str, dict[str, Any]] = {}
        for spec in specs:
            ref, mode = parse_volumes_from(spec)
            source = self.store.find(ref)
            if source.id == c.id:
                raise InvalidArgument("cannot mount volumes from the container itself")
            for m in source.mounts:
                dest = os.path.normpath(m["Destination"])
                if dest in own:
                    continue
                copied[dest] = {**m, "RW": bool(m.get("RW")) and "ro" not in mode.split(",")}
        c.mounts = list(c.mounts) + list(copied.values())

    @staticmethod
    def _own_destinations(c: Any) -> set[str]:
        """Destinations the container's own binds, mounts and tmpfs claim."""
        hc = c.host_config
        dests = {os.path.normpath(m["Destination"]) for m in c.mounts}
        for b in hc.get("Binds") or []:
            parts = b.split(":") if isinstance(b, str) else []
            if len(parts) >= 2 and parts[1].startswith("/"):
                dests.add(os.path.normpath(parts[1]))
        for m in hc.get("Mounts") or []:
            if isinstance(m, dict) and isinstance(m.get("Target"), str) and m["Target"]:
                dests.add(os.path.normpath(m["Target"]))
        tmpfs = hc.get("Tmpfs")
        if isinstance(tmpfs, dict):
            dests.update(os.path.normpath(p) for p in tmpfs if isinstance(p, str) and p)
        return dests


class LinkHook(ContainerHook):
    """Legacy links on the default network, and the endpoint links of the create body."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def on_create(self, c: Any, body: dict[str, Any]) -> None:
        hc = c.host_config
        links = hc.get("Links") or []
        if not isinstance(links, list):
            raise InvalidArgument("json: cannot unmarshal into Go struct field "
                                  "HostConfig.Links of type []string")
        ec = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        if not isinstance(ec, dict):
            raise InvalidArgument("json: cannot unmarshal into Go struct field "
                                  "NetworkingConfig.EndpointsConfig of type map")
        for cfg in ec.values():
            check_endpoint_links((cfg or {}).get("Links"))
        mode = hc.get("NetworkMode") or "default"
        for name, network in c.network_settings["Networks"].items():
            # The network hook stored the endpoint under the network's name; the client may
            # have keyed it by the network mode (an alias such as "default").
            cfg = ec.get(name) or ec.get(mode) or {}
            network["Links"] = check_endpoint_links(cfg.get("Links"))
        if not is_default_network(hc.get("NetworkMode") or "default"):
            return   # legacy links belong to the default network only (moby registerLinks)
        for item in links:
            name, _alias = parse_link(item)
            try:
                child = self.store.find(name)
            except NotFound:
                raise InvalidArgument(f"could not get container for {name}") from None
            if child.id == c.id:
                raise InvalidArgument("a container cannot link to itself")
            if child.host_config.get("NetworkMode") == "host":
                raise InvalidArgument("conflicting options: host type networking can't be used "
                                      "with links. This would result in undefined behavior")

    async def on_start(self, c: Any, document: dict[str, Any]) -> None:
        """Name the linked containers in ``/etc/hosts`` (the network hook has written it) and
        give their variables to the container's first process (``Silobox.LinkEnv``)."""
        hc = c.host_config
        c.silobox.pop("LinkEnv", None)
        if not hc.get("Links") or not is_default_network(hc.get("NetworkMode") or "default"):
            return
        from silobox.atomic import atomic_write
        lines = []
        variables: list[str] = []
        for item in hc["Links"]:
            name, alias = parse_link(item)
            try:
                child = self.store.find(name)
            except NotFound:
                raise Conflict(f"Cannot link to /{name}, as it does not exist") from None
            if not child.running:
                raise Conflict(f"Cannot link to a non running container: /{child.name} AS "
                               f"/{c.name}/{alias}")
            ip = next((n.get("IPAddress") for n in
                       child.network_settings.get("Networks", {}).values()
                       if n.get("IPAddress")), "")
            if ip:
                names = dict.fromkeys([alias, child.id[:12], child.name])
                lines.append(f"{ip}\t{' '.join(names)}")
            variables += link_env(c.name, alias, ip, child.config.get("ExposedPorts"),
                                  child.config.get("Env") or [])
        c.silobox["LinkEnv"] = variables
        if lines:
            with open(c.hosts_path) as f:
                hosts = f.read()
            atomic_write(c.hosts_path, hosts + "\n".join(lines) + "\n")

    def on_inspect(self, c: Any, out: dict[str, Any]) -> None:
        """Docker's view of legacy links, ``/child:/parent/alias``; none on user networks."""
        hc = out["HostConfig"]
        links = hc.get("Links") or []
        if not is_default_network(hc.get("NetworkMode") or "default"):
            hc["Links"] = None
            return
        shown = []
        for item in links:
            name, alias = parse_link(item)
            try:
                child = self.store.find(name)
            except NotFound:
                continue
            shown.append(f"/{child.name}:/{c.name}/{alias}")
        hc["Links"] = shown or None


class Links:
    """Legacy links' removal, and the endpoint links the embedded DNS resolves."""

    def __init__(self, store: Any) -> None:
        self.store = store

    async def container_remove_link(self, name: str) -> None:
        """``DELETE /containers/parent/alias?link=1``: drop a legacy link from its parent (moby
        ``rmLink``); it takes effect at the parent's next start, both containers stay."""
        parent, _, alias = name.strip("/").rpartition("/")
        if not parent:
            raise Conflict("Conflict, cannot remove the default link name of the container")
        try:
            c = self.store.find(parent)
        except NotFound:
            raise NotFound(f"Cannot get parent /{parent} for link name /{name.strip('/')}"
                           ) from None
        links = c.host_config.get("Links") or []
        kept = [item for item in links if parse_link(item)[1] != alias]
        if len(kept) == len(links):
            raise NotFound(f"No such container: {name.strip('/')}")
        c.host_config["Links"] = kept or None
        self.store.save(c)

    def link_target(self, container_id: str, name: str) -> str | None:
        """The container name an endpoint link alias of ``container_id`` stands for."""
        c = self.store.get(container_id)
        if c is None:
            return None
        for network, cfg in (c.network_settings.get("Networks") or {}).items():
            for item in cfg.get("Links") or []:
                target, alias = parse_link(item)
                if name in (alias.lower(), f"{alias.lower()}.{network.lower()}"):
                    return target.lower()
        return None
