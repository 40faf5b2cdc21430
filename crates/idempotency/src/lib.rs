//! IETF `Idempotency-Key` semantics as a tower layer, with memory, Redis and PostgreSQL stores.
