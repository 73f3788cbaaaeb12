"""Datasets by name, offline: a local HTTP server on 127.0.0.1 serves archives built here in
each publisher's format (a few users); the catalogue entries point at it with these archives'
hashes. Nothing here reaches the internet."""

import dataclasses
import errno
import hashlib
import http.server
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from recbole_efficient import cli
from recbole_efficient.data import catalog, fetch
from recbole_efficient.data.fetch import DatasetError, install_dataset

ROOT = Path(__file__).resolve().parents[1]

# user, item, rating, time: 6 users with 4-7 ratings each (leave-one-out needs 4 to validate)
RATINGS = [(u, (u * 7 + k * 3) % 11 + 1, 1 + (u + k) % 5, 978300000 + 100 * u + k)
           for u in range(1, 7) for k in range(3 + u % 5)]
MOVIES = [(i, f"Movie {i}: Part {i} ({1990 + i})", "Comedy|Drama" if i % 2 else "Action")
          for i in range(1, 12)]


def _zip(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def movielens_dat(root, with_users):
    """ml-1m / ml-10m: ``::`` files, ml-1m's movies.dat in Latin-1."""
    movies = [f"{i}::{t}::{g}" for i, t, g in MOVIES] + ["12::Misérables, Les (1995)::Drama"]
    files = {
        f"{root}/ratings.dat": "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS),
        f"{root}/movies.dat": ("\n".join(movies) + "\n").encode(
            "latin-1" if with_users else "utf-8"),
    }
    if with_users:
        files[f"{root}/users.dat"] = "".join(f"{u}::{'MF'[u % 2]}::{18 + u}::{u % 21}::0{u}123\n"
                                             for u in range(1, 7))
    else:
        files[f"{root}/tags.dat"] = "1::2::funny::978300000\n"
    return _zip(files)


def movielens_csv(root):
    """ml-20m / ml-25m / ml-32m: ratings.csv and movies.csv with a header, quoted titles."""
    movies = [f"{i},\"{t}\",{g}" for i, t, g in MOVIES]
    movies += ['12,"""Great Performances"" Cats (1998)",Musical',
               "13,Untitled Short,(no genres listed)"]
    return _zip({
        f"{root}/ratings.csv": "userId,movieId,rating,timestamp\n"
        + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in RATINGS),
        f"{root}/movies.csv": "movieId,title,genres\n" + "\n".join(movies) + "\n",
        f"{root}/links.csv": "movieId,imdbId,tmdbId\n1,1,1\n",
    })


ARCHIVES = {"ml-1m": lambda: movielens_dat("ml-1m", True),
            "ml-10m": lambda: movielens_dat("ml-10M100K", False),
            "ml-20m": lambda: movielens_csv("ml-20m")}


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 and records every request path. A path in
    ``drop`` sends its full Content-Length but half its bytes, then closes (once each)."""

    def __init__(self):
        self.files, self.requests, self.drop, self.delay = {}, [], set(), 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path in server.drop:
                    server.drop.discard(self.path)
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                for start in range(0, len(data), 4096):
                    self.wfile.write(data[start:start + 4096])
                    time.sleep(server.delay)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def tamper(data):
    """The same archive with one byte changed."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]


def pin(monkeypatch, server, name, data=None, publisher="publisher", mirror="mirror", **counts):
    """Point catalogue entry ``name`` at this server (publisher, then a public mirror) with the
    hash, size and counts of the archive built here; returns the archive bytes."""
    data = ARCHIVES[name]() if data is None else data
    real = catalog.DATASETS[name]
    file = real.file
    counts = {"interactions": len(RATINGS), "users": 6, "items": len({i for _, i, _, _ in RATINGS}),
              **counts}
    entry = dataclasses.replace(
        real, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
        urls=(f"{server.url}/{publisher}/{file}", f"{server.url}/{mirror}/{file}"), **counts)
    monkeypatch.setitem(catalog.DATASETS, name, entry)
    return data


def assert_nothing_installed(data_path, name):
    assert not (data_path / name).exists()
    assert not list(data_path.glob(f".{name}.partial*"))
    assert not (data_path / fetch.DOWNLOADS / name).exists()


# -- conversion ---------------------------------------------------------------------------------
def test_ml_1m_format_gives_recbole_atomic_files(server, tmp_path, monkeypatch):
    pin(monkeypatch, server, "ml-1m", publisher="p")
    server.files["/p/ml-1m.zip"] = ARCHIVES["ml-1m"]()
    folder = install_dataset("ml-1m", tmp_path, log=lambda m: None)
    assert folder == tmp_path / "ml-1m"
    inter = (folder / "ml-1m.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert inter[1:] == [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    item = (folder / "ml-1m.item").read_text(encoding="utf-8").splitlines()
    assert item[0] == "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"
    assert item[1] == "1\tMovie 1: Part 1\t1991\tComedy Drama"
    assert item[-1] == "12\tMisérables, Les\t1995\tDrama"  # Latin-1 read, UTF-8 written
    user = (folder / "ml-1m.user").read_text().splitlines()
    assert user[0] == "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
    assert user[1] == "1\t19\tF\t1\t01123"  # users.dat: UserID::Gender::Age::Occupation::Zip
    assert sorted(p.name for p in tmp_path.iterdir()) == [fetch.DOWNLOADS, "ml-1m"]


@pytest.mark.parametrize("name", ["ml-10m", "ml-20m"])
def test_later_movielens_formats_give_the_same_interactions(server, tmp_path, monkeypatch, name):
    pin(monkeypatch, server, name)
    server.files[f"/publisher/{name}.zip"] = ARCHIVES[name]()
    folder = install_dataset(name, tmp_path, log=lambda m: None)
    rating = "{r}.5" if name == "ml-20m" else "{r}"
    rows = (folder / f"{name}.inter").read_text().splitlines()[1:]
    assert rows == [f"{u}\t{i}\t{rating.format(r=r)}\t{t}" for u, i, r, t in RATINGS]
    assert not (folder / f"{name}.user").exists()  # these releases have no user file
    items = (folder / f"{name}.item").read_text(encoding="utf-8").splitlines()
    assert items[1] == "1\tMovie 1: Part 1\t1991\tComedy Drama"
    if name == "ml-20m":
        import pandas as pd

        # quoted titles survive the way RecBole reads atomic files (pandas, tab-separated)
        frame = pd.read_csv(folder / f"{name}.item", sep="\t", dtype=str, keep_default_na=False)
        assert frame.iloc[11, 1] == '"Great Performances" Cats' and frame.iloc[11, 2] == "1998"
        assert frame.iloc[12].tolist() == ["13", "Untitled Short", "", ""]


def test_statistics_must_match_the_published_counts(server, tmp_path, monkeypatch):
    pin(monkeypatch, server, "ml-1m", users=7)
    server.files["/publisher/ml-1m.zip"] = ARCHIVES["ml-1m"]()
    with pytest.raises(DatasetError, match=r"users 6 \(published: 7\); nothing was installed"):
        install_dataset("ml-1m", tmp_path, log=lambda m: None)
    assert not (tmp_path / "ml-1m").exists() and not (tmp_path / ".ml-1m.partial").exists()


# -- failures leave nothing ---------------------------------------------------------------------
def test_wrong_hash_is_refused_and_leaves_nothing(server, tmp_path, monkeypatch):
    pin(monkeypatch, server, "ml-1m")
    tampered = tamper(ARCHIVES["ml-1m"]())
    server.files["/publisher/ml-1m.zip"] = tampered
    expected = catalog.DATASETS["ml-1m"].sha256
    with pytest.raises(DatasetError) as err:
        install_dataset("ml-1m", tmp_path, log=lambda m: None)
    message = str(err.value)
    assert "\n" not in message
    assert f"checksum mismatch (expected sha256 {expected}, got " \
           f"{hashlib.sha256(tampered).hexdigest()}); the downloaded copy was deleted" in message
    assert "/mirror/ml-1m.zip: HTTP 404" in message and "Nothing was installed" in message
    assert_nothing_installed(tmp_path, "ml-1m")


def test_dropped_connection_leaves_nothing_and_the_next_run_succeeds(server, tmp_path,
                                                                      monkeypatch):
    data = pin(monkeypatch, server, "ml-1m")
    server.files["/publisher/ml-1m.zip"] = data
    server.drop.add("/publisher/ml-1m.zip")
    with pytest.raises(DatasetError, match="connection dropped before the whole file arrived"):
        install_dataset("ml-1m", tmp_path, log=lambda m: None)
    assert_nothing_installed(tmp_path, "ml-1m")
    install_dataset("ml-1m", tmp_path, log=lambda m: None)
    assert (tmp_path / "ml-1m" / "ml-1m.inter").is_file()


def test_mirrors_are_tried_in_order_and_a_verified_archive_is_not_fetched_again(
        server, tmp_path, monkeypatch):
    data = pin(monkeypatch, server, "ml-1m")
    server.files["/publisher/ml-1m.zip"] = b"not the archive"   # wrong bytes: next address
    server.files["/mirror/ml-1m.zip"] = data
    lab = f"{server.url}/lab"                                    # 404 there
    said = []
    install_dataset("ml-1m", tmp_path, mirrors=[lab], log=said.append)
    assert server.requests == ["/lab/ml-1m.zip", "/publisher/ml-1m.zip", "/mirror/ml-1m.zip"]
    assert [m.split(" from ")[-1] for m in said if m.startswith("Downloading")] == [
        f"{lab}/ml-1m.zip", f"{server.url}/publisher/ml-1m.zip", f"{server.url}/mirror/ml-1m.zip"]
    # The converted files are gone, the verified archive is kept: no second download.
    for file in (tmp_path / "ml-1m").iterdir():
        file.unlink()
    install_dataset("ml-1m", tmp_path, log=lambda m: None)
    assert len(server.requests) == 3 and (tmp_path / "ml-1m" / "ml-1m.inter").is_file()
    # An archive placed by hand with other bytes is named, removed and fetched again.
    shutil.rmtree(tmp_path / "ml-1m")
    (tmp_path / fetch.DOWNLOADS / "ml-1m" / "ml-1m.zip").write_bytes(tamper(data))
    said.clear()
    install_dataset("ml-1m", tmp_path, log=said.append)
    assert "ml-1m.zip: checksum mismatch" in said[0] and "it was deleted" in said[0]
    assert server.requests[3:] == ["/publisher/ml-1m.zip", "/mirror/ml-1m.zip"]
    assert (tmp_path / "ml-1m" / "ml-1m.inter").is_file()


def test_a_local_folder_mirror_is_hash_checked_too(server, tmp_path, monkeypatch):
    data = pin(monkeypatch, server, "ml-1m")
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "ml-1m.zip").write_bytes(tamper(data))
    server.files["/publisher/ml-1m.zip"] = data
    said = []
    install_dataset("ml-1m", tmp_path / "data", mirrors=[str(shelf)], log=said.append)
    assert any(f"{shelf}/ml-1m.zip" in m for m in said)
    assert any("checksum mismatch" in m for m in said)      # the shelf's copy was refused
    assert server.requests == ["/publisher/ml-1m.zip"]
    (shelf / "ml-1m.zip").write_bytes(data)                  # a good copy: no network at all
    install_dataset("ml-1m", tmp_path / "again", mirrors=[f"file://{shelf}"], log=lambda m: None)
    assert server.requests == ["/publisher/ml-1m.zip"]


def test_a_killed_download_leaves_no_dataset_and_the_next_run_starts_clean(server, tmp_path,
                                                                          monkeypatch):
    padded = zipfile.ZipFile(io.BytesIO(ARCHIVES["ml-1m"]()))
    files = {n: padded.read(n) for n in padded.namelist()}
    files["ml-1m/README"] = random.Random(0).randbytes(400_000)  # incompressible
    data = pin(monkeypatch, server, "ml-1m", data=_zip(files))
    server.files["/publisher/ml-1m.zip"] = data
    server.delay = 0.05  # 4 KiB per 50 ms: about 5 s for the whole archive
    entry = catalog.DATASETS["ml-1m"]
    script = (
        "import dataclasses, sys\n"
        "from recbole_efficient.data import catalog, fetch\n"
        f"catalog.DATASETS['ml-1m'] = dataclasses.replace(catalog.DATASETS['ml-1m'], "
        f"sha256={entry.sha256!r}, size={entry.size}, urls={entry.urls!r})\n"
        f"fetch.install_dataset('ml-1m', {str(tmp_path)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    downloads = tmp_path / fetch.DOWNLOADS / "ml-1m"
    deadline = time.time() + 120
    while not (downloads.is_dir() and any(downloads.iterdir())) and time.time() < deadline:
        time.sleep(0.05)  # until the download has started writing
    assert proc.poll() is None, proc.communicate()[1][-2000:]  # killed mid-download
    proc.kill()
    proc.wait()
    assert server.requests == ["/publisher/ml-1m.zip"]
    assert list(downloads.iterdir()) and not (downloads / "ml-1m.zip").exists()  # a leftover
    assert not (tmp_path / "ml-1m").exists()
    server.delay = 0.0
    install_dataset("ml-1m", tmp_path, log=lambda m: None)
    assert sorted(p.name for p in downloads.iterdir()) == ["ml-1m.zip"]  # leftovers removed
    assert (tmp_path / "ml-1m" / "ml-1m.inter").is_file()


def test_a_full_disk_is_one_line_and_leaves_nothing(server, tmp_path, monkeypatch):
    pin(monkeypatch, server, "ml-1m")
    server.files["/publisher/ml-1m.zip"] = ARCHIVES["ml-1m"]()

    def full(archive, zip_path, out_dir, progress=False):
        (out_dir / "ml-1m.inter").write_text("user_id:token\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fetch, "convert_archive", full)
    with pytest.raises(DatasetError, match="No space left on the device of .* partial files "
                                           "were removed"):
        install_dataset("ml-1m", tmp_path, log=lambda m: None)
    assert not (tmp_path / "ml-1m").exists() and not (tmp_path / ".ml-1m.partial").exists()


# -- the command line ---------------------------------------------------------------------------
def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["recbole-efficient", *args])  # RecBole's Config reads it
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_offline_download_is_one_line_naming_every_address(server, tmp_path, monkeypatch, capsys):
    pin(monkeypatch, server, "ml-1m")
    dead = f"http://127.0.0.1:{closed_port()}"
    code, out, err = run_cli(monkeypatch, capsys, "download", "ml-1m", f"--data_path={tmp_path}",
                             f"--dataset_mirrors={dead}")
    assert code == 2 and "Traceback" not in err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error == err.splitlines()[-1:]
    assert f"{dead}/ml-1m.zip: connection refused" in error[0]
    assert f"{server.url}/publisher/ml-1m.zip: HTTP 404 Not Found" in error[0]
    assert f"place ml-1m.zip (sha256 {catalog.DATASETS['ml-1m'].sha256}" in error[0]
    assert "/work/" not in error[0].replace(str(tmp_path), "")  # no path of ours


def test_unknown_names_list_the_known_ones(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "download", "ml-3m", f"--data_path={tmp_path}")
    assert code == 2 and "ml-1m, ml-10m, ml-20m, ml-25m, ml-32m" in err
    assert "recbole-efficient convert FILE" in err and "Traceback" not in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "--model=SoftmaxSASRec",
                           "--dataset=mydata", f"--data_path={tmp_path}")
    assert code == 2 and "is not one we can fetch by name (ml-100k, ml-1m" in err
    assert f"--name=mydata --data_path={tmp_path}`" in err
    assert len(err.strip().splitlines()) == 1  # RecBole did not warn about the "train" word


def test_a_data_path_that_cannot_be_written_is_one_line(server, tmp_path, monkeypatch, capsys):
    pin(monkeypatch, server, "ml-1m")
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("")
    code, _, err = run_cli(monkeypatch, capsys, "--model=SoftmaxSASRec", "--dataset=ml-1m",
                           f"--data_path={not_a_folder}")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"Cannot prepare ml-1m under {not_a_folder}" in err and server.requests == []


def test_allow_download_false_never_opens_a_socket(tmp_path, monkeypatch, capsys):
    opened = []

    def refuse(*args, **kwargs):  # never reaches a real host, even if the code regressed
        opened.append(args)
        raise OSError("network use in a test that must not touch it")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    code, _, err = run_cli(monkeypatch, capsys, "--model=SoftmaxSASRec", "--dataset=ml-1m",
                           f"--data_path={tmp_path}", "--allow_download=False")
    assert code == 2 and opened == []
    assert "allow_download=False: drop --allow_download=False to fetch it" in err
    assert not (tmp_path / fetch.DOWNLOADS).exists()


def test_headline_command_trains_ml_1m_from_a_mirror_and_fails_in_one_line_offline(
        server, tmp_path, monkeypatch, capsys):
    data = pin(monkeypatch, server, "ml-1m", publisher="gone", mirror="gone-too")
    server.files["/lab/ml-1m.zip"] = data
    monkeypatch.chdir(tmp_path)
    small = ["--epochs=1", "--show_progress=False", "--hidden_size=16", "--inner_size=32",
             "--n_layers=1", "--memory_size=256", "--MAX_ITEM_LIST_LENGTH=8"]
    code, out, err = run_cli(monkeypatch, capsys, "--model=ELASTIC", "--dataset=ml-1m",
                             "--data_path=data", f"--dataset_mirrors={server.url}/lab", *small)
    assert code == 0, err[-2000:]
    assert "test_result: " in out and "ndcg@10=" in out
    assert (tmp_path / "data" / "ml-1m" / "ml-1m.inter").is_file()

    logs = sorted((tmp_path / "log").rglob("*.log"))
    monkeypatch.setitem(catalog.DATASETS, "ml-1m", dataclasses.replace(
        catalog.DATASETS["ml-1m"], urls=(f"http://127.0.0.1:{closed_port()}/ml-1m.zip",)))
    code, out, err = run_cli(monkeypatch, capsys, "--model=ELASTIC", "--dataset=ml-1m",
                             "--data_path=offline", *small)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: Could not fetch ml-1m: ")
    assert len([line for line in err.splitlines() if line.startswith("error")]) == 1
    assert not (tmp_path / "offline" / "ml-1m").exists()
    assert sorted((tmp_path / "log").rglob("*.log")) == logs  # stopped before any log


def test_catalogue_pins_every_archive():
    for name, entry in catalog.DATASETS.items():
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0 and entry.size > 0
        assert entry.urls[0].startswith("https://files.grouplens.org/")
        assert entry.file == f"{name}.zip" and entry.interactions > entry.users > 0
    assert catalog.mirror_list("[https://a.example/x, /srv/archives]") == [
        "https://a.example/x", "/srv/archives"]
    assert catalog.mirror_list("https://a.example/x") == ["https://a.example/x"]
    with pytest.raises(ValueError):
        catalog.mirror_list({"url": 1})
    assert os.path.basename(catalog.archive_urls(catalog.DATASETS["ml-1m"], ["/x/"])[0]) == \
        "ml-1m.zip"
