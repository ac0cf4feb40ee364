"""Model weight registry, resolution, download and integrity checks (learn from timm).

Weights are named ``arch.tag`` (``hime_small_x4.celeba_wild_v1``); an architecture name alone
(``hime_small_x4``) means the weight the registry marks as that architecture's default.

The registry is data, not code: ``models/registry.json`` (schema in :class:`WeightEntry` and
``docs/models.md``) next to the bundled ``*.safetensors`` files and their model cards. It is
written by ``hime train --export`` through :func:`register_weight` and read by :func:`load_registry`.

Resolution (:func:`resolve_weights`), each step logged:

1. an explicit path (``--weights PATH``);
2. the local cache: ``get_paths().weights_dir/<file>`` and the Hugging Face cache;
3. a hub download with ``huggingface_hub.hf_hub_download`` (skipped when ``HF_HUB_OFFLINE=1``, when
   ``allow_download`` is false, or when no hub repo is known: ``HIME_HUB_REPO`` or the entry's);
4. the copy bundled with the package (``<repo>/models`` in a source checkout, else
   ``<sys.prefix>/share/hime/models``).

Every registered weight's sha256 is checked wherever it came from; a mismatch is refused with
:class:`~hime_cli.errors.IntegrityError`. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hime_cli.errors import DependencyError, IntegrityError, ModelError
from hime_cli.files import atomic_write_bytes, sha256_file
from hime_cli.paths import get_paths

__all__ = [
    "REGISTRY_FILE",
    "ResolvedWeights",
    "WeightEntry",
    "WeightLocation",
    "bundled_dirs",
    "count_parameters",
    "download_weights",
    "entry_from_file",
    "find_entry",
    "hub_repo_for",
    "repair_hint",
    "weights_metadata",
    "load_registry",
    "locate_weights",
    "register_weight",
    "registry_path",
    "resolve_weights",
    "sha256_file",
]

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
SCHEMA_VERSION = 1
MODELS_DIR_ENV = "HIME_MODELS_DIR"  # development/tests: use this folder instead of the bundled ones
HUB_REPO_ENV = "HIME_HUB_REPO"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*\.[a-z0-9][a-z0-9_\-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WeightEntry:
    """One released weight file, as recorded in ``models/registry.json``."""

    name: str  # "arch.tag"
    file: (
        str  # file name next to the registry / in the cache, e.g. "hime_small_x4.celeba_wild_v1.safetensors"
    )
    sha256: str
    size_bytes: int
    scale: int
    variant: str = ""  # e.g. "small", "base", "test"
    training_data: str = ""
    licence: str = ""
    dev_metrics: dict[str, float] = field(default_factory=dict)  # e.g. {"psnr": 27.3, "ssim": 0.81}
    hub_repo: str | None = None  # Hugging Face repo id; HIME_HUB_REPO overrides it
    hub_filename: str | None = None  # path inside the hub repo; defaults to ``file``
    hub_revision: str | None = None
    default: bool = False  # the weight an arch name alone resolves to
    params: int | None = None
    card: str | None = None  # model card file name next to the registry (e.g. "<name>.md")
    notes: str = ""

    @property
    def arch(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["arch"] = self.arch  # redundant but handy for readers of the JSON
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeightEntry:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"arch"})
        if unknown:
            logger.debug("registry entry %s: ignoring unknown fields %s", data.get("name"), unknown)
        entry = cls(**{k: v for k, v in data.items() if k in known})
        if "arch" in data and data["arch"] != entry.arch:
            raise ModelError(f"registry entry {entry.name}: arch {data['arch']!r} does not match its name")
        _validate_entry(entry)
        return entry


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a weight was found. ``os.PathLike``, so it can be passed wherever a path is expected."""

    path: Path
    entry: WeightEntry | None
    source: str  # "path" | "cache" | "hub" | "bundled"

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class WeightLocation:
    """A copy of a registered weight found without downloading (for ``hime models list/verify``)."""

    path: Path
    source: str  # "cache" | "bundled"


# ----------------------------------------------------------------------------------- locations


def source_checkout_root() -> Path | None:
    """The repository root when running from a source checkout or editable install, else None."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "hime_cli").is_dir():
        return root
    return None


def bundled_dirs() -> list[Path]:
    """Folders holding the registry and the bundled weights, in search order."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return [Path(override).expanduser().resolve()]
    dirs: list[Path] = []
    root = source_checkout_root()
    if root is not None:
        dirs.append(root / "models")
    dirs.append(Path(sys.prefix) / "share" / "hime" / "models")
    return dirs


def registry_path() -> Path:
    """The registry file that is read: the first existing one in :func:`bundled_dirs`.

    When none exists yet, the path a new registry would be written to (the first folder).
    """
    dirs = bundled_dirs()
    for folder in dirs:
        if (folder / REGISTRY_FILE).is_file():
            return folder / REGISTRY_FILE
    return dirs[0] / REGISTRY_FILE


def hub_repo_for(entry: WeightEntry) -> str | None:
    """The hub repo id to use for ``entry``: ``HIME_HUB_REPO`` first, else the entry's own."""
    return os.environ.get(HUB_REPO_ENV) or entry.hub_repo or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


# ------------------------------------------------------------------------------------ registry


def _validate_entry(entry: WeightEntry) -> None:
    if not _NAME_RE.match(entry.name):
        raise ModelError(
            f"invalid weight name {entry.name!r}",
            hint="weights are named arch.tag in lower case, e.g. hime_small_x4.celeba_wild_v1",
        )
    if not _SHA_RE.match(entry.sha256):
        raise ModelError(f"registry entry {entry.name}: sha256 must be 64 lower-case hex digits")
    if not entry.file.endswith(".safetensors") or "/" in entry.file or "\\" in entry.file:
        raise ModelError(f"registry entry {entry.name}: file must be a plain *.safetensors name")
    if entry.size_bytes <= 0 or entry.scale <= 0:
        raise ModelError(f"registry entry {entry.name}: size_bytes and scale must be positive")


def _parse_registry(text: str, source: Path) -> dict[str, WeightEntry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"model registry {source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("weights"), list):
        raise ModelError(f"model registry {source} has no 'weights' list")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        raise ModelError(
            f"model registry {source} has schema version {version}; this hime reads up to {SCHEMA_VERSION}",
            hint="upgrade hime",
        )
    entries: dict[str, WeightEntry] = {}
    for raw in data["weights"]:
        entry = WeightEntry.from_json(raw)
        if entry.name in entries:
            raise ModelError(f"model registry {source}: duplicate weight name {entry.name!r}")
        entries[entry.name] = entry
    defaults: dict[str, str] = {}
    for entry in entries.values():
        if entry.default:
            if entry.arch in defaults:
                raise ModelError(
                    f"model registry {source}: two default weights for {entry.arch}: "
                    f"{defaults[entry.arch]} and {entry.name}"
                )
            defaults[entry.arch] = entry.name
    return entries


def load_registry(path: Path | None = None) -> dict[str, WeightEntry]:
    """Every registered weight by name (empty when no registry file exists)."""
    path = path or registry_path()
    if not path.is_file():
        logger.debug("no model registry at %s", path)
        return {}
    return _parse_registry(path.read_text(encoding="utf-8"), path)


def _write_registry(path: Path, entries: Iterable[WeightEntry]) -> None:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "weights": [e.to_json() for e in sorted(entries, key=lambda e: e.name)],
    }
    payload = (json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")
    atomic_write_bytes(path, payload, error=ModelError)


def register_weight(entry: WeightEntry, *, path: Path | None = None, replace: bool = False) -> Path:
    """Add ``entry`` to the registry file (atomically) and return the registry path.

    Duplicate names raise :class:`ModelError` unless ``replace``. Marking an entry ``default``
    clears the flag on the other weights of its architecture. When the weight file already sits
    next to the registry, its sha256 and size must match the entry.
    """
    _validate_entry(entry)
    path = path or registry_path()
    entries = load_registry(path)
    if entry.name in entries and not replace:
        raise ModelError(
            f"weight {entry.name!r} is already registered in {path}",
            hint="export under a new tag (weights are immutable once released)",
        )
    weight_file = path.parent / entry.file
    if weight_file.is_file():
        actual = sha256_file(weight_file)
        if actual != entry.sha256 or weight_file.stat().st_size != entry.size_bytes:
            raise IntegrityError(
                f"{weight_file} does not match the entry being registered (sha256 {actual[:12]}…)",
                hint="compute the entry with hime_cli.hub.entry_from_file",
            )
    if entry.default:
        entries = {
            n: (dataclasses.replace(e, default=False) if e.arch == entry.arch else e)
            for n, e in entries.items()
        }
    entries[entry.name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_registry(path, entries.values())
    logger.info("registered %s in %s", entry.name, path)
    return path


def entry_from_file(weight_path: str | Path, name: str, *, scale: int, **fields: Any) -> WeightEntry:
    """Build an entry for an existing safetensors file: file name, sha256, size and params filled in."""
    weight_path = Path(weight_path)
    fields.setdefault("params", count_parameters(weight_path))
    return WeightEntry(
        name=name,
        file=weight_path.name,
        sha256=sha256_file(weight_path),
        size_bytes=weight_path.stat().st_size,
        scale=scale,
        **fields,
    )


def find_entry(name: str, registry: dict[str, WeightEntry] | None = None) -> WeightEntry:
    """The entry for ``arch.tag`` or for an architecture's default weight; unknown names raise."""
    registry = load_registry() if registry is None else registry
    if name in registry:
        return registry[name]
    if "." not in name:
        candidates = [e for e in registry.values() if e.arch == name]
        defaults = [e for e in candidates if e.default]
        if defaults:
            return defaults[0]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise ModelError(
                f"{name} has several weights and none is marked default",
                hint=f"name one of: {', '.join(sorted(e.name for e in candidates))}",
            )
    known = ", ".join(sorted(registry)) or "none registered"
    raise ModelError(f"unknown weight {name!r} (known: {known})", hint="list them with `hime models list`")


# ---------------------------------------------------------------------------------- integrity

_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def _sha256_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_file(path)
    return _VERIFIED[key]


def repair_hint(entry: WeightEntry, damaged: Path | None = None) -> str:
    """How to get an intact copy of ``entry``: a command that works with this configuration."""
    bundled = any((d / entry.file).is_file() for d in bundled_dirs())
    remove = f"delete the damaged copy {damaged}" if damaged is not None else ""
    if hub_repo_for(entry):
        fetch = f"re-download with `hime models download {entry.name} --force`"
        return f"{fetch}" + (f", or {remove}" if remove and bundled else "")
    if remove and bundled and damaged not in [d / entry.file for d in bundled_dirs()]:
        return f"{remove}: the copy bundled with hime is then used"
    return (
        f"reinstall hime to get the bundled copy, or set {HUB_REPO_ENV}=owner/repo and run "
        f"`hime models download {entry.name} --force`"
    )


def check_integrity(path: Path, entry: WeightEntry) -> None:
    """Raise :class:`IntegrityError` unless ``path`` has the entry's sha256."""
    actual = _sha256_cached(path)
    if actual != entry.sha256:
        raise IntegrityError(
            f"weights {entry.name} at {path} failed the integrity check "
            f"(sha256 {actual[:12]}…, expected {entry.sha256[:12]}…); refusing to load them",
            hint=repair_hint(entry, path),
        )


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's JSON header (no torch); {} when unreadable."""
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > 100 * 1024 * 1024:
                return {}
            header = json.loads(fh.read(header_len))
    except (OSError, struct.error, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def count_parameters(path: str | Path) -> int | None:
    """Number of tensor elements in a safetensors file, read from its JSON header (no torch)."""
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > 100 * 1024 * 1024:
                return None
            header = json.loads(fh.read(header_len))
    except (OSError, struct.error, ValueError):
        return None
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for dim in info.get("shape", []):
            count *= int(dim)
        total += count
    return total


# --------------------------------------------------------------------------------- resolution


def _cache_candidates(entry: WeightEntry) -> list[Path]:
    paths = get_paths()
    found = [paths.weights_dir / entry.file]
    repo = hub_repo_for(entry)
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(
                repo,
                entry.hub_filename or entry.file,
                cache_dir=paths.hf_cache_dir,
                revision=entry.hub_revision,
            )
        except Exception as exc:  # a malformed cache must not break resolution
            logger.debug("HF cache lookup for %s failed: %s", entry.name, exc)
            cached = None
        if isinstance(cached, str):
            found.append(Path(cached))
    return found


def locate_weights(entry: WeightEntry) -> list[WeightLocation]:
    """Every local copy of ``entry`` (cache first, then bundled), without downloading or hashing."""
    locations = [WeightLocation(p, "cache") for p in _cache_candidates(entry) if p.is_file()]
    locations += [
        WeightLocation(d / entry.file, "bundled") for d in bundled_dirs() if (d / entry.file).is_file()
    ]
    return locations


def is_weights_path(name: str | os.PathLike[str]) -> bool:
    """The one rule for ``--weights``: a path (not a registered name) when it is a ``Path``, ends in
    ``.safetensors``, holds a path separator, starts with ``~`` or ``.``, or names an existing file."""
    if isinstance(name, Path):
        return True
    text = os.fspath(name)
    return (
        text.endswith(".safetensors")
        or os.sep in text
        or "/" in text
        or text.startswith(("~", "."))
        or Path(text).expanduser().is_file()
    )


def resolve_weights(name_or_path: str | os.PathLike[str], *, allow_download: bool = True) -> ResolvedWeights:
    """Find the weight file for a registered name, an arch name, or an explicit path.

    Order: explicit path → local cache → hub download → bundled copy. Registered weights are
    sha256-checked wherever they came from (:class:`IntegrityError` on mismatch); a weight found
    nowhere raises one :class:`ModelError` naming the command that fixes it.
    """
    text = os.fspath(name_or_path)
    if is_weights_path(name_or_path):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelError(
                f"weight file {path} does not exist (not found)", hint="check the --weights path"
            )
        logger.info("weights: using explicit path %s", path)
        entry = _entry_by_sha(path)
        if entry is None:
            logger.warning(
                "weights: %s matches no registered weight (sha256 %s…): loading it unverified",
                path,
                _sha256_cached(path.resolve())[:12],
            )
        return ResolvedWeights(path=path.resolve(), entry=entry, source="path")

    entry = find_entry(text)
    logger.info("weights: resolving %s (%s)", entry.name, entry.file)

    damaged: IntegrityError | None = None
    for candidate in _cache_candidates(entry):
        if candidate.is_file():
            logger.info("weights: %s found in the local cache at %s", entry.name, candidate)
            try:
                check_integrity(candidate, entry)
            except IntegrityError as exc:  # a damaged cache copy must not hide a good one elsewhere
                logger.warning("weights: %s; looking further", exc.message)
                damaged = damaged or exc
                continue
            return ResolvedWeights(path=candidate, entry=entry, source="cache")
        logger.debug("weights: not in cache at %s", candidate)

    download_error: Exception | None = None
    repo = hub_repo_for(entry)
    if not allow_download:
        logger.info("weights: download not allowed; skipping the hub")
    elif _offline():
        logger.info("weights: HF_HUB_OFFLINE is set; skipping the hub")
    elif not repo:
        logger.info("weights: no hub repo configured (%s); skipping the hub", HUB_REPO_ENV)
    else:
        try:
            return _download(entry, repo, force=False)
        except IntegrityError:
            raise
        except (ModelError, DependencyError) as exc:
            download_error = exc
            logger.warning("weights: download of %s failed: %s", entry.name, exc)

    for folder in bundled_dirs():
        candidate = folder / entry.file
        if candidate.is_file():
            logger.info("weights: using the bundled copy of %s at %s", entry.name, candidate)
            check_integrity(candidate, entry)
            return ResolvedWeights(path=candidate, entry=entry, source="bundled")
        logger.debug("weights: not bundled at %s", candidate)

    if damaged is not None:
        raise damaged
    reason = f" (download failed: {download_error})" if download_error else ""
    raise ModelError(
        f"weights {entry.name} are not available locally{reason}",
        hint=f"run `hime models download {entry.name}` (needs network and {HUB_REPO_ENV}), "
        "or pass --weights PATH",
    )


def _entry_by_sha(path: Path) -> WeightEntry | None:
    """The registered entry a file is a copy of (matched by size, then sha256), if any."""
    try:
        registry = load_registry()
        size = path.stat().st_size
    except (ModelError, OSError):
        return None
    same_size = [e for e in registry.values() if e.size_bytes == size]
    if not same_size:
        return None
    digest = _sha256_cached(path.resolve())
    return next((e for e in same_size if e.sha256 == digest), None)


def _download(entry: WeightEntry, repo: str, *, force: bool) -> ResolvedWeights:
    import huggingface_hub  # lazy: slow import, and tests monkeypatch hf_hub_download on the module

    filename = entry.hub_filename or entry.file
    logger.info("weights: downloading %s from %s/%s", entry.name, repo, filename)
    try:
        downloaded = huggingface_hub.hf_hub_download(
            repo_id=repo,
            filename=filename,
            revision=entry.hub_revision,
            cache_dir=get_paths().hf_cache_dir,
            force_download=force,
        )
    except Exception as exc:  # network, auth, missing repo/file: one clear error
        raise DependencyError(
            f"could not download {entry.name} from {repo}: {type(exc).__name__}: {exc}",
            hint=f"check the network and {HUB_REPO_ENV}, or copy the file to {get_paths().weights_dir}",
        ) from exc
    path = Path(downloaded)
    try:
        check_integrity(path, entry)
    except IntegrityError:
        _discard_download(path)
        raise
    return ResolvedWeights(path=path, entry=entry, source="hub")


def _discard_download(path: Path) -> None:
    """Remove a bad download so the next attempt fetches it again (blob behind a snapshot link too)."""
    try:
        target = path.resolve()
        path.unlink(missing_ok=True)
        if target != path:
            target.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove the bad download %s: %s", path, exc)


def download_weights(name: str, *, force: bool = False) -> ResolvedWeights:
    """Download a registered weight into the cache (``hime models download``) and verify it.

    Without ``force`` an intact cached copy is reused; ``force`` downloads again.
    """
    entry = find_entry(name)
    repo = hub_repo_for(entry)
    if not repo:
        raise ModelError(
            f"no hub repository is configured for {entry.name}",
            hint=f"set {HUB_REPO_ENV}=owner/repo (the Hugging Face repo holding hime weights)",
        )
    if _offline():
        raise DependencyError(
            f"cannot download {entry.name}: HF_HUB_OFFLINE is set",
            hint="unset HF_HUB_OFFLINE (or set it to 0) and retry",
        )
    if not force:
        for candidate in _cache_candidates(entry):
            if candidate.is_file():
                check_integrity(candidate, entry)
                logger.info("weights: %s already cached at %s", entry.name, candidate)
                return ResolvedWeights(path=candidate, entry=entry, source="cache")
    resolved = _download(entry, repo, force=force)
    if force:  # a damaged copy placed in the cache would otherwise still shadow the fresh download
        for candidate in _cache_candidates(entry):
            if candidate.is_file() and candidate.resolve() != resolved.path.resolve():
                if sha256_file(candidate) != entry.sha256:
                    logger.warning("removing the damaged cached copy %s", candidate)
                    candidate.unlink(missing_ok=True)
    return resolved


# ------------------------------------------------------------------------------------ helpers
