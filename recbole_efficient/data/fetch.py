"""Datasets by name: fetch the publisher's archive (pinned SHA-256, mirrors in order), convert
it to RecBole atomic files in a temporary folder, and move them into ``data_path/<name>/``.

The atomic ``.inter`` file is moved last, so its presence means the dataset is complete: a
killed download or conversion leaves at most a ``.downloads/`` or ``.<name>.partial/`` entry,
which the next run removes before it starts again. Downloads go through pooch (hash check
before the file takes its name, progress bars, HTTP via requests with TLS verification on).
Every failure is a :class:`DatasetError` with one line saying what happened and what to do.
"""

import errno
import os
import re
import shutil
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

from recbole_efficient.data.catalog import DATASETS, archive_urls, mirror_list
from recbole_efficient.data.movielens import ArchiveLayoutError, convert_archive
from recbole_efficient.data.stats import read_inter_stats

__all__ = ["ChecksumMismatch", "DatasetError", "ensure_dataset", "install_dataset", "known_names",
           "publish", "staged"]

DOWNLOADS = ".downloads"


class DatasetError(ValueError):
    """A dataset is missing and cannot be fetched, or its fetch failed (one line)."""


class ChecksumMismatch(ValueError):
    """A file whose SHA-256 is not the pinned one."""

    def __init__(self, expected, got):
        super().__init__(f"checksum mismatch (expected sha256 {expected}, got {got})")


def known_names():
    """Datasets fetched by name, plus ``ml-100k`` (RecBole's package ships it)."""
    return ["ml-100k", *DATASETS]


def _own_data_hint(name, data_path):
    return (f"to use your own data, convert it with `recbole-efficient convert FILE --user=COL "
            f"--item=COL --time=COL --name={name} --data_path={data_path}` or place RecBole "
            f"atomic files at {os.path.join(data_path, name, name + '.inter')}")


def _recbole_link(name):
    import recbole
    import yaml

    urls = Path(recbole.__file__).resolve().parent / "properties" / "dataset" / "url.yaml"
    return (yaml.safe_load(urls.read_text(encoding="utf-8")) or {}).get(name)


def not_on_disk(name, folder, allow_download):
    """The error for a dataset whose ``.inter`` file is absent and that is not fetched."""
    inter = os.path.join(folder, f"{name}.inter")
    where = f"Dataset '{name}' is not on disk (expected the RecBole atomic file {inter})"
    if name in DATASETS and not allow_download:
        return DatasetError(f"{where} and allow_download=False: drop --allow_download=False to "
                            f"fetch it, or place {DATASETS[name].file} in "
                            f"{os.path.join(os.path.dirname(folder), DOWNLOADS, name)}/ and "
                            "run again with downloads on (nothing else is fetched then).")
    if name == "ml-100k":  # RecBole's Config always reads it from RecBole's package
        return DatasetError(f"{where}: RecBole's package copy of ml-100k is missing; reinstall "
                            "recbole (pip install --force-reinstall recbole==1.2.1).")
    link = _recbole_link(name)
    known = "" if name in DATASETS else (
        f" and it is not one we can fetch by name ({', '.join(known_names())})")
    recbole = (f"; RecBole lists a processed copy at {link} (unverified: no published hash), "
               f"which you may fetch by hand and unpack into {folder}/") if link else ""
    hint = _own_data_hint(name, os.path.dirname(folder))
    return DatasetError(f"{where}{known}{recbole}; {hint}; or point --data_path at the folder "
                        f"that holds a '{name}/' directory.")


def ensure_dataset(config, log=None):
    """Make sure ``config``'s dataset is on disk, fetching it by name when it is not.

    Called before any log file, training or RecBole loading. Returns nothing; raises
    :class:`DatasetError` (one line) or the atomic-file header errors of
    :func:`~recbole_efficient.data.atomic.check_headers`.
    """
    from recbole_efficient.data.atomic import check_headers  # loads RecBole: not for `download`

    if config["benchmark_filename"]:
        return
    name, folder = config["dataset"], config["data_path"]
    if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
        if not config["allow_download"] or name not in DATASETS:
            raise not_on_disk(name, folder, config["allow_download"])
        install_dataset(name, os.path.dirname(os.path.normpath(folder)),
                        mirrors=mirror_list(config["dataset_mirrors"]), log=log)
    check_headers(config)


def _say(log):
    return log or (lambda message: print(message, file=sys.stderr, flush=True))


def install_dataset(name, data_path, mirrors=(), progress=None, log=None):
    """Fetch, verify and convert dataset ``name`` into ``data_path/name/``; returns that folder.

    ``mirrors``: URL prefixes (or local folders) tried before the publisher. ``progress``:
    progress bars (default: when stderr is a terminal). Nothing is fetched when the folder
    already holds ``name.inter``.
    """
    from filelock import FileLock

    archive = DATASETS.get(name)
    if archive is None:
        raise not_on_disk(name, os.path.join(data_path, name), True)
    say = _say(log)
    progress = sys.stderr.isatty() if progress is None else progress
    data_path = Path(data_path).resolve()
    target = data_path / name
    inter = target / f"{name}.inter"
    downloads = data_path / DOWNLOADS / name
    try:
        downloads.mkdir(parents=True, exist_ok=True)
        # One fetch per dataset at a time (DDP ranks, Ray trials, two terminals).
        with FileLock(str(downloads) + ".lock"):
            if inter.is_file():
                return target
            for stale in downloads.iterdir():  # left by a killed download
                if stale.name != archive.file:
                    _remove(stale)
            zip_path = _fetch(archive, downloads, mirrors, progress, say)
            with staged(data_path, name) as partial:
                say(f"Converting {archive.file} into RecBole atomic files ...")
                try:
                    convert_archive(archive, zip_path, partial, progress)
                except (ArchiveLayoutError, zipfile.BadZipFile) as err:
                    raise DatasetError(f"{zip_path} matches its pinned hash but cannot be "
                                       f"converted ({err}); nothing was installed. Please "
                                       "report this.") from None
                _check_statistics(archive, partial / f"{name}.inter", zip_path)
                publish(partial, target, inter.name)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DatasetError(
                f"No space left on the device of {data_path} while preparing {name} (archive "
                f"{archive.size / 1e6:,.0f} MB, its atomic files several times that); partial "
                "files were removed. Free some space or use --data_path=<a larger disk>.") from None
        raise DatasetError(
            f"Cannot prepare {name} under {data_path}: {err.strerror or err} "
            f"({err.filename or data_path}); nothing was installed. Use --data_path=<a folder "
            "you can write to>, or place the atomic files there and use --allow_download=False."
        ) from None
    finally:
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()  # a failed fetch leaves only its (empty) lock file
    say(f"{name} is ready in {target} ({archive.terms})")
    return target


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


@contextmanager
def staged(data_path, name):
    """A fresh, empty ``data_path/.<name>.partial/`` to write a dataset into; removed on the
    way out, with whatever :func:`publish` did not move."""
    partial = Path(data_path) / f".{name}.partial"
    _remove(partial)  # left by a killed run
    partial.mkdir(parents=True)
    try:
        yield partial
    finally:
        _remove(partial)


def publish(partial, target, last):
    """Move the converted files into ``target``, the ``.inter`` file last."""
    if not target.exists():
        os.replace(partial, target)
        return
    files = sorted(partial.iterdir(), key=lambda f: f.name == last)
    for file in files:
        os.replace(file, target / file.name)


def _check_statistics(archive, inter, zip_path):
    stats = read_inter_stats(inter)
    expected = {"interactions": archive.interactions, "users": archive.users,
                "items": archive.items}
    wrong = [f"{key} {getattr(stats, key):,} (published: {value:,})"
             for key, value in expected.items() if value is not None
             and getattr(stats, key) != value]
    if wrong:
        raise DatasetError(f"{archive.name}: the atomic files converted from {zip_path} have "
                           f"{', '.join(wrong)}; nothing was installed. Please report this.")


def _fetch(archive, downloads, mirrors, progress, say):
    """The verified archive in ``downloads``: kept from an earlier run, or fetched from the
    first address that delivers the pinned bytes."""
    import pooch

    pooch.get_logger().setLevel("WARNING")
    target = downloads / archive.file
    failures = []
    if target.is_file():
        got = pooch.file_hash(str(target))
        if got == archive.sha256:
            return target
        target.unlink()  # not the pinned archive: fetched again below
        failures.append(f"{target}: {ChecksumMismatch(archive.sha256, got)}; it was deleted")
        say(f"  {failures[-1]}")
    for url in archive_urls(archive, mirrors):
        say(f"Downloading {archive.name} ({archive.file}, {archive.size / 1e6:,.1f} MB) "
            f"from {url}")
        try:
            if _is_local(url):
                _copy_local(url, target, archive.sha256)
            else:
                downloader = pooch.HTTPDownloader(progressbar=progress, timeout=30)
                pooch.retrieve(url, archive.known_hash, fname=archive.file, path=downloads,
                               downloader=downloader)
            return target
        except Exception as err:  # noqa: BLE001 - every address gets its reason, then the next
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise
            failures.append(f"{url}: {_reason(err)}")
            say(f"  failed: {_reason(err)}")
    raise DatasetError(
        f"Could not fetch {archive.name}: " + "; ".join(failures)
        + f". To install it by hand, place {archive.file} (sha256 {archive.sha256}, "
        f"{archive.size:,} bytes, from {archive.homepage}) in {downloads}/ and run again, or "
        f"set --dataset_mirrors=[<URL or folder holding {archive.file}>]."
        " Nothing was installed.")


def _is_local(url):
    return url.startswith("file://") or "://" not in url


def _copy_local(url, target, sha256):
    import pooch

    source = Path(url[len("file://"):] if url.startswith("file://") else url).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"no such file {source}")
    partial = target.with_name(target.name + ".copying")
    try:
        shutil.copyfile(source, partial)
        got = pooch.file_hash(str(partial))
        if got != sha256:
            raise ChecksumMismatch(sha256, got)
        os.replace(partial, target)
    finally:
        _remove(partial)


def _reason(err):
    """One short phrase for why an address failed."""
    import requests

    text = str(err)
    pooch_check = re.search(r"known hash: expected (?:sha256:)?(\w+) but got (\w+)", text)
    if isinstance(err, ValueError) and pooch_check:
        err = ChecksumMismatch(*pooch_check.groups())
    if isinstance(err, ChecksumMismatch):
        return f"{err}; the downloaded copy was deleted"
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS certificate verification failed (never retried without verification)"
    if isinstance(err, requests.exceptions.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} {err.response.reason}"
    if isinstance(err, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(err, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in text:
        return "the connection dropped before the whole file arrived"
    if isinstance(err, requests.exceptions.ConnectionError):
        for needle, why in (("Name or service not known", "host not found (offline?)"),
                            ("Temporary failure in name resolution", "host not found (offline?)"),
                            ("No address associated", "host not found (offline?)"),
                            ("Connection refused", "connection refused"),
                            ("Network is unreachable", "network unreachable (offline?)"),
                            ("RemoteDisconnected", "the server closed the connection")):
            if needle in text:
                return why
        return "cannot connect"
    if isinstance(err, FileNotFoundError):
        return str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
