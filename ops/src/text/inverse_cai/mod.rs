//! The deterministic parts of Inverse Constitutional AI (Findeis et al. 2024, rdnfn/icai at
//! commit cb88e65), kept apart from the `icai` op's requests so that each is tested on values
//! worked out by hand or by the reference code's logic: clustering and re-clustering
//! (`cluster`), reading and combining votes (`vote`), filtering and ranking (`select`), reading
//! the model's proposals and evaluation picks (`reply`), and ICAI's prompts (`prompts`).

pub mod cluster;
pub mod prompts;
pub mod reply;
pub mod select;
pub mod vote;
