//! End-to-end tests: one test binary (faster to link) with a module per area.

mod event_path;
