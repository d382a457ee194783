"""Data sources (bcc programs, NVML, procfs sampler, spans). Must import with the standard library alone:
the span client lives here and is imported by servers."""
