//! Model ops: importing model directories and merging models.

pub mod merge;
pub mod merge_models;
pub mod read_model;
