//! Reward models: `reward_train` (a Bradley-Terry model on preference pairs), `reward_score`
//! (rewards of (prompt, response) rows) and `best_of_n` (the best row per prompt). What the reward
//! ops share (the input layout, the memoised embeddings, the head, the model directory) is in
//! `kit::reward`.

pub mod best_of_n;
pub mod reward_score;
pub mod reward_train;
