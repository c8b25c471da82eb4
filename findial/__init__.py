"""findial: dialogue models for financial customer service (zh / en)."""

__version__ = "0.1.0"
