"""The names of tusd's hook types: the hook system runs them, the metrics count them (at 0 from the start, as
tusd does), so both read them here."""

HOOK_TYPES = (
    "pre-create",
    "post-create",
    "post-receive",
    "pre-finish",
    "post-finish",
    "pre-terminate",
    "post-terminate",
    "pre-access",  # beyond tusd: before every HEAD, PATCH, GET and DELETE of an existing upload (off by default)
)
