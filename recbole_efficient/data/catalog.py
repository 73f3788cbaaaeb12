"""Datasets fetched by name: the publisher's archive, pinned by SHA-256 and size, its mirrors,
and the statistics its RecBole atomic files must have.

Every address, mirror or not, must deliver the pinned bytes, so a mirror is as safe as the
publisher. RecBole's processed copies (``url.yaml``) are not in the lists: they are other
files, whose hashes nobody publishes, and their links answer "Access Denied" since August 2026.
``ml-100k`` is not here either: RecBole ships it in its package.
"""

from dataclasses import dataclass

import yaml

__all__ = ["Archive", "DATASETS", "archive_urls", "mirror_list"]

_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
# Byte-identical copies of ml-100k, ml-1m, ml-10m and ml-20m kept by Microsoft Recommenders
# (recommenders-team/recommenders PR #2369), for when the GroupLens server is unreachable.
_HF_MOVIELENS = "https://huggingface.co/datasets/Recommenders/MovieLens/resolve/main/"
_MOVIELENS_TERMS = ("MovieLens is published by GroupLens Research (University of Minnesota) for "
                    "research use; see its README for the terms and the citation.")


@dataclass(frozen=True)
class Archive:
    """A publisher's archive and what converting it must give.

    ``layout`` names the converter (``recbole_efficient.data.movielens``); ``root`` is the folder
    inside the archive; ``users``/``items``/``interactions`` are the published counts of the
    ``.inter`` file (``None``: not published, not checked).
    """

    name: str
    file: str
    sha256: str
    size: int
    urls: tuple
    layout: str
    root: str
    interactions: int
    users: int
    items: int | None
    homepage: str
    terms: str = _MOVIELENS_TERMS

    @property
    def known_hash(self):
        return f"sha256:{self.sha256}"


def _movielens(name, sha256, size, layout, root, interactions, users, items, mirrored):
    file = f"{name}.zip"
    urls = (_GROUPLENS + file,) + ((_HF_MOVIELENS + file,) if mirrored else ())
    return Archive(name, file, sha256, size, urls, layout, root, interactions, users, items,
                   homepage=f"https://grouplens.org/datasets/movielens/{name[3:]}/")


# SHA-256 and sizes as listed by tensorflow/datasets (url_checksums/movielens.txt) for ml-1m,
# ml-20m and ml-25m, each matched by a second independent public listing; ml-10m and ml-32m
# from two independent public listings each. Counts: the GroupLens READMEs (ratings, users of
# the ratings file) and the rated movies RecBole's dataset table reports.
DATASETS = {a.name: a for a in (
    _movielens("ml-1m", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
               5_917_549, "movielens-dat", "ml-1m", 1_000_209, 6_040, 3_706, mirrored=True),
    _movielens("ml-10m", "813c411ccb6122564edfe752e7f80c4dcc5aa25fa94c93622f6877a7ba252862",
               65_566_137, "movielens-dat", "ml-10M100K", 10_000_054, 69_878, 10_677,
               mirrored=True),
    _movielens("ml-20m", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
               198_702_078, "movielens-csv", "ml-20m", 20_000_263, 138_493, 26_744,
               mirrored=True),
    _movielens("ml-25m", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
               261_978_986, "movielens-csv", "ml-25m", 25_000_095, 162_541, 59_047,
               mirrored=False),
    _movielens("ml-32m", "e4a68655d7386b8f95f2f2424b2ff975dfdd15ffd59e0d864a14dca43e99d6ee",
               238_950_008, "movielens-csv", "ml-32m", 32_000_204, 200_948, None,
               mirrored=False),
)}


def archive_urls(archive, mirrors=()):
    """Where to fetch ``archive``, in order: each ``mirrors`` prefix (a URL or a local folder),
    then the publisher and its public mirrors."""
    own = [f"{m.rstrip('/')}/{archive.file}" for m in mirrors or ()]
    return own + [u for u in archive.urls if u not in own]


def mirror_list(value):
    """``dataset_mirrors`` as a list: ``None``, one prefix, a list, or a list written as text
    (``--dataset_mirrors=[https://a/, /data/archives]``). Raises ``ValueError`` otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        value = yaml.safe_load(text) if text.startswith("[") else [text]
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) and m.strip()
                                                       for m in value):
        raise ValueError(f"dataset_mirrors={value!r}")
    return [m.strip() for m in value]
