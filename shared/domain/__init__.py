"""Vocabulary: ids, targets, errors, the request, records, events, health, redaction. No I/O;
imports only domain/."""
