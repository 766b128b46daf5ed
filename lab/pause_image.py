"""The sandbox ("pause") image, built locally since no image registry can be reached: an
OCI image layout, as a tar that ``ctr images import`` takes, with one layer holding the
static busybox of Debian's ``busybox-static``, whose process only waits.

    build_pause_image() -> Path      # build/pause-image.tar, rebuilt when busybox changes

The tar is deterministic (fixed owners and times), so a rebuild gives the same digests.
Its name, ``PAUSE_IMAGE``, is set as each lab containerd's ``sandbox_image``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PAUSE_IMAGE = "underlay.test/pause:1"
OUT = Path(__file__).resolve().parents[1] / "build" / "pause-image.tar"
# PID 1 of the sandbox: waits until the runtime kills it (PID 1 ignores SIGTERM, so the
# runtime's SIGKILL on StopPodSandbox is what ends it, as with the kubelet's pause image)
ENTRYPOINT = ["/bin/busybox", "sleep", "2147483647"]
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _tar_bytes(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """A tar of (name, content or None for a directory, mode) with fixed metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = mode, 0, 0, 0
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def build_pause_image(out: Path = OUT) -> Path:
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    busybox = BUSYBOX.read_bytes()
    layer = _tar_bytes([("bin", None, 0o755), ("bin/busybox", busybox, 0o755),
                        ("tmp", None, 0o1777)])
    layer_digest, layer_size = _blob(layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ENTRYPOINT, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }, sort_keys=True).encode()
    config_digest, config_size = _blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }, sort_keys=True).encode()
    manifest_digest, manifest_size = _blob(manifest)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MEDIA_MANIFEST, "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": PAUSE_IMAGE,
                        "org.opencontainers.image.ref.name": PAUSE_IMAGE.rsplit(":", 1)[1]},
    }]}, sort_keys=True).encode()
    blobs = [(f"blobs/sha256/{d.split(':')[1]}", data, 0o644)
             for d, data in ((layer_digest, layer), (config_digest, config),
                             (manifest_digest, manifest))]
    image = _tar_bytes([("oci-layout", b'{"imageLayoutVersion": "1.0.0"}', 0o644),
                        ("index.json", index, 0o644), ("blobs", None, 0o755),
                        ("blobs/sha256", None, 0o755), *blobs])
    if out.exists() and out.read_bytes() == image:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_bytes(image)
    os.replace(tmp, out)
    return out
