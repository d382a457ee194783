"""Reading recordings and everything after it: rates, detectors, renderers."""
