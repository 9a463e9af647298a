//! DataStream API types.
