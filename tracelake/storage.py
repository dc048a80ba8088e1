"""The lake's storage: one URI for a laptop folder and an object store.

The lake root is a URI: a local path (``/data/lake``, ``./lake``, ``file:///data/lake``) or an
object-store URI (``s3a://bucket/prefix``, ``gs://bucket/prefix``, ``abfss://container@account...``).
Spark reads and writes it through Hadoop, with the URI as given; everything Python reads or
writes beside the tables (validation reports, drift markers, training run folders, checkpoints,
model files, loader caches) goes through :mod:`pyarrow.fs`, opened here, so no other module needs
to know which store holds the lake.

Object-store settings (endpoint, path-style addressing, region) come from ``storage`` in the
typed config; credentials never do: both Hadoop's S3A and Arrow's S3 client take them from the
standard AWS provider chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance
roles).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pyarrow import fs as pafs

from tracelake.errors import TracelakeError


class StorageError(TracelakeError, ValueError):
    """A lake URI that cannot be used as written."""


# Hadoop's S3 schemes and the one Arrow (and delta-rs) understand.
S3_SCHEMES = frozenset({"s3a", "s3", "s3n"})


@dataclass(frozen=True)
class ObjectStore:
    """How to reach an S3-compatible store (the typed config's ``storage`` section)."""

    endpoint: str = ""  # e.g. http://127.0.0.1:8333; empty: AWS's own endpoints
    path_style: bool = False  # bucket in the path, not the host name (most self-hosted stores)
    region: str = "us-east-1"

    @property
    def uses_tls(self) -> bool:
        return not self.endpoint.startswith("http://")

    @property
    def host(self) -> str:
        """The endpoint without its scheme, as Hadoop and Arrow want it."""
        return self.endpoint.split("://", 1)[-1].rstrip("/")


_store = ObjectStore()


def use(store: ObjectStore) -> None:
    """Set the object store this process talks to (done by :func:`tracelake.config.load_settings`)."""
    global _store
    _store = store


def current() -> ObjectStore:
    return _store


def scheme(uri: str) -> str:
    """The URI's scheme in lower case; '' for a local path (a Windows drive letter counts as local)."""
    found = urlsplit(uri).scheme.lower()
    return "" if len(found) <= 1 else found


def is_local(uri: str) -> bool:
    return scheme(uri) in ("", "file")


def normalize_root(raw: str) -> str:
    """The lake root as every job uses it: an absolute local path, or the object URI without a trailing '/'."""
    if not raw.strip():
        raise StorageError(
            "lake_root is empty; set it to a folder or an object-store URI such as s3a://bucket/lake"
        )
    if is_local(raw):
        return str(local_path(raw).expanduser().resolve())
    parsed = urlsplit(raw)
    if not parsed.netloc:
        raise StorageError(f"lake_root {raw!r} names no bucket; write it as {parsed.scheme}://bucket/prefix")
    return raw.rstrip("/")


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URI alike (never ``pathlib``: it turns ``s3a://`` into ``s3a:/``)."""
    cleaned = [str(p).strip("/") for p in parts if str(p).strip("/")]
    if not cleaned:
        return root
    return posixpath.join(root.rstrip("/") if root not in ("/", "") else root, *cleaned)


def local_path(uri: str) -> Path:
    """The folder of a local URI; a clear error for an object-store URI."""
    if not is_local(uri):
        raise StorageError(f"{uri} is on object storage; this step needs a local folder")
    return Path(urlsplit(uri).path if uri.startswith("file:") else uri)


def spark_uri(uri: str) -> str:
    """The form Spark/Hadoop wants: local paths as they are, ``s3``/``s3n`` as ``s3a`` (the maintained connector)."""
    if scheme(uri) in ("s3", "s3n"):
        return "s3a" + uri[len(scheme(uri)) :]
    return uri


def arrow_uri(uri: str) -> str:
    """The form Arrow and delta-rs want: ``s3a://`` as ``s3://``, ``abfss://`` as ``abfs://``."""
    found = scheme(uri)
    if found in S3_SCHEMES:
        return "s3" + uri[len(found) :]
    if found == "abfss":
        return "abfs" + uri[len(found) :]
    return uri


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The Arrow file system holding ``uri`` and the path inside it."""
    if is_local(uri):
        return pafs.LocalFileSystem(), str(local_path(uri))
    found = scheme(uri)
    if found in S3_SCHEMES:
        parsed = urlsplit(uri)
        store = _store
        s3 = pafs.S3FileSystem(
            endpoint_override=store.host or None,
            scheme="https" if store.uses_tls else "http",
            region=store.region,
            force_virtual_addressing=not store.path_style and not store.endpoint,
        )
        return s3, f"{parsed.netloc}{parsed.path}".rstrip("/")
    filesystem_and_path: tuple[Any, str] = pafs.FileSystem.from_uri(arrow_uri(uri))
    return filesystem_and_path


def delta_rs_options() -> dict[str, str]:
    """``storage_options`` for delta-rs (deltalake) on the configured S3 store; credentials from the environment."""
    store = _store
    options = {"AWS_REGION": store.region}
    if store.endpoint:
        options["AWS_ENDPOINT_URL"] = store.endpoint
        options["AWS_ALLOW_HTTP"] = str(not store.uses_tls).lower()
    if store.path_style:
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    # delta-rs refuses S3 writes without a locking provider; reads never need one, and the jobs
    # that write go through Spark (S3SingleDriverLogStore: see hadoop_conf).
    options["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    return options


def hadoop_conf(store: ObjectStore) -> dict[str, str]:
    """Spark settings for S3A on this store; keys come from the AWS provider chain, never from here.

    Delta commits on S3 use ``S3SingleDriverLogStore``: one Spark driver at a time may write a given
    table (its commits are serialised inside that JVM). Two drivers writing the same table at once
    can overwrite each other's commit file; multi-writer deployments need Delta's DynamoDB log store
    (``io.delta.storage.S3DynamoDBLogStore``) set under the same key.
    """
    conf = {
        "spark.delta.logStore.s3a.impl": "io.delta.storage.S3SingleDriverLogStore",
        "spark.delta.logStore.s3.impl": "io.delta.storage.S3SingleDriverLogStore",
        "spark.hadoop.fs.s3a.endpoint.region": store.region,
        "spark.hadoop.fs.s3a.path.style.access": str(store.path_style).lower(),
    }
    if store.endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = store.endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(store.uses_tls).lower()
    return conf


# --- Python-side file operations on lake URIs ------------------------------------------------------


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def is_file(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.get_file_info(path).type == pafs.FileType.File)


def is_dir(uri: str) -> bool:
    """A folder (on object storage: a prefix that holds at least one object)."""
    fs, path = filesystem(uri)
    return bool(fs.get_file_info(path).type == pafs.FileType.Directory)


def list_dir(uri: str) -> list[str]:
    """Names of the entries directly under ``uri`` (empty when it does not exist)."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of every file under ``uri`` (recursively) whose name ends with ``suffix``."""
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(
        join(uri, i.path[len(path) :])
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffix)
    )


def mtime(uri: str) -> float:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    return info.mtime.timestamp() if info.mtime is not None else 0.0


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read())


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def first_line(uri: str, limit: int = 1 << 20) -> str:
    """The first line of a text file, decompressed when its name ends in .gz ('' when empty)."""
    fs, path = filesystem(uri)
    compression = "gzip" if uri.lower().endswith(".gz") else None
    with fs.open_input_stream(path, compression=compression) as stream:
        head = bytes(stream.read(limit))
    return head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that readers see the old or the new content, never a part.

    Local: a temporary file beside it, then a rename. Object stores: one PUT is already atomic.
    """
    fs, path = filesystem(uri)
    if is_local(uri):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete_file(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.delete_file(path)


def delete_tree(uri: str) -> None:
    """Remove a folder and everything under it; nothing when it does not exist."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    fs.delete_dir(path)


def upload(local: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file, or a folder's files, to ``uri``."""
    source = Path(local)
    if source.is_dir():
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            write_bytes(join(uri, file.relative_to(source).as_posix()), file.read_bytes())
    else:
        write_bytes(uri, source.read_bytes())


def download(uri: str, local: str | os.PathLike[str]) -> Path:
    """Copy a file, or every file under a folder URI, to ``local``; returns ``local``."""
    target = Path(local)
    if is_file(uri):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(uri))
        return target
    for file in list_files(uri):
        destination = target / file[len(uri.rstrip("/")) + 1 :]
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(read_bytes(file))
    return target


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path with the content of ``uri`` (the path itself when it is local), for tools that
    need real files (MLflow's ``log_artifacts``, ONNX Runtime, ``torch.load``)."""
    if is_local(uri):
        yield local_path(uri)
        return
    folder = Path(tempfile.mkdtemp(prefix="tracelake-"))
    try:
        yield download(uri, folder / posixpath.basename(uri.rstrip("/")))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class WorkingFolder:
    """A local folder that stands for a lake folder, for code that writes real files (checkpoints,
    model files): the lake folder itself when the lake is local; otherwise a temporary folder whose
    files are published to the lake one by one, so a multi-host run needs no shared POSIX folder."""

    def __init__(self, uri: str):
        self.uri = uri
        self.remote = not is_local(uri)
        self.local = Path(tempfile.mkdtemp(prefix="tracelake-run-")) if self.remote else local_path(uri)

    def uri_of(self, path: Path) -> str:
        return join(self.uri, path.relative_to(self.local).as_posix()) if self.remote else str(path)

    def publish(self, path: Path) -> None:
        """Copy a file written under :attr:`local` to the lake (nothing to do for a local lake)."""
        if self.remote:
            write_bytes(self.uri_of(path), path.read_bytes())

    def fetch(self, path: Path) -> bool:
        """Bring a file of the lake folder to ``path`` if it is not there yet; whether it exists now."""
        if self.remote and not path.is_file() and is_file(self.uri_of(path)):
            download(self.uri_of(path), path)
        return path.is_file()

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
