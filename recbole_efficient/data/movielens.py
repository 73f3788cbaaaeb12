"""MovieLens archives to RecBole atomic files.

``.inter``: ``user_id:token item_id:token rating:float timestamp:float``, one row per rating in
the publisher's order. ``.item``: ``item_id:token movie_title:token_seq release_year:token
genre:token_seq`` (title without its trailing year, genres space-separated). ``.user`` (archives
with ``users.dat``): ``user_id:token age:token gender:token occupation:token zip_code:token``.
These are the columns of RecBole's own processed MovieLens files; the ratings are streamed
from the archive, never extracted whole.
"""

import csv
import io
import re
import zipfile

from tqdm import tqdm

__all__ = ["INTER_HEADER", "LAYOUTS", "convert_archive"]

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
_ITEM_HEADER = ["item_id:token", "movie_title:token_seq", "release_year:token", "genre:token_seq"]
_USER_HEADER = ["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"]
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_BLOCK = 1 << 24


class ArchiveLayoutError(ValueError):
    """The archive does not hold the files its layout promises."""


def _text(raw):
    # ml-1m's movies.dat is Latin-1; the later releases are UTF-8
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _item_row(movie_id, title, genres):
    match = _TITLE_YEAR.match(title.strip())
    name, year = (match.group(1), match.group(2)) if match else (title.strip(), "")
    genres = "" if genres.strip() == "(no genres listed)" else genres.strip().replace("|", " ")
    return [movie_id.strip(), " ".join(name.split()), year, genres]


def _write_rows(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _stream_ratings(src, out, separator, total, progress, label):
    """Copy ratings lines to ``.inter`` rows, block by block, each block ending on a line end
    (so no separator is ever cut in two)."""
    out.write(INTER_HEADER.encode())
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress,
              leave=False) as bar:
        while block := src.read(_BLOCK):
            block += src.readline()
            out.write(block.replace(b"\r", b"").replace(separator, b"\t"))
            bar.update(len(block))


def _member(zf, root, name):
    path = f"{root}/{name}"
    try:
        return zf.getinfo(path)
    except KeyError:
        raise ArchiveLayoutError(f"the archive has no {path}") from None


def _convert_dat(zf, root, out_dir, name, progress):
    """ml-1m and ml-10m: ``::``-separated ratings.dat, movies.dat and (ml-1m) users.dat."""
    ratings = _member(zf, root, "ratings.dat")
    with zf.open(ratings) as src, open(out_dir / f"{name}.inter", "wb") as out:
        _stream_ratings(src, out, b"::", ratings.file_size, progress, f"{name}: ratings")
    movies = _text(zf.read(_member(zf, root, "movies.dat"))).splitlines()
    _write_rows(out_dir / f"{name}.item", _ITEM_HEADER,
                (_item_row(*line.split("::", 2)) for line in movies if line.strip()))
    if f"{root}/users.dat" in zf.namelist():
        users = _text(zf.read(f"{root}/users.dat")).splitlines()
        # users.dat: UserID::Gender::Age::Occupation::Zip-code
        rows = ([u, age, gender, job, zipcode] for u, gender, age, job, zipcode
                in (line.split("::") for line in users if line.strip()))
        _write_rows(out_dir / f"{name}.user", _USER_HEADER, rows)


def _convert_csv(zf, root, out_dir, name, progress):
    """ml-20m, ml-25m, ml-32m: ratings.csv (userId,movieId,rating,timestamp) and movies.csv."""
    ratings = _member(zf, root, "ratings.csv")
    with zf.open(ratings) as src, open(out_dir / f"{name}.inter", "wb") as out:
        header = src.readline().decode().strip()
        if header != "userId,movieId,rating,timestamp":
            raise ArchiveLayoutError(f"{root}/ratings.csv starts with {header!r}, not "
                                     "'userId,movieId,rating,timestamp'")
        _stream_ratings(src, out, b",", ratings.file_size, progress, f"{name}: ratings")
    with zf.open(_member(zf, root, "movies.csv")) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        next(reader)  # movieId,title,genres
        _write_rows(out_dir / f"{name}.item", _ITEM_HEADER,
                    (_item_row(*row) for row in reader if row))


LAYOUTS = {"movielens-dat": _convert_dat, "movielens-csv": _convert_csv}


def convert_archive(archive, zip_path, out_dir, progress=False):
    """Write ``out_dir/<name>.inter`` (+ ``.item``, ``.user``) from a verified ``archive``.

    Raises :class:`ArchiveLayoutError` when the archive lacks a file its layout needs.
    """
    with zipfile.ZipFile(zip_path) as zf:
        LAYOUTS[archive.layout](zf, archive.root, out_dir, archive.name, progress)
