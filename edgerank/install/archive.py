"""One-file model archives: quantize on a big machine, serve on a small one.

`edgerank export NAME FILE` packs an installed entry (its manifest.json and exactly the files
the manifest lists) into a tar; `edgerank import FILE` unpacks it into the store unchanged,
after checking every file against the manifest's sha256 and size. A serving-only install
(no `quantize` extra) thus runs models it could not have built.

The archive is a plain POSIX tar (gzip when FILE ends in .gz/.tgz) with one top-level
directory, NAME/BACKEND/, so `tar tf` shows what it holds. The checksums catch corruption
and tampering with the files; the manifest itself is not signed, so a trusted channel (or a
checksum of the archive published beside it) is what vouches for the manifest.
"""

from __future__ import annotations

import lzma
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from edgerank.errors import InvalidInput, ModelCorrupt
from edgerank.models.manifest import MANIFEST, STAMP, Manifest, sha256_file
from edgerank.store.layout import StoreLayout, publish

#: a copy or download cut short is the likely cause; say so in every refusal
_REFUSED = "nothing installed"


def _mode(path: Path, write: bool) -> str:
    gz = path.name.endswith((".gz", ".tgz"))
    return ("w:gz" if gz else "w") if write else "r:*"


def export(store: StoreLayout, name: str, backend: str | None, out: Path) -> Path:
    """Write the entry <name>/<backend> to `out`; the entry is verified first, so a corrupt
    store never travels. Without `backend`, the entry's only installed backend."""
    if backend is None:
        have = store.installed().get(name, [])
        if len(have) > 1:
            raise InvalidInput(f"{name} is installed as {', '.join(have)}: pick one with --backend")
        backend = have[0] if have else "onnx"
    src = store.path(name, backend)
    manifest = store.manifest(name, backend)  # ModelNotFound / ModelCorrupt, one line
    manifest.verify(src)
    out = Path(out)
    if out.is_dir():
        raise InvalidInput(f"{out} is a directory: give the archive's file name")
    top = PurePosixPath(name, backend)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with tarfile.open(tmp, _mode(out, write=True), format=tarfile.PAX_FORMAT) as tar:
            for rel in (MANIFEST, *sorted(manifest.files)):
                info = tar.gettarinfo(str(src / rel), arcname=str(top / rel))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(src / rel, "rb") as f:
                    tar.addfile(info, f)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {out}: {exc}") from None
    return out


def _members(tar: tarfile.TarFile, path: Path) -> tuple[str, str, dict[str, tarfile.TarInfo]]:
    """(name, backend, rel -> member): one NAME/BACKEND/ directory of regular files, no
    links, no absolute paths, no '..'; anything else is refused before a byte is written."""
    tops: set[tuple[str, str]] = set()
    files: dict[str, tarfile.TarInfo] = {}
    for m in tar.getmembers():
        parts = PurePosixPath(m.name).parts
        if m.name.startswith("/") or ".." in parts or len(parts) < 2:
            raise ModelCorrupt(f"{path}: unexpected member {m.name!r}: not an edgerank archive")
        if m.isdir() and len(parts) == 2:
            tops.add(parts[:2])
            continue
        if not m.isfile() or len(parts) < 3:
            raise ModelCorrupt(f"{path}: {m.name!r} is not a regular file: {_REFUSED}")
        tops.add(parts[:2])
        files[str(PurePosixPath(*parts[2:]))] = m
    if len(tops) != 1 or MANIFEST not in files:
        raise ModelCorrupt(f"{path}: no single NAME/BACKEND/{MANIFEST}: not an edgerank archive")
    (name, backend) = tops.pop()
    return name, backend, files


def import_archive(store: StoreLayout, path: Path, name: str | None = None) -> Path:
    """Install an archive made by export(), unchanged; returns the entry's directory.

    Every file must be listed in the manifest and match its size and sha256; a file too
    many, too few or altered refuses the whole archive with one line.
    """
    path = Path(path)
    try:
        tar = tarfile.open(path, _mode(path, write=False))
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise InvalidInput(f"{path}: cannot read the archive ({exc.strerror})") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError):
        # tarfile's text lists every decompressor it tried, one line each
        raise ModelCorrupt(
            f"{path}: not a tar archive (empty, cut short, or another format): {_REFUSED}"
        ) from None
    with tar:
        try:
            entry, backend, files = _members(tar, path)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:  # cut short...
            raise _damaged(path, exc) from None
        if name is not None and name != entry:
            raise InvalidInput(
                f"{path} holds {entry!r}; an archive installs under its own name (drop --name)"
            )
        staging = store._staging(entry)
        try:
            for rel, member in files.items():
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - _members admits regular files only
                    raise ModelCorrupt(f"{path}: {rel} is unreadable")
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                with src, open(dst, "wb") as out:
                    shutil.copyfileobj(src, out)
            _check(staging, path, entry, backend, files)
            target = store.path(entry, backend)
            publish(staging, target)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise _damaged(path, exc) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # hash once more through the normal path, which also leaves the verification stamp
    Manifest.read(target).verify(target)
    return target


def _damaged(path: Path, exc: BaseException) -> ModelCorrupt:
    """One line, whatever the library's text (tarfile's can run over several)."""
    lines = str(exc).strip().splitlines()
    why = lines[0].rstrip(":") if lines else type(exc).__name__
    return ModelCorrupt(f"{path}: damaged archive ({why}): {_REFUSED}")


def _check(staging: Path, path: Path, entry: str, backend: str, files: dict) -> None:
    try:
        manifest = Manifest.read(staging)
    except ModelCorrupt as exc:
        raise ModelCorrupt(f"{path}: unreadable manifest: {_REFUSED}") from exc
    if (manifest.name, manifest.backend) != (entry, backend):
        raise ModelCorrupt(
            f"{path}: manifest says {manifest.name}/{manifest.backend}, the archive's directory "
            f"{entry}/{backend}: {_REFUSED}"
        )
    listed, present = set(manifest.files), set(files) - {MANIFEST}
    if STAMP in present or present - listed:
        extra = sorted(present - listed) or [STAMP]
        raise ModelCorrupt(f"{path}: {extra[0]} is not in the manifest: {_REFUSED}")
    if listed - present:
        raise ModelCorrupt(f"{path}: {sorted(listed - present)[0]} is missing: {_REFUSED}")
    for rel in sorted(listed):
        meta = manifest.files[rel]
        f = staging / rel
        if f.stat().st_size != meta.get("size") or sha256_file(f) != meta.get("sha256"):
            raise ModelCorrupt(
                f"{path}: {rel} fails its sha256 check: the archive is corrupt or was "
                f"altered; {_REFUSED}"
            )
