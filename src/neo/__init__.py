"""neo: catalog-grounded generation with semantic-ID constrained decoding."""
__version__ = "0.1.0"
