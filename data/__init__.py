"""Corpus format, label book, glossary, PII masking and the bundled corpus."""
