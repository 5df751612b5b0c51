//! `command`: any program as a stage, and what keeps it safe (its supervisor, its secrets).

pub mod command;
pub mod secrets;
pub mod supervise;
