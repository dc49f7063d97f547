"""Storage: the Linux counterpart of windowsfilter, wclayer and the container's sandbox.vhdx.

One module per concern: ``db`` (the daemon's SQLite store), ``layers`` (content-addressed
read-only layers), ``images`` (image configs and tags), ``reference`` (image name parsing),
``sandbox`` (each container's writable layer), ``sandboxes`` (all of them: options, the pool,
activation around a run), ``attach`` (a stopped container's sandbox mounted on the host),
``sweep`` (what a killed daemon left), ``disk`` (sandbox disks: sparse ext4 images on loop
devices, the pre-formatted pool), ``volumes`` (named volumes, local driver), ``mounts`` (a
create body's mounts checked and planned), ``builtin``
(the offline busybox image), ``archive`` (docker-archive and OCI layout, both ways) and
``changes`` (a container's changes and trees as tars: commit, export, diff, cp).
"""

from silobox.storage.db import Database
from silobox.storage.images import Image, ImageStore
from silobox.storage.layers import Layer, LayerStore, chain_ids
from silobox.storage.reference import Reference, parse as parse_reference
from silobox.storage.sandbox import Sandbox, SandboxPaths

__all__ = ["Database", "Image", "ImageStore", "Layer", "LayerStore", "Reference", "Sandbox",
           "SandboxPaths", "chain_ids", "parse_reference"]
