"""A logger configured with credentials, as a W&B, Comet or Neptune logger would be, that runs offline."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import CSVLogger


class CredentialedCSVLogger(CSVLogger):
    """Lightning's CSV logger that also takes the credentials a hosted logger takes (and ignores them).

    Args:
        api_key: A hosted service's API key.
        hf_token: A Hugging Face token.
        **kwargs: :class:`CSVLogger`'s arguments.
    """

    def __init__(self, api_key: str | None = None, hf_token: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self.hf_token = hf_token
