//! Reward models: `reward_train` (a Bradley-Terry model on preference pairs). What the reward
//! ops share (the input layout, the memoised embeddings, the head, the model directory) is in
//! `kit::reward`.

pub mod reward_train;
