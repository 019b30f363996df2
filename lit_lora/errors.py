"""The one exception type lit_lora raises for input a user can fix."""


class ConfigError(ValueError):
    """A setting or input file is wrong; the message names where, what and the fix.

    Raised before any expensive work (model loading, tokenization, training), so a
    typo costs seconds rather than a wasted run.
    """
