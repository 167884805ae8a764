class ConfigError(ValueError):
    """A user-facing configuration error: names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str, hint: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"{key}={value!r} is not allowed: expected {allowed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite (a ValueError, as RecBole's own NaN check raises)."""
