"""``autoglm-trace demo``: the subcommand's entry; the demo itself lives in demo/ (autoglm_trace.demo)."""

from __future__ import annotations

NAME = "demo"
SUMMARY = "run the bundled demo inference server under load, with an injected incident"
ORDER = 80


def main(argv: list[str]) -> int:
    # Imported here: every command module is imported to list the commands, and the demo's HTTP
    # client (urllib.request -> http.client, ssl, libcrypto) would otherwise sit in every recorder.
    from autoglm_trace.demo import command

    return command.main(argv)
