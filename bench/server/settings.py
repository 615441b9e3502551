"""How a server runs: its database, data folder, read policy and body size limit."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bench.errors import UsageError

DEFAULT_DATA = Path("medq-server")


class ServerSettings(BaseModel):
    """``db_url`` None means the SQLite file in ``data_dir`` (which also holds artifacts);
    ``postgresql://`` URLs are made to use psycopg 3."""

    model_config = ConfigDict(frozen=True)

    db_url: str | None = None
    data_dir: Path = DEFAULT_DATA
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    private_reads: bool = False
    max_body_mb: float = Field(256.0, gt=0)
    max_staging_mb: float = Field(8192.0, gt=0)
    """Staging disk that bundle uploads unpacked at the same time may take together."""

    @field_validator("db_url")
    @classmethod
    def _usable_url(cls, value: str | None) -> str | None:
        return normalize_url(value) if value else None

    def read_policy(self) -> str:
        """Who may read this server, in one sentence (printed when it starts)."""
        if self.private_reads:
            return ("reads are private (--private-reads): records, devices, artifacts and the "
                    "report need a valid device token")
        return (f"reads are public: anyone who reaches {self.host}:{self.port} can read every "
                "record, device, artifact and the report without a token (start with "
                "--private-reads to require one); writes always need a device token")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_staging_bytes(self) -> int:
        return int(self.max_staging_mb * 1024 * 1024)

    @classmethod
    def of(cls, db_url: str | None, data_dir: Path | None = None, **options: object
           ) -> ServerSettings:
        """Settings from CLI options, the data folder defaulted from the URL."""
        return cls(db_url=db_url, data_dir=data_dir or default_data_dir(db_url), **options)


def normalize_url(db_url: str) -> str:
    """``postgresql://`` means psycopg 3 (the driver medq-bench installs)."""
    try:
        url = make_url(db_url)
    except ArgumentError as err:
        raise UsageError(f"not a database URL: {db_url!r} (sqlite:///PATH or "
                         "postgresql://USER@HOST/DB)") from err
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(f"unsupported database {url.get_backend_name()!r}: use sqlite or "
                         "postgresql")
    return url.render_as_string(hide_password=False)


def default_data_dir(db_url: str | None) -> Path:
    """The SQLite file's folder, else ./medq-server."""
    if db_url:
        url = make_url(db_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(url.database).parent
    return DEFAULT_DATA
