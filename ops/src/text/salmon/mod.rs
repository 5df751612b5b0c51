//! The parts of the `ai_preference` op (SALMON's synthetic preferences, IBM/SALMON at commit
//! 7392a56): principle collections (`principles`), reading a judge's answer (`score`),
//! SALMON's seeded aggregation of per-principle scores into labels (`aggregate`), and the
//! Python text of its tuple columns (`repr`).

pub mod aggregate;
pub mod principles;
pub mod repr;
pub mod score;
