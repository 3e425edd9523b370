"""The storage layer: tables, engines, queries. Dialect quirks live in their own modules."""
