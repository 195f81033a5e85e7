"""The site image: what a version is, which Dockerfile builds it, and building it once per version."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from lab import labels
from lab.progress import ProgressFn
from lab.spec import DEFAULT_SITE

if TYPE_CHECKING:
    from lab.engine import ImageEngine

SITE_REPOSITORY = "lab/site"


def site_dockerfile(site: Path) -> Path:
    """A site may bring its own Dockerfile; otherwise the bundled one is used."""
    own = site / "Dockerfile"
    return own if own.is_file() else DEFAULT_SITE / "Dockerfile"


def site_version(site: Path, base_image_id: str) -> str:
    """A short hash of everything that goes into the image: it changes exactly when the image would."""
    digest = hashlib.sha256(base_image_id.encode() + b"\0")
    dockerfile = site_dockerfile(site)
    digest.update(dockerfile.read_bytes() + b"\0")
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(site)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def site_image_tag(version: str) -> str:
    """Images are named by content, so labs with the same site share one image."""
    return f"{SITE_REPOSITORY}:{version}"


def ensure_site_image(
    engine: ImageEngine,
    site: Path,
    httpd_image: str,
    progress: ProgressFn,
    *,
    version_name: str | None = None,
) -> tuple[str, str]:
    """Build the site on top of `httpd_image` unless that exact version exists; return (tag, version)."""
    version = version_name or site_version(site, engine.image_id(httpd_image))
    tag = site_image_tag(version)
    if engine.image_exists(tag):
        progress(f"site image {tag} is up to date", 1.0)
        return tag, version
    progress(f"building site image {tag}", 0.0)

    engine.build_image(
        site,
        tag,
        dockerfile=site_dockerfile(site),
        buildargs={"HTTPD_IMAGE": httpd_image, "SITE_VERSION": version},
        labels={
            labels.ROLE: labels.ROLE_SITE_IMAGE,
            labels.SITE_VERSION: version,
            "org.opencontainers.image.title": "lab site",
            "org.opencontainers.image.description": f"Static site from {site}, served by the lab's httpd replicas",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.base.name": httpd_image,
        },
        on_step=lambda fraction, step: progress(f"building site image {tag}: {step}", fraction),
    )
    progress(f"built site image {tag}", 1.0)
    return tag, version
