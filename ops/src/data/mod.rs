//! Table ops: read, filter, reshape and combine tables.

pub mod concat;
pub mod dedup;
pub mod read_table;
pub mod rouge_dedup;
pub mod sample;
pub mod select;
