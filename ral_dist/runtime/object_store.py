"""A run directory given as a URL: a local path, a ``file://`` URL of one, or an fsspec URL of an object store
(``s3://``, ``gs://``, ...), mirrored.

A mirrored run is written to a local staging directory named by the URL (``$RAL_DIST_CACHE/staging/<scheme>/<path>``
on the node of the process that writes) and each process uploads what it produced: the driver its files
(`ral_dist.runtime.run_dir.RunDir`), each learner rank its own part of a checkpoint
(`ral_dist.actors.learner_weights`). Object stores have no rename and no append, which is why: DeepSpeed and the
appended metrics need a file system, and a checkpoint is committed by a marker written last
(`ral_dist.runtime.remote_checkpoints`). The backend's credentials and endpoint come from its usual environment
(``AWS_*`` / ``AWS_ENDPOINT_URL`` for s3fs, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs, ``FSSPEC_<SCHEME>_<KWARG>``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ral_dist.config import ConfigError
from ral_dist.paths import cache_dir

# The pip package of a backend fsspec names in its registry but does not ship, for the error message.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "az": "adlfs"}


@dataclass(frozen=True)
class RunLocation:
    """Where a run is written: ``path`` is local (the run directory itself, or the staging copy of ``url``)."""

    path: Path
    url: str | None = None  # the object-store URL a mirrored run uploads to; None for a local run directory


def run_location(value: str | Path, flag: str = "--run-dir") -> RunLocation:
    """Parse ``value`` (of ``flag``, named in every error): a path, a ``file://`` URL (a local path on every node),
    or an fsspec URL whose backend is installed (then mirrored through a staging directory)."""
    text = str(value)
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme:
        return RunLocation(Path(text))
    if scheme == "file":
        host, _, path = rest.partition("/")
        if host not in ("", "localhost"):
            raise ConfigError(f"{flag} {text}: a file:// URL names a path on every node, not on host {host!r}")
        return RunLocation(Path("/" + path))
    check_backend(scheme, f"{flag} {text}")
    url = text.rstrip("/")
    parts = [p for p in url.partition("://")[2].split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ConfigError(f"{flag} {text}: name a bucket and a path in it ({scheme}://BUCKET/RUN)")
    return RunLocation(cache_dir("staging", scheme, *parts), url)


def check_backend(scheme: str, what: str) -> None:
    """Fail naming ``what`` and the package to install when fsspec has no importable backend for ``scheme``."""
    import fsspec

    if scheme not in fsspec.available_protocols():
        raise ConfigError(f"{what}: {scheme}:// is no storage fsspec knows (a local path, file://, s3://, gs://, "
                          "or another fsspec protocol)")
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = _PACKAGES.get(scheme, f"the fsspec backend of {scheme}://")
        raise ConfigError(f"{what}: {scheme}:// needs {package}: pip install {package}") from None


def reset_staging(location: RunLocation, pull: bool) -> None:
    """Empty the staging directory of a mirrored run (a new run starts clean; files of an earlier run of the same
    URL must not be appended to) and, with ``pull``, download the run's files but its checkpoints (a resume)."""
    shutil.rmtree(location.path, ignore_errors=True)
    location.path.mkdir(parents=True)
    if pull:
        Mirror(location.url).pull(location.path, skip=("checkpoints",))


class Mirror:
    """The fsspec side of a mirrored run directory: names are relative to its URL, '/'-separated."""

    def __init__(self, url: str):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")

    def key(self, rel: str = "") -> str:
        return f"{self.root}/{rel}".rstrip("/")

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def put_file(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self.key(rel))

    def put_tree(self, local: Path, rel: str = "", skip: tuple[str, ...] = ()) -> list[str]:
        """Upload every file under ``local`` to ``rel`` (but top-level entries named in ``skip``); returns the
        uploaded names relative to ``rel``."""
        done = []
        for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            name = file.relative_to(local).as_posix()
            if name.split("/")[0] in skip:
                continue
            self.put_file(file, f"{rel}/{name}" if rel else name)
            done.append(name)
        return done

    def pull(self, local: Path, rel: str = "", skip: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> list[str]:
        """Download every object under ``rel`` into ``local`` (top-level names in ``skip`` left out; with
        ``only``, just those). Returns the names downloaded."""
        base = self.key(rel)
        self.fs.invalidate_cache()
        done = []
        for key in self.fs.find(base):
            name = key[len(base):].lstrip("/")
            top = name.split("/")[0]
            if not name or top in skip or (only and top not in only):
                continue
            target = Path(local) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(key, str(target))
            done.append(name)
        return done

    def files(self, rel: str) -> list[str]:
        """Every object under ``rel``, relative to it."""
        base = self.key(rel)
        self.fs.invalidate_cache()  # other processes (the learners) upload here: never a cached listing
        return sorted(k[len(base):].lstrip("/") for k in self.fs.find(base))

    def dirs(self, rel: str) -> list[str]:
        """The names of the entries right under ``rel`` (an object store's "directories" are key prefixes)."""
        self.fs.invalidate_cache()
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.key(rel), detail=False))
        except FileNotFoundError:
            return []

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(self.key(rel))

    def read_bytes(self, rel: str, length: int | None = None, start: int = 0) -> bytes:
        with self.fs.open(self.key(rel), "rb") as fh:
            fh.seek(start)
            return fh.read(length) if length is not None else fh.read()

    def write_text(self, rel: str, text: str) -> None:
        self.fs.pipe_file(self.key(rel), text.encode())

    def remove(self, rel: str) -> None:
        """Delete ``rel`` and everything under it (nothing there is no error)."""
        keys = self.fs.find(self.key(rel))
        if keys:
            self.fs.rm(keys)
        self.fs.invalidate_cache()
