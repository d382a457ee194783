"""The recorder: targets, session, writer, manifest and the CLI."""
