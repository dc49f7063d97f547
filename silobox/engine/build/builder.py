"""The classic builder: runs a parsed Dockerfile step by step, one image per step.

This is dockerd's ``builder/dockerfile`` rebuilt over silobox's services. Every instruction
makes a new image from the previous one: metadata instructions only change the config (an
``empty_layer`` history entry, ``/bin/sh -c #(nop) ...``); RUN runs in a real container created
through the engine's container service, whose sandbox upper directory is committed as a layer;
COPY/ADD write their layer straight from the context (see ``context.py``). Each result is
remembered in the build cache under a key of (parent image, instruction as it will appear in the
history, resulting config, content hash of COPY/ADD inputs), so an identical step over the same
parent is reused (`` ---> Using cache``). Progress goes to ``emit`` as Docker's JSON messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from silobox import jsonlimits
from silobox.api.backend import BuildOptions
from silobox.engine.build import context as ctx
from silobox.engine.build import remote
from silobox.engine.build.dockerfile import (Dockerfile, DockerfileError, ExpansionError,
                                             Instruction, ShellLex, line_error, parse)
from silobox.engine.build.rootfs import MergedView
from silobox.errors import InvalidArgument, NotFound, SiloboxError

Emit = Callable[[dict[str, Any]], None]

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
          "h": 3600 * 10**9}


class BuildFailed(SiloboxError):
    """A step failed after the build started; ``code`` is a RUN's exit status when it has one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code



@dataclass
class Stage:
    """The state of the stage being built (moby ``dispatchState``)."""

    index: int
    name: str
    image_id: str = ""               # the current image; "" before the first step of scratch
    doc: dict[str, Any] = field(default_factory=dict)   # its config document
    diff_ids: list[str] = field(default_factory=list)
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False

    @property
    def config(self) -> dict[str, Any]:
        return self.doc.setdefault("config", {})

    @property
    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)


def parse_duration(text: str, what: str) -> int:
    """A Go duration (``30s``, ``1m30s``) in nanoseconds."""
    if text == "0":
        return 0
    pos, total = 0, 0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m:
            raise InvalidArgument(f'time: invalid duration "{text}" for {what}')
        total += int(float(m.group(1)) * _UNITS[m.group(2)])
        pos = m.end()
    if not text:
        raise InvalidArgument(f'time: invalid duration "" for {what}')
    return total


def _go_quote(items: list[str]) -> str:
    """Go's ``%q`` of a string slice: ``["sh" "-c" "x"]``."""
    return "[" + " ".join(json.dumps(i, ensure_ascii=False) for i in items) + "]"


def _go_duration(ns: int) -> str:
    if ns == 0:
        return "0s"
    seconds = ns / 1e9
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + f"{secs:g}s"


class Build:
    """One build over the engine: its context directory, Dockerfile and options."""

    def __init__(self, engine: Any, workdir: str, dockerfile: Dockerfile,
                 options: BuildOptions) -> None:
        self.engine = engine
        self.workdir = workdir
        self.layer_owner = f"build:{os.path.basename(workdir)}"   # holds the layers it stores
        self.context = os.path.join(workdir, "context")
        self.dockerfile = dockerfile
        self.options = options
        self.lex = ShellLex(dockerfile.escape)
        self.stages: list[Stage] = []
        self.meta_args: dict[str, str | None] = {}
        self.used_args: set[str] = set()
        self.emit: Emit = lambda _: None
        self.step = 0
        self.total = 0
        self._cache_sources: set[str] | None = None
        self._meta: list[Instruction] = []
        self._stages: list[tuple[Instruction, list[Instruction]]] = []
        self._prepare()

    # -- planning ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Split into stages, find the target, count the steps (before any output)."""
        meta: list[Instruction] = []
        stages: list[tuple[Instruction, list[Instruction]]] = []
        for inst in self.dockerfile.instructions:
            if inst.cmd == "FROM":
                stages.append((inst, []))
            elif not stages:
                meta.append(inst)
            else:
                stages[-1][1].append(inst)
        if self.options.target:
            names = [self._stage_name(s[0]) for s in stages]
            if self.options.target.lower() not in names:
                raise InvalidArgument(f"failed to reach build target {self.options.target} in "
                                      "Dockerfile")
            stages = stages[:names.index(self.options.target.lower()) + 1]
        if self.options.labels:
            parts = " ".join(f"{json.dumps(k)}={json.dumps(v)}"
                             for k, v in sorted(self.options.labels.items()))
            # json=True marks values taken literally, never expanded
            label = Instruction("LABEL", stages[-1][0].line, f"LABEL {parts}",
                                [x for kv in sorted(self.options.labels.items()) for x in kv],
                                json=True)
            stages[-1][1].append(label)
        self._meta = meta
        self._stages = stages
        self.total = len(meta) + sum(1 + len(body) for _, body in stages)
        for name, value in self.options.buildargs.items():
            if not name:
                raise InvalidArgument("build args need a name")

    @staticmethod
    def _stage_name(inst: Instruction) -> str:
        return inst.value[2].lower() if len(inst.value) == 3 else ""

    # -- running -------------------------------------------------------------------------------

    async def run(self, emit: Emit) -> str:
        """Build; returns the final image id. Failures raise BuildFailed / SiloboxError."""
        self.emit = emit
        for inst in self._meta:
            self._step(inst)
            self._meta_arg(inst)
        for from_inst, body in self._stages:
            stage = await self._from(from_inst)
            for inst in body:
                self._step(inst)
                try:
                    await self._dispatch(stage, inst)
                except ExpansionError as e:   # a word that cannot be expanded: name the line
                    raise line_error(inst.line, e.message) from e
        final = self.stages[-1]
        if not final.image_id:
            raise BuildFailed("No image was generated. Is your Dockerfile empty?")
        unused = sorted(k for k in self.options.buildargs
                        if k not in self.used_args and k not in PROXY_ARGS)
        if unused:
            self._out(f"[Warning] One or more build-args [{' '.join(unused)}] were not "
                      "consumed\n")
        image = self.engine.images.get(final.image_id)
        self.emit({"aux": {"ID": image.id}})
        self._out(f"Successfully built {image.short_id}\n")
        for tag in self.options.tags:
            self.engine.tag_built_image(image, tag)
            self._out(f"Successfully tagged {_familiar(tag)}\n")
        if self.options.quiet:
            self.emit({"stream": image.id + "\n"})
        return image.id

    def _out(self, text: str) -> None:
        if not self.options.quiet:
            self.emit({"stream": text})

    def _step(self, inst: Instruction) -> None:
        self.step += 1
        self._out(f"Step {self.step}/{self.total} : {inst.original}\n")

    def _env(self, stage: Stage | None) -> dict[str, str]:
        """What ``$VAR`` expands to: the stage's ARGs with values, overridden by its ENV."""
        out: dict[str, str] = {}
        if stage is None:
            out.update({k: v for k, v in self.meta_args.items() if v is not None})
            return out
        out.update({k: v for k, v in stage.args.items() if v is not None})
        for item in stage.config.get("Env") or []:
            key, _, value = item.partition("=")
            out[key] = value
        return out

    def _word(self, stage: Stage | None, word: str, inst: Instruction) -> str:
        try:
            return self.lex.process_word(word, self._env(stage))
        except InvalidArgument as e:
            raise line_error(inst.line, e.message) from e

    def _meta_arg(self, inst: Instruction) -> None:
        if inst.cmd != "ARG":
            raise line_error(inst.line, "no build stage in current context")
        name, value = self._arg_decl(None, inst)
        self.meta_args[name] = value

    def _arg_decl(self, stage: Stage | None, inst: Instruction) -> tuple[str, str | None]:
        name, eq, default = inst.value[0].partition("=")
        if not name:
            raise line_error(inst.line, "ARG names can not be blank")
        value: str | None = self._word(stage, default, inst) if eq else None
        if name in self.options.buildargs:
            value = self.options.buildargs[name]
            self.used_args.add(name)
        elif stage is not None and value is None and name in self.meta_args:
            value = self.meta_args[name]
        return name, value

    # -- FROM ----------------------------------------------------------------------------------

    async def _from(self, inst: Instruction) -> Stage:
        self._step(inst)
        base = self._word(None, inst.value[0], inst)
        platform = inst.flag("platform")
        if platform:
            platform = self._word(None, platform, inst)
            from silobox.engine.spec import runs_here
            if not runs_here(platform):
                raise line_error(inst.line, f'image platform "{platform}" cannot be used on '
                                            "this host")
        stage = Stage(index=len(self.stages), name=self._stage_name(inst))
        previous = {s.name: s for s in self.stages if s.name}
        if base.lower() in previous:
            src = previous[base.lower()]
            if src.image_id:
                self._load_image(stage, src.image_id)
            else:
                stage.doc = json.loads(json.dumps(src.doc))
        elif base == "scratch":
            stage.doc = {"architecture": _arch(), "os": "linux", "config": {}}
        else:
            image = await self._image(base, self.options.pull)
            self._load_image(stage, image.id)
        env = stage.config.get("Env") or []
        if not any(e.startswith("PATH=") for e in env):
            stage.config["Env"] = [*env, DEFAULT_PATH]
        self.stages.append(stage)
        if stage.image_id:
            self._out(f" ---> {stage.image_id.removeprefix('sha256:')[:12]}\n")
        triggers = list(stage.config.get("OnBuild") or [])
        if triggers:
            stage.config["OnBuild"] = None
            self._out(f"# Executing {len(triggers)} build trigger"
                      f"{'s' if len(triggers) > 1 else ''}\n")
            for text in triggers:
                parsed = parse(f"FROM scratch\n{text}\n").instructions[1]
                parsed.line = inst.line
                await self._dispatch(stage, parsed)
        return stage

    async def _image(self, name: str, pull: bool) -> Any:
        """An image named by FROM or COPY --from: the local one, pulled first when ``pull``
        or when it is not here (dockerd's classic builder does the same), the pull's
        progress going into the build's stream."""
        can_pull = self.engine.distribution is not None
        if pull and can_pull:
            await self._pull(name)
        try:
            return await self.engine.image_service.image_for_create(name)
        except NotFound as missing:
            if not can_pull or pull:
                raise BuildFailed(missing.message) from missing
        await self._pull(name)
        try:
            return self.engine.images.resolve(name)
        except NotFound as e:
            raise BuildFailed(e.message) from e

    async def _pull(self, name: str) -> None:
        def progress(msg: dict[str, Any]) -> None:
            if not self.options.quiet:
                self.emit(msg)
        try:
            final = await self.engine.distribution.image_pull(name, auth_header=self._auth_for(name),
                                                 progress=progress)
        except SiloboxError as e:
            raise BuildFailed(f"pulling {name}: {e.message}") from e
        for msg in final:
            progress(msg)

    def _auth_for(self, name: str) -> str | None:
        """The ``X-Registry-Auth`` form of the X-Registry-Config entry for ``name``'s
        registry; a header that does not decode is ignored, as dockerd ignores it."""
        import base64
        from silobox.storage import reference
        from silobox.storage.distribution.registry import registry_domain
        raw = self.options.registry_config.strip()
        if not raw:
            return None
        try:
            configs = jsonlimits.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            domain = reference.parse(name).domain
        except (ValueError, InvalidArgument):
            return None
        if not isinstance(configs, dict):
            return None
        for server, entry in configs.items():
            if isinstance(entry, dict) and registry_domain(str(server)) == domain:
                return base64.urlsafe_b64encode(json.dumps(entry).encode()).decode()
        return None

    def _load_image(self, stage: Stage, image_id: str) -> None:
        image = self.engine.images.get(image_id)
        stage.image_id = image.id
        stage.doc = json.loads(json.dumps(image.config))
        stage.doc.setdefault("config", {})
        stage.diff_ids = list(image.diff_ids)

    # -- dispatch ------------------------------------------------------------------------------

    async def _dispatch(self, stage: Stage, inst: Instruction) -> None:
        cmd = inst.cmd
        cfg = stage.config
        if cmd == "RUN":
            await self._run(stage, inst)
        elif cmd in ("COPY", "ADD"):
            await self._copy(stage, inst)
        elif cmd == "WORKDIR":
            await self._workdir(stage, inst)
        elif cmd == "ENV":
            env = self._env(stage)
            pairs = [(self.lex.process_word(inst.value[i], env),
                      self.lex.process_word(inst.value[i + 1], env))
                     for i in range(0, len(inst.value), 2)]
            items = list(cfg.get("Env") or [])
            for key, value in pairs:
                if not key:
                    raise line_error(inst.line, "ENV names can not be blank")
                items = [e for e in items if e.partition("=")[0] != key] + [f"{key}={value}"]
            cfg["Env"] = items
            await self._commit_config(stage, "ENV " + " ".join(f"{k}={v}" for k, v in pairs),
                                      inst)
        elif cmd == "LABEL":
            env = self._env(stage)
            labels = dict(cfg.get("Labels") or {})
            shown = []
            for i in range(0, len(inst.value), 2):
                key, value = inst.value[i], inst.value[i + 1]
                if not inst.json:
                    key, value = self.lex.process_word(key, env), self.lex.process_word(value, env)
                if not key:
                    raise line_error(inst.line, "LABEL names can not be blank")
                labels[key] = value
                shown.append(f"{key}={value}")
            cfg["Labels"] = labels
            await self._commit_config(stage, "LABEL " + " ".join(shown), inst)
        elif cmd == "MAINTAINER":
            stage.doc["author"] = " ".join(inst.value)
            await self._commit_config(stage, "MAINTAINER " + stage.doc["author"], inst)
        elif cmd == "ARG":
            name, value = self._arg_decl(stage, inst)
            stage.args[name] = value
            # the history shows the Dockerfile's default, never a --build-arg value
            shown = inst.value[0] if "=" in inst.value[0] else name
            await self._commit_config(stage, f"ARG {shown}", inst)
        elif cmd in ("CMD", "ENTRYPOINT"):
            argv = self._command(stage, inst)
            key = "Cmd" if cmd == "CMD" else "Entrypoint"
            cfg[key] = argv
            if cmd == "CMD":
                stage.cmd_set = True
            elif not stage.cmd_set:
                cfg["Cmd"] = None
            await self._commit_config(stage, f"{cmd} {_go_quote(argv)}", inst)
        elif cmd == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            env = self._env(stage)
            words = [w for raw in inst.value for w in self.lex.process_words(raw, env)]
            for word in words:
                for port in _ports(word, inst):
                    ports[port] = {}
            cfg["ExposedPorts"] = ports
            await self._commit_config(stage, "EXPOSE " + " ".join(words), inst)
        elif cmd == "VOLUME":
            env = self._env(stage)
            paths = [self.lex.process_word(v, env) for v in inst.value] if inst.json else \
                [w for v in inst.value for w in self.lex.process_words(v, env)]
            volumes = dict(cfg.get("Volumes") or {})
            for path in paths:
                if not path.strip():
                    raise line_error(inst.line, "VOLUME specified can not be an empty string")
                volumes[path] = {}
            cfg["Volumes"] = volumes
            await self._commit_config(stage, f"VOLUME [{' '.join(paths)}]", inst)
        elif cmd == "USER":
            cfg["User"] = self._word(stage, inst.value[0], inst)
            await self._commit_config(stage, f"USER {cfg['User']}", inst)
        elif cmd == "STOPSIGNAL":
            signal = self._word(stage, inst.value[0], inst)
            from silobox.engine.spec import parse_signal
            try:
                parse_signal(signal)
            except InvalidArgument as e:
                raise line_error(inst.line, e.message) from e
            cfg["StopSignal"] = signal
            await self._commit_config(stage, f"STOPSIGNAL {signal}", inst)
        elif cmd == "SHELL":
            cfg["Shell"] = list(inst.value)
            await self._commit_config(stage, f"SHELL [{' '.join(inst.value)}]", inst)
        elif cmd == "HEALTHCHECK":
            cfg["Healthcheck"] = self._healthcheck(stage, inst)
            hc = cfg["Healthcheck"]
            shown = (f"HEALTHCHECK &{{{_go_quote(hc['Test'])} "
                     f"\"{_go_duration(hc.get('Interval', 0))}\" "
                     f"\"{_go_duration(hc.get('Timeout', 0))}\" "
                     f"\"{_go_duration(hc.get('StartPeriod', 0))}\" "
                     f"\"{_go_duration(hc.get('StartInterval', 0))}\" "
                     f"'\\x{hc.get('Retries', 0):02x}'}}")
            await self._commit_config(stage, shown, inst)
        elif cmd == "ONBUILD":
            assert inst.trigger is not None
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), inst.trigger.original]
            await self._commit_config(stage, f"ONBUILD {inst.trigger.original}", inst)
        elif cmd == "FROM":
            raise line_error(inst.line, "FROM is not allowed here")
        else:   # pragma: no cover - the parser admits only the instructions above
            raise line_error(inst.line, f"unknown instruction: {cmd}")

    def _command(self, stage: Stage, inst: Instruction) -> list[str]:
        if inst.json:
            return list(inst.value)
        text = " ".join(inst.value)
        return [*stage.shell, text]

    def _healthcheck(self, stage: Stage, inst: Instruction) -> dict[str, Any]:
        if inst.value[0].upper() == "NONE":
            return {"Test": ["NONE"]}
        hc: dict[str, Any] = {}
        names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                 "start-interval": "StartInterval"}
        for flag, key in names.items():
            if inst.flag(flag) is not None:
                ns = parse_duration(inst.flags[flag], f"--{flag}")
                if ns and ns < 10**6:
                    raise line_error(inst.line, f"{key} \"{inst.flags[flag]}\" cannot be less "
                                                "than 1ms")
                hc[key] = ns
        if inst.flag("retries") is not None:
            try:
                hc["Retries"] = int(inst.flags["retries"])
            except ValueError as e:
                raise line_error(inst.line, f"invalid --retries: {inst.flags['retries']}") from e
            if hc["Retries"] < 0:
                raise line_error(inst.line, "--retries cannot be negative")
        rest = inst.value[1:]
        if inst.json:
            hc["Test"] = ["CMD", *rest]
        else:
            hc["Test"] = ["CMD-SHELL", " ".join(rest)]
        return hc

    # -- committing ----------------------------------------------------------------------------

    def _cache_key(self, stage: Stage, created_by: str, extra: str = "") -> str:
        doc = {"parent": stage.image_id, "created_by": created_by, "config": stage.config,
               "author": stage.doc.get("author", ""), "extra": extra, "layers": stage.diff_ids}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _use_cache(self, stage: Stage, key: str) -> bool:
        if self.options.nocache:
            return False
        image_id = self.engine.cache.lookup(key)
        if image_id is None or not self._from_cache_sources(image_id):
            return False
        self._load_image(stage, image_id)
        self._out(" ---> Using cache\n")
        self._out(f" ---> {image_id.removeprefix('sha256:')[:12]}\n")
        return True

    def _from_cache_sources(self, image_id: str) -> bool:
        """With ``cachefrom`` only those images and the steps they were built from are a cache
        (moby's classic builder); a name that is not here adds nothing."""
        if not self.options.cache_from:
            return True
        if self._cache_sources is None:
            sources: set[str] = set()
            for ref in self.options.cache_from:
                try:
                    current = self.engine.images.resolve(ref).id
                except SiloboxError:
                    continue
                while current and current not in sources:
                    sources.add(current)
                    current = self.engine.cache.parent(current)
            self._cache_sources = sources
        return image_id in self._cache_sources

    async def _commit_config(self, stage: Stage, comment: str, inst: Instruction | None) -> None:
        """A metadata-only step: a new image with the changed config and an empty layer."""
        nop = [*stage.shell, "#(nop) ", comment]
        created_by = " ".join(nop) if comment else ""
        key = self._cache_key(stage, created_by)
        if inst is not None and self._use_cache(stage, key):
            return
        self._store(stage, created_by, None, key, empty=True,
                    container_config={**stage.config, "Cmd": nop})

    def _store(self, stage: Stage, created_by: str, layer: str | None, key: str, *,
               empty: bool, container: str = "", container_config: dict | None = None,
               announce: bool = True) -> None:
        from silobox.storage.images import now_rfc3339
        now = now_rfc3339()
        doc = {k: v for k, v in stage.doc.items() if k not in ("rootfs", "id", "parent",
                                                                 "container", "comment")}
        history = list(doc.get("history") or [])
        if created_by:
            entry: dict[str, Any] = {"created": now, "created_by": created_by}
            if empty:
                entry["empty_layer"] = True
            if doc.get("author"):
                entry["author"] = doc["author"]
            history.append(entry)
        diff_ids = [*stage.diff_ids, layer] if layer else list(stage.diff_ids)
        # as in dockerd, a built image's Config.Image names the image it was built on
        doc.update({"created": now, "history": history,
                    "config": {**stage.config, "Image": stage.image_id},
                    "container_config": {**(container_config or stage.config),
                                         "Image": stage.image_id}})
        if container:
            doc["container"] = container
        doc.setdefault("architecture", _arch())
        doc.setdefault("os", "linux")
        image = self.engine.images.create(doc, diff_ids)
        parent = stage.image_id
        self.engine.cache.record(key, image.id, parent)
        self._load_image(stage, image.id)
        if announce:
            self._out(f" ---> {image.short_id}\n")

    # -- RUN -----------------------------------------------------------------------------------

    async def _run(self, stage: Stage, inst: Instruction) -> None:
        argv = list(inst.value) if inst.json else [*stage.shell, " ".join(inst.value)]
        env_cfg = {e.partition("=")[0] for e in stage.config.get("Env") or []}
        build_env = sorted(f"{k}={v}" for k, v in stage.args.items()
                           if v is not None and k not in env_cfg)
        proxies = [f"{k}={v}" for k, v in self.options.buildargs.items()
                   if k in PROXY_ARGS and v is not None and k not in stage.args]
        history_cmd = ([f"|{len(build_env)}", *build_env] if build_env else []) + argv
        created_by = " ".join(history_cmd)
        key = self._cache_key(stage, created_by)
        if self._use_cache(stage, key):
            return
        if not stage.image_id:
            await self._commit_config(stage, "", None)
        body: dict[str, Any] = {
            "Image": stage.image_id, "Cmd": argv, "Entrypoint": [""],
            "Env": [*(stage.config.get("Env") or []), *build_env, *proxies],
            "WorkingDir": stage.config.get("WorkingDir") or "",
            "User": stage.config.get("User") or "",
            "AttachStdout": True, "AttachStderr": True, "Labels": {},
            "HostConfig": {**self.options.host_config,
                           "NetworkMode": self.options.networkmode or "default"},
        }
        created = await self.engine.containers.container_create(None, body)
        cid = created["Id"]
        ok = False
        try:
            self._out(f" ---> Running in {cid[:12]}\n")
            await self.engine.containers.container_start(cid)
            _tty, lines = await self.engine.containers.container_logs(cid, follow=True)
            async for fd, data in lines:
                text = data.decode("utf-8", "replace")
                # dockerd's classic builder shows a RUN's stderr in red (streamformatter)
                self._out(f"\x1b[91m{text}\x1b[0m" if fd == 2 else text)
            status = await self.engine.containers.container_wait(cid)
            code = status["StatusCode"]
            if code != 0:
                raise BuildFailed(f"The command '{' '.join(argv)}' returned a non-zero code: "
                                  f"{code}", code=code)
            c = self.engine.store.find(cid)
            container_config = {**stage.config, "Cmd": history_cmd}
            layer, empty = await self.engine.build_commit_layer(c, stage.diff_ids,
                                                                 self.layer_owner)
            self._store(stage, created_by, None if empty else layer, key, empty=empty,
                        container=cid, container_config=container_config, announce=False)
            ok = True
        except asyncio.CancelledError:
            # the client went away: stop and remove the container, as dockerd does
            await asyncio.shield(self._remove(cid, announce=False))
            raise
        finally:
            if (ok and self.options.rm) or self.options.forcerm:
                await asyncio.shield(self._remove(cid, announce=ok))
        self._out(f" ---> {stage.image_id.removeprefix('sha256:')[:12]}\n")

    async def _remove(self, cid: str, announce: bool) -> None:
        try:
            await self.engine.containers.container_remove(cid, force=True)
        except NotFound:
            return
        if announce:
            self._out(f"Removing intermediate container {cid[:12]}\n")

    # -- COPY / ADD ----------------------------------------------------------------------------

    async def _copy(self, stage: Stage, inst: Instruction) -> None:
        env = self._env(stage)
        words = [self._word(stage, v, inst) for v in inst.value]
        sources, dest = words[:-1], words[-1]
        source_from = inst.flag("from")
        if source_from is not None and inst.cmd == "ADD":
            raise line_error(inst.line, "ADD does not support --from")
        image_view = self._view(stage.diff_ids)
        uid, gid = 0, 0
        if inst.flag("chown"):
            uid, gid = _chown(self.lex.process_word(inst.flags["chown"], env), image_view,
                              inst)
        chmod = None
        if inst.flag("chmod"):
            try:
                chmod = int(inst.flags["chmod"], 8)
            except ValueError as e:
                raise line_error(inst.line, f"invalid chmod parameter: {inst.flags['chmod']}"
                                 ) from e
        if source_from is not None:
            root = ctx.SourceRoot(view=self._view(await self._from_source(source_from, inst)))
        else:
            root = ctx.SourceRoot(context=self.context)
        loop = asyncio.get_running_loop()
        try:
            if inst.cmd != "ADD" or not any(remote.is_url(s) for s in sources):
                await self._copy_planned(stage, inst, sources, dest, root, image_view, uid,
                                         gid, chmod, source_from, "")
                return
            fetched = tempfile.mkdtemp(prefix="remote-", dir=self.workdir)
            try:   # the downloads live until the layer is written, then go
                await self._copy_planned(stage, inst, sources, dest, root, image_view, uid,
                                         gid, chmod, source_from, fetched)
            finally:
                await loop.run_in_executor(None, shutil.rmtree, fetched, True)
        finally:
            root.close()

    async def _download(self, sources: list[str], into: str) -> dict[str, remote.Download]:
        """ADD's URL sources, fetched every time (the cache is keyed by their content), each
        in its own directory so two URLs with the same file name do not collide."""
        found: dict[str, remote.Download] = {}
        for i, src in enumerate(s for s in sources if remote.is_url(s)):
            if src in found:
                continue
            where = os.path.join(into, str(i))
            os.mkdir(where, 0o700)
            found[src] = await remote.download(
                src, where, loopback_only=self.engine.config.registry_loopback_only,
                progress=self._download_progress)
            self._out("\n")   # moby ends the progress line the same way
        return found

    def _download_progress(self, current: int, total: int | None) -> None:
        """moby's ``ProgressReader(..., "Downloading")``: the docker CLI draws the bar."""
        if not self.options.quiet:
            detail = {"current": current, **({"total": total} if total else {})}
            self.emit({"status": "Downloading", "progressDetail": detail})

    async def _copy_planned(self, stage: Stage, inst: Instruction, sources: list[str], dest: str,
                            root: ctx.SourceRoot, image_view: MergedView, uid: int, gid: int,
                            chmod: int | None, source_from: str | None, fetched: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            downloads = await self._download(sources, fetched) if fetched else {}
            plan = await loop.run_in_executor(
                None, ctx.plan_copy, inst.cmd, sources, dest, root, image_view, uid, gid, chmod,
                stage.config.get("WorkingDir") or "/", downloads)
        except SiloboxError as e:
            raise BuildFailed(e.message) from e
        dest_shown = dest
        nop = [*stage.shell, f"#(nop) {inst.cmd} {plan.kind}:{plan.digest} in {dest_shown} "]
        created_by = " ".join(nop)
        key = self._cache_key(stage, created_by, extra=source_from or "")
        if self._use_cache(stage, key):
            return
        layer = await self.engine.build_layer_from_tar(
            ctx.copy_layer_tar(plan, image_view, uid, gid, chmod), stage.diff_ids,
            self.layer_owner)
        self._store(stage, created_by, layer, key, empty=False,
                    container_config={**stage.config, "Cmd": nop})

    async def _from_source(self, name: str, inst: Instruction) -> list[str]:
        """The layers of ``COPY --from``: a previous stage (by name or index) or an image."""
        done = self.stages[:-1]   # the last one is the stage being built
        for s in done:
            if s.name and s.name == name.lower():
                return s.diff_ids
        if name.lower() == self.stages[-1].name or \
                any(self._stage_name(f) == name.lower() for f, _ in self._stages):
            raise line_error(inst.line, f"invalid from flag value {name}: refers to current or "
                                        "future build stage")
        if name.isdigit():
            index = int(name)
            if index >= len(done):
                raise line_error(inst.line, f"invalid from flag value {name}: refers to current "
                                            "or future build stage")
            return done[index].diff_ids
        try:
            image = await self._image(name, False)
        except BuildFailed as e:
            raise BuildFailed(f"invalid from flag value {name}: {e.message}") from e
        return image.diff_ids

    def _view(self, diff_ids: list[str]) -> MergedView:
        layers = [self.engine.layers.get(d).path for d in reversed(diff_ids)]
        return MergedView(layers)

    # -- WORKDIR -------------------------------------------------------------------------------

    async def _workdir(self, stage: Stage, inst: Instruction) -> None:
        path = self._word(stage, inst.value[0], inst)
        current = stage.config.get("WorkingDir") or "/"
        path = os.path.normpath(os.path.join(current, path))
        stage.config["WorkingDir"] = path
        created_by = " ".join([*stage.shell, "#(nop) ", f"WORKDIR {path}"])
        key = self._cache_key(stage, created_by)
        if self._use_cache(stage, key):
            return
        view = self._view(stage.diff_ids)
        rel = view.resolve(path.lstrip("/"))
        if not rel or view.lstat(rel) is not None:
            self._store(stage, created_by, None, key, empty=True)
            return
        layer = await self.engine.build_layer_from_tar(_mkdir_tar(rel, view), stage.diff_ids,
                                                       self.layer_owner)
        self._store(stage, created_by, layer, key, empty=False)


def _mkdir_tar(rel: str, view: MergedView) -> Any:
    """A layer holding directory ``rel`` (and its missing parents), owned by root, 0755."""
    import tarfile
    import time
    from silobox.storage.changes import TarWriter
    writer = TarWriter()
    parts = rel.split("/")
    now = int(time.time())
    for i in range(1, len(parts) + 1):
        name = "/".join(parts[:i])
        found = view.lstat(name)
        if found is not None:
            info, _ = writer.header(name, found[1], found[0], xattrs=False)
        else:
            info = tarfile.TarInfo(name + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
            info.uname = info.gname = ""
        yield writer.entry(info)
    yield writer.end()


def _familiar(tag: str) -> str:
    from silobox.storage import reference
    return reference.parse_tagged(tag).with_default_tag().familiar()


def _arch() -> str:
    from silobox.storage.images import host_architecture
    return host_architecture()


def _ports(word: str, inst: Instruction) -> list[str]:
    """``80``, ``80/udp``, ``8000-8002/tcp`` → Docker's ``port/proto`` keys."""
    port, _, proto = word.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise line_error(inst.line, f"invalid proto: {proto}")
    low, dash, high = port.partition("-")
    try:
        start = int(low)
        end = int(high) if dash else start
    except ValueError as e:
        raise line_error(inst.line, f"invalid containerPort: {port}") from e
    if not (0 < start <= end <= 65535):
        raise line_error(inst.line, f"invalid containerPort: {port}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]


def _chown(spec: str, view: MergedView, inst: Instruction) -> tuple[int, int]:
    """``--chown=user[:group]`` with names looked up in the image's passwd and group files;
    a user alone also gives the group (Docker's rule)."""
    from silobox.kernel.sandbox import user as userdb

    def table(path: str, passwd: bool) -> list[Any]:
        found = view.lstat(view.resolve(path))
        if found is None:
            return []
        try:
            with open(found[0], errors="replace") as f:
                return userdb._parse(f.read(), passwd=passwd)
        except OSError:
            return []

    user, _, group = spec.partition(":")
    if user.isdigit():
        uid = int(user)
        gid = uid
    else:
        match = [e for e in table("etc/passwd", True) if e.name == user]
        if not match:
            raise line_error(inst.line, f"unable to convert uid/gid chown string to host "
                                        f"mapping: can't find uid for user {user}: no such user: "
                                        f"{user}")
        uid = match[0].id
        same = [e for e in table("etc/group", False) if e.name == user]
        gid = same[0].id if same else match[0].gid
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            match = [e for e in table("etc/group", False) if e.name == group]
            if not match:
                raise line_error(inst.line, f"unable to convert uid/gid chown string to host "
                                            f"mapping: can't find gid for group {group}: no "
                                            f"such group: {group}")
            gid = match[0].id
    return uid, gid


async def prepare_build(engine: Any, body: Any, options: BuildOptions, workdir: str) -> Build:
    """Unpack the context into ``workdir`` and parse the Dockerfile: everything that can fail
    before the first progress message (these failures keep their HTTP status)."""
    loop = asyncio.get_running_loop()
    context_dir = os.path.join(workdir, "context")
    os.mkdir(context_dir, 0o700)
    await loop.run_in_executor(None, ctx.extract_context, body, context_dir)
    name = options.dockerfile or "Dockerfile"
    text = ctx.read_context_file(context_dir, name, 4 << 20)
    if text is None:
        raise InvalidArgument(f"Cannot locate specified Dockerfile: {name}")
    text = text.removeprefix("\ufeff")
    dockerfile = parse(text, name)
    await loop.run_in_executor(None, ctx.apply_dockerignore, context_dir)
    return Build(engine, workdir, dockerfile, options)


def new_workdir(root: str) -> str:
    base = os.path.join(root, "build")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return tempfile.mkdtemp(prefix="ctx-", dir=base)


def remove_workdir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["Build", "BuildFailed", "BuildOptions", "DockerfileError", "prepare_build",
           "new_workdir", "remove_workdir"]
