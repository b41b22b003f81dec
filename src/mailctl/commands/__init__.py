"""Thin Typer command modules. Each module exposes register(app, name), which adds its group
or command to the root app. Order here is the order in --help."""

COMMAND_GROUPS: list[tuple[str, str]] = [
    ("profile", "profile"),
    ("settings", "settings"),
    ("test", "test"),
    ("auth", "auth"),
    ("dns", "dns"),
    ("queue", "queue"),
    ("send", "send"),
    ("sendmail", "send"),
    ("config", "config"),
    ("completion", "completion"),
]
