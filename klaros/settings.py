"""Klaros settings: one module, every value from the environment (see `.env.example`).

Production (`DEBUG=False`) refuses to start without the secrets it needs; development (`DEBUG=True`)
runs on embedded defaults: SQLite, a private media folder, the database task broker.
"""

import base64
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local env file is a convenience for development; real deployments set the environment.
# Variables already set in the environment win over the file. KLAROS_ENV_FILE names another
# file; set it to an empty string to read none (the tests do, so a developer's `.env` cannot
# change what they check).
_env_file = env.str("KLAROS_ENV_FILE", default=str(BASE_DIR / ".env"))
if _env_file and Path(_env_file).is_file():
    environ.Env.read_env(_env_file)


def env_secret(name: str, default: str = "") -> str:
    """Read NAME, or the file named by NAME_FILE (for Docker/Kubernetes secrets)."""
    file_path = env.str(f"{name}_FILE", default="")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={file_path} cannot be read: {exc}") from exc
    return env.str(name, default=default)


DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env_secret("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
KLAROS_ENCRYPTION_KEYS = env_secret("KLAROS_ENCRYPTION_KEYS")
# Ed25519 key that signs audit checkpoints (base64 of the 32-byte raw private key). It lives
# outside the database so that whoever can rewrite the audit tables cannot sign new heads.
KLAROS_AUDIT_SIGNING_KEY = env_secret("KLAROS_AUDIT_SIGNING_KEY")

if not DEBUG:
    missing = [
        name
        for name, value in (
            ("SECRET_KEY", SECRET_KEY),
            ("ALLOWED_HOSTS", ALLOWED_HOSTS),
            ("KLAROS_ENCRYPTION_KEYS", KLAROS_ENCRYPTION_KEYS),
            ("KLAROS_AUDIT_SIGNING_KEY", KLAROS_AUDIT_SIGNING_KEY),
        )
        if not value
    ]
    if missing:
        raise ImproperlyConfigured(
            "Klaros refuses to start in production mode (DEBUG=False) without "
            + ", ".join(missing)
            + ". Set them in the environment (or NAME_FILE), or set DEBUG=True for development."
        )
else:
    SECRET_KEY = SECRET_KEY or "django-insecure-development-only-key-never-use-in-production"
    ALLOWED_HOSTS = ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]", "testserver"]

# Where development keeps state that is not in the database (dev key file, SQLite, media).
KLAROS_VAR_DIR = Path(env.str("KLAROS_VAR_DIR", default=str(BASE_DIR / "var")))
# Development only: when no keyring is configured, a key is generated into this file, which
# lives outside the database so a database dump alone never holds what decrypts it.
KLAROS_DEV_KEY_FILE = Path(
    env.str("KLAROS_DEV_KEY_FILE", default=str(KLAROS_VAR_DIR / "dev-encryption-keys"))
)
# Development only: the audit signing key generated when DEBUG is on and none is set.
KLAROS_AUDIT_DEV_SIGNING_KEY_FILE = Path(
    env.str(
        "KLAROS_AUDIT_DEV_SIGNING_KEY_FILE",
        default=str(KLAROS_VAR_DIR / "dev-audit-signing-key"),
    )
)
if KLAROS_AUDIT_SIGNING_KEY:
    try:
        _signing_key_length = len(base64.b64decode(KLAROS_AUDIT_SIGNING_KEY, validate=True))
    except ValueError:
        _signing_key_length = -1
    if _signing_key_length != 32:
        raise ImproperlyConfigured(
            "KLAROS_AUDIT_SIGNING_KEY must be the base64 of a 32-byte Ed25519 private key"
        )

KLAROS_PUBLIC_URL = env.str("KLAROS_PUBLIC_URL", default="http://localhost:8000").rstrip("/")
# Meta's Graph API, version pinned. Plain http is refused unless the host is loopback.
WHATSAPP_GRAPH_URL = env.str("WHATSAPP_GRAPH_URL", default="https://graph.facebook.com/v25.0")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "csp",
    "django_q",
    "apps.accounts",
    "apps.tenants",
    "apps.audit",
    "apps.consent",
    "apps.media",
    "apps.conversations",
    "apps.privacy",
    "apps.billing",
    "apps.whatsapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "apps.tenants.middleware.TenantScopeMiddleware",
    # Last, as django-axes asks: it turns lockouts raised by the backend into responses.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "klaros.urls"
WSGI_APPLICATION = "klaros.wsgi.application"
ASGI_APPLICATION = "klaros.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.tenants.context_processors.tenant",
            ],
            # The inbox's tag libraries live in its own package, not in an app's templatetags/.
            "libraries": {
                "inbox_tags": "apps.conversations.inbox.templatetags.inbox_tags",
                "media_tags": "apps.conversations.inbox.templatetags.media_tags",
            },
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{KLAROS_VAR_DIR / 'klaros.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers proceed while the worker writes; IMMEDIATE transactions take the write
    # lock up front so two writers queue on the busy timeout instead of failing mid-transaction.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts -------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "inbox"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes). A failure counts against the account (the normalised email,
# so case variants share one budget) and, separately, against the client address: either one
# reaching AXES_FAILURE_LIMIT locks. Rotating X-Forwarded-For therefore never resets the
# account's counter. The lockout page is the styled `registration/locked_out.html` (HTTP 429).
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)  # hours
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_FORM_FIELD = "username"
AXES_USERNAME_CALLABLE = "apps.accounts.throttling.normalised_login_email"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The client address behind a reverse proxy. KLAROS_TRUSTED_PROXY_COUNT is how many proxies sit
# in front of Klaros, each appending the address it saw to X-Forwarded-For (nginx:
# `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`). 0 (the default): no proxy,
# the header is ignored and REMOTE_ADDR is the client. N: the N-th X-Forwarded-For entry from
# the right is the client; entries left of it are client-written and ignored. Setting it higher
# than the real number of proxies lets clients choose their address, so count exactly.
# We resolve the address ourselves instead of through django-ipware's AXES_IPWARE_* settings:
# ipware's proxy count means "proxy addresses inside the header", which yields no address at all
# for the usual one-proxy header (see apps/accounts/throttling.py).
KLAROS_TRUSTED_PROXY_COUNT = env.int("KLAROS_TRUSTED_PROXY_COUNT", default=0)
AXES_CLIENT_IP_CALLABLE = "apps.accounts.throttling.client_ip_behind_proxies"

# --- HTTPS and browser hardening ------------------------------------------------------------
# Behind a TLS-terminating proxy, set SECURE_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO (and make the
# proxy overwrite that header) so Django knows the original request was HTTPS.
_proxy_header = env.str("SECURE_PROXY_SSL_HEADER", default="")
if _proxy_header:
    SECURE_PROXY_SSL_HEADER = (_proxy_header, "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain HTTP
SECURE_HSTS_SECONDS = 0 if DEBUG else env.int("SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=12 * 3600)
CSRF_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# No inline script anywhere: every script is a static file from our own origin.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "media-src": ["'self'", "blob:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# Global request body cap stays at Django's default; the webhook endpoint alone reads larger
# bodies (Meta batches up to 3 MB) from the stream with its own bounded limit.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
KLAROS_WEBHOOK_MAX_BYTES = env.int("KLAROS_WEBHOOK_MAX_BYTES", default=4 * 1024 * 1024)

# --- Static files and media -----------------------------------------------------------------
STATIC_URL = "/static/"
# Where `collectstatic` gathers files for WhiteNoise to serve (production needs it run once per
# release: the manifest maps every `{% static %}` name to its hashed file).
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]

KLAROS_MEDIA_STORAGE = env.str("KLAROS_MEDIA_STORAGE", default="filesystem")
# Lifetime in seconds of the signed links media is served through (both backends).
KLAROS_MEDIA_URL_TTL = env.int("KLAROS_MEDIA_URL_TTL", default=300)
# Private folder of the filesystem backend. No URL maps to it: media leaves only through signed,
# expiring links handed out by a view that checks the member's tenant.
KLAROS_MEDIA_ROOT = Path(env.str("KLAROS_MEDIA_ROOT", default=str(KLAROS_VAR_DIR / "media")))
if not KLAROS_MEDIA_ROOT.is_absolute():
    KLAROS_MEDIA_ROOT = BASE_DIR / KLAROS_MEDIA_ROOT

if KLAROS_MEDIA_STORAGE == "filesystem":
    _media_backend = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(KLAROS_MEDIA_ROOT), "base_url": None},
    }
elif KLAROS_MEDIA_STORAGE == "s3":
    _media_backend = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME", default=""),
            "access_key": env_secret("AWS_ACCESS_KEY_ID"),
            "secret_key": env_secret("AWS_SECRET_ACCESS_KEY"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "default_acl": "private",
            "querystring_auth": True,
            "querystring_expire": KLAROS_MEDIA_URL_TTL,
            "file_overwrite": False,
            "signature_version": "s3v4",
        },
    }
else:
    raise ImproperlyConfigured(
        f"KLAROS_MEDIA_STORAGE must be 'filesystem' or 's3', not {KLAROS_MEDIA_STORAGE!r}"
    )
# Where the browser loads inline media from: our own origin (filesystem backend), or the S3
# service the presigned links point at. KLAROS_MEDIA_ORIGIN overrides the derived value.
KLAROS_MEDIA_ORIGIN = env.str("KLAROS_MEDIA_ORIGIN", default="")
if not KLAROS_MEDIA_ORIGIN and KLAROS_MEDIA_STORAGE == "s3":
    _endpoint = _media_backend["OPTIONS"]["endpoint_url"]
    if _endpoint:
        _parts = urlsplit(_endpoint)
        KLAROS_MEDIA_ORIGIN = f"{_parts.scheme}://{_parts.netloc}"
    else:
        KLAROS_MEDIA_ORIGIN = "https://*.amazonaws.com"
if KLAROS_MEDIA_ORIGIN:
    for _directive in ("img-src", "media-src"):
        CONTENT_SECURITY_POLICY["DIRECTIVES"][_directive].append(KLAROS_MEDIA_ORIGIN)

# Signed audit checkpoints (apps/audit/checkpoints.py). By default they go to the media storage
# under `audit-checkpoints/`; production should give them a bucket of their own that the
# database administrator cannot write to (S3 Object Lock in compliance mode, credentials the
# database administrator lacks): then rewriting the audit tables cannot rewrite the checkpoints.
KLAROS_AUDIT_CHECKPOINT_BUCKET = env.str("KLAROS_AUDIT_CHECKPOINT_BUCKET", default="")
if KLAROS_AUDIT_CHECKPOINT_BUCKET:
    _checkpoint_backend = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": KLAROS_AUDIT_CHECKPOINT_BUCKET,
            "access_key": env_secret("KLAROS_AUDIT_CHECKPOINT_ACCESS_KEY_ID"),
            "secret_key": env_secret("KLAROS_AUDIT_CHECKPOINT_SECRET_ACCESS_KEY"),
            "endpoint_url": env.str(
                "KLAROS_AUDIT_CHECKPOINT_ENDPOINT_URL",
                default=env.str("AWS_S3_ENDPOINT_URL", default=""),
            )
            or None,
            "region_name": env.str(
                "KLAROS_AUDIT_CHECKPOINT_REGION_NAME",
                default=env.str("AWS_S3_REGION_NAME", default=""),
            )
            or None,
            "default_acl": "private",
            "querystring_auth": True,
            "file_overwrite": False,
            "signature_version": "s3v4",
        },
    }
else:
    _checkpoint_backend = _media_backend

STORAGES = {
    "default": _media_backend,
    "media": _media_backend,
    "audit_checkpoints": _checkpoint_backend,
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Tasks (django-q2) ----------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
Q_CLUSTER = {
    "name": "klaros",
    "workers": env.int("KLAROS_WORKERS", default=2),
    "timeout": 120,
    "retry": 180,
    "max_attempts": 5,
    "queue_limit": 50,
    "bulk": 10,
    "catch_up": False,
    "save_limit": 1000,
    "label": "Tasks",
    # Unit tests run tasks inline; integration tests start a real qcluster.
    "sync": env.bool("KLAROS_TASKS_SYNC", default=False),
}
# A journal drain waits this long for more webhooks before it ends, so a steady stream is served
# by one task rather than one task every few requests.
KLAROS_DRAIN_LINGER_SECONDS = env.float("KLAROS_DRAIN_LINGER_SECONDS", default=1.0)
# Processed webhook bodies are kept this long for diagnosis, then deleted by the periodic sweep
# (their messages and statuses are stored; the raw bodies hold customer data). Failed and
# quarantined bodies are kept until an operator has dealt with them.
KLAROS_JOURNAL_RETENTION_DAYS = env.float("KLAROS_JOURNAL_RETENTION_DAYS", default=7.0)
if not KLAROS_JOURNAL_RETENTION_DAYS > 0:
    raise ImproperlyConfigured("KLAROS_JOURNAL_RETENTION_DAYS must be a positive number of days")
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Internationalisation -------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Logging --------------------------------------------------------------------------------
# Secrets never reach logs: they are held in `Secret` objects whose repr is masked, and webhook
# bodies are never logged.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}

# Lifetime of the one-use link Meta fetches an outbound attachment from ("link" send mode).
KLAROS_MEDIA_META_LINK_TTL = env.int("KLAROS_MEDIA_META_LINK_TTL", default=300)
# How outbound attachments reach Meta: "upload" (POST /{phone_number_id}/media, then send by id)
# or "link" (Meta fetches a short-lived, one-use signed link from KLAROS_PUBLIC_URL).
KLAROS_MEDIA_SEND_MODE = env.str("KLAROS_MEDIA_SEND_MODE", default="upload")
if KLAROS_MEDIA_SEND_MODE not in ("upload", "link"):
    raise ImproperlyConfigured("KLAROS_MEDIA_SEND_MODE must be 'upload' or 'link'")

# --- Sending ----------------------------------------------------------------------------------
# Messages per second per business number (Meta's default throughput is 80/s per number).
KLAROS_SEND_RATE_PER_NUMBER = env.float("KLAROS_SEND_RATE_PER_NUMBER", default=80.0)
# Graph calls in flight per dispatcher (threads; database work stays on the dispatcher's thread).
KLAROS_SEND_CONCURRENCY = env.int("KLAROS_SEND_CONCURRENCY", default=64)
# Extra length of the per-number rate window, so jitter in arrival at Meta never makes 81 calls
# land in one second.
KLAROS_SEND_RATE_MARGIN_SECONDS = env.float("KLAROS_SEND_RATE_MARGIN_SECONDS", default=0.02)
# Development only: the local Meta simulator's base URL, which enables the inbox's
# "simulate a customer" form. Empty in production.
KLAROS_SIMULATOR_URL = env.str("KLAROS_SIMULATOR_URL", default="").rstrip("/") if DEBUG else ""
# How long a claimed outbound message belongs to one worker, and how long a send whose outcome is
# unknown waits for Meta's status webhook (carrying our message id) before it is sent again.
KLAROS_OUTBOX_LEASE_SECONDS = env.int("KLAROS_OUTBOX_LEASE_SECONDS", default=30)
KLAROS_OUTBOX_RECONCILE_GRACE_SECONDS = env.int("KLAROS_OUTBOX_RECONCILE_GRACE_SECONDS", default=60)
