//! End-to-end tests of the real stack live in `tests/`; this library holds nothing.
