"""The bundled demo: an inference server that does real work, a load generator, noisy neighbours and
the ``autoglm-trace demo`` command that runs them with one injected incident.

A room of its own, outside the recorder: it uses the tool as a user does (``record`` and ``analyze``
through the CLI, spans through the client API); nothing in tracer/, probes/ or analysis/ imports it
except the thin subcommand module tracer/commands/demo.py.
"""
