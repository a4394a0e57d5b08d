"""The service's settings, from arguments or ``DIGITLAB_SERVE_*`` environment variables.

Usage: ``ServeSettings(model="runs/x")``; or ``DIGITLAB_SERVE_MODEL=runs/x`` then ``ServeSettings()``.
"""

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "DIGITLAB_SERVE_"


class ServeSettings(BaseSettings):
    """What ``create_app`` needs: the model to load, request limits, CORS and defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    model: Path | None = None  # a run directory, an .onnx file or a hub folder (None: injected by the caller)
    strings: Path | None = None  # a string model (run, .onnx or hub folder) that reads /v1/read's lines whole
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_batch: int = Field(64, ge=1)
    timeout_s: float = Field(10.0, gt=0)  # model work of one request, beyond which it answers 504
    # origins allowed to call the API from a browser: "https://a.example,https://b.example"; none: closed
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    top_k: int = Field(3, ge=1, le=100)
    # slow clients (``digitlab serve``): a connection's request head (line and headers) must arrive within
    # header_timeout_s of its first byte (or of the connection), a request's body within body_timeout_s
    # (else 408); an idle kept-alive connection closes after keep_alive_s; past max_connections a 503
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    keep_alive_s: int = Field(5, ge=1)
    max_connections: int = Field(1000, ge=1)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value
