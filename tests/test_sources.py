"""list_inputs / read_bytes / resolve_fs on local folders, globs, list files and a moto S3 server;
which store failures are an image's error row (permanent) and which raise (transient)."""
from __future__ import annotations

import http.server
import socket
import threading

import botocore.session
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from rayiqa.config import InputConfig, StorageConfig
from rayiqa.io.fs import resolve_fs, split_uri
from rayiqa.io.samples import samples_dir
from rayiqa.io.errors import InputError, StoreUnavailable
from rayiqa.io.sources import list_inputs, read_bytes, read_decoded

KEY, SECRET, BUCKET = "testing-key", "testing-secret", "images"
S3_OBJECTS = {  # key -> bytes
    "set/a.jpg": b"jpeg-a",
    "set/b.PNG": b"png-b" * 10,
    "set/sub/c.webp": b"webp-c",
    "set/notes.txt": b"not an image",
    "set/sub/deeper/d.jpeg": b"jpeg-d",
    "other/e.jpg": b"jpeg-e",
}


def _touch(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode())


@pytest.fixture
def tree(tmp_path):
    _touch(tmp_path, ["b.jpg", "a.PNG", "sub/c.webp", "sub/deep/d.JPEG", "notes.txt", "labels.csv", "sub/e.gif.bak"])
    return tmp_path


def test_local_folder_is_listed_recursively_sorted_and_filtered(tree):
    got = list_inputs(InputConfig(uri=str(tree)))
    assert got == sorted(str(tree / n) for n in ["a.PNG", "b.jpg", "sub/c.webp", "sub/deep/d.JPEG"])
    assert list_inputs(InputConfig(uri=f"file://{tree}")) == got


def test_extensions_limit_and_glob(tree):
    assert list_inputs(InputConfig(uri=str(tree), extensions=["jpeg", ".WEBP"])) == [
        str(tree / "sub/c.webp"),
        str(tree / "sub/deep/d.JPEG"),
    ]
    assert list_inputs(InputConfig(uri=str(tree), limit=2)) == [str(tree / "a.PNG"), str(tree / "b.jpg")]
    assert list_inputs(InputConfig(uri=f"{tree}/sub/*")) == [str(tree / "sub/c.webp")]  # one level, files only
    assert list_inputs(InputConfig(uri=f"{tree}/**/*.webp")) == [str(tree / "sub/c.webp")]
    assert list_inputs(InputConfig(uri=f"{tree}/*.*")) == [str(tree / "a.PNG"), str(tree / "b.jpg")]


def test_list_files_are_taken_as_given_deduplicated_and_resolved(tree):
    entries = ["b.jpg", str(tree / "notes.txt"), "b.jpg", "s3://bkt/x.jpg", "sub/c.webp"]
    (tree / "list.txt").write_text("\n".join(entries) + "\n\n")
    pq.write_table(pa.table({"uri": entries, "n": list(range(5))}), tree / "list.parquet")
    (tree / "list.csv").write_text("uri,n\n" + "\n".join(f"{e},{i}" for i, e in enumerate(entries)) + "\n")
    expected = sorted({str(tree / "b.jpg"), str(tree / "notes.txt"), "s3://bkt/x.jpg", str(tree / "sub/c.webp")})
    assert list_inputs(InputConfig(uri=str(tree / "list.txt"))) == expected
    for name in ["list.parquet", "list.csv"]:
        assert list_inputs(InputConfig(uri=str(tree / name), list_column="uri")) == expected
    with pytest.raises(ValueError, match=r"input\.list_column='path'.*columns: \['uri', 'n'\]"):
        list_inputs(InputConfig(uri=str(tree / "list.csv")))


def test_missing_or_empty_input_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"input\.uri=.*no such folder"):
        list_inputs(InputConfig(uri=str(tmp_path / "nope")))
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ValueError, match=r"input\.uri=.*no images found"):
        list_inputs(InputConfig(uri=str(tmp_path)))
    with pytest.raises(ValueError, match=r"input\.uri=.*cannot list inputs.*FileNotFoundError"):
        list_inputs(InputConfig(uri=str(tmp_path / "missing.parquet")))
    with pytest.raises(ValueError, match="unsupported URI scheme 'ftp'"):
        list_inputs(InputConfig(uri="ftp://host/x"))


def test_builtin_samples_lists_the_bundled_images():
    got = list_inputs(InputConfig())
    assert len(got) >= 24 and all(u.startswith(str(samples_dir())) for u in got)
    assert not any(u.endswith((".csv", ".md")) for u in got)


def test_read_bytes_local_errors_are_values(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"12345")
    fs, path = resolve_fs(str(tmp_path / "x.jpg"), StorageConfig())
    assert read_bytes("x", fs, path, 5) == (b"12345", None, None)
    data, kind, msg = read_bytes("x", fs, path, 4)
    assert (data, kind) == (None, "too_many_bytes") and "5 bytes > max_bytes 4" in msg
    for target in [tmp_path / "gone.jpg", tmp_path]:  # missing file; a folder
        data, kind, msg = read_bytes(str(target), fs, str(target), 100)
        assert (data, kind) == (None, "read_error") and str(target) in msg


def test_split_uri_keeps_glob_characters():
    assert split_uri("s3://b/dir/img?.jpg") == ("s3", "b/dir/img?.jpg")
    assert split_uri("S3://b/dir/") == ("s3", "b/dir")
    with pytest.raises(ValueError, match="needs a bucket"):
        split_uri("s3://")


# ---- S3 through a moto server on 127.0.0.1 -------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY, aws_secret_access_key=SECRET
    )
    client.create_bucket(Bucket=BUCKET)
    for key, body in S3_OBJECTS.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    client.put_object(Bucket=BUCKET, Key="lists/l.csv", Body=b"path\n../set/a.jpg\ns3://images/set/notes.txt\n")
    yield endpoint
    server.stop()


@pytest.fixture
def storage(moto_endpoint):
    return StorageConfig(endpoint_url=moto_endpoint, key=KEY, secret=SECRET, region="us-east-1")


def test_s3_prefix_listing_glob_and_list_file(storage):
    def ls(uri, **kw):
        return list_inputs(InputConfig(uri=uri, storage=storage, **kw))

    images = ["s3://images/set/a.jpg", "s3://images/set/b.PNG", "s3://images/set/sub/c.webp", "s3://images/set/sub/deeper/d.jpeg"]
    assert ls("s3://images/set") == images
    assert ls("s3://images/set/", limit=1) == images[:1]
    assert ls("s3://images") == sorted(images + ["s3://images/other/e.jpg"])
    assert ls("s3://images/set/*.jpg") == ["s3://images/set/a.jpg"]
    assert ls("s3://images/set/**/*.jp*g") == ["s3://images/set/a.jpg", "s3://images/set/sub/deeper/d.jpeg"]
    assert ls("s3://images/lists/l.csv") == ["s3://images/set/a.jpg", "s3://images/set/notes.txt"]
    with pytest.raises(ValueError, match=r"input\.uri='s3://no-such-bucket/x'"):
        ls("s3://no-such-bucket/x")


def test_s3_read_bytes(storage):
    fs, path = resolve_fs("s3://images/set/b.PNG", storage)
    assert read_bytes("s3://images/set/b.PNG", fs, path, 1000) == (S3_OBJECTS["set/b.PNG"], None, None)
    assert read_bytes("u", fs, path, 49)[1] == "too_many_bytes"  # 50 bytes
    data, kind, msg = read_bytes("s3://images/set/zzz.jpg", fs, "images/set/zzz.jpg", 1000)
    assert (data, kind) == (None, "read_error") and "zzz.jpg" in msg


def test_s3_options_come_from_the_environment(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    cfg = InputConfig(uri="s3://images/other")
    assert list_inputs(cfg) == ["s3://images/other/e.jpg"]
    fs, path = resolve_fs("s3://images/other/e.jpg", cfg.storage)
    assert read_bytes("e", fs, path, 100) == (b"jpeg-e", None, None)


@pytest.mark.parametrize("uri", ["builtin:sample", "s3://"])
def test_bad_input_uris_are_input_errors(uri):
    with pytest.raises(InputError, match=r"^input\.uri="):
        list_inputs(InputConfig(uri=uri))


# ---- permanent vs transient store failures ---------------------------------------------------------


@pytest.fixture
def status_store():
    """An S3 endpoint on 127.0.0.1 that answers every request with `status_store.status`."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def _reply(self) -> None:
            self.send_response(Store.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _reply

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class Store:
        status = 200
        storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{server.server_address[1]}", key=KEY, secret=SECRET,
                                region="us-east-1", retry_attempts=2)

    yield Store
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [403, 404])
def test_access_denied_and_not_found_are_error_rows(status_store, status):
    status_store.status = status
    fs, path = resolve_fs("s3://images/x.jpg", status_store.storage)
    data, kind, msg = read_bytes("s3://images/x.jpg", fs, path, 100)
    assert (data, kind) == (None, "read_error") and "s3://images/x.jpg" in msg


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_raise_after_the_sdk_retries(status_store, status):
    status_store.status = status
    fs, path = resolve_fs("s3://images/x.jpg", status_store.storage)
    with pytest.raises(StoreUnavailable, match=r"s3://images/x\.jpg"):
        read_bytes("s3://images/x.jpg", fs, path, 100)


@pytest.mark.parametrize("status, error", [(403, "PermissionError"), (503, "")])
def test_a_store_refusing_the_listing_names_input_uri_and_storage(status_store, status, error):
    """Missing or wrong credentials look like this to s3fs: a 403 on the listing (unsigned requests)."""
    status_store.status = status
    with pytest.raises(InputError) as err:
        list_inputs(InputConfig(uri="s3://images/set", storage=status_store.storage))
    message = str(err.value)
    assert message.startswith("input.uri='s3://images/set': cannot list inputs (check input.storage and the AWS_* credentials)")
    assert error in message and len(message.splitlines()) == 1


def test_unreachable_store_raises():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{port}", key=KEY, secret=SECRET, region="us-east-1",
                            retry_attempts=1)
    fs, path = resolve_fs("s3://images/x.jpg", storage)
    with pytest.raises(StoreUnavailable, match="NETWORK_CONNECTION"):
        read_bytes("s3://images/x.jpg", fs, path, 100)


def test_undecodable_file_keeps_the_header_size(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:-30])  # the header survives, the pixel data does not
    fs, path = resolve_fs(str(tmp_path / "cut.png"), StorageConfig())
    res = read_decoded(str(tmp_path / "cut.png"), fs, path, InputConfig())
    assert res.error_kind == "truncated" and (res.width, res.height) == (40, 30)
